"""Quantizer nodes -> quantization annotations.

- QuantizeLinear -> DequantizeLinear on an activation: a `Uniform` annotation (bits and signedness
  from the zero point's type, per tensor or per axis). A Clip whose bounds are exactly the ends of a
  narrower grid, feeding the QuantizeLinear, narrows the annotation (that is how the exporter writes
  4-bit or narrow-range uniform quantizers in QDQ form).
- An integer initializer -> DequantizeLinear: a float constant holding the exact dequantized values,
  annotated. A float constant -> QuantizeLinear -> DequantizeLinear likewise (the data is quantized).
- QONNX Quant -> Uniform of that bit width; BipolarQuant -> Bipolar; MultiThreshold with constant
  thresholds -> Thresholds (bits = ceil(log2(T + 1)), or the width out_dtype names).

An activation annotation is first an Identity node whose output carries the spec (`annotate`);
`settle_annotations` then moves it onto the quantized value itself wherever nothing else reads that
value, so other users never see quantization they did not ask for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from qcc.errors import ModelImportError, VerifyError
from qcc.frontend.onnx.importer import ANNOTATION, Const, Context, PendingQ, Sym
from qcc.ir.graph import Graph, Value
from qcc.ir.quant import Bipolar, QuantSpec, Thresholds, Uniform
from qcc.numerics import apply_thresholds, dequantize, fake_quant, quantize
from qcc.ops import has_op

__all__ = ["HANDLERS", "annotate", "settle_annotations", "materialize_quantize", "absorb_clip",
           "INT_TYPES"]

# Integer element type -> (bits, signed) of the uniform grid it holds.
INT_TYPES: dict[str, tuple[int, bool]] = {
    "int8": (8, True), "uint8": (8, False), "int16": (16, True), "uint16": (16, False),
    "int32": (32, True), "int4": (4, True), "uint4": (4, False),
}

Handler = Callable[[Context, onnx.NodeProto, str, dict[str, Any]], None]


# ---------------------------------------------------------------------- annotations
def annotate(cx: Context, value: Value, spec: QuantSpec, *, out: str, name: str) -> Value:
    """An Identity whose output `out` carries `spec`; settled onto `value` later where possible."""
    node = cx.emit("Identity", [value], {}, name=name, outputs=[out])
    node.output.quant = spec
    node.meta[ANNOTATION] = True
    return node.output


def settle_annotations(graph: Graph) -> None:
    """Move each annotation from its Identity onto the quantized value when that value has no other
    reader; a quantized graph output keeps the output's name."""
    for node in graph.nodes:
        if not node.meta.pop(ANNOTATION, False):
            continue
        src, dst = node.inputs[0], node.output
        is_output = graph.is_output(dst)
        if (src.quant is not None or src.region is not None or src.is_constant or len(src.uses) != 1
                or graph.is_output(src) or (is_output and src.producer is None)):
            continue
        name = dst.name
        src.quant = dst.quant
        graph.replace_all_uses(dst, src)
        graph.erase(node)
        if is_output:
            graph.rename_value(src, name)


def _spec(cx: Context, node: onnx.NodeProto, name: str, build: Callable[[], QuantSpec]) -> Any:
    try:
        return build()
    except VerifyError as e:
        raise cx.error(node, name, str(e)) from None


# ---------------------------------------------------------------------- QuantizeLinear / DequantizeLinear
def _scalar_or_tuple(a: np.ndarray, kind: type) -> Any:
    flat = a.reshape(-1)
    if a.size == 1:
        return kind(flat[0])
    return tuple(kind(v) for v in flat)


def _zero_point(zp: np.ndarray) -> int | tuple[int, ...]:
    """Per-axis zero points that are all equal collapse to one (the IR's usual per-channel form)."""
    flat = zp.reshape(-1)
    return int(flat[0]) if flat.size and np.all(flat == flat[0]) else tuple(int(v) for v in flat)


