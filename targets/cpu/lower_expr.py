"""Elementwise chains and reductions of the CPU module as scheduled TIR, exact per qcc.integer.

Why lazy values: between two kernels a quantized graph applies a chain of cheap per-element rules
(channel slice, bias already folded, ReLU on codes, requantization, thresholds, residual alignment,
offset for the next kernel). Writing each to memory would cost more than computing it, so a value
is a `Lazy`: a function from output indices to a TIR expression over its stored inputs (`Leaf`s:
tensors of the module, or per-channel parameter vectors). Composing rules composes the functions;
`Lazy.prim_func` stores the chain once as a single PrimFunc (one loop nest, fused, parallel and
vectorised). Reductions (MaxPool, GlobalAveragePool) read a Lazy input and produce a stored tensor.

Every rule is the integer reference written in TIR (qcc.numerics / qcc.integer):
- input quantization: clip(rint(x / s) + z, qmin, qmax) in float32 (TIR `round` is LLVM nearbyint,
  half to even; no fast-math, so the float32 division is the IEEE one numpy performs);
- requantize: clip(z_out + rounding_rshift((q - z_in) * M0, n), qmin, qmax) in int64, exact while
  |q - z_in| < 2^32 (the module builder checks value bounds and leaves other nodes to the host);
- residual alignment: the same rounding shift without the clip; thresholds: the count of integer
  thresholds <= q; bipolar: +1 where q >= z; dequantize: float32((q - z) as float64 * s).
Per-channel parameters are along axis 1; when all channels agree they become TIR constants.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Leaf", "Lazy", "quantize_input", "offset_codes", "relu", "clip", "requantize", "thresholds",
           "bipolar", "align", "combine", "dequantize", "max_pool", "global_sum", "schedule_elementwise"]

_NAMES = itertools.count()


@dataclass(eq=False)
class Leaf:
    """A stored operand of a chain: a module tensor (`source` a relax expr) or a parameter (ndarray)."""

    source: object
    placeholder: object


@dataclass(eq=False)
class Lazy:
    """An elementwise value not yet stored: `fn(indices)` builds its TIR expression."""

    shape: tuple[int, ...]
    dtype: str
    fn: Callable
    leaves: list[Leaf] = field(default_factory=list)
    bounds: tuple[int, int] = (0, 0)  # inclusive integer range of the values (codes / accumulators)

    @classmethod
    def stored(cls, source, stored_shape, dtype: str, bounds, shape=None) -> Lazy:
        """A module tensor (possibly with padded channels beyond `shape`) as the start of a chain."""
        from tvm import te

        p = te.placeholder(tuple(stored_shape), dtype, name=f"t{next(_NAMES)}")
        return cls(tuple(shape or stored_shape), dtype, lambda idx: p[tuple(idx)], [Leaf(source, p)],
                   (int(bounds[0]), int(bounds[1])))

    def then(self, fn: Callable, dtype: str, bounds, extra: list[Leaf] = ()) -> Lazy:
        """A new chain applying `fn(expr, indices)` after this one."""
        inner = self.fn
        return Lazy(self.shape, dtype, lambda idx: fn(inner(idx), idx), [*self.leaves, *extra],
                    (int(bounds[0]), int(bounds[1])))

    def channel(self, values: np.ndarray, dtype: str) -> tuple[Callable, list[Leaf]]:
        """A per-channel (axis 1) parameter as idx -> expr: a constant when all channels agree."""
        from tvm import te, tirx

        values = np.asarray(values).reshape(-1)
        if values.size == 1 or np.all(values == values[0]):
            c = tirx.const(values[0].item(), dtype)
            return (lambda idx: c), []
        p = te.placeholder((values.size,), dtype, name=f"p{next(_NAMES)}")
        return (lambda idx: p[idx[1]]), [Leaf(values.astype(dtype), p)]

    def prim_func(self):
        """The chain stored once: PrimFunc(*leaves, out), scheduled (fused, parallel, vectorised)."""
        from tvm import te

        leaves = _unique(self.leaves)
        out = te.compute(self.shape, lambda *idx: self.fn(idx), name="out")
        func = te.create_prim_func([*(leaf.placeholder for leaf in leaves), out])
        return schedule_elementwise(func, "out"), leaves


def _unique(leaves: list[Leaf]) -> list[Leaf]:
    seen, out = set(), []
    for leaf in leaves:
        if id(leaf.placeholder) not in seen:
            seen.add(id(leaf.placeholder))
            out.append(leaf)
    return out


def schedule_elementwise(func, block: str):
    """Fuse the block's spatial loops, vectorise by up to 16 and run chunks in parallel."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock(block)
    loops = sch.get_loops(blk)
    total = int(np.prod([int(sch.get(lp).extent) for lp in loops]))
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    lanes = next(v for v in (16, 8, 4, 2, 1) if total % v == 0)
    if lanes > 1 and total >= 64:
        outer, inner = sch.split(fused, [None, lanes])
        sch.vectorize(inner)
        fused = outer
    if total >= 4096:
        sch.parallel(fused)
    return sch.mod["main"]


