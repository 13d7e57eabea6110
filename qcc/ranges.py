"""Range analysis: the exact worst-case integer accumulator range of every layer (DESIGN.md §3, §6).

Backends may use accumulators narrower than the reference's int64 only where an analysis proves
that nothing overflows; this module is that analysis. It follows the integer semantics
(qcc.integer) value by value, carrying for every integer tensor an interval per element: a pair of
QTensors (lo, hi) with the tensor's scale and zero point, batch dimensions taken as 1.

- Inputs of a layer: an annotated value may hold any code of its format, whatever produced it:
  uniform [qmin, qmax] (bits, signedness, zero point), bipolar {-1, +1}, thresholds the levels
  [0, T]. Constants are their actual codes (codebook weights their integer centroids). Cropped
  positions hold exactly q = z. Unannotated integer values carry the interval of their producer.
- Conv / Gemm / MatMul with constant weights: max over the input box of sum w (x - z) is reached
  element by element, x at its upper bound where w > 0 and at its lower bound where w < 0, so
      hi = f(x_hi, w+) + f(x_lo, w-) + b,    lo = f(x_lo, w+) + f(x_hi, w-) + b
  with f the layer's own integer rule (qcc.integer.evaluate_node: groups, strides, dilations, and
  padding contributing the zero-point term, i.e. 0) and b the bias at accumulator scale
  (qcc.numerics.bias_to_accumulator). Exact per output element, hence per output channel (the
  extreme over positions; a cropped output counts its computed interior only). Activation-times-
  activation products get the sound, not tight, bound f(|x|max, |w|max).
- Monotone rules run on both ends: pass-through ops, Relu, Clip, Pad, Concat, pools, Add (both
  operands rescaled by the same monotone fixed-point rule as the interpreter); Sub pairs opposite
  ends; Mul takes the extremes of the four corner products. For Add / Sub / Mul the operands are
  taken as independent, so a residual block's bound is sound but may not be reached.
- The requantized output range applies the output's annotation to both ends (requantize and
  thresholds are monotone); `required_bits` is the signed width holding [lo, hi].

`analyze(graph)` gives a `LayerRange` per accumulating node; `accumulator_range(node)` reads the
`ranges` attribute the `range-analysis` pass writes (or computes a layer alone from its inputs'
annotations); `prove_no_overflow(graph, acc_bits)` lists the layers that do not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qcc.errors import QccError
from qcc.integer import QTensor, constant_value, evaluate_node, quantize_result
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Bipolar, QuantSpec, Region, Thresholds, Uniform

__all__ = ["ACCUMULATING_OPS", "ATTR", "Bounds", "LayerRange", "Violation", "required_bits", "analyze",
           "value_bounds", "accumulator_range", "prove_no_overflow", "layer_record"]

ATTR = "ranges"
MAC_OPS = frozenset({"Conv", "Gemm", "MatMul"})
ACCUMULATING_OPS = MAC_OPS | {"Add", "Sub", "Mul", "GlobalAveragePool", "AveragePool"}
_MONOTONE_OPS = frozenset({"MaxPool", "Flatten", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze",
                           "Relu", "Clip", "Pad", "Concat", "GlobalAveragePool", "AveragePool", "Add"})
_CHAIN_OPS = frozenset({"MaxPool", "Flatten", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Relu",
                        "Clip"})


@dataclass(frozen=True)
class Bounds:
    """Per-element integer interval of a tensor: codes lo.q <= q <= hi.q (same scale and zero point)."""

    lo: QTensor
    hi: QTensor

    @classmethod
    def exact(cls, t: QTensor) -> Bounds:
        return cls(t, t)


@dataclass(frozen=True)
class LayerRange:
    """One accumulating layer: its accumulator interval per output channel and its output's range."""

    node: str
    op: str
    lo: np.ndarray  # int64 [channels]
    hi: np.ndarray
    out: tuple[int, int] | None  # requantized output codes [lo, hi] (see _requantized_at)

    @property
    def bits(self) -> int:
        return required_bits(self.lo, self.hi)


