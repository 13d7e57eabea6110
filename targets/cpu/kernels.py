"""Bit-serial dense and conv2d kernels in TVM: the integer accumulators of low-bit layers.

Why bit-serial: a product of an a-bit unsigned activation and a w-bit weight is a sum over bit-plane
pairs, x * w = sum_{i,j} s_j 2^(i+j) x_i w_j, with s_j = -1 for the weight's two's-complement sign
plane (j = w-1) and +1 otherwise. Packing 64 reduction elements of one plane into a uint64 word
turns 64 of those products into AND + POPCOUNT, so a layer costs a*w word operations per 64 MACs.

Operands (everything exact, int64 accumulators as in the reference; popcounts never overflow):
- activations: offset-unsigned codes x' = q - qmin (so 0 <= x' < 2^a), packed at run time inside
  the kernel (one stage, 64 input elements per word); padding and words past the reduction length
  hold zero bits;
- weights: centred codes wc = qw - zw as two's complement on the fewest bits that hold them,
  packed at compile time (`pack_dense_weights`, `pack_conv_weights`) in the layout
  [out/8, plane, ..., word, 8] so the innermost loop runs over 8 output channels (one zmm of int64);
- the activation zero point is a compile-time correction: sum (x' - zx') wc = sum x' wc - zx' sum wc
  where the second sum covers the positions inside the input (a map over output positions for
  convolutions, so padding contributes exactly zero);
- bipolar x bipolar layers (+-1 codes) are XNOR-popcount: sum x w = N - 2 popcount(x_b XOR w_b)
  over valid positions; padded positions have x_b = 0 so they add popcount(w_b) there, which the
  compile-time map removes again.

Every kernel computes `acc = corr + sum(term)` with `corr` an int64 input (the correction above), so
the kernel's output is the reference accumulator `sum (qx - zx)(qw - zw)` bit for bit.

Schedules (tvm.s_tir.Schedule). Dense: output channels split by 8 and vectorised innermost, the outer
loops fused and parallel. Conv: activations are bit-packed once per layer (vectorised along the row)
into a zero-padded [plane, n, g, y, x, word] buffer; the accumulator is blocked by 8 output channels
with one int64 popcount sum per (activation plane, weight plane) pair, and a tile of `px` output
pixels x `cob` channel blocks x plane pairs stays in registers (`ConvSchedule`, chosen by
`default_conv_schedule` or the tuning log) while the window is reduced; the plane sums are shifted /
signed once per tile, transposed to NCHW and added to corr; rows x channel blocks run in parallel.
`decompose_reduction` comes last. Hosts without AVX-512 VPOPCNTDQ (or fallback=True) get a small tile
built for AVX2 (`FALLBACK_TARGET`), with a warning (`require_features(strict=True)` raises instead).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["DenseSpec", "ConvSpec", "ConvSchedule", "default_conv_schedule", "host_features", "require_features",
           "FAST_FEATURES", "FALLBACK_TARGET", "host_target", "dense_primfunc", "conv_primfunc", "build_dense",
           "build_conv", "pack_dense_weights", "pack_conv_weights", "weight_bits", "conv_correction",
           "dense_correction", "LANES", "WORD"]

LANES = 8  # output channels per vector (8 x int64 = 512 bits)
WORD = 64  # reduction elements per packed word

_TARGET = None
FAST_FEATURES = ("avx512f", "avx512vpopcntdq")  # AND/XOR + VPOPCNTQ on zmm: what the fast schedules assume
FALLBACK_TARGET = {"kind": "llvm", "mcpu": "x86-64-v3"}  # AVX2 only: what the fallback schedule is built for


def host_target():
    """An LLVM target for this machine's CPU (a generic target with a warning when it is unknown)."""
    global _TARGET
    if _TARGET is not None:
        return _TARGET
    import tvm
    from tvm.target import codegen

    cpu = ""
    try:
        cpu = str(codegen.llvm_get_system_cpu())
        valid = bool(codegen.llvm_is_valid_cpu(cpu, str(codegen.llvm_get_system_triple())))
    except Exception:  # noqa: BLE001 - an LLVM without these queries: fall back below
        valid = False
    if not cpu or cpu == "generic" or not valid:
        warnings.warn("qcc cpu: could not detect the host CPU; compiling for generic x86-64 (kernels run "
                      "several times slower)", RuntimeWarning, stacklevel=2)
        _TARGET = tvm.target.Target({"kind": "llvm"})
    else:
        _TARGET = tvm.target.Target({"kind": "llvm", "mcpu": cpu})
    return _TARGET


