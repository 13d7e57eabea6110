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

Kernels (measured on the 2-core znver4 host: fixed costs, not popcounts, were what kept 1-bit layers
far from the popcount peak, so the fast kernels are written directly in TIR):
- dense (`_dense_func`): the activation row is packed with vector bit tricks (64 codes -> 64 bytes ->
  vpmullq by a magic constant -> one word), then every block of 8 outputs is one expression, a tree
  of independent popcounts over the words (no dependent accumulator chain, no local buffers); small
  layers run on one thread (a parallel launch costs more than the layer at batch 1). Layers wider
  than _DENSE_TERMS popcounts per output keep the scheduled-TE kernel (`_te_dense_func`).
- conv, pixel vectors (`_pixel_conv_func`, ConvSchedule(pixels=True), the default for stride-1
  rows with few plane-pair x word products): activations packed once into zero-padded rows of words
  with pixels innermost; each accumulator is 8 consecutive output pixels of one channel, computed as
  one expression over words x window x plane pairs and stored straight into the NCHW row: no
  transpose of an accumulator tile, no workspace-allocated locals. Multi-plane layers reduce one
  channel word per pass (partial sums in the output row); rows whose width is not a multiple of 8
  use vectors over the flattened output plane (`ConvSchedule.flat`, shifted row copies); the module
  feeds it uint8 offset codes when they fit (`x_dtype`). Kernels under _SERIAL_DENSE popcounts run
  on one thread.
- conv, channel vectors (scheduled TE, tvm.s_tir.Schedule): activations bit-packed once per layer
  (vectorised along the row) into a zero-padded [plane, n, g, y, x, word] buffer; the accumulator is
  blocked by 8 output channels with one int64 popcount sum per (activation plane, weight plane) pair,
  and a tile of `px` output pixels x `cob` channel blocks x plane pairs stays in registers
  (`ConvSchedule`, chosen by `default_conv_schedule` or the tuning log) while the window is reduced;
  the plane sums are shifted / signed once per tile, transposed to NCHW and added to corr; rows x
  channel blocks run in parallel. `decompose_reduction` comes last. Strided rows and wide multi-plane
  layers use it.