@dataclass(frozen=True)
class Violation:
    """A layer whose accumulator does not fit `acc_bits` signed bits."""

    node: str
    op: str
    lo: int
    hi: int
    bits: int
    acc_bits: int

    def message(self) -> str:
        return (f"layer '{self.node}' ({self.op}) needs an accumulator of {self.bits} bits (range [{self.lo}, "
                f"{self.hi}]), more than acc-bits={self.acc_bits}")


def required_bits(lo, hi) -> int:
    """The signed two's-complement width holding every integer in [min(lo), max(hi)] (at least 1)."""
    lo_v = int(np.min(np.asarray(lo))) if np.size(lo) else 0
    hi_v = int(np.max(np.asarray(hi))) if np.size(hi) else 0
    bits = 1
    if hi_v > 0:
        bits = max(bits, hi_v.bit_length() + 1)
    if lo_v < 0:
        bits = max(bits, (-lo_v - 1).bit_length() + 1)
    return bits


# ------------------------------------------------------------------------------ value intervals

def _annotated_range(spec: QuantSpec, result: Bounds | None, shape: tuple[int, ...]) -> Bounds | None:
    """A value's interval after its annotation: every code of the format (any may arrive), with the
    scale / zero point the interpreter gives it; None when the annotated value stays float."""
    source = result.lo if result is not None else np.zeros(shape, np.float32)
    template = quantize_result(source, spec)
    if not isinstance(template, QTensor):
        return None
    if isinstance(spec, Uniform):
        lo, hi = spec.qmin, spec.qmax
    elif isinstance(spec, Bipolar):
        lo, hi = -1, 1
    elif isinstance(spec, Thresholds):
        lo, hi = 0, len(spec.thresholds[0])
    else:
        return None
    full = np.ones(template.q.shape, np.int64)
    return Bounds(QTensor(full * lo, template.scale, template.zero_point),
                  QTensor(full * hi, template.scale, template.zero_point))


def _crop(b: Bounds, region: Region) -> Bounds:
    return Bounds(_crop_tensor(b.lo, region), _crop_tensor(b.hi, region))


def _crop_tensor(t: QTensor, region: Region) -> QTensor:
    q = np.array(t.q, copy=True)
    mask = _region_mask(q.shape, region)
    q[mask] = np.broadcast_to(t.zero_point, q.shape)[mask]
    return QTensor(q, t.scale, t.zero_point)


def _region_mask(shape: tuple[int, ...], region: Region) -> np.ndarray:
    h, w = shape[-2], shape[-1]
    mask = np.zeros((h, w), dtype=bool)
    mask[: region.top, :] = True
    mask[h - region.bottom:, :] = region.bottom > 0
    mask[:, : region.left] = True
    if region.right:
        mask[:, w - region.right:] = True
    return np.broadcast_to(mask, shape)


def _shape(value: Value) -> tuple[int, ...]:
    return value.type.concrete(1)


def _input_bounds(value: Value) -> Bounds | None:
    if value.quant is None:
        return None
    b = _annotated_range(value.quant, None, _shape(value))
    if b is not None and value.region is not None and not value.region.empty:
        b = _crop(b, value.region)
    return b


# ------------------------------------------------------------------------------ op rules

def _eval(node: Node, args: list) -> QTensor | None:
    out = evaluate_node(node, args)[0]
    return out if isinstance(out, QTensor) else None


def _split(w: QTensor) -> tuple[QTensor, QTensor]:
    wc = w.centred()
    zero = np.zeros((), np.int64)
    return QTensor(np.maximum(wc, 0), w.scale, zero), QTensor(np.minimum(wc, 0), w.scale, zero)


def _add(a: QTensor | None, b: QTensor | None) -> QTensor | None:
    if a is None or b is None:
        return None
    return QTensor(a.q + b.q, a.scale, a.zero_point)


def _mac(node: Node, args: list) -> Bounds | None:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    if not isinstance(x, Bounds):
        return None
    if isinstance(w, Bounds):
        return None if isinstance(bias, Bounds) else _mac_activations(node, x, w, bias)
    if not isinstance(w, QTensor):
        return None
    w_pos, w_neg = _split(w)
    b_lo, b_hi = (bias.lo, bias.hi) if isinstance(bias, Bounds) else (bias, bias)
    hi = _add(_eval(node, [x.hi, w_pos, b_hi]), _eval(node, [x.lo, w_neg, None]))
    lo = _add(_eval(node, [x.lo, w_pos, b_lo]), _eval(node, [x.hi, w_neg, None]))
    return None if hi is None or lo is None else Bounds(lo, hi)


