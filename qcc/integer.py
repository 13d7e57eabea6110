"""Integer-exact semantics: the specification every backend is tested against bit for bit.

Every quantized tensor is a `QTensor`: int64 codes q with a scale s and zero point z (per tensor, or
per channel as arrays that broadcast against q), worth s * (q - z). A value's annotation is the
quantizer applied to the exact result of its producer. The rules, in order of application:

- Constants: uniform weights become their codes; codebook weights compute through their integer
  centroid table (codes = centroid integers, scale = centroid_scale); bipolar weights are +-1 codes
  times their scale. Unannotated constants stay float (biases are folded into accumulators below).
- Conv / Gemm / MatMul with quantized activation (per-tensor) and quantized weight: the accumulator
  acc = sum (qx - zx)(qw - zw) in int64 (padding contributes exactly zero), plus the bias as
  round_half_even(b / (sx sw)); the result is acc at scale sx*sw (per output channel), zero point 0.
  Bipolar x bipolar is the same sum of +-1 products, i.e. 2 popcount(xnor) - N.
- Relu: max(q, z). Clip with bounds on the input grid: q clipped to z + min/s .. z + max/s (other
  bounds: a float island, so the output quantizer rounds once). MaxPool, Flatten,
  Reshape, Transpose, Identity, Squeeze, Unsqueeze, Pad (with z): on the codes, scale kept.
  Concat: inputs with one scale and zero point (requantize them first otherwise).
- Add / Sub: both operands are brought to the smaller scale (the other by the fixed-point
  multiplier s_i / s, rounding shift half to even), then added exactly. Mul: product of the
  centred codes at scale s1*s2.
- GlobalAveragePool: the exact sum of (q - z) at scale s / (H*W). AveragePool whose windows all
  lie inside the input (k elements each): the exact window sum at scale s / k (else a float island).
- Annotation on an integer result: uniform -> requantize(acc, M0, n) with M = s_in / s_out as
  M0 * 2^-n (qcc.numerics); thresholds -> level = number of integer thresholds <= q
  (qcc.numerics.integer_thresholds); bipolar -> +1 where s(q - z) >= 0 else -1.
  On a float result the annotation quantizes the float (the same rule as fake-quant).
- Crop regions: the cropped rows/columns are set to the real value zero (q = z) and are not
  computed: a node with a cropped output runs on its interior only (qcc.crop.evaluate_interior).
- Any other op (BatchNormalization not folded, Softmax, Sigmoid, ...) or a MAC with a float operand
  runs in float on the dequantized inputs: a float island, part of the spec, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qcc.crop import evaluate_interior
from qcc.errors import QccError
from qcc.interp import FloatSemantics, run
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Bipolar, Codebook, QuantSpec, Region, Thresholds, Uniform
from qcc.numerics import (
    bias_to_accumulator,
    channel_shape,
    fake_quant,
    integer_thresholds,
    quantize,
    quantize_multiplier,
    requantize,
)
from qcc.ops import get_op

__all__ = ["QTensor", "IntegerSemantics", "run_integer", "to_float", "quantize_result", "evaluate_node",
           "constant_value", "exact_contraction"]


@dataclass(frozen=True)
class QTensor:
    """Integer codes and their scale / zero point (arrays broadcasting against `q`)."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray

    def real(self, dtype=np.float32) -> np.ndarray:
        return ((self.q - self.zero_point).astype(np.float64) * self.scale).astype(dtype)

    def centred(self) -> np.ndarray:
        return (self.q - self.zero_point).astype(np.int64)

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zero_point.size == 1


Runtime = QTensor | np.ndarray


def to_float(x: Runtime | None, dtype=np.float32):
    if isinstance(x, QTensor):
        return x.real(dtype)
    return x


def _spec_params(spec: QuantSpec, rank: int) -> tuple[np.ndarray, np.ndarray]:
    axis = getattr(spec, "axis", None)
    scale = np.asarray(getattr(spec, "scale", 1.0), dtype=np.float64)
    zp = np.asarray(getattr(spec, "zero_point", 0), dtype=np.int64)
    if axis is not None and scale.size > 1:
        scale = scale.reshape(channel_shape(rank, axis, scale.size))
    if axis is not None and zp.size > 1:
        zp = zp.reshape(channel_shape(rank, axis, zp.size))
    return scale.reshape(scale.shape if scale.size > 1 else ()), zp.reshape(zp.shape if zp.size > 1 else ())