# ------------------------------------------------------------------------------ elementwise rules

def quantize_input(x: Lazy, scale: float, zero_point: int, qmin: int, qmax: int) -> Lazy:
    """float32 -> int32 codes: clip(rint(x / scale) + zp, qmin, qmax) in float32 (numerics.quantize)."""
    from tvm import tirx

    s = tirx.const(float(np.float32(scale)), "float32")
    z = tirx.const(float(np.float32(zero_point)), "float32")
    lo, hi = tirx.const(float(qmin), "float32"), tirx.const(float(qmax), "float32")

    def fn(v, idx):
        q = tirx.round(v / s) + z
        return tirx.max(tirx.min(q, hi), lo).astype("int32")

    return x.then(fn, "int32", (qmin, qmax))


def offset_codes(x: Lazy, qmin: int, dtype: str = "int32") -> Lazy:
    """Codes q - qmin, the kernels' unsigned operand, as int32 (or uint8 when the caller knows they fit)."""
    from tvm import tirx

    return x.then(lambda v, idx: (v.astype("int64") - tirx.const(qmin, "int64")).astype(dtype), dtype,
                  (x.bounds[0] - qmin, x.bounds[1] - qmin))


def relu(x: Lazy, zero_point: np.ndarray) -> Lazy:
    """max(q, z)."""
    from tvm import tirx

    z, extra = x.channel(zero_point, x.dtype)
    zp = np.asarray(zero_point)
    bounds = (max(x.bounds[0], int(zp.min())), max(x.bounds[1], int(zp.max())))
    return x.then(lambda v, idx: tirx.max(v, z(idx)), x.dtype, bounds, extra)


def clip(x: Lazy, lo: np.ndarray, hi: np.ndarray) -> Lazy:
    """clip(q, lo, hi) per channel."""
    from tvm import tirx

    lo_f, e1 = x.channel(lo, "int64")
    hi_f, e2 = x.channel(hi, "int64")
    bounds = (min(max(x.bounds[0], int(np.min(lo))), int(np.max(hi))),
              max(min(x.bounds[1], int(np.max(hi))), int(np.min(lo))))
    return x.then(lambda v, idx: tirx.max(tirx.min(v.astype("int64"), hi_f(idx)), lo_f(idx)).astype(x.dtype),
                  x.dtype, bounds, [*e1, *e2])


def _rounding_rshift(p, n, any_zero: bool):
    """round_half_even(p / 2^n) for int64 p and n >= 0 (numerics.rounding_rshift)."""
    from tvm import tirx

    one = tirx.const(1, "int64")
    floor = p >> n
    rem = p - (floor << n)
    half = one << tirx.max(n - one, tirx.const(0, "int64"))
    up = tirx.Or(rem > half, tirx.And(rem == half, (floor & one) == one))
    shifted = floor + up.astype("int64")
    return tirx.Select(n > tirx.const(0, "int64"), shifted, p) if any_zero else shifted


def _scaled(x: Lazy, zero_point, m0, n):
    """(idx -> (q - z) * M0 rounding-shifted by n), extra leaves: the exact fixed-point product."""
    z, e1 = x.channel(zero_point, "int64")
    m, e2 = x.channel(m0, "int64")
    s, e3 = x.channel(n, "int64")
    any_zero = bool(np.any(np.asarray(n) == 0))

    def fn(v, idx):
        return _rounding_rshift((v.astype("int64") - z(idx)) * m(idx), s(idx), any_zero)

    return fn, [*e1, *e2, *e3]


def requantize(x: Lazy, z_in, m0, n, z_out, qmin: int, qmax: int) -> Lazy:
    """clip(z_out + rounding_rshift((q - z_in) * M0, n), qmin, qmax) as int32 (numerics.requantize)."""
    from tvm import tirx

    scaled, extra = _scaled(x, z_in, m0, n)
    zo, e4 = x.channel(z_out, "int64")
    lo, hi = tirx.const(qmin, "int64"), tirx.const(qmax, "int64")

    def fn(v, idx):
        return tirx.max(tirx.min(scaled(v, idx) + zo(idx), hi), lo).astype("int32")

    return x.then(fn, "int32", (qmin, qmax), [*extra, *e4])