def _magnitude(b: Bounds) -> QTensor:
    """|q - z| at most, as codes around the same zero point."""
    m = np.maximum(np.abs(b.lo.centred()), np.abs(b.hi.centred()))
    return QTensor(m + b.lo.zero_point, b.lo.scale, b.lo.zero_point)


def _mac_activations(node: Node, x: Bounds, w: Bounds, bias) -> Bounds | None:
    """Both operands computed at run time: the sound bound f(|x|max, |w|max) around the bias."""
    mx, mw = _magnitude(x), _magnitude(w)
    hi = _eval(node, [mx, mw, None])
    if hi is None:
        return None
    b = _eval(node, [QTensor(np.zeros_like(mx.q) + mx.zero_point, mx.scale, mx.zero_point), mw, bias])
    if b is None:
        return None
    return Bounds(QTensor(b.q - hi.q, hi.scale, hi.zero_point), QTensor(b.q + hi.q, hi.scale, hi.zero_point))


def _corners(node: Node, x: Bounds, y: Bounds) -> Bounds | None:
    products = [_eval(node, [a, b]) for a in (x.lo, x.hi) for b in (y.lo, y.hi)]
    if any(p is None for p in products):
        return None
    stack = np.stack([p.q for p in products])
    first = products[0]
    return Bounds(QTensor(stack.min(axis=0), first.scale, first.zero_point),
                  QTensor(stack.max(axis=0), first.scale, first.zero_point))


def _ends(args: list, end: str):
    return [getattr(a, end) if isinstance(a, Bounds) else a for a in args]


def _rule(node: Node, args: list) -> Bounds | None:
    """The interval of the node's (pre-annotation) integer result, or None for a float result."""
    if any(v is not None and not v.is_constant and a is None for v, a in zip(node.inputs, args)):
        return None  # a float operand: a float island
    if node.op in MAC_OPS:
        return _mac(node, args)
    if not isinstance(args[0] if args else None, Bounds):
        return None
    if node.op in _MONOTONE_OPS:
        lo, hi = _eval(node, _ends(args, "lo")), _eval(node, _ends(args, "hi"))
    elif node.op == "Sub" and len(args) == 2 and isinstance(args[1], Bounds):
        lo, hi = _eval(node, [args[0].lo, args[1].hi]), _eval(node, [args[0].hi, args[1].lo])
    elif node.op == "Mul" and len(args) == 2 and isinstance(args[1], Bounds):
        return _corners(node, args[0], args[1])
    else:
        return None
    return None if lo is None or hi is None else Bounds(lo, hi)


def _channel_axis(node: Node, ndim: int) -> int:
    if node.op in ("Gemm", "MatMul") or ndim < 2:
        return ndim - 1
    return 1


def _per_channel(node: Node, t: np.ndarray, reduce, region: Region | None) -> np.ndarray:
    axis = _channel_axis(node, t.ndim)
    if region is not None and not region.empty and t.ndim >= 3:
        keep = ~_region_mask(t.shape, region)
        t = np.where(keep, t, np.iinfo(np.int64).max if reduce is np.min else np.iinfo(np.int64).min)
    moved = np.moveaxis(t, axis, 0).reshape(t.shape[axis], -1)
    return reduce(moved, axis=1).astype(np.int64)


def _layer(node: Node, result: Bounds, out: tuple[int, int] | None) -> LayerRange:
    region = node.outputs[0].region
    lo = _per_channel(node, result.lo.q, np.min, region)
    hi = _per_channel(node, result.hi.q, np.max, region)
    return LayerRange(node.name, node.op, lo, hi, out)


def _requantized(value: Value, raw: Bounds | None) -> tuple[int, int] | None:
    """The codes an annotated value's quantizer makes of an integer interval (monotone rules)."""
    if raw is None or value.quant is None:
        return None
    lo, hi = quantize_result(raw.lo, value.quant), quantize_result(raw.hi, value.quant)
    if not (isinstance(lo, QTensor) and isinstance(hi, QTensor)):
        return None
    return int(lo.q.min()), int(hi.q.max())