def _qdq_spec(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any], rank: int,
              int_type: str | None = None) -> Uniform:
    """The Uniform grid of a QuantizeLinear / DequantizeLinear node from its scale and zero point."""
    if attrs.get("block_size", 0):
        raise cx.error(node, name, "blocked quantization (block_size) is not supported")
    scale = cx.const(node, name, 1, "the scale")
    zp = cx.const(node, name, 2, "the zero point")
    if scale is None:
        raise cx.error(node, name, "the scale is required")
    if int_type is None:
        if zp is not None:
            int_type = zp.dtype.name
        elif "output_dtype" in attrs and attrs["output_dtype"]:
            int_type = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(attrs["output_dtype"])).name
        else:
            int_type = "uint8"
    if int_type not in INT_TYPES:
        raise cx.error(node, name, f"quantized type {int_type} is not supported "
                                   f"(supported: {', '.join(INT_TYPES)})")
    bits, signed = INT_TYPES[int_type]
    if scale.ndim > 1:
        raise cx.error(node, name, f"scale of shape {list(scale.shape)} (blocked) is not supported")
    axis = None
    if scale.size > 1 or (zp is not None and zp.size > 1):
        a = int(attrs.get("axis", 1))
        if not -rank <= a < rank:
            raise cx.error(node, name, f"axis {a} is out of range for rank {rank}")
        axis = a + rank if a < 0 else a
    zero = _zero_point(zp.astype(np.int64)) if zp is not None else 0
    return _spec(cx, node, name, lambda: Uniform(bits=bits, signed=signed, axis=axis,
                                                 scale=_scalar_or_tuple(scale, float), zero_point=zero))


def _rank(cx: Context, input_name: str) -> int:
    e = cx.entry(input_name)
    if isinstance(e, Value):
        return e.type.rank
    if isinstance(e, Const | Sym):
        return e.array.ndim
    if isinstance(e, PendingQ):
        return _rank(cx, e.source)
    return 0


