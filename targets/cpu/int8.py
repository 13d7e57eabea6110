"""8-bit dense and conv2d kernels in TVM for the layers too wide for bit-serial (first / last layers).

Why: a bit-serial layer costs a*w word operations per 64 MACs, so from about 2x2 bits on an int8
kernel at the VNNI rate (vpdpbusd: 64 u8 x s8 products into 16 int32 per instruction) is faster.

Contract (same as kernels.py, exact):
- activations: offset-unsigned codes x' = q - qmin in [0, 255], passed as int32 and narrowed to uint8
  inside the kernel (a cheap stage that also zero-pads: channels to a multiple of 4, spatial pads);
- weights: centred codes wc = qw - zw in [-128, 127] (`int8_weights_fit`), packed at compile time
  (`pack_int8_dense_weights`, `pack_int8_conv_weights`) in the VNNI layout [out/16, ..., k/4, 16, 4];
- corr: int32, the activation zero-point correction -zx' * sum(valid wc) (`kernels.dense_correction` /
  `kernels.conv_correction` with bipolar=False, narrowed by `int8_correction`);
- out: int32, acc = sum (qx - zx)(qw - zw) exactly (the caller checks the bound
  `int8_accumulator_fits`: 255 * 128 * reduction length < 2^31).

Schedules: 16 output channels per zmm of int32, `px` output pixels x `cob` channel blocks of
accumulators in registers. On hosts with AVX-512 VNNI (`Int8Schedule.vnni`, the default there) the
accumulating block is written directly in TIR: each step is one `llvm.x86.avx512.vpdpbusd.512`
(`T.call_llvm_pure_intrin`, LLVM >= 20 signature <16 x i32>, <64 x i8>, <64 x i8>): 4 activation bytes
broadcast to 16 lanes x the 16 x 4 packed weight bytes, added into 16 int32 lanes without saturation,
so uint8 x int8 is exact. `Schedule.tensorize` is not used: with TVM 0.27 it segfaults inside the
schedule primitive on any 16x4 dot intrinsic (VNNI_TENSORIZE_WORKS = False), while the direct
intrinsic call compiles and runs (VNNI_WORKS = True). Hosts without VNNI (or `fallback=True`) take
the exact portable path: int32 multiply-adds vectorised over 16 channels, far slower. Not the
pmaddubsw "avx512" intrinsic and not vpdpbusds: they saturate, so they are not exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.targets.cpu.kernels import ConvSpec, DenseSpec, host_target

__all__ = ["INT8_LANES", "VNNI_TENSORIZE_WORKS", "VNNI_WORKS", "Int8Schedule", "int8_dense_primfunc",
           "int8_conv_primfunc", "build_int8_dense", "build_int8_conv", "pack_int8_dense_weights",
           "pack_int8_conv_weights", "int8_correction", "int8_weights_fit", "int8_accumulator_fits", "has_vnni",
           "default_int8_schedule"]

INT8_LANES = 16  # int32 accumulators per zmm
_K = 4  # products per int32 lane per vpdpbusd
# `Schedule.tensorize` with TVM 0.27 segfaults inside the primitive (TVM's "dot_16x4_vnni" and a copy
# with the LLVM 22 operand types alike), so it is never used; the VNNI kernels call vpdpbusd directly.
VNNI_TENSORIZE_WORKS = False
VNNI_WORKS = True  # the direct-intrinsic VNNI kernels build, run and are exact (tests/targets/test_cpu_int8.py)
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
_SERIAL_STEPS = 1 << 15  # kernels below this many vpdpbusd run on one thread (a parallel launch costs more)
_MAX_ACC = 14  # zmm accumulators per tile: 14 * 64 B < 1 KiB keeps the tile on the stack (registers)


@dataclass(frozen=True)
class Int8Schedule:
    """`px` output positions x `cob` blocks of 16 channels of accumulators; `vnni` tensorises."""

    px: int = 1
    cob: int = 1
    vnni: bool = True  # the vpdpbusd kernel (only where has_vnni(); otherwise the exact int32 loop)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def has_vnni(target=None) -> bool:
    """Whether the (host) LLVM target has AVX-512 VNNI."""
    from tvm.target import codegen

    target = target if target is not None else host_target()
    try:
        feats = codegen.llvm_get_cpu_features(target)
    except Exception:  # noqa: BLE001 - an LLVM without feature queries: assume no VNNI
        return False
    return "avx512vnni" in feats and "avx512bw" in feats


def int8_weights_fit(wc: np.ndarray) -> bool:
    return bool(wc.size == 0 or (wc.min() >= -128 and wc.max() <= 127))


def int8_accumulator_fits(reduction: int) -> bool:
    return 255 * 128 * reduction < 2**31


def _k_layout(w: np.ndarray) -> np.ndarray:
    """[N, ..., K] int -> [ceil(N/16), ..., ceil(K/4), 16, 4] int8 with zero padding."""
    n, k = w.shape[0], w.shape[-1]
    full = np.zeros((_ceil(n, INT8_LANES) * INT8_LANES, *w.shape[1:-1], _ceil(k, _K) * _K), np.int8)
    full[(slice(0, n),) + (slice(None),) * (w.ndim - 2) + (slice(0, k),)] = w
    full = full.reshape(full.shape[0] // INT8_LANES, INT8_LANES, *w.shape[1:-1], full.shape[-1] // _K, _K)
    return np.ascontiguousarray(np.moveaxis(full, 1, -2))


def pack_int8_dense_weights(wc: np.ndarray) -> np.ndarray:
    """wc [N, K] (centred, int8 range) -> [ceil(N/16), ceil(K/4), 16, 4] int8."""
    return _k_layout(wc.astype(np.int64))


def pack_int8_conv_weights(wc: np.ndarray) -> np.ndarray:
    """wc [CO, C, KH, KW] (group 1) -> [ceil(CO/16), KH, KW, ceil(C/4), 16, 4] int8."""
    return _k_layout(wc.astype(np.int64).transpose(0, 2, 3, 1))


def int8_correction(corr: np.ndarray) -> np.ndarray:
    """A kernels.*_correction array (int64, channels padded to 8) -> int32 padded to 16 channels."""
    n = corr.shape[0]
    out = np.zeros((_ceil(n, INT8_LANES) * INT8_LANES, *corr.shape[1:]), np.int32)
    out[:n] = corr
    return out


def _pad16(n: int) -> int:
    return _ceil(n, INT8_LANES) * INT8_LANES


def default_int8_schedule(spec: DenseSpec | ConvSpec, fallback: bool = False) -> Int8Schedule:
    vnni = VNNI_WORKS and not fallback and has_vnni()
    blocks = _pad16(spec.n if isinstance(spec, DenseSpec) else spec.co) // INT8_LANES
    if isinstance(spec, DenseSpec):
        return Int8Schedule(px=1, cob=max(d for d in ((1, 2, 4, 8) if vnni else (1, 2, 4)) if blocks % d == 0),
                            vnni=vnni)
    ow = spec.out_hw[1]
    px = max(d for d in range(1, min(ow, _MAX_ACC if vnni else 4) + 1) if ow % d == 0)
    cob = max(d for d in (1, 2, 4) if blocks % d == 0 and (not vnni or px * d <= _MAX_ACC))
    return Int8Schedule(px=px, cob=cob if vnni else 1, vnni=vnni)


def _dense_func(spec: DenseSpec):
    from tvm import te, tirx

    k4 = _ceil(spec.k, _K)
    npad = _pad16(spec.n)
    x = te.placeholder((spec.m, spec.k), "int32", name="x")
    wp = te.placeholder((npad // INT8_LANES, k4, INT8_LANES, _K), "int8", name="wp")
    corr = te.placeholder((npad,), "int32", name="corr")
    xq = te.compute((spec.m, k4 * _K), lambda m, k: tirx.if_then_else(
        k < spec.k, x[m, tirx.min(k, spec.k - 1)], 0).astype("uint8"), name="xq")
    r4 = te.reduce_axis((0, k4), name="r4")
    rk = te.reduce_axis((0, _K), name="rk")
    acc = te.compute((spec.m, npad // INT8_LANES, INT8_LANES), lambda m, nb, c: te.sum(
        xq[m, r4 * _K + rk].astype("int32") * wp[nb, r4, c, rk].astype("int32"), axis=[r4, rk]), name="acc")
    out = te.compute((spec.m, npad), lambda m, n: acc[m, n // INT8_LANES, n % INT8_LANES] + corr[n], name="out")
    return te.create_prim_func([x, wp, corr, out])


def _conv_func(spec: ConvSpec):
    from tvm import te, tirx

    oh, ow = spec.out_hw
    c4 = _ceil(spec.c, _K)
    copad = _pad16(spec.co)
    hp, wpd = spec.h + spec.pads[0] + spec.pads[2], spec.w + spec.pads[1] + spec.pads[3]
    x = te.placeholder((spec.n, spec.c, spec.h, spec.w), "int32", name="x")
    wp = te.placeholder((copad // INT8_LANES, spec.kh, spec.kw, c4, INT8_LANES, _K), "int8", name="wp")
    corr = te.placeholder((copad, oh, ow), "int32", name="corr")

    def quant(n, y, xx, ch):
        yy, xs = y - spec.pads[0], xx - spec.pads[1]
        inside = tirx.all(ch < spec.c, yy >= 0, yy < spec.h, xs >= 0, xs < spec.w)
        val = x[n, tirx.min(ch, spec.c - 1), tirx.max(tirx.min(yy, spec.h - 1), 0),
                tirx.max(tirx.min(xs, spec.w - 1), 0)]
        return tirx.if_then_else(inside, val, 0).astype("uint8")

    xq = te.compute((spec.n, hp, wpd, c4 * _K), quant, name="xq")  # NHWC, zero-padded
    ry = te.reduce_axis((0, spec.kh), name="ry")
    rx = te.reduce_axis((0, spec.kw), name="rx")
    r4 = te.reduce_axis((0, c4), name="r4")
    rk = te.reduce_axis((0, _K), name="rk")
    (sh, sw), (dh, dw) = spec.strides, spec.dilations
    acc = te.compute((spec.n, copad // INT8_LANES, oh, ow, INT8_LANES), lambda n, cb, y, xx, c: te.sum(
        xq[n, y * sh + ry * dh, xx * sw + rx * dw, r4 * _K + rk].astype("int32")
        * wp[cb, ry, rx, r4, c, rk].astype("int32"), axis=[ry, rx, r4, rk]), name="acc")
    out = te.compute((spec.n, copad, oh, ow), lambda n, co, y, xx: acc[n, co // INT8_LANES, y, xx, co % INT8_LANES]
                     + corr[co, y, xx], name="out")
    return te.create_prim_func([x, wp, corr, out])


def _inner(sch, blk, c, rk, first_reduce) -> None:
    """Decompose the reduction (last, as TVM requires) and vectorise the int32 multiply-add over channels."""
    sch.reorder(rk, c)
    sch.unroll(rk)
    sch.vectorize(c)
    init = sch.decompose_reduction(blk, first_reduce)
    sch.vectorize(sch.get_loops(init)[-1])


def _lanes(base, stride: int, lanes: int):
    """A ramp of `lanes` indices, or the scalar index for one lane (TIR has no 1-lane ramp)."""
    from tvm import tirx

    return base if lanes == 1 else tirx.Ramp(base, stride, lanes)


def _vnni_dense_func(spec: DenseSpec, sched: Int8Schedule):
    """Dense in TIR with vpdpbusd: per (row, cob blocks of 16 outputs), cob accumulators over k/4 steps."""
    from tvm.script import tirx as T

    m, k, k4, npad, cob = spec.m, spec.k, _ceil(spec.k, _K), _pad16(spec.n), sched.cob
    nb = npad // INT8_LANES
    nbo = nb // cob
    loop = T.serial if m * nb * k4 < _SERIAL_STEPS else T.parallel

    @T.prim_func
    def main(x: T.Buffer((m, k), "int32"), wp: T.Buffer((nb, k4, 16, 4), "int8"),
             corr: T.Buffer((npad,), "int32"), out: T.Buffer((m, npad), "int32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        xq = T.alloc_buffer((m, k4 * 4), "uint8")
        for i in T.serial(m):
            for j in T.serial(k4 * 4):
                xq[i, j] = T.if_then_else(j < k, T.Cast("uint8", x[i, T.min(j, k - 1)]), T.uint8(0))
        for p in loop(m * nbo):
            acc = T.alloc_buffer((cob * 16,), "int32", scope="local")
            for b in T.unroll(cob):
                acc[T.ramp(b * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
            for r in T.serial(k4):
                for b in T.unroll(cob):
                    acc[T.ramp(b * 16, 1, 16)] = T.call_llvm_pure_intrin(
                        "int32x16", _VPDPBUSD, acc[T.ramp(b * 16, 1, 16)],
                        T.reinterpret(T.broadcast(T.reinterpret(xq.vload([p // nbo, r * 4], "uint8x4"), dtype="int32"),
                                                  16), dtype="uint8x64"),
                        wp.vload([p % nbo * cob + b, r, 0, 0], "int8x64"))
            for b in T.unroll(cob):
                out[p // nbo, T.ramp((p % nbo * cob + b) * 16, 1, 16)] = (
                    acc[T.ramp(b * 16, 1, 16)] + corr[T.ramp((p % nbo * cob + b) * 16, 1, 16)])

    return main


def _vnni_conv_func(spec: ConvSpec, sched: Int8Schedule):
    """Conv2d in TIR with vpdpbusd: NHWC uint8 zero-padded input; per (image, channel-block group, row,
    px-pixel tile) px x cob accumulators over the window x c/4 steps; then + corr into NCHW."""
    from tvm.script import tirx as T

    n, c, h, w, kh, kw = spec.n, spec.c, spec.h, spec.w, spec.kh, spec.kw
    (oh, ow), (sh, sw), (dh, dw) = spec.out_hw, spec.strides, spec.dilations
    c4, copad, px, cob = _ceil(c, _K), _pad16(spec.co), sched.px, sched.cob
    nb = copad // INT8_LANES
    nbo = nb // cob
    per_img = nbo * oh
    pt, pl = spec.pads[0], spec.pads[1]
    hp, wpd = h + spec.pads[0] + spec.pads[2], w + spec.pads[1] + spec.pads[3]
    loop = T.serial if n * nb * oh * ow * kh * kw * c4 < _SERIAL_STEPS else T.parallel

    @T.prim_func
    def main(x: T.Buffer((n, c, h, w), "int32"), wp: T.Buffer((nb, kh, kw, c4, 16, 4), "int8"),
             corr: T.Buffer((copad, oh, ow), "int32"), out: T.Buffer((n, copad, oh, ow), "int32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        xq = T.alloc_buffer((n, hp, wpd, c4 * 4), "uint8")
        for q in loop(n * hp):
            for e in T.serial(wpd * c4 * 4):  # zero the padded row, then copy the image row without selects
                xq[q // hp, q % hp, e // (c4 * 4), e % (c4 * 4)] = T.uint8(0)
            if q % hp >= pt and q % hp < pt + h:
                for ch in T.serial(c):
                    for xs in T.serial(w):
                        xq[q // hp, q % hp, xs + pl, ch] = T.Cast("uint8", x[q // hp, ch, q % hp - pt, xs])
        for p in loop(n * nbo * oh):
            for xo in T.serial(ow // px):
                acc = T.alloc_buffer((px * cob * 16,), "int32", scope="local")
                for t in T.unroll(px * cob):
                    acc[T.ramp(t * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                for ry in T.serial(kh):
                    for rx in T.serial(kw):
                        for r in T.serial(c4):
                            for b in T.unroll(cob):
                                for i in T.unroll(px):
                                    acc[T.ramp((i * cob + b) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                                        "int32x16", _VPDPBUSD, acc[T.ramp((i * cob + b) * 16, 1, 16)],
                                        T.reinterpret(T.broadcast(T.reinterpret(xq.vload(
                                            [p // per_img, p % oh * sh + ry * dh, (xo * px + i) * sw + rx * dw, r * 4],
                                            "uint8x4"), dtype="int32"), 16), dtype="uint8x64"),
                                        wp.vload([p // oh % nbo * cob + b, ry, rx, r, 0, 0], "int8x64"))
                for b in T.unroll(cob):
                    for cc in T.unroll(16):
                        out[p // per_img, (p // oh % nbo * cob + b) * 16 + cc, p % oh, _lanes(xo * px, 1, px)] = (
                            acc[_lanes(b * 16 + cc, cob * 16, px)]
                            + corr[(p // oh % nbo * cob + b) * 16 + cc, p % oh, _lanes(xo * px, 1, px)])

    return main


def _schedule_dense(func, sched: Int8Schedule):
    import tvm

    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("acc")
    m, nb, c, r4, rk = sch.get_loops(blk)
    nbo, nbi = sch.split(nb, [None, sched.cob])
    sch.reorder(m, nbo, r4, nbi, c, rk)
    sch.set_scope(blk, 0, "local")
    ob = sch.get_sblock("out")
    sch.reverse_compute_at(ob, nbo)
    sch.vectorize(sch.split(sch.get_loops(ob)[-1], [None, INT8_LANES])[1])
    sch.parallel(sch.fuse(m, nbo))
    sch.unroll(nbi)
    _inner(sch, blk, c, rk, r4)
    xl = sch.get_loops(sch.get_sblock("xq"))
    sch.vectorize(sch.split(xl[-1], [None, 64])[1]) if sch.get(xl[-1]).extent.value % 64 == 0 else None
    return sch.mod


def _schedule_conv(func, spec: ConvSpec, sched: Int8Schedule):
    import tvm

    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("acc")
    n, cb, y, xx, c, ry, rx, r4, rk = sch.get_loops(blk)
    cbo, cbi = sch.split(cb, [None, sched.cob])
    xo, xi = sch.split(xx, [None, sched.px])
    sch.reorder(n, cbo, y, xo, ry, rx, r4, cbi, xi, c, rk)
    sch.set_scope(blk, 0, "local")
    ob = sch.get_sblock("out")
    sch.reverse_compute_at(ob, xo)
    ol = sch.get_loops(ob)
    sch.vectorize(ol[-1])
    sch.parallel(sch.fuse(n, cbo, y))
    sch.unroll(cbi)
    sch.unroll(xi)
    _inner(sch, blk, c, rk, ry)
    ql = sch.get_loops(sch.get_sblock("xq"))
    sch.parallel(sch.fuse(*ql[:2]))
    return sch.mod


_FUNCS: dict = {}
_BUILT: dict = {}


def _valid(spec, sched: Int8Schedule | None, fallback: bool) -> Int8Schedule:
    default = default_int8_schedule(spec, fallback)
    if sched is None:
        return default
    if isinstance(spec, DenseSpec):
        ok = (_pad16(spec.n) // INT8_LANES) % sched.cob == 0
    else:
        ok = spec.out_hw[1] % sched.px == 0 and (_pad16(spec.co) // INT8_LANES) % sched.cob == 0
    vnni = sched.vnni and default.vnni
    return Int8Schedule(sched.px, sched.cob, vnni) if ok else default


def int8_dense_primfunc(spec: DenseSpec, sched: Int8Schedule | None = None, fallback: bool = False):
    """The scheduled int8 dense kernel as a `tvm.tir.PrimFunc` (cached; spec.a_bits / w_bits <= 8).

    Arguments, in order:
      x    int32 [m, k]                          offset activation codes in [0, 255]
      wp   int8  [n16/16, ceil(k/4), 16, 4]      `pack_int8_dense_weights(wc)`
      corr int32 [n16]                           `int8_correction(dense_correction(wc, zx', False))`
      out  int32 [m, n16]                        written: sum (qx - zx)(qw - zw) (n16 = n padded to 16)
    """
    sched = _valid(spec, sched, fallback)
    key = ("dense", spec, sched)
    if key not in _FUNCS:
        _FUNCS[key] = _vnni_dense_func(spec, sched) if sched.vnni else _schedule_dense(_dense_func(spec), sched)["main"]
    return _FUNCS[key]


def int8_conv_primfunc(spec: ConvSpec, sched: Int8Schedule | None = None, fallback: bool = False):
    """The scheduled int8 conv2d kernel (group 1) as a `tvm.tir.PrimFunc` (cached).

    Arguments, in order (NCHW):
      x    int32 [n, c, h, w]                                offset activation codes in [0, 255]
      wp   int8  [co16/16, kh, kw, ceil(c/4), 16, 4]          `pack_int8_conv_weights(wc)`
      corr int32 [co16, oh, ow]                               `int8_correction(conv_correction(..., False, ...))`
      out  int32 [n, co16, oh, ow]                            written: sum (qx - zx)(qw - zw)
    """
    if spec.group != 1:
        from qcc.errors import QccError

        raise QccError(f"int8 cpu kernel: grouped convolution (group={spec.group}) is not supported")
    sched = _valid(spec, sched, fallback)
    key = ("conv", spec, sched)
    if key not in _FUNCS:
        _FUNCS[key] = (_vnni_conv_func(spec, sched) if sched.vnni
                       else _schedule_conv(_conv_func(spec), spec, sched)["main"])
    return _FUNCS[key]


def _build(key, func, target):
    import tvm

    if key not in _BUILT:
        _BUILT[key] = tvm.compile(tvm.IRModule({"main": func}), target=target)
    return _BUILT[key]


def build_int8_dense(spec: DenseSpec, sched: Int8Schedule | None = None, fallback: bool = False, target=None):
    """Compiled int8 dense kernel: main(x, wp, corr, out) (see int8_dense_primfunc)."""
    target = target if target is not None else host_target()
    return _build(("dense", spec, sched, fallback, str(target)), int8_dense_primfunc(spec, sched, fallback), target)


def build_int8_conv(spec: ConvSpec, sched: Int8Schedule | None = None, fallback: bool = False, target=None):
    """Compiled int8 conv2d kernel: main(x, wp, corr, out) (see int8_conv_primfunc)."""
    target = target if target is not None else host_target()
    return _build(("conv", spec, sched, fallback, str(target)), int8_conv_primfunc(spec, sched, fallback), target)
