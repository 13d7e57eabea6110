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
accumulators in registers, the (16 x 4) inner product meant to be tensorised to vpdpbusd on hosts
with AVX-512 VNNI (`Int8Schedule.vnni`). TVM 0.27's tensorize crashes on that intrinsic, so today
(VNNI_TENSORIZE_WORKS = False) every build takes the exact path: int32 multiply-adds vectorised over
16 channels, which LLVM lowers for any x86-64 and which is far slower than VNNI (see
bench/results/cpu.md). Not the pmaddubsw "avx512" intrinsic: it saturates int16, so it is not exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.targets.cpu.kernels import ConvSpec, DenseSpec, host_target

__all__ = ["INT8_LANES", "VNNI_TENSORIZE_WORKS", "Int8Schedule", "int8_dense_primfunc", "int8_conv_primfunc",
           "build_int8_dense", "build_int8_conv", "pack_int8_dense_weights", "pack_int8_conv_weights",
           "int8_correction", "int8_weights_fit", "int8_accumulator_fits", "has_vnni", "default_int8_schedule"]

INT8_LANES = 16  # int32 accumulators per zmm
_K = 4  # products per int32 lane per vpdpbusd
# `Schedule.tensorize` with TVM 0.27's registered "dot_16x4_vnni" intrinsic segfaults (even on a 16x64
# matmul), so the VNNI path stays off until that is fixed; every build uses the exact int32 loop.
VNNI_TENSORIZE_WORKS = False


@dataclass(frozen=True)
class Int8Schedule:
    """`px` output positions x `cob` blocks of 16 channels of accumulators; `vnni` tensorises."""

    px: int = 1
    cob: int = 1
    vnni: bool = True


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
    vnni = VNNI_TENSORIZE_WORKS and has_vnni() and not fallback
    if isinstance(spec, DenseSpec):
        return Int8Schedule(px=1, cob=max(d for d in (1, 2, 4) if (_pad16(spec.n) // INT8_LANES) % d == 0), vnni=vnni)
    ow = spec.out_hw[1]
    px = max(d for d in range(1, min(ow, 8 if vnni else 4) + 1) if ow % d == 0)
    return Int8Schedule(px=px, cob=1, vnni=vnni)


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


def _inner(sch, blk, c, rk, first_reduce, vnni: bool) -> None:
    """Decompose the reduction (last, as TVM requires), then vpdpbusd or a vectorised int32 multiply-add."""
    if not vnni:
        sch.reorder(rk, c)
        sch.unroll(rk)
        sch.vectorize(c)
    init = sch.decompose_reduction(blk, first_reduce)
    sch.vectorize(sch.get_loops(init)[-1])
    if vnni:
        from tvm.s_tir.tensor_intrin.x86 import VNNI_DOT_16x4_INTRIN

        sch.tensorize(c, VNNI_DOT_16x4_INTRIN)


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
    _inner(sch, blk, c, rk, r4, sched.vnni)
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
    _inner(sch, blk, c, rk, ry, sched.vnni)
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
        _FUNCS[key] = _schedule_dense(_dense_func(spec), sched)["main"]
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
        _FUNCS[key] = _schedule_conv(_conv_func(spec), spec, sched)["main"]
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
