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

Schedules (tvm.s_tir.Schedule): output channels split by 8 and vectorised innermost, accumulated in
a local buffer written back after the reduction, the outer spatial loops fused and parallel,
`decompose_reduction` last; activation packing is parallel over its outer loop.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["DenseSpec", "ConvSpec", "host_target", "build_dense", "build_conv", "pack_dense_weights",
           "pack_conv_weights", "weight_bits", "conv_correction", "dense_correction", "LANES", "WORD"]

LANES = 8  # output channels per vector (8 x int64 = 512 bits)
WORD = 64  # reduction elements per packed word

_TARGET = None


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


def _conv_func(spec: ConvSpec):
    from tvm import te, tirx

    oh, ow = spec.out_hw
    pt, pl = spec.pads[0], spec.pads[1]
    hp, wpd = spec.h + spec.pads[0] + spec.pads[2], spec.w + spec.pads[1] + spec.pads[3]
    x = te.placeholder((spec.n, spec.c, spec.h, spec.w), "int32", name="x")
    wp = te.placeholder((spec.co_pad // LANES, spec.w_bits, spec.kh, spec.kw, spec.words, LANES), "uint64",
                        name="wp")
    corr = te.placeholder((spec.co_pad, oh, ow), "int64", name="corr")
    a_planes = 1 if spec.bipolar else spec.a_bits
    kk = te.reduce_axis((0, WORD), name="kk")
    cg = spec.cg

    def pack(i, n, g, y, xx, w):
        ci = w * WORD + kk
        yy, xs = y - pt, xx - pl
        inside = tirx.all(ci < cg, yy >= 0, yy < spec.h, xs >= 0, xs < spec.w)
        val = x[n, g * cg + tirx.min(ci, cg - 1), tirx.max(tirx.min(yy, spec.h - 1), 0),
                tirx.max(tirx.min(xs, spec.w - 1), 0)]
        bit = (val > 0).astype("uint64") if spec.bipolar else _bit(val, i)
        bit = tirx.if_then_else(inside, bit, tirx.const(0, "uint64"))
        return te.sum(bit << kk.astype("uint64"), axis=kk)

    xp = te.compute((a_planes, spec.n, spec.group, hp, wpd, spec.words), pack, name="xpack")
    i = te.reduce_axis((0, a_planes), name="i")
    j = te.reduce_axis((0, spec.w_bits), name="j")
    ry = te.reduce_axis((0, spec.kh), name="ry")
    rx = te.reduce_axis((0, spec.kw), name="rx")
    w = te.reduce_axis((0, spec.words), name="w")
    co_per_group = spec.co // spec.group
    sh, sw = spec.strides
    dh, dw = spec.dilations

    def acc(n, co, y, xx):
        g = tirx.min(co // co_per_group, spec.group - 1)
        xw = xp[i, n, g, y * sh + ry * dh, xx * sw + rx * dw, w]
        ww = wp[co // LANES, j, ry, rx, w, co % LANES]
        return te.sum(_term(xw, ww, i, j, spec.w_bits, spec.bipolar), axis=[i, j, ry, rx, w])

    s = te.compute((spec.n, spec.co_pad, oh, ow), acc, name="acc")
    out = te.compute((spec.n, spec.co_pad, oh, ow), lambda n, co, y, xx: s[n, co, y, xx] + corr[co, y, xx],
                     name="out")
    return te.create_prim_func([x, wp, corr, out])


def _schedule_conv(func):
    import tvm

    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("acc")
    n, co, y, xx, i, j, ry, rx, w = sch.get_loops(blk)
    coo, coi = sch.split(co, [None, LANES])
    sch.reorder(n, coo, y, xx, i, j, ry, rx, w, coi)
    cw = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(cw, xx)
    outer = sch.fuse(n, coo, y)
    sch.parallel(outer)
    sch.vectorize(coi)
    sch.vectorize(sch.get_loops(cw)[-1])
    pb = sch.get_sblock("xpack")
    pl = sch.get_loops(pb)
    sch.parallel(sch.fuse(*pl[:4]))
    sch.decompose_reduction(blk, i)
    return sch.mod


_BUILT: dict = {}


def _build(key, make):
    import tvm

    if key not in _BUILT:
        _BUILT[key] = tvm.compile(make(), target=host_target())
    return _BUILT[key]


def build_dense(spec: DenseSpec):
    """The compiled dense kernel (cached by spec in this process): main(x, wp, corr, out)."""
    return _build(spec, lambda: _schedule_dense(_dense_func(spec)))


def build_conv(spec: ConvSpec):
    """The compiled conv2d kernel (cached by spec in this process): main(x, wp, corr, out)."""
    return _build(spec, lambda: _schedule_conv(_conv_func(spec)))