def _requantized_at(value: Value, outs: Mapping[str, tuple[int, int] | None]) -> tuple[int, int] | None:
    """The output range of a layer: at its output, or where a chain of single-use monotone,
    unannotated ops (Relu, MaxPool, Flatten, ...) ends in an annotation."""
    while value.quant is None and len(value.uses) == 1:
        user, _ = value.uses[0]
        if user.op not in _CHAIN_OPS or len(user.outputs) != 1:
            return None
        value = user.outputs[0]
    return outs.get(value.name)


# ------------------------------------------------------------------------------ public API

def value_bounds(graph: Graph) -> tuple[dict[str, Bounds | None], dict[str, LayerRange]]:
    """The interval of every value (None: float) and the record of every accumulating node."""
    env: dict[str, Bounds | None] = {v.name: _input_bounds(v) for v in graph.inputs}
    outs: dict[str, tuple[int, int] | None] = {}
    results: list[tuple[Node, Bounds]] = []
    for node in graph.nodes:
        args = [_operand(v, env) for v in node.inputs]
        result = _rule(node, args)
        if result is not None and node.op in ACCUMULATING_OPS:
            results.append((node, result))
        for i, value in enumerate(node.outputs):
            raw = result if i == 0 else None
            outs[value.name] = _requantized(value, raw)
            env[value.name] = _output_bounds(value, raw)
    layers = {node.name: _layer(node, result, _requantized_at(node.outputs[0], outs)) for node, result in results}
    return env, layers


def _operand(value: Value | None, env: Mapping[str, Bounds | None]):
    if value is None:
        return None
    if value.is_constant:
        return constant_value(value)
    return env.get(value.name)


def _output_bounds(value: Value, result: Bounds | None) -> Bounds | None:
    b = result
    if value.quant is not None:
        b = _annotated_range(value.quant, result, _shape(value))
    if b is not None and value.region is not None and not value.region.empty:
        b = _crop(b, value.region)
    return b


def analyze(graph: Graph) -> dict[str, LayerRange]:
    """Accumulator ranges of every accumulating node computed in integers, by node name (graph order)."""
    return value_bounds(graph)[1]


def layer_record(layer: LayerRange) -> dict:
    """The `ranges` attribute of a layer: lo / hi per output channel, bits, and out if annotated."""
    record = {"bits": layer.bits, "hi": [int(v) for v in layer.hi], "lo": [int(v) for v in layer.lo]}
    if layer.out is not None:
        record["out"] = [int(layer.out[0]), int(layer.out[1])]
    return record


def accumulator_range(node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) int64 arrays per output channel of an accumulating node.

    Read from the node's `ranges` attribute (the range-analysis pass); without it, the node alone is
    analysed from its inputs' annotations (each may hold any code of its format).
    """
    record = node.attrs.get(ATTR)
    if isinstance(record, dict) and "lo" in record and "hi" in record:
        return np.asarray(record["lo"], np.int64), np.asarray(record["hi"], np.int64)
    args = []
    for v in node.inputs:
        if v is not None and not v.is_constant and v.quant is None:
            raise QccError(f"node '{node.name}' ({node.op}): input '{v.name}' has no annotation, so its range "
                           "is unknown alone; run the range-analysis pass on the graph first")
        args.append(None if v is None else constant_value(v) if v.is_constant else _input_bounds(v))
    result = _rule(node, args) if node.op in ACCUMULATING_OPS else None
    if result is None:
        raise QccError(f"node '{node.name}' ({node.op}) is not computed with an integer accumulator")
    layer = _layer(node, result, None)
    return layer.lo, layer.hi


def prove_no_overflow(graph: Graph, acc_bits: int) -> list[Violation]:
    """The layers whose accumulator range does not fit `acc_bits` signed bits (empty: proven safe)."""
    out = []
    for layer in analyze(graph).values():
        if layer.bits > acc_bits:
            out.append(Violation(layer.node, layer.op, int(layer.lo.min()), int(layer.hi.max()), layer.bits,
                                 acc_bits))
    return out