def host_features(target=None) -> frozenset[str]:
    """LLVM feature names of the (host) target, e.g. {"avx512f", "avx512vpopcntdq", ...}."""
    from tvm.target import codegen

    try:
        return frozenset(str(f) for f in codegen.llvm_get_cpu_features(target or host_target()))
    except Exception:  # noqa: BLE001 - an LLVM without feature queries: nothing known
        return frozenset()


def require_features(features=FAST_FEATURES, strict: bool = False, target=None) -> bool:
    """True when the target has `features`. Otherwise raise QccError naming the missing ones
    (strict), or warn once and return False so the caller takes the fallback schedule."""
    missing = sorted(set(features) - host_features(target))
    if not missing:
        return True
    message = (f"qcc cpu: the host CPU lacks {', '.join(missing)}; the bit-serial kernels use the fallback "
               f"schedule (AVX2 tiles, several times slower)")
    if strict:
        from qcc.errors import QccError

        raise QccError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return False


def weight_bits(wc: np.ndarray) -> int:
    """The fewest two's-complement bits holding every centred weight code (at least 1: {-1, 0})."""
    lo, hi = int(wc.min(initial=0)), int(wc.max(initial=0))
    bits = 1
    while not (-(2 ** (bits - 1)) <= lo and hi <= 2 ** (bits - 1) - 1):
        bits += 1
    return bits


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _pack_rows(planes: np.ndarray) -> np.ndarray:
    """[..., K] of 0/1 -> [..., ceil(K/64)] uint64, element k in bit k % 64 of word k // 64."""
    k = planes.shape[-1]
    words = _ceil(k, WORD)
    padded = np.zeros((*planes.shape[:-1], words * WORD), np.uint64)
    padded[..., :k] = planes
    padded = padded.reshape(*planes.shape[:-1], words, WORD)
    return np.bitwise_or.reduce(padded << np.arange(WORD, dtype=np.uint64), axis=-1)


def _weight_planes(wc: np.ndarray, bits: int, bipolar: bool) -> np.ndarray:
    """[bits, ...] bit planes: two's complement of wc, or (w > 0) for bipolar weights."""
    if bipolar:
        return (wc > 0).astype(np.uint64)[None]
    u = wc.astype(np.int64) & ((1 << bits) - 1)
    return ((u[None] >> np.arange(bits).reshape(-1, *([1] * wc.ndim))) & 1).astype(np.uint64)