Hosts without AVX-512 VPOPCNTDQ (or fallback=True) get a small channel-vector tile built for AVX2
(`FALLBACK_TARGET`), with a warning (`require_features(strict=True)` raises instead).
"""

from __future__ import annotations

import functools
import operator
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["DenseSpec", "ConvSpec", "ConvSchedule", "default_conv_schedule", "conv_schedule_ok", "host_features",
           "require_features",
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


def _add_plane_pair(total, terms, i: int, j: int, wb: int, bipolar: bool, lanes: int):
    """total +- (sum of one (activation plane i, weight plane j) pair's popcounts) << (i + j).

    The weight's top plane is its two's-complement sign (subtracted); XNOR layers subtract 2x their
    XOR popcounts (the correction term holds the rest).
    """
    from tvm.script import tirx as T

    s = T.Cast(f"int64x{lanes}", functools.reduce(operator.add, terms)) << \
        T.broadcast(T.int64(1 if bipolar else i + j), lanes)
    return total - s if bipolar or j == wb - 1 else total + s


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


def _te_dense_func(spec: DenseSpec):
    """The scheduled-TE dense kernel, for layers too wide for `_dense_func`'s single expressions."""
    from tvm import te, tirx

    x = te.placeholder((spec.m, spec.k), "int32", name="x")
    wp = te.placeholder((spec.n_pad // LANES, spec.w_bits, spec.words, LANES), "uint64", name="wp")
    corr = te.placeholder((spec.n_pad,), "int64", name="corr")
    a_planes = 1 if spec.bipolar else spec.a_bits
    kk = te.reduce_axis((0, WORD), name="kk")

    def pack(i, m, w):
        idx = w * WORD + kk
        bit = (x[m, idx] > 0).astype("uint64") if spec.bipolar else _bit(x[m, idx], i)
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

_DENSE_TERMS = 256  # most popcount terms per output expression of `_dense_func` (code size); wider: TE
_SERIAL_DENSE = 1 << 15  # kernels below this many 512-bit popcounts run on one thread (launch cost)
_MAGIC = 0x0102040810204080  # (8 bytes of 0/1) * _MAGIC >> 56 = the 8 bits in one byte, byte j -> bit j


def _dense_func(spec: DenseSpec, cob: int = 4):
    """The dense kernel, written directly in TIR (buffer-free accumulators, as `_pixel_conv_func`).

    Pack (serial: m * words words): a full word is one 64-lane vector of codes -> 64 bytes of 0/1 (bit
    `plane`, or x > 0 for bipolar layers) -> 8 uint64 lanes multiplied by _MAGIC and shifted right by
    56 -> 8 bytes = the 64 bits (vpcmp / vpmovdb, vpmullq, vpsrlq, vpmovqb); a ragged last word takes the
    scalar path. Main: a task is one row x `cob` blocks of 8 outputs; each block is ONE expression,
    corr + sum over plane pairs of +-2^(i+j) (-2 for XNOR) x the sum over words of
    popcount(broadcast activation word AND/XOR the 8 weight words), so the word sums are a tree of
    independent popcounts rather than one dependent chain. Layers under _SERIAL_DENSE popcounts run
    serially: at batch 1 a 1024 x 1024 layer is ~2000 popcounts, less than a parallel launch.
    """

    from tvm.script import tirx as T

    m, k, words, npad = spec.m, spec.k, spec.words, spec.n_pad
    ap, wb, bip = (1 if spec.bipolar else spec.a_bits), spec.w_bits, spec.bipolar
    nb = npad // LANES
    cob = max(d for d in range(1, cob + 1) if nb % d == 0)
    nbo, full = nb // cob, k // WORD
    tasks = m * nbo
    loop = T.serial if tasks * cob * words * ap * wb < _SERIAL_DENSE else T.parallel

    def packed_full(x, r, wd):
        v = x[r % m, T.ramp(wd * WORD, 1, WORD)]
        bits = T.Select(v > T.broadcast(0, WORD), T.broadcast(T.uint8(1), WORD), T.broadcast(T.uint8(0), WORD)) \
            if bip else T.Cast(f"uint8x{WORD}", (v >> T.broadcast(r // m, WORD)) & T.broadcast(1, WORD))
        q = T.reinterpret("uint64x8", bits) * T.broadcast(T.uint64(_MAGIC), 8)
        return T.reinterpret("uint64", T.Cast("uint8x8", q >> T.broadcast(T.uint64(56), 8)))

    def packed_tail(x, r):
        terms = []
        for kk in range(k - full * WORD):
            v = x[r % m, full * WORD + kk]
            cond = v > 0 if bip else (v >> (r // m)) & 1 != 0
            terms.append(T.Select(cond, T.shift_left(T.uint64(1), T.uint64(kk)), T.uint64(0)))
        return functools.reduce(operator.or_, terms, T.uint64(0))

    def result(xp, wp, corr, p, bb):
        row, blk = p // nbo, p % nbo * cob + bb
        total = corr[T.ramp(blk * LANES, 1, LANES)]
        for i in range(ap):
            for j in range(wb):
                terms = []
                for wd in range(words):
                    xv, wv = T.broadcast(xp[i, row, wd], LANES), wp[blk, j, wd, T.ramp(0, 1, LANES)]
                    terms.append(T.popcount(xv ^ wv if bip else xv & wv))
                total = _add_plane_pair(total, terms, i, j, wb, bip, LANES)
        return total

    def out_at(p, bb):
        return p // nbo, T.ramp((p % nbo * cob + bb) * LANES, 1, LANES)

    @T.prim_func
    def main(x: T.Buffer((m, k), "int32"), wp: T.Buffer((nb, wb, words, LANES), "uint64"),
             corr: T.Buffer((npad,), "int64"), out: T.Buffer((m, npad), "int64")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        xp = T.alloc_buffer((ap, m, words), "uint64")
        for r in T.serial(ap * m):
            for wd in T.serial(full):
                xp[r // m, r % m, wd] = packed_full(x, r, wd)
            for _ in T.serial(words - full):
                xp[r // m, r % m, full] = packed_tail(x, r)
        for p in loop(tasks):
            for bb in T.unroll(cob):
                out[out_at(p, bb)] = result(xp, wp, corr, p, bb)

    return main


@dataclass(frozen=True)
class ConvSchedule:
    """Register blocking of the conv kernel.

    pixels=False (channel vectors): `px` output pixels (along a row) x `cob` blocks of 8 output channels
    x (activation planes x weight planes) int64 accumulators stay in registers while the kernel window
    is reduced; rows x channel blocks run in parallel.
    pixels=True (pixel vectors, `_pixel_conv_func`): each accumulator is 8 consecutive output pixels of
    one channel; a task is `cob` output channels (1, 2, 4 or 8) x `px` pixel vectors of one output row,
    the whole window reduced in registers; stride-1 rows only."""

    px: int = 1
    cob: int = 1
    pixels: bool = False
    split: bool = True  # pixels: one channel word per pass, partial sums kept in the output row
    flat: bool = False  # pixels: vectors run over the flattened output plane (no overlap at row ends)


_ACC_BUDGET = 8  # zmm accumulators per tile (32 registers: accumulators + hoisted weights + operands)
_STACK_BYTES = 1024  # TVM puts local buffers of >= 1 KiB on the heap: LLVM then cannot keep them in registers


_PIXEL_TERMS = 288  # most popcount terms per accumulator expression of the pixel-vector kernel (code size)


def _pixel_ok(spec: ConvSpec, sched: ConvSchedule) -> bool:
    oh, ow = spec.out_hw
    nvec = _ceil(ow, min(LANES, ow))
    planes = (1 if spec.bipolar else spec.a_bits) * spec.w_bits
    # Word passes accumulate into the output row, so a row whose last vector overlaps the previous one
    # must be one task (the overlap is recomputed from corr after the previous vector is complete).
    whole_row = not (sched.split and spec.words > 1 and ow % min(LANES, ow)) or sched.px == nvec
    if sched.flat:  # flat vectors: stride-1 columns and rows, one vector per task, no word passes
        return (spec.strides == (1, 1) and oh * ow >= 2 and spec.w >= 2 and sched.cob in (1, 2, 4, 8)
                and sched.px == 1 and not (sched.split and spec.words > 1)
                and planes * spec.words * spec.kh * spec.kw <= _PIXEL_TERMS)
    return (spec.strides[1] == 1 and ow >= 2 and spec.w >= 2 and sched.cob in (1, 2, 4, 8) and sched.px >= 1
            and nvec % sched.px == 0 and whole_row and planes * spec.words * spec.kh * spec.kw <= _PIXEL_TERMS)


def default_conv_schedule(spec: ConvSpec, fallback: bool = False) -> ConvSchedule:
    """The pixel-vector kernel for stride-1 rows of at most 4 plane pairs (8 output channels per task,
    2 from 4 plane pairs on; one expression per output for 1-bit layers, one channel word per pass
    otherwise; measured on the issue's layers and ResNet-18's: 1-bit layers 1.3-2x faster than the
    channel-vector tile, 2x2-bit about even; more plane pairs spill registers); otherwise the widest
    channel-vector pixel tile dividing the output width whose accumulators fit the register budget
    (`fallback`: the small tile for hosts without AVX-512, 16 vector registers)."""
    planes = (1 if spec.bipolar else spec.a_bits) * spec.w_bits
    ow = spec.out_hw[1]
    split = planes > 1  # one plane pair: the whole window x words in one expression (measured: as fast or faster)
    px = _ceil(ow, min(LANES, ow)) if split and spec.words > 1 and ow % min(LANES, ow) else 1
    flat = not split and spec.strides[0] == 1 and ow % min(LANES, ow) != 0  # rows end mid-vector: go flat
    pixel = ConvSchedule(px=px, cob=8 if planes <= 2 else 2, pixels=True, split=split, flat=flat)
    if not fallback and planes <= 4 and _pixel_ok(spec, pixel):
        return pixel
    budget = 2 if fallback else _ACC_BUDGET
    ow = spec.out_hw[1]
    px = max((d for d in range(1, ow + 1) if ow % d == 0 and d * planes <= budget), default=1)
    return ConvSchedule(px=px, cob=1)


def conv_schedule_ok(spec: ConvSpec, sched: ConvSchedule) -> bool:
    """Whether `sched` is a valid tile for the layer (otherwise conv_primfunc takes the default)."""
    return _conv_schedule_ok(spec, sched)


def _conv_schedule_ok(spec: ConvSpec, sched: ConvSchedule) -> bool:
    if sched.pixels:
        return _pixel_ok(spec, sched)
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


def _pixel_conv_func(spec: ConvSpec, sched: ConvSchedule, x_dtype: str = "int32"):
    """The pixel-vector conv kernel, written directly in TIR (no schedule; same arguments and result as
    `_conv_func`). Two parallel loops:

    - pack: each zero-padded row of bit planes xp[n, plane, g, word, y, x] (pixels innermost, so 8
      consecutive pixels are one vector load) is zeroed, then its interior is filled 8 pixels at a
      time: the 64 channels of a word are 64 vector tests (bit `plane` of the offset code, or x > 0
      for bipolar layers: vptestmq / vpcmpq into a mask) OR-ed as selects of the constant 1 << kk;
    - main: a task is (image, `cob` output channels, output row, `px` vectors of 8 pixels); every
      accumulator is ONE expression: corr + sum over plane pairs of +-2^(i+j) (or -2 for XNOR layers)
      times the sum over words x window of popcount(xp vector AND/XOR broadcast weight word), stored
      straight into the NCHW output row. No local buffers: TVM would allocate them through its
      workspace per task (measured 2-5x slower), while pure expressions stay in zmm registers. A row
      whose width is not a multiple of 8 ends with a vector overlapping the previous one (same
      values written twice), so no masking is needed.
    """

    from tvm.script import tirx as T

    n, c, h, w, kh, kw = spec.n, spec.c, spec.h, spec.w, spec.kh, spec.kw
    (oh, ow), (sh, _), (dh, dw) = spec.out_hw, spec.strides, spec.dilations
    ap, wb, gn, cg, words, copad = (1 if spec.bipolar else spec.a_bits), spec.w_bits, spec.group, spec.cg, \
        spec.words, spec.co_pad
    cpg, pt, pl, bip = spec.co // spec.group, spec.pads[0], spec.pads[1], spec.bipolar
    hp, wpd = h + spec.pads[0] + spec.pads[2], w + spec.pads[1] + spec.pads[3]
    lo, li = min(LANES, ow), min(2 * LANES, w)  # lanes of an output / input (int32) pixel vector
    cot, pv = sched.cob, sched.px
    ntile, nco, nvi = _ceil(ow, lo) // pv, copad // cot, _ceil(w, li)
    rows, tasks, ragged = n * ap * gn * words * hp, n * nco * oh * ntile, cg % WORD != 0
    split = words > 1 and sched.split
    # small layers run serially: a parallel launch costs more than their popcounts (measured ~10 us each)
    loop = T.serial if n * copad * oh * ow // LANES * ap * wb * words * kh * kw < _SERIAL_DENSE else T.parallel
    xz, x1 = T.Cast(x_dtype, 0), T.Cast(x_dtype, 1)
    per_b, per_i, per_g = ap * gn * words * hp, gn * words * hp, words * hp

    def row(q):  # padded row q -> (image, plane, group, word, padded y)
        return q // per_b, q // per_i % ap, q // per_g % gn, q // hp % words, q % hp

    def task(p):  # task p -> (image, first channel, output row, tile)
        return p // (nco * oh * ntile), p // (oh * ntile) % nco * cot, p // ntile % oh, p % ntile

    def x0(t, v):
        return T.min((t * pv + v) * lo, ow - lo)

    def packed(x, q, t):
        b, i, g, wd, _ = row(q)
        xs, yy = T.min(t * li, w - li), q % hp - pt
        one, zero, halves = T.broadcast(T.uint32(1), li), T.broadcast(T.uint32(0), li), []
        for half in range(2):  # 32 channels per uint32 lane: 16 pixels per compare + masked OR
            terms = []
            for kk in range(32):
                ch = wd * WORD + half * 32 + kk
                v = x[b, g * cg + (T.min(ch, cg - 1) if ragged else ch), yy, T.ramp(xs, 1, li)]
                cond = v > T.broadcast(xz, li) if bip else \
                    (v & (T.broadcast(x1, li) << T.broadcast(T.Cast(x_dtype, i), li))) != T.broadcast(xz, li)
                if ragged:
                    cond = cond & T.broadcast(ch < cg, li)
                terms.append(T.Select(cond, one << T.broadcast(T.uint32(kk), li), zero))
            halves.append(T.Cast(f"uint64x{li}", functools.reduce(operator.or_, terms)))
        return halves[0] | (halves[1] << T.broadcast(T.uint64(32), li))

    def plane_sum(xp, wp, p, cc, v, i, j, wds):
        b, co0, y, t = task(p)
        co = co0 + cc
        g = 0 if gn == 1 else T.min(co // cpg, gn - 1)
        terms = []
        for wd in wds:
            for ry in range(kh):
                for rx in range(kw):
                    xv = xp[b, i, g, wd, y * sh + ry * dh, T.ramp(x0(t, v) + rx * dw, 1, lo)]
                    wv = T.broadcast(wp[co // LANES, j, ry, rx, wd, co % LANES], lo)
                    terms.append(T.popcount(xv ^ wv if bip else xv & wv))
        return T.Cast(f"int64x{lo}", functools.reduce(operator.add, terms))

    def result(start, xp, wp, p, cc, v, wds):
        total = start
        for i in range(ap):
            for j in range(wb):
                s = plane_sum(xp, wp, p, cc, v, i, j, wds) << T.broadcast(T.int64(1 if bip else i + j), lo)
                total = total - s if bip or j == wb - 1 else total + s
        return total

    def first(xp, wp, corr, p, cc, v):
        _, co0, y, t = task(p)
        return result(corr[co0 + cc, y, T.ramp(x0(t, v), 1, lo)], xp, wp, p, cc, v, range(1 if split else words))

    def rest(xp, wp, out, p, cc, v, wd):
        return result(out[out_at(p, cc, v)], xp, wp, p, cc, v, [wd])

    def out_at(p, cc, v):
        b, co0, y, t = task(p)
        return b, co0 + cc, y, T.ramp(x0(t, v), 1, lo)

    def xp_row(q, lanes_at):
        b, i, g, wd, yp = row(q)
        return b, i, g, wd, yp, lanes_at

    if sched.flat:
        return _flat_main(locals())

    @T.prim_func
    def main(x: T.Buffer((n, c, h, w), x_dtype), wp: T.Buffer((copad // LANES, wb, kh, kw, words, LANES), "uint64"),
             corr: T.Buffer((copad, oh, ow), "int64"), out: T.Buffer((n, copad, oh, ow), "int64")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        xp = T.alloc_buffer((n, ap, gn, words, hp, wpd), "uint64")
        for q in loop(rows):
            for e in T.vectorized(wpd):
                xp[xp_row(q, e)] = T.uint64(0)
            if q % hp >= pt and q % hp < pt + h:
                for t in T.serial(nvi):
                    xp[xp_row(q, T.ramp(pl + T.min(t * li, w - li), 1, li))] = packed(x, q, t)
        for p in loop(tasks):
            for v in T.unroll(pv):  # vector by vector: an overlapping last vector restarts from corr
                for cc in T.unroll(cot):
                    out[out_at(p, cc, v)] = first(xp, wp, corr, p, cc, v)
                for wd in T.serial(1, words if split else 1):  # one word per pass: few live vectors
                    for cc in T.unroll(cot):
                        out[out_at(p, cc, v)] = rest(xp, wp, out, p, cc, v, wd)

    return main


def _flat_main(k: dict):
    """The pixel-vector kernel with vectors over the flattened output plane (ConvSchedule.flat).

    The packing writes, next to each zero-padded row, kw copies shifted by rx*dilation and cut to the
    output width, so for stride 1 the 8 consecutive flattened outputs f..f+7 read tap (ry, rx) at
    flattened index f + ry*dh*ow of copy rx: one contiguous vector even across a row end. Rows of 14 or
    28 pixels then waste no lanes (only the plane's last vector overlaps); one vector per task, whole
    window x words in one expression per output (no word passes).
    """

    from tvm.script import tirx as T

    n, c, h, w, kh, kw, oh, ow, dh, dw = (k[name] for name in ("n", "c", "h", "w", "kh", "kw", "oh", "ow", "dh", "dw"))
    ap, wb, gn, cg, words, copad, cpg, bip = (k[name] for name in ("ap", "wb", "gn", "cg", "words", "copad", "cpg",
                                                                    "bip"))
    hp, wpd, pt, pl, li, nvi, rows, cot, nco = (k[name] for name in ("hp", "wpd", "pt", "pl", "li", "nvi", "rows",
                                                                      "cot", "nco"))
    loop, packed, xp_row, row = k["loop"], k["packed"], k["xp_row"], k["row"]
    plane = oh * ow
    lf = min(LANES, plane)
    nflat = _ceil(plane, lf)
    tasks = n * nco * nflat

    def task(p):  # task p -> (image, first channel, first flattened output)
        return p // (nco * nflat), p // nflat % nco * cot, T.min(p % nflat * lf, plane - lf)

    def xs_at(q, rx, lanes_at):
        b, i, g, wd, _ = row(q)
        return b, i, g, wd, rx, lanes_at

    def value(xs, wp, corr_f, p, cc):
        b, co0, f0 = task(p)
        co = co0 + cc
        g = 0 if gn == 1 else T.min(co // cpg, gn - 1)
        total = corr_f[co, T.ramp(f0, 1, lf)]
        for i in range(ap):
            for j in range(wb):
                terms = []
                for wd in range(words):
                    for ry in range(kh):
                        for rx in range(kw):
                            xv = xs[b, i, g, wd, rx, T.ramp(f0 + ry * dh * ow, 1, lf)]
                            wv = T.broadcast(wp[co // LANES, j, ry, rx, wd, co % LANES], lf)
                            terms.append(T.popcount(xv ^ wv if bip else xv & wv))
                total = _add_plane_pair(total, terms, i, j, wb, bip, lf)
        return total

    def out_at(p, cc):
        b, co0, f0 = task(p)
        return b, co0 + cc, T.ramp(f0, 1, lf)

    @T.prim_func
    def main(x: T.Buffer((n, c, h, w), k["x_dtype"]),
             wp: T.Buffer((copad // LANES, wb, kh, kw, words, LANES), "uint64"),
             corr: T.Buffer((copad, oh, ow), "int64"), out: T.Buffer((n, copad, oh, ow), "int64")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        corr_f = T.decl_buffer((copad, plane), "int64", data=corr.data)
        out_f = T.decl_buffer((n, copad, plane), "int64", data=out.data)
        xp = T.alloc_buffer((n, ap, gn, words, hp, wpd), "uint64")
        xs = T.alloc_buffer((n, ap, gn, words, kw, hp * ow), "uint64")
        for q in loop(rows):
            for e in T.vectorized(wpd):
                xp[xp_row(q, e)] = T.uint64(0)
            if q % hp >= pt and q % hp < pt + h:
                for t in T.serial(nvi):
                    xp[xp_row(q, T.ramp(pl + T.min(t * li, w - li), 1, li))] = packed(x, q, t)
            for rx in T.unroll(kw):
                for e in T.vectorized(ow):
                    xs[xs_at(q, rx, q % hp * ow + e)] = xp[xp_row(q, e + rx * dw)]
        for p in loop(tasks):
            for cc in T.unroll(cot):
                out_f[out_at(p, cc)] = value(xs, wp, corr_f, p, cc)

    return main


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
        big = spec.words * (1 if spec.bipolar else spec.a_bits) * spec.w_bits > _DENSE_TERMS
        _FUNCS[key] = _schedule_dense(_te_dense_func(spec))["main"] if big else _dense_func(spec)
    return _FUNCS[key]


def conv_primfunc(spec: ConvSpec, sched: ConvSchedule | None = None, fallback: bool = False,
                  x_dtype: str = "int32"):
    """The scheduled conv2d kernel as a `tvm.tir.PrimFunc` (cached by spec; stable interface).

    Arguments, in order (all buffers C-contiguous, NCHW):
      x    int32  [n, c, h, w]                              offset activation codes (as for the dense kernel);
                                                             `x_dtype` "uint8" (codes < 256; pixel-vector
                                                             kernel only) reads a quarter of the bytes
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
    if x_dtype not in ("int32", "uint8") or (x_dtype != "int32" and not sched.pixels):
        raise ValueError(f"conv kernel input {x_dtype}: only int32, or uint8 with the pixel-vector kernel")
    key = ("conv", spec, sched, x_dtype)
    if key not in _FUNCS:
        _FUNCS[key] = _pixel_conv_func(spec, sched, x_dtype) if sched.pixels else \
            _schedule_conv(_conv_func(spec), spec, sched)["main"]
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


def build_conv(spec: ConvSpec, sched: ConvSchedule | None = None, fallback: bool = False, x_dtype: str = "int32"):
    """The compiled conv2d kernel (cached by spec in this process): main(x, wp, corr, out). Hosts without
    FAST_FEATURES (a warning) or fallback=True get the fallback tile built for AVX2."""
    fallback = _use_fallback(fallback)
    return _build(("conv", spec, sched, x_dtype), conv_primfunc(spec, sched, fallback, x_dtype), fallback)