def thresholds(x: Lazy, table: np.ndarray) -> Lazy:
    """Number of integer thresholds <= q (table [C, T] int64, row per channel along axis 1)."""
    from tvm import te, tirx

    table = np.asarray(table, np.int64)
    rows, count = table.shape
    if rows == 1 or np.all(table == table[:1]):
        consts = [tirx.const(int(t), "int64") for t in table[0]]

        def fn(v, idx):
            q = v.astype("int64")
            return sum(((q >= t).astype("int32") for t in consts), tirx.const(0, "int32"))

        return x.then(fn, "int32", (0, count))
    p = te.placeholder(table.shape, "int64", name=f"p{next(_NAMES)}")

    def fn_rows(v, idx):
        q = v.astype("int64")
        return sum(((q >= p[idx[1], t]).astype("int32") for t in range(count)), tirx.const(0, "int32"))

    return x.then(fn_rows, "int32", (0, count), [Leaf(table, p)])


def bipolar(x: Lazy, zero_point) -> Lazy:
    """+1 where q >= z else -1 (int32)."""
    from tvm import tirx

    z, extra = x.channel(zero_point, "int64")
    one, minus = tirx.const(1, "int32"), tirx.const(-1, "int32")
    return x.then(lambda v, idx: tirx.Select(v.astype("int64") >= z(idx), one, minus), "int32", (-1, 1), extra)


def align(x: Lazy, zero_point, m0=None, n=None, bound: int = 0) -> Lazy:
    """Centred codes (q - z) as int64, rescaled by M0 * 2^-n when given (qcc.integer._align)."""
    if m0 is None:
        z, extra = x.channel(zero_point, "int64")
        return x.then(lambda v, idx: v.astype("int64") - z(idx), "int64", (-bound, bound), extra)
    scaled, extra = _scaled(x, zero_point, m0, n)
    return x.then(scaled, "int64", (-bound, bound), extra)


def combine(a: Lazy, b: Lazy, op: str, bound: int) -> Lazy:
    """a + b, a - b or a * b of two int64 chains of one shape."""
    fa, fb = a.fn, b.fn

    def fn(idx):
        va, vb = fa(idx), fb(idx)
        return va + vb if op == "Add" else (va - vb if op == "Sub" else va * vb)

    return Lazy(a.shape, "int64", fn, [*a.leaves, *b.leaves], (-bound, bound))


def dequantize(x: Lazy, zero_point, scale) -> Lazy:
    """float32((q - z) as float64 * s) (QTensor.real)."""
    z, e1 = x.channel(zero_point, "int64")
    s, e2 = x.channel(np.asarray(scale, np.float64), "float64")

    def fn(v, idx):
        return ((v.astype("int64") - z(idx)).astype("float64") * s(idx)).astype("float32")

    return x.then(fn, "float32", (0, 0), [*e1, *e2])


# ------------------------------------------------------------------------------ reductions

def max_pool(x: Lazy, attrs: dict, out_shape: tuple[int, ...]):
    """MaxPool on codes (windows skip padding). Returns (PrimFunc(*leaves, out), leaves)."""
    from tvm import te, tirx

    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs["strides"]
    dh, dw = attrs.get("dilations", [1, 1])
    pt, pl = attrs["pads"][0], attrs["pads"][1]
    h, w = x.shape[2], x.shape[3]
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    low = tirx.min_value(x.dtype)

    def body(n, c, y, xx):
        yy, xs = y * sh + ry * dh - pt, xx * sw + rx * dw - pl
        inside = tirx.all(yy >= 0, yy < h, xs >= 0, xs < w)
        v = x.fn((n, c, tirx.max(tirx.min(yy, h - 1), 0), tirx.max(tirx.min(xs, w - 1), 0)))
        return te.max(tirx.if_then_else(inside, v, low), axis=[ry, rx])

    return _reduction(x, out_shape, body)


def global_sum(x: Lazy, zero_point):
    """sum over H, W of (q - z) as int64, shape [N, C, 1, 1] (GlobalAveragePool's exact sum)."""
    from tvm import te

    z, extra = x.channel(zero_point, "int64")
    ry, rx = te.reduce_axis((0, x.shape[2]), name="ry"), te.reduce_axis((0, x.shape[3]), name="rx")

    def body(n, c, y, xx):
        return te.sum(x.fn((n, c, ry, rx)).astype("int64") - z((n, c)), axis=[ry, rx])

    src = Lazy(x.shape, x.dtype, x.fn, [*x.leaves, *extra], x.bounds)
    return _reduction(src, (x.shape[0], x.shape[1], 1, 1), body)


def _reduction(x: Lazy, out_shape, body):
    import tvm
    from tvm import te

    leaves = _unique(x.leaves)
    out = te.compute(tuple(out_shape), body, name="red")
    func = te.create_prim_func([*(leaf.placeholder for leaf in leaves), out])
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("red")
    loops = sch.get_loops(blk)
    spatial = loops[:4]
    fused = sch.fuse(*spatial)
    if int(np.prod(out_shape)) >= 1024:
        sch.parallel(fused)
    return sch.mod["main"], leaves