def _lane_layout(packed: np.ndarray) -> np.ndarray:
    """[bits, N, *rest] -> [ceil(N/8), bits, *rest, 8] with zero rows past N."""
    bits, n = packed.shape[:2]
    n_pad = _ceil(n, LANES) * LANES
    full = np.zeros((bits, n_pad, *packed.shape[2:]), np.uint64)
    full[:, :n] = packed
    full = full.reshape(bits, n_pad // LANES, LANES, *packed.shape[2:])
    return np.ascontiguousarray(np.moveaxis(np.moveaxis(full, 2, -1), 1, 0))


def pack_dense_weights(wc: np.ndarray, bits: int, bipolar: bool = False) -> np.ndarray:
    """wc [N, K] -> [ceil(N/8), bits, ceil(K/64), 8] uint64."""
    return _lane_layout(_pack_rows(_weight_planes(wc, bits, bipolar)))


def pack_conv_weights(wc: np.ndarray, bits: int, bipolar: bool = False) -> np.ndarray:
    """wc [CO, C/g, KH, KW] -> [ceil(CO/8), bits, KH, KW, ceil(C/g / 64), 8] uint64."""
    planes = _weight_planes(wc, bits, bipolar).transpose(0, 1, 3, 4, 2)  # bits, CO, KH, KW, Cg
    return _lane_layout(_pack_rows(planes))


def _pad_lanes(v: np.ndarray) -> np.ndarray:
    n = v.shape[0]
    out = np.zeros((_ceil(n, LANES) * LANES, *v.shape[1:]), np.int64)
    out[:n] = v
    return out


def dense_correction(wc: np.ndarray, zx: int, bipolar: bool) -> np.ndarray:
    """corr [N padded to 8] for wc [N, K]: -zx' * sum_k wc, or K for XNOR layers."""
    n, k = wc.shape
    corr = np.full(n, k, np.int64) if bipolar else -int(zx) * wc.astype(np.int64).sum(axis=1)
    return _pad_lanes(corr)


def conv_correction(wc: np.ndarray, zx: int, bipolar: bool, in_hw: tuple[int, int], attrs: dict) -> np.ndarray:
    """corr [CO padded to 8, OH, OW]: -zx' * (sum of wc over the window's valid positions), or for
    XNOR layers valid count + 2 * (weight one-bits over padded positions)."""
    from qcc.ops import get_op

    conv = get_op("Conv")
    cg = wc.shape[1]
    ones = np.ones((1, cg * attrs["group"], *in_hw))
    if not bipolar:
        valid = conv.evaluate([ones, wc.astype(np.float64)], attrs)[0][0]
        return _pad_lanes(-int(zx) * np.rint(valid).astype(np.int64))
    wb = (wc > 0).astype(np.float64)
    valid_count = np.rint(conv.evaluate([ones, np.ones_like(wb)], attrs)[0][0]).astype(np.int64)
    valid_ones = np.rint(conv.evaluate([ones, wb], attrs)[0][0]).astype(np.int64)
    pad_ones = wb.reshape(wb.shape[0], -1).sum(axis=1).astype(np.int64)[:, None, None] - valid_ones
    return _pad_lanes(valid_count + 2 * pad_ones)


@dataclass(frozen=True)
class DenseSpec:
    """acc[M, N8] = corr[N8] + sum over planes of x[M, K] (offset codes, a_bits) against packed weights."""

    m: int
    k: int
    n: int
    a_bits: int
    w_bits: int
    bipolar: bool = False

    @property
    def n_pad(self) -> int:
        return _ceil(self.n, LANES) * LANES

    @property
    def words(self) -> int:
        return _ceil(self.k, WORD)


@dataclass(frozen=True)
class ConvSpec:
    """acc[N, CO8, OH, OW] for x[N, C, H, W] (offset codes) with explicit pads / strides / dilations."""

    n: int
    c: int
    h: int
    w: int
    co: int
    kh: int
    kw: int
    group: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right (ONNX order)
    dilations: tuple[int, int]
    a_bits: int
    w_bits: int
    bipolar: bool = False

    @property
    def co_pad(self) -> int:
        return _ceil(self.co, LANES) * LANES

    @property
    def cg(self) -> int:
        return self.c // self.group

    @property
    def words(self) -> int:
        return _ceil(self.cg, WORD)

    @property
    def out_hw(self) -> tuple[int, int]:
        oh = (self.h + self.pads[0] + self.pads[2] - self.dilations[0] * (self.kh - 1) - 1) // self.strides[0] + 1
        ow = (self.w + self.pads[1] + self.pads[3] - self.dilations[1] * (self.kw - 1) - 1) // self.strides[1] + 1
        return oh, ow


def _bit(value, plane):
    """Bit `plane` of an int32 expression, as uint64."""
    return ((value >> plane.astype("int32")) & 1).astype("uint64")


def _term(xw, ww, i, j, spec_w_bits: int, bipolar: bool):
    from tvm import tirx

    if bipolar:
        return tirx.popcount(xw ^ ww).astype("int64") * tirx.const(-2, "int64")
    pc = tirx.popcount(xw & ww).astype("int64") << (i + j).astype("int64")
    return tirx.Select(j == spec_w_bits - 1, -pc, pc) if spec_w_bits > 1 else -pc


def _dense_func(spec: DenseSpec):
    from tvm import te, tirx

    x = te.placeholder((spec.m, spec.k), "int32", name="x")
    wp = te.placeholder((spec.n_pad // LANES, spec.w_bits, spec.words, LANES), "uint64", name="wp")
    corr = te.placeholder((spec.n_pad,), "int64", name="corr")
    a_planes = 1 if spec.bipolar else spec.a_bits
    kk = te.reduce_axis((0, WORD), name="kk")

    def pack(i, m, w):
        idx = w * WORD + kk
        v = x[m, idx] > 0 if spec.bipolar else None
        bit = v.astype("uint64") if spec.bipolar else _bit(x[m, idx], i)
        bit = tirx.if_then_else(idx < spec.k, bit, tirx.const(0, "uint64"))
        return te.sum(bit << kk.astype("uint64"), axis=kk)

    xp = te.compute((a_planes, spec.m, spec.words), pack, name="xpack")
    i = te.reduce_axis((0, a_planes), name="i")
    j = te.reduce_axis((0, spec.w_bits), name="j")
    w = te.reduce_axis((0, spec.words), name="w")
    s = te.compute((spec.m, spec.n_pad), lambda m, n: te.sum(
        _term(xp[i, m, w], wp[n // LANES, j, w, n % LANES], i, j, spec.w_bits, spec.bipolar), axis=[i, j, w]),
        name="acc")
    out = te.compute((spec.m, spec.n_pad), lambda m, n: s[m, n] + corr[n], name="out")
    return te.create_prim_func([x, wp, corr, out])


def _schedule_dense(func):
    import tvm

    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("acc")
    m, n, i, j, w = sch.get_loops(blk)
    no, ni = sch.split(n, [None, LANES])
    sch.reorder(m, no, i, j, w, ni)
    sch.reverse_compute_at(sch.get_sblock("out"), no)
    outer = sch.fuse(m, no)
    sch.parallel(outer)
    sch.vectorize(ni)
    sch.vectorize(sch.get_loops(sch.get_sblock("out"))[-1])
    sch.decompose_reduction(blk, i)
    return sch.mod


@dataclass(frozen=True)
class ConvSchedule:
    """Register blocking of the conv kernel: `px` output pixels (along a row) x `cob` blocks of 8 output
    channels x (activation planes x weight planes) int64 accumulators stay in registers while the
    kernel window is reduced; rows x channel blocks run in parallel."""

    px: int = 1
    cob: int = 1


_ACC_BUDGET = 8  # zmm accumulators per tile (32 registers: accumulators + hoisted weights + operands)
_STACK_BYTES = 1024  # TVM puts local buffers of >= 1 KiB on the heap: LLVM then cannot keep them in registers


def default_conv_schedule(spec: ConvSpec, fallback: bool = False) -> ConvSchedule:
    """The widest pixel tile dividing the output width whose accumulators fit the register budget
    (`fallback`: the small tile for hosts without AVX-512, 16 vector registers)."""
    planes = (1 if spec.bipolar else spec.a_bits) * spec.w_bits
    budget = 2 if fallback else _ACC_BUDGET
    ow = spec.out_hw[1]
    px = max((d for d in range(1, ow + 1) if ow % d == 0 and d * planes <= budget), default=1)
    return ConvSchedule(px=px, cob=1)


def _conv_schedule_ok(spec: ConvSpec, sched: ConvSchedule) -> bool:
    planes = (1 if spec.bipolar else spec.a_bits) * spec.w_bits
    return (sched.px >= 1 and sched.cob >= 1 and spec.out_hw[1] % sched.px == 0
            and (spec.co_pad // LANES) % sched.cob == 0
            and sched.px * sched.cob * planes * LANES * 8 < _STACK_BYTES)


def _conv_func(spec: ConvSpec):
    """x (NCHW int32) -> xbits (bit planes, 64 channels per word, vectorisable over the row) -> xpack
    (zero-padded, [plane, n, g, y, x, word]) -> acc (popcounts per plane pair, blocked by 8 output
    channels) -> comb (shifted / signed plane sum) -> out (+ corr, NCHW)."""
    from tvm import te, tirx

    oh, ow = spec.out_hw
    pt, pl = spec.pads[0], spec.pads[1]
    hp, wpd = spec.h + spec.pads[0] + spec.pads[2], spec.w + spec.pads[1] + spec.pads[3]
    x = te.placeholder((spec.n, spec.c, spec.h, spec.w), "int32", name="x")
    wp = te.placeholder((spec.co_pad // LANES, spec.w_bits, spec.kh, spec.kw, spec.words, LANES), "uint64",
                        name="wp")
    corr = te.placeholder((spec.co_pad, oh, ow), "int64", name="corr")
    ap = 1 if spec.bipolar else spec.a_bits
    cg = spec.cg
    kk = te.reduce_axis((0, WORD), name="kk")

    def pack(i, n, g, y, w, xx):
        ci = w * WORD + kk
        val = x[n, g * cg + tirx.min(ci, cg - 1), y, xx]
        bit = (val > 0).astype("uint64") if spec.bipolar else _bit(val, i)
        if cg % WORD:
            bit = tirx.if_then_else(ci < cg, bit, tirx.const(0, "uint64"))
        return te.sum(bit << kk.astype("uint64"), axis=kk)

    xb = te.compute((ap, spec.n, spec.group, spec.h, spec.words, spec.w), pack, name="xbits")

    def pad(i, n, g, y, xx, w):
        yy, xs = y - pt, xx - pl
        inside = tirx.all(yy >= 0, yy < spec.h, xs >= 0, xs < spec.w)
        val = xb[i, n, g, tirx.max(tirx.min(yy, spec.h - 1), 0), w, tirx.max(tirx.min(xs, spec.w - 1), 0)]
        return tirx.if_then_else(inside, val, tirx.const(0, "uint64"))

    xp = te.compute((ap, spec.n, spec.group, hp, wpd, spec.words), pad, name="xpack")
    ry = te.reduce_axis((0, spec.kh), name="ry")
    rx = te.reduce_axis((0, spec.kw), name="rx")
    w = te.reduce_axis((0, spec.words), name="w")
    cpg = spec.co // spec.group
    (sh, sw), (dh, dw) = spec.strides, spec.dilations

    def acc(n, cb, y, xx, i, j, c):
        g = tirx.min((cb * LANES + c) // cpg, spec.group - 1)
        xw = xp[i, n, g, y * sh + ry * dh, xx * sw + rx * dw, w]
        ww = wp[cb, j, ry, rx, w, c]
        return te.sum(tirx.popcount(xw ^ ww if spec.bipolar else xw & ww).astype("int64"), axis=[ry, rx, w])

    s = te.compute((spec.n, spec.co_pad // LANES, oh, ow, ap, spec.w_bits, LANES), acc, name="acc")
    ci = te.reduce_axis((0, ap), name="ci")
    cj = te.reduce_axis((0, spec.w_bits), name="cj")

    def comb(n, cb, y, xx, c):
        t = s[n, cb, y, xx, ci, cj, c]
        if spec.bipolar:
            return te.sum(t * tirx.const(-2, "int64"), axis=[ci, cj])
        t = t << (ci + cj).astype("int64")
        return te.sum(tirx.Select(cj == spec.w_bits - 1, -t, t) if spec.w_bits > 1 else -t, axis=[ci, cj])

    cbuf = te.compute((spec.n, spec.co_pad // LANES, oh, ow, LANES), comb, name="comb")
    out = te.compute((spec.n, spec.co_pad, oh, ow),
                     lambda n, co, y, xx: cbuf[n, co // LANES, y, xx, co % LANES] + corr[co, y, xx], name="out")
    return te.create_prim_func([x, wp, corr, out])


def _loops_under(sch, block, loop):
    """The loops of `block` nested strictly inside `loop`."""
    loops = sch.get_loops(block)
    target = sch.get(loop)
    for k, lp in enumerate(loops):
        if sch.get(lp).same_as(target):
            return loops[k + 1:]
    return []


def _schedule_conv_pack(sch) -> None:
    pb = sch.get_sblock("xbits")
    i, n, g, y, w, xx, kk = sch.get_loops(pb)
    sch.reorder(i, n, g, y, w, kk, xx)
    sch.parallel(sch.fuse(i, n, g, y))
    if sch.get(xx).extent.value >= LANES:
        sch.vectorize(sch.split(xx, [None, LANES])[1])
    ql = sch.get_loops(sch.get_sblock("xpack"))
    sch.parallel(sch.fuse(*ql[:4]))
    sch.decompose_reduction(pb, kk)


def _schedule_conv(func, spec: ConvSpec, sched: ConvSchedule):
    import tvm

    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("acc")
    n, cb, y, xx, i, j, c, ry, rx, w = sch.get_loops(blk)
    cbo, cbi = sch.split(cb, [None, sched.cob])
    xo, xi = sch.split(xx, [None, sched.px])
    sch.reorder(n, cbo, y, xo, ry, rx, w, cbi, xi, i, j, c)
    comb, ob = sch.get_sblock("comb"), sch.get_sblock("out")
    sch.reverse_compute_at(comb, xo)
    sch.reverse_compute_at(ob, xo)
    sch.set_scope(blk, 0, "local")
    sch.set_scope(comb, 0, "local")
    sch.parallel(sch.fuse(n, cbo, y))
    sch.vectorize(c)
    for lp in (cbi, xi, i, j):
        sch.unroll(lp)
    cl = _loops_under(sch, comb, xo)
    nred = int(not spec.bipolar and spec.a_bits > 1) + int(spec.w_bits > 1)  # ci / cj loops (extent > 1)
    if nred:
        sch.reorder(*cl[len(cl) - nred:], *cl[:len(cl) - nred])
    cl = _loops_under(sch, comb, xo)
    for lp in cl[:-1]:
        sch.unroll(lp)
    sch.vectorize(cl[-1])
    ol = _loops_under(sch, ob, xo)
    for lp in ol[:-1]:
        sch.unroll(lp)
    sch.vectorize(ol[-1])
    sch.decompose_reduction(blk, ry)
    sch.decompose_reduction(comb, _loops_under(sch, comb, xo)[0])
    _schedule_conv_pack(sch)
    return sch.mod


_BUILT: dict = {}
_FUNCS: dict = {}


def dense_primfunc(spec: DenseSpec):
    """The scheduled dense kernel as a `tvm.tir.PrimFunc` (cached by spec; stable interface).

    Arguments, in order (all buffers C-contiguous, batch `spec.m` rows):
      x    int32  [m, k]                           offset activation codes x' = q - qmin (0 <= x' < 2^a_bits;
                                                    for bipolar layers the +-1 codes themselves)
      wp   uint64 [n_pad/8, w_bits, words, 8]      `pack_dense_weights(wc, w_bits, bipolar)`
      corr int64  [n_pad]                          `dense_correction(wc, zx', bipolar)`
      out  int64  [m, n_pad]                       written: sum (qx - zx)(qw - zw) (columns >= n are padding)
    """
    key = ("dense", spec)
    if key not in _FUNCS:
        _FUNCS[key] = _schedule_dense(_dense_func(spec))["main"]
    return _FUNCS[key]


def conv_primfunc(spec: ConvSpec, sched: ConvSchedule | None = None, fallback: bool = False):
    """The scheduled conv2d kernel as a `tvm.tir.PrimFunc` (cached by spec; stable interface).

    Arguments, in order (all buffers C-contiguous, NCHW):
      x    int32  [n, c, h, w]                              offset activation codes (as for the dense kernel)
      wp   uint64 [co_pad/8, w_bits, kh, kw, words, 8]      `pack_conv_weights(wc, w_bits, bipolar)`
      corr int64  [co_pad, oh, ow]                          `conv_correction(wc, zx', bipolar, (h, w), attrs)`
      out  int64  [n, co_pad, oh, ow]                       written: sum (qx - zx)(qw - zw) (channels >= co
                                                             are padding)
    `sched` (register tile) defaults to `default_conv_schedule(spec, fallback)`; an invalid one (tile not
    dividing the output width, accumulators over 1 KiB) is replaced by the default. The result is
    target-independent TIR: build it for `host_target()` (or FALLBACK_TARGET with fallback=True).
    """
    if sched is None or not _conv_schedule_ok(spec, sched):
        sched = default_conv_schedule(spec, fallback)
    key = ("conv", spec, sched)
    if key not in _FUNCS:
        _FUNCS[key] = _schedule_conv(_conv_func(spec), spec, sched)["main"]
    return _FUNCS[key]


def _build(key, func, fallback: bool):
    import tvm

    target = tvm.target.Target(FALLBACK_TARGET) if fallback else host_target()
    key = (*key, fallback)
    if key not in _BUILT:
        _BUILT[key] = tvm.compile(tvm.IRModule({"main": func}), target=target)
    return _BUILT[key]


def _use_fallback(fallback: bool) -> bool:
    return fallback or not require_features()


def build_dense(spec: DenseSpec, fallback: bool = False):
    """The compiled dense kernel (cached by spec in this process): main(x, wp, corr, out). Hosts without
    FAST_FEATURES (a warning) or fallback=True get the AVX2 build."""
    fallback = _use_fallback(fallback)
    return _build(("dense", spec), dense_primfunc(spec), fallback)


def build_conv(spec: ConvSpec, sched: ConvSchedule | None = None, fallback: bool = False):
    """The compiled conv2d kernel (cached by spec in this process): main(x, wp, corr, out). Hosts without
    FAST_FEATURES (a warning) or fallback=True get the fallback tile built for AVX2."""
    fallback = _use_fallback(fallback)
    return _build(("conv", spec, sched), conv_primfunc(spec, sched, fallback), fallback)