def constant_value(value: Value) -> Runtime:
    """A constant as the integer semantics sees it (codes for annotated weights, else float)."""
    data, spec = value.data, value.quant
    if isinstance(spec, Codebook):
        # data is on the centroid grid: its codes are the integer centroids themselves
        codes = np.rint(data.astype(np.float64) / spec.centroid_scale).astype(np.int64)
        return QTensor(codes, np.asarray(spec.centroid_scale, np.float64), np.zeros((), np.int64))
    if isinstance(spec, Uniform | Bipolar):
        return _quantize_float(data, spec)  # exact: the data is on the grid
    return data


def _quantize_float(x: np.ndarray, spec: QuantSpec) -> Runtime:
    if isinstance(spec, Uniform):
        scale, zp = _spec_params(spec, x.ndim)
        return QTensor(quantize(x, spec), scale, zp)
    if isinstance(spec, Bipolar):
        scale, _ = _spec_params(spec, x.ndim)
        return QTensor(np.where(x >= 0, 1, -1).astype(np.int64), scale, np.zeros((), np.int64))
    return fake_quant(x, spec)  # thresholds on a float value: the float rule


def _requantize(x: QTensor, spec: QuantSpec) -> Runtime:
    if isinstance(spec, Uniform):
        out_scale, out_zp = _spec_params(spec, x.q.ndim)
        ratio = np.broadcast_to(x.scale / out_scale, np.broadcast_shapes(x.scale.shape, out_scale.shape))
        pairs = [quantize_multiplier(float(m)) for m in ratio.reshape(-1)]
        m0 = np.array([p[0] for p in pairs], np.int64).reshape(ratio.shape)
        n = np.array([p[1] for p in pairs], np.int64).reshape(ratio.shape)
        q = requantize(x.centred(), m0, n, out_zp, spec.qmin, spec.qmax)
        return QTensor(q, out_scale, out_zp)
    if isinstance(spec, Thresholds):
        return _thresholds(x, spec)
    if isinstance(spec, Bipolar):
        scale, _ = _spec_params(spec, x.q.ndim)
        return QTensor(np.where(x.q >= x.zero_point, 1, -1).astype(np.int64), scale, np.zeros((), np.int64))
    raise QccError(f"no integer rule for a {spec.scheme} annotation on an activation")


def quantize_result(result: Runtime, spec: QuantSpec) -> Runtime:
    """Apply an annotation to an exact result (integer: requantize; float: quantize)."""
    return _requantize(result, spec) if isinstance(result, QTensor) else _quantize_float(result, spec)


def _channel_vector(a: np.ndarray, axis: int, channels: int) -> np.ndarray:
    """A per-tensor or per-channel (along `axis`) parameter as a length-`channels` vector."""
    if a.size == 1:
        return np.full(channels, a.reshape(()), dtype=a.dtype)
    return np.moveaxis(np.broadcast_to(a, a.shape), axis, 0).reshape(channels, -1)[:, 0]


def _thresholds(x: QTensor, spec: Thresholds) -> Runtime:
    axis = spec.axis
    channels = x.q.shape[axis]
    rows = len(spec.thresholds)
    scale = _channel_vector(np.asarray(x.scale), axis, channels) if x.scale.ndim else np.full(channels, x.scale)
    zp = _channel_vector(np.asarray(x.zero_point), axis, channels) if x.zero_point.ndim \
        else np.full(channels, x.zero_point)
    if rows == 1:
        table = np.stack([integer_thresholds(spec, scale[c], zp[c])[0] for c in range(channels)])
    else:
        table = integer_thresholds(spec, scale, zp)
    qm = np.moveaxis(x.q, axis, -1)[..., None]  # ..., C, 1
    levels = np.moveaxis((qm >= table).sum(axis=-1), -1, axis).astype(np.int64)
    ratio = spec.out_bias / spec.out_scale
    if float(ratio).is_integer():
        return QTensor(levels, np.asarray(spec.out_scale, np.float64), np.asarray(-int(ratio), np.int64))
    return (spec.out_scale * levels + spec.out_bias).astype(np.float32)


def _crop(x: Runtime, region: Region) -> Runtime:
    if not isinstance(x, QTensor):
        from qcc.numerics import apply_region

        return apply_region(x, region)
    q = np.array(x.q, copy=True)
    zero = np.broadcast_to(x.zero_point, q.shape)
    h, w = q.shape[-2], q.shape[-1]
    mask = np.zeros(q.shape[-2:], dtype=bool)
    mask[: region.top, :] = True
    mask[h - region.bottom:, :] = region.bottom > 0
    mask[:, : region.left] = True
    if region.right:
        mask[:, w - region.right:] = True
    mask = np.broadcast_to(mask, q.shape)
    q[mask] = zero[mask]
    return QTensor(q, x.scale, x.zero_point)


# ------------------------------------------------------------------------------ op rules