def _quantize_linear(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    src = node.input[0]
    spec = cx.narrowed.get(src) or _qdq_spec(cx, node, name, attrs, _rank(cx, src))
    if isinstance(cx.entry(src), Sym):
        raise cx.error(node, name, f"input '{src}' is a symbolic shape, not a tensor")
    zp = node.input[2] if len(node.input) > 2 else ""
    cx.bind(node.output[0], PendingQ(src, node.input[1], zp, spec, node))


def materialize_quantize(cx: Context, pending: PendingQ) -> Value:
    """A QuantizeLinear output read by something other than its DequantizeLinear: an int constant
    (constant input) or an IR QuantizeLinear node."""
    if pending.value is not None:
        return pending.value
    node, out = pending.node, pending.node.output[0]
    name = cx.node_names_of(node)
    src = cx.entry(pending.source)
    dtype = _int_dtype(pending.spec)
    if isinstance(src, Const):
        q = quantize(src.array, pending.spec).astype(dtype)
        pending.value = cx.graph.add_constant(cx.graph.fresh_name(out), q)
        return pending.value
    if not has_op("QuantizeLinear"):
        raise cx.unsupported(node, name)
    ins = [cx.value(pending.source), cx.value(pending.scale)]
    if pending.zero_point:
        ins.append(cx.value(pending.zero_point))
    axis = pending.spec.axis if pending.spec.axis is not None else 1
    pending.value = cx.emit("QuantizeLinear", ins, {"axis": axis}, name=name, outputs=[out]).output
    return pending.value


def _int_dtype(spec: Uniform) -> np.dtype:
    for type_name, (bits, signed) in INT_TYPES.items():
        if bits >= spec.bits and signed == spec.signed and type_name not in ("int4", "uint4"):
            return np.dtype(type_name)
    return np.dtype(np.int64)


def _same_params(pending: PendingQ, spec: Uniform) -> bool:
    base = pending.spec
    return (np.array_equal(np.asarray(base.scale), np.asarray(spec.scale))
            and np.array_equal(np.asarray(base.zero_point), np.asarray(spec.zero_point))
            and base.axis == spec.axis)


def _dequantize_linear(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    src, out = node.input[0], node.output[0]
    e = cx.entry(src)
    scale = cx.const(node, name, 1, "the scale")
    if isinstance(e, PendingQ):
        spec = _qdq_spec(cx, node, name, attrs, _rank(cx, e.source), _int_dtype(e.spec).name)
        if _same_params(e, spec):
            if e.dequantized is None:  # the first DequantizeLinear of this QuantizeLinear
                _bind_quantized(cx, e.source, e.spec, out=out, name=name, dtype=scale.dtype)
                e.dequantized = cx.entry(out)
            cx.bind(out, e.dequantized)
            return
    elif isinstance(e, Const) and e.array.dtype.name in INT_TYPES:
        spec = _qdq_spec(cx, node, name, attrs, e.array.ndim, e.array.dtype.name)
        _check_channels(spec, e.array.shape, name)
        data = dequantize(e.array.astype(np.int64), spec, dtype=scale.dtype)
        cx.bind(out, Const(data, quant=spec))
        return
    if not has_op("DequantizeLinear"):
        raise cx.unsupported(node, name)
    axis = int(attrs.get("axis", 1))
    cx.emit("DequantizeLinear", cx.values(node), {"axis": axis}, name=name, outputs=[out])


def _bind_quantized(cx: Context, src: str, spec: QuantSpec, *, out: str, name: str, dtype=None) -> None:
    """The output of a quantizer on `src`: an annotated constant, or an annotated activation."""
    e = cx.entry(src)
    _check_channels(spec, e.array.shape if isinstance(e, Const) else cx.value(src).type.shape, name)
    if isinstance(e, Const):
        data = np.asarray(e.array, dtype=dtype or np.float32)
        cx.bind(out, Const(fake_quant(data, spec).astype(data.dtype), quant=spec))
        return
    annotate(cx, cx.value(src), spec, out=out, name=name)


def _check_channels(spec: QuantSpec, shape: tuple, name: str) -> None:
    """Per-axis parameters must match the size of the quantized tensor's axis."""
    axis, n = getattr(spec, "axis", None), spec.channels
    if axis is None or n is None or n == 1 or axis >= len(shape) or not isinstance(shape[axis], int):
        return
    if n != shape[axis]:
        raise ModelImportError(f"node '{name}': {n} per-axis quantization parameters for axis {axis} "
                               f"of size {shape[axis]}")


# ---------------------------------------------------------------------- Clip folded into a quantizer
def absorb_clip(cx: Context, node: onnx.NodeProto, lo: float, hi: float) -> bool:
    """A Clip feeding only a per-tensor QuantizeLinear with bounds on that grid narrows the grid."""
    out = node.output[0]
    users = cx.users.get(out, [])
    if cx.consumers[out] != 1 or len(users) != 1 or not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    q = users[0]
    if q.op_type != "QuantizeLinear" or not cx.is_default_domain(q) or q.input[0] != out:
        return False
    if isinstance(cx.entry(node.input[0]), Sym):
        return False
    for i in (1, 2):
        if i < len(q.input) and q.input[i] and not isinstance(cx.entry(q.input[i]), Const):
            return False
    from qcc.frontend.onnx.convert import parse_attrs

    try:
        base = _qdq_spec(cx, q, cx.node_names_of(q), parse_attrs(cx, q, q.name), _rank(cx, node.input[0]))
    except Exception:
        return False
    spec = _narrow(base, lo, hi)
    if spec is None:
        return False
    cx.narrowed[out] = spec
    cx.bind(out, cx.entry(node.input[0]))
    return True


def clip_bounds(spec: Uniform) -> tuple[float, float]:
    """Float32 ends of a per-tensor grid, computed exactly as the exporter writes them."""
    s, z = float(spec.scale), int(spec.zero_point)
    return float(np.float32((spec.qmin - z) * s)), float(np.float32((spec.qmax - z) * s))


def _narrow(base: Uniform, lo: float, hi: float) -> Uniform | None:
    if base.axis is not None:
        return None
    for bits in range(1, base.bits + 1):
        for signed in (base.signed, not base.signed):
            for narrow in (False, True):
                try:
                    cand = Uniform(bits=bits, signed=signed, scale=base.scale, zero_point=base.zero_point,
                                   narrow=narrow)
                except VerifyError:
                    continue
                if cand.qmin < base.qmin or cand.qmax > base.qmax:
                    continue
                if clip_bounds(cand) == (float(np.float32(lo)), float(np.float32(hi))):
                    return cand
    return None


# ---------------------------------------------------------------------- QONNX
def _per_channel(cx: Context, node: onnx.NodeProto, name: str, rank: int,
                 arrays: dict[str, np.ndarray]) -> tuple[int | None, dict[str, np.ndarray]]:
    """Broadcastable QONNX parameters -> (channel axis or None, flat per-channel values)."""
    axis = None
    for what, a in arrays.items():
        if a.size == 1:
            continue
        pad = rank - a.ndim
        big = [i for i, d in enumerate(a.shape) if d != 1]
        if pad < 0 or len(big) != 1:
            raise cx.error(node, name, f"{what} of shape {list(a.shape)} is neither per tensor nor per "
                                       "channel")
        if axis is not None and axis != pad + big[0]:
            raise cx.error(node, name, "scale and zero point vary along different axes")
        axis = pad + big[0]
    return axis, {k: a.reshape(-1) for k, a in arrays.items()}


def _quant(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    unknown = sorted(set(attrs) - {"signed", "narrow", "rounding_mode"})
    if unknown:
        raise cx.error(node, name, f"attribute '{unknown[0]}' is not supported")
    mode = attrs.get("rounding_mode", "ROUND")
    if mode != "ROUND":
        raise cx.error(node, name, f"rounding_mode {mode} is not supported (only ROUND, half to even)")
    scale = cx.const(node, name, 1, "the scale")
    zeropt = cx.const(node, name, 2, "the zero point")
    bitwidth = cx.const(node, name, 3, "the bit width")
    if scale is None or zeropt is None or bitwidth is None:
        raise cx.error(node, name, "Quant needs inputs x, scale, zeropt and bitwidth")
    bits_f = float(bitwidth.reshape(-1)[0])
    if bitwidth.size != 1 or not bits_f.is_integer():
        raise cx.error(node, name, f"bit width {bitwidth.reshape(-1).tolist()} is not one integer")
    if np.any(zeropt != np.round(zeropt)):
        raise cx.error(node, name, "non-integer zero points are not supported")
    signed, narrow = bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0))
    if narrow and not signed:
        raise cx.error(node, name, "unsigned narrow-range quantization is not supported")
    axis, flat = _per_channel(cx, node, name, _rank(cx, node.input[0]), {"scale": scale, "zero point": zeropt})
    sc = tuple(float(v) for v in flat["scale"]) if axis is not None and scale.size > 1 else float(flat["scale"][0])
    zp = _zero_point(flat["zero point"].astype(np.int64))
    spec = _spec(cx, node, name, lambda: Uniform(bits=int(bits_f), signed=signed, narrow=narrow, axis=axis,
                                                 scale=sc, zero_point=zp))
    _bind_quantized(cx, node.input[0], spec, out=node.output[0], name=name)


def _bipolar_quant(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    if attrs:
        raise cx.error(node, name, f"attribute '{sorted(attrs)[0]}' is not supported")
    scale = cx.const(node, name, 1, "the scale")
    if scale is None:
        raise cx.error(node, name, "BipolarQuant needs inputs x and scale")
    axis, flat = _per_channel(cx, node, name, _rank(cx, node.input[0]), {"scale": scale})
    sc = tuple(float(v) for v in flat["scale"]) if axis is not None else float(flat["scale"][0])
    spec = _spec(cx, node, name, lambda: Bipolar(scale=sc, axis=axis))
    _bind_quantized(cx, node.input[0], spec, out=node.output[0], name=name)


_DTYPE_BITS = re.compile(r"^U?INT(\d+)$")


def _threshold_axis(layout: str, rank: int) -> int:
    return rank - 1 if layout == "NHWC" and rank > 2 else 1


def _multi_threshold(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    unknown = sorted(set(attrs) - {"out_scale", "out_bias", "out_dtype", "data_layout"})
    if unknown:
        raise cx.error(node, name, f"attribute '{unknown[0]}' is not supported")
    thr = cx.array(node.input[1]) if len(node.input) > 1 else None
    if thr is None or thr.dtype == object:
        if not has_op("MultiThreshold"):
            raise cx.unsupported(node, name)
        cx.emit("MultiThreshold", cx.values(node), attrs, name=name, outputs=[node.output[0]])
        return
    if thr.ndim != 2:
        raise cx.error(node, name, f"thresholds of shape {list(thr.shape)} are not [channels, T]")
    rank = _rank(cx, node.input[0])
    count = thr.shape[1]
    bits = max(1, math.ceil(math.log2(count + 1)))
    m = _DTYPE_BITS.match(str(attrs.get("out_dtype", "")))
    if m and int(m.group(1)) >= bits:
        bits = int(m.group(1))
    rows = tuple(tuple(float(v) for v in row) for row in thr.astype(np.float64))
    spec = _spec(cx, node, name, lambda: Thresholds(
        bits=bits, thresholds=rows, out_scale=float(attrs.get("out_scale", 1.0)),
        out_bias=float(attrs.get("out_bias", 0.0)),
        axis=_threshold_axis(str(attrs.get("data_layout", "NCHW")), rank)))
    src = cx.entry(node.input[0])
    if isinstance(src, Const):
        cx.bind(node.output[0], Const(apply_thresholds(src.array.astype(np.float32), spec)))
        return
    annotate(cx, cx.value(node.input[0]), spec, out=node.output[0], name=name)


HANDLERS: dict[str, Handler] = {
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
    "Quant": _quant,
    "BipolarQuant": _bipolar_quant,
    "MultiThreshold": _multi_threshold,
}