_PASS_THROUGH = {"MaxPool", "Flatten", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze"}


def _float_island(node: Node, args: list[Runtime | None]) -> list[Runtime]:
    floats = [to_float(a) for a in args]
    return get_op(node.op, node_name=node.name).evaluate(floats, node.attrs)


def _mac(node: Node, args: list[Runtime | None]) -> list[Runtime] | None:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    if not (isinstance(x, QTensor) and isinstance(w, QTensor) and x.per_tensor):
        return None
    if node.op == "Gemm" and (node.attrs["alpha"] != 1.0 or node.attrs["beta"] != 1.0 or node.attrs["transA"]):
        return None
    wc = w.centred()
    if node.op == "Conv":
        cout = w.q.shape[0]
        w_scale = _channel_vector(np.asarray(w.scale), 0, cout) if w.scale.ndim else np.full(cout, w.scale)
        conv = get_op("Conv")
        acc = exact_contraction(lambda a, b: conv.evaluate([a, b], node.attrs)[0], x.centred(), wc,
                                tuple(range(1, wc.ndim)))
        out_axis = 1
    else:
        trans_b = node.op == "Gemm" and node.attrs["transB"]
        wm = wc.T if trans_b else wc
        n_out = wm.shape[-1]
        w_axis = 0 if trans_b else w.q.ndim - 1  # the weight axis that becomes the output columns
        if w.scale.size > 1 and w.scale.shape[w_axis] != n_out:
            return None  # per-channel along the reduction axis: no integer form
        w_scale = _channel_vector(np.asarray(w.scale), w_axis, n_out) if w.scale.ndim else np.full(n_out, w.scale)
        acc = exact_contraction(np.matmul, x.centred(), wm, (-2,))
        out_axis = acc.ndim - 1
    channels = acc.shape[out_axis]
    acc_scale = float(x.scale.reshape(())) * w_scale  # per output channel, float64
    if bias is not None:
        b = to_float(bias, np.float64).reshape(-1)
        b = np.broadcast_to(b, (channels,)) if b.size in (1, channels) else None
        if b is None:
            return None
        acc = acc + bias_to_accumulator(b, acc_scale).reshape(channel_shape(acc.ndim, out_axis, channels))
    scale = acc_scale.reshape(channel_shape(acc.ndim, out_axis, channels)) if np.ptp(acc_scale) else \
        np.asarray(acc_scale[0])
    return [QTensor(acc, scale, np.zeros((), np.int64))]


_FLOAT64_EXACT = 2**53  # every integer of smaller magnitude, and every sum of them, is exact in float64


def exact_contraction(contract, x: np.ndarray, w: np.ndarray, reduce_axes: tuple[int, ...]) -> np.ndarray:
    """contract(x, w) on integer codes, in float64 (BLAS) when no partial sum can reach 2^53, else int64.

    Why: numpy has no BLAS for int64, so integer convolutions and matmuls ran 10-50x slower than the
    same contraction in float64. Any partial sum is at most max|x| * max over outputs of sum|w| over
    the reduction; below 2^53 every float64 sum is an exact integer whatever the summation order.
    """
    w_abs = np.abs(w).astype(np.float64)
    per_output = w_abs.sum(axis=reduce_axes if w.ndim > 1 else None)
    bound = float(np.abs(x).max(initial=0)) * float(per_output.max(initial=0))
    if bound < _FLOAT64_EXACT:
        return contract(x.astype(np.float64), w.astype(np.float64)).astype(np.int64)
    return np.asarray(contract(x.astype(np.int64), w.astype(np.int64)), np.int64)


def _align(a: QTensor, b: QTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both operands' centred codes on the smaller scale (the larger rescaled by M = s_i / s)."""
    scale = np.minimum(a.scale, b.scale)

    def rescale(x: QTensor) -> np.ndarray:
        ratio = np.broadcast_to(x.scale / scale, scale.shape)
        if np.all(ratio == 1.0):
            return x.centred()
        pairs = [quantize_multiplier(float(m)) for m in ratio.reshape(-1)]
        m0 = np.array([p[0] for p in pairs], np.int64).reshape(ratio.shape)
        n = np.array([p[1] for p in pairs], np.int64).reshape(ratio.shape)
        return requantize(x.centred(), m0, n, 0, -(2**62), 2**62)

    return rescale(a), rescale(b), scale


def _integer_rule(node: Node, args: list[Runtime | None]) -> list[Runtime] | None:
    """The integer result of `node`, or None when the node is a float island."""
    op = node.op
    x = args[0] if args else None
    if op in ("Conv", "Gemm", "MatMul"):
        return _mac(node, args)
    if not isinstance(x, QTensor):
        return None
    if op in _PASS_THROUGH:
        codes = get_op(op).evaluate([x.q.astype(np.float64)], node.attrs)[0]
        if x.scale.size > 1 or x.zero_point.size > 1:
            if op not in ("MaxPool", "Identity"):  # these keep every element on its channel
                return None
            return [QTensor(codes.astype(np.int64), x.scale, x.zero_point)]
        return [QTensor(codes.astype(np.int64), x.scale, x.zero_point)]
    if op == "Relu":
        return [QTensor(np.maximum(x.q, x.zero_point), x.scale, x.zero_point)]
    if op == "Clip":
        with np.errstate(over="ignore", invalid="ignore"):
            lo = np.float64(node.attrs["min"]) / x.scale
            hi = np.float64(node.attrs["max"]) / x.scale
        on_grid = all(np.all(np.isinf(b) | (b == np.rint(b))) for b in (lo, hi))
        if not on_grid:
            return None  # bounds between codes: clip in float, so the output quantizer rounds once
        lo = np.nan_to_num(x.zero_point + lo, neginf=-(2.0**62), posinf=2.0**62).astype(np.int64)
        hi = np.nan_to_num(x.zero_point + hi, neginf=-(2.0**62), posinf=2.0**62).astype(np.int64)
        return [QTensor(np.clip(x.q, lo, hi), x.scale, x.zero_point)]
    if op == "GlobalAveragePool":
        count = int(np.prod(x.q.shape[2:]))
        total = x.centred().sum(axis=tuple(range(2, x.q.ndim)), keepdims=True)
        return [QTensor(total, x.scale / count, np.zeros((), np.int64))]
    if op == "AveragePool" and x.per_tensor:
        pool = get_op(op)
        ones = np.ones((1, 1, *x.q.shape[2:]))
        full = node.attrs.get("ceil_mode", 0) == 0  # ceil_mode windows may hang over the edge
        if not full or not np.all(pool.evaluate([ones], {**node.attrs, "count_include_pad": 1})[0] == 1.0):
            return None  # some window reaches padding: window sizes differ, no common scale
        k = int(np.prod(node.attrs["kernel_shape"]))
        total = np.rint(pool.evaluate([x.centred().astype(np.float64)], node.attrs)[0] * k).astype(np.int64)
        return [QTensor(total, x.scale / k, np.zeros((), np.int64))]
    if op in ("Add", "Sub", "Mul"):
        y = args[1]
        if not isinstance(y, QTensor):
            return None
        if op == "Mul":
            return [QTensor(x.centred() * y.centred(), x.scale * y.scale, np.zeros((), np.int64))]
        a, b, scale = _align(x, y)
        return [QTensor(a + b if op == "Add" else a - b, scale, np.zeros((), np.int64))]
    if op == "Concat":
        ys = [a for a in args if a is not None]
        if not all(isinstance(a, QTensor) and a.per_tensor for a in ys):
            return None
        if len({(float(a.scale), int(a.zero_point)) for a in ys}) != 1:
            return None
        return [QTensor(np.concatenate([a.q for a in ys], axis=node.attrs["axis"]), x.scale, x.zero_point)]
    if op == "Pad" and x.per_tensor and node.attrs.get("mode", "constant") == "constant":
        codes = get_op(op).evaluate([x.centred().astype(np.float64)], node.attrs)[0]
        return [QTensor(codes.astype(np.int64) + x.zero_point, x.scale, x.zero_point)]
    return None


def evaluate_node(node: Node, args: list[Runtime | None]) -> list[Runtime]:
    """The exact result of one node on integer-semantics runtime values (before its annotation)."""
    result = _integer_rule(node, args)
    return result if result is not None else _float_island(node, args)


class IntegerSemantics(FloatSemantics):
    """The integer-exact reference (see the module docstring)."""

    name = "int"
    skip_cropped = True  # crop hook (qcc.crop): a cropped output's region is not computed

    def evaluate(self, node: Node, args: list[Runtime | None]) -> list[Runtime]:
        if not self.skip_cropped:
            return evaluate_node(node, args)
        return evaluate_interior(node, args, evaluate_node)

    def value(self, value: Value, array: Runtime) -> Runtime:
        if value.is_constant:
            return constant_value(value)
        spec = value.quant
        if spec is not None:
            array = quantize_result(array, spec)
        if value.region is not None and not value.region.empty:
            array = _crop(array, value.region)
        return array


def run_integer(graph: Graph, inputs: Mapping[str, np.ndarray], *, keep_all: bool = False) -> dict[str, Runtime]:
    """Integer-exact execution; quantized results stay QTensors (codes, scale, zero point)."""
    return run(graph, inputs, mode=IntegerSemantics(), keep_all=keep_all, dequantize=False)
