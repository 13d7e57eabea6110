"""Quantization annotations -> quantizer nodes (the inverse of quant_import.py).

QDQ (`format="qdq"`, runs in onnxruntime):
- a Uniform activation of 8 bits, full range: QuantizeLinear -> DequantizeLinear (int8 when signed,
  uint8 otherwise; per axis from opset 13);
- fewer bits or narrow range, per tensor: Clip to the grid's ends first (clip-then-round equals
  round-then-saturate), which the importer reads back as the narrower grid;
- a Uniform constant: integer initializer -> DequantizeLinear (8 or 32 bits; 16 from opset 21);
  narrower per-tensor grids go as float initializer -> Clip -> QuantizeLinear -> DequantizeLinear.
  Narrower per-axis constants are stored as int8/uint8, exact in value but read back as 8-bit.
- a float bias of a Conv / Gemm that runs as an integer MAC (per-tensor Uniform input, Uniform
  weights): int32 codes round_half_even(b / (sx sw)) (qcc.numerics.bias_to_accumulator, the bias
  the integer semantics adds) -> DequantizeLinear at scale sx sw, the form onnxruntime fuses into
  QLinearConv / QGemm. It imports back as a 32-bit Uniform constant with the same integer
  semantics; the float bias between the codes is not kept.
QONNX (`format="qonnx"`): Quant (any bit width), BipolarQuant and MultiThreshold in the
qonnx.custom_op.general domain.

Naming: the quantized value keeps its name on the last quantizer node's output, so an import gives
back the same value names; the raw tensor keeps the producer's name (or `<name>_prequant` for a
graph output). Codebook constants are written as their float values (exact, the table is not kept);
crop regions have no ONNX form.
"""

from __future__ import annotations

import numpy as np

from qcc.errors import ModelExportError
from qcc.frontend.onnx.exporter import QONNX_DOMAIN, Builder
from qcc.frontend.onnx.quant_import import clip_bounds
from qcc.ir.graph import Node, Value
from qcc.ir.quant import Bipolar, Codebook, QuantSpec, Thresholds, Uniform
from qcc.numerics import bias_to_accumulator, quantize

__all__ = ["wrap_value", "export_constant", "exports_as_quantizer"]

_FULL_TYPES = {(8, True): np.int8, (8, False): np.uint8, (32, True): np.int32}


def _int_type(b: Builder, spec: Uniform) -> type | None:
    """The ONNX integer type holding this grid exactly at full range, if any."""
    if spec.narrow:
        return None
    if spec.bits == 16 and b.opset >= 21:
        return np.int16 if spec.signed else np.uint16
    return _FULL_TYPES.get((spec.bits, spec.signed))


def _check_region(v: Value) -> None:
    if v.region is not None and not v.region.empty:
        raise ModelExportError(f"value '{v.name}' has a crop region {list(v.region.as_tuple())}, which has "
                               "no ONNX form")


def _channel(b: Builder, spec: QuantSpec, v: Value, what: str) -> None:
    if getattr(spec, "axis", None) is not None and b.opset < 13 and b.format == "qdq":
        raise ModelExportError(f"value '{v.name}': per-axis {what} needs opset >= 13")


# ---------------------------------------------------------------------- shared pieces
def _params(b: Builder, spec: Uniform, hint: str, int_type, shape_rank: int | None = None) -> tuple[str, str]:
    """Scale and zero-point initializers: scalars, 1-d per axis (QDQ) or broadcast-shaped (QONNX)."""
    scale = np.asarray(spec.scale, dtype=np.float32)
    zp = np.asarray(spec.zero_point, dtype=int_type)
    if spec.axis is not None and shape_rank is not None:
        shape = [1] * shape_rank
        shape[spec.axis] = -1
        scale = scale.reshape(shape)
        zp = np.broadcast_to(zp.reshape(shape if zp.size > 1 else [1] * shape_rank), scale.shape)
    elif spec.axis is not None and zp.ndim == 0:
        zp = np.full(scale.shape, zp, dtype=int_type)
    return b.const(f"{hint}_scale", scale), b.const(f"{hint}_zero_point", zp)


def _qdq_pair(b: Builder, spec: Uniform, src: str, dst: str, hint: str, final_name: str | None) -> None:
    int_type = np.int8 if spec.signed else np.uint8
    full = _int_type(b, spec)
    if full is not None:
        int_type = full
    scale, zp = _params(b, spec, hint, int_type)
    axis = spec.axis if spec.axis is not None and b.opset >= 13 else None
    q = b.fresh(f"{hint}_quantized")
    b.node("QuantizeLinear", [src, scale, zp], [q], name=b.fresh(f"{hint}/quantize"), axis=axis)
    b.node("DequantizeLinear", [q, scale, zp], [dst], name=final_name or b.fresh(f"{hint}/dequantize"),
           axis=axis)


def _clip_grid(b: Builder, spec: Uniform, src: str, hint: str, dtype) -> str:
    lo, hi = clip_bounds(spec)
    lo_name = b.const(f"{hint}_clip_min", np.asarray(lo, dtype=dtype))
    hi_name = b.const(f"{hint}_clip_max", np.asarray(hi, dtype=dtype))
    out = b.fresh(f"{hint}_clipped")
    b.node("Clip", [src, lo_name, hi_name], [out], name=b.fresh(f"{hint}/clip"))
    return out



# ---------------------------------------------------------------------- activations
def _quantizer(b: Builder, v: Value, spec: QuantSpec, src: str, dst: str, final_name: str | None) -> None:
    """Nodes computing `dst` = spec applied to tensor `src` (the value `v`)."""
    hint = v.name
    if isinstance(spec, Codebook):
        raise ModelExportError(f"value '{v.name}': codebook quantization applies to constants only")
    if b.format == "qonnx":
        _qonnx(b, v, spec, src, dst, hint, final_name)
        return
    if not isinstance(spec, Uniform):
        raise ModelExportError(f"value '{v.name}': {spec.scheme} quantization has no QDQ form; export with "
                               "format='qonnx'")
    _channel(b, spec, v, "quantization")
    if _int_type(b, spec) is not None and spec.bits <= 16:
        _qdq_pair(b, spec, src, dst, hint, final_name)
        return
    if spec.bits > 8 or spec.axis is not None:
        raise ModelExportError(f"value '{v.name}': {spec.bits}-bit {'per-axis ' if spec.axis is not None else ''}"
                               f"{'narrow ' if spec.narrow else ''}uniform quantization has no QDQ form; "
                               "export with format='qonnx'")
    clipped = _clip_grid(b, spec, src, hint, np.dtype(v.type.dtype))
    _qdq_pair(b, spec, clipped, dst, hint, final_name)


def _qonnx(b: Builder, v: Value, spec: QuantSpec, src: str, dst: str, hint: str, final_name: str | None) -> None:
    name = final_name or b.fresh(f"{hint}/quant")
    rank = v.type.rank
    if isinstance(spec, Uniform):
        scale, zp = _params(b, spec, hint, np.float32, rank)
        bits = b.const(f"{hint}_bitwidth", np.asarray(spec.bits, dtype=np.float32))
        b.node("Quant", [src, scale, zp, bits], [dst], name=name, domain=QONNX_DOMAIN, signed=int(spec.signed),
               narrow=int(spec.narrow), rounding_mode="ROUND")
        return
    if isinstance(spec, Bipolar):
        scale = np.asarray(spec.scale, dtype=np.float32)
        if spec.axis is not None:
            shape = [1] * rank
            shape[spec.axis] = -1
            scale = scale.reshape(shape)
        b.node("BipolarQuant", [src, b.const(f"{hint}_scale", scale)], [dst], name=name, domain=QONNX_DOMAIN)
        return
    if isinstance(spec, Thresholds):
        b.node("MultiThreshold", [src, b.const(f"{hint}_thresholds", np.asarray(spec.thresholds, np.float32))],
               [dst], name=name, domain=QONNX_DOMAIN, out_scale=float(spec.out_scale),
               out_bias=float(spec.out_bias), out_dtype=_out_dtype(spec), data_layout=_layout(v, spec))
        return
    raise ModelExportError(f"value '{v.name}': {spec.scheme} quantization has no QONNX form")


def _out_dtype(spec: Thresholds) -> str:
    if spec.out_scale == 1.0 and spec.out_bias == 0.0:
        return f"UINT{spec.bits}"
    if spec.out_scale == 1.0 and spec.out_bias == -(2 ** (spec.bits - 1)):
        return f"INT{spec.bits}"
    return "FLOAT32"


def _layout(v: Value, spec: Thresholds) -> str:
    rank = v.type.rank
    if spec.axis == 1 or rank < 2:
        return "NCHW"
    if rank == 4 and spec.axis == 3:
        return "NHWC"
    raise ModelExportError(f"value '{v.name}': thresholds along axis {spec.axis} of a rank-{rank} tensor have "
                           "no MultiThreshold layout (axis 1, or 3 of 4 as NHWC)")


def wrap_value(b: Builder, v: Value, *, raw: str, node_name: str) -> None:
    """After the raw tensor `raw` of value `v` exists: add its quantizer, set the name readers use."""
    _check_region(v)
    if v.quant is None:
        b.names[id(v)] = raw
        return
    dst = v.name if raw != v.name else b.fresh(f"{v.name}_{'dq' if b.format == 'qdq' else 'q'}")
    _quantizer(b, v, v.quant, raw, dst, None)
    b.names[id(v)] = dst


def exports_as_quantizer(b: Builder, n: Node) -> bool:
    """An Identity whose output is annotated exports as just the quantizer, named after the node."""
    if n.op != "Identity" or n.output.quant is None:
        return False
    v = n.output
    _check_region(v)
    _quantizer(b, v, v.quant, b.ref(n.inputs[0]), v.name, n.name)
    b.names[id(v)] = v.name
    return True


# ---------------------------------------------------------------------- constants
def export_constant(b: Builder, c: Value) -> None:
    _check_region(c)
    b.names[id(c)] = c.name
    spec = c.quant
    data = np.asarray(c.data)
    if spec is None and b.format == "qdq" and _int32_bias(b, c):
        return
    if spec is None or isinstance(spec, Codebook):
        b.initializers.append(_tensor(data, c.name))
        return
    if b.format == "qonnx":
        raw = b.const(f"{c.name}_float", data)
        _qonnx(b, c, spec, raw, c.name, c.name, None)
        return
    if not isinstance(spec, Uniform):
        raise ModelExportError(f"constant '{c.name}': {spec.scheme} quantization has no QDQ form; export with "
                               "format='qonnx'")
    _channel(b, spec, c, "quantization")
    int_type = _int_type(b, spec)
    if int_type is None and spec.axis is None and spec.bits <= 8:
        raw = b.const(f"{c.name}_float", data)
        clipped = _clip_grid(b, spec, raw, c.name, data.dtype)
        _qdq_pair(b, spec, clipped, c.name, c.name, None)
        return
    if int_type is None and spec.bits <= 8:
        int_type = np.int8 if spec.signed else np.uint8  # narrower per-axis grid: exact values, 8-bit type
    if int_type is None:
        raise ModelExportError(f"constant '{c.name}': {spec.bits}-bit uniform quantization has no QDQ form; "
                               "export with format='qonnx'")
    q = quantize(data, spec).astype(int_type)
    scale, zp = _params(b, spec, c.name, int_type)
    raw = b.const(f"{c.name}_quantized", q)
    axis = spec.axis if spec.axis is not None else None
    b.node("DequantizeLinear", [raw, scale, zp], [c.name], name=b.fresh(f"{c.name}/dequantize"), axis=axis)


def _tensor(data: np.ndarray, name: str):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(data, order="C"), name)


# ---------------------------------------------------------------------- biases in accumulator units
_INT32 = np.iinfo(np.int32)


def _accumulator_scale(node: Node, channels: int) -> np.ndarray | None:
    """sx * sw per output channel (float64, as qcc.integer computes it) when `node` runs as an
    integer MAC with its bias in accumulator units: per-tensor Uniform input, Uniform weights."""
    if node.op not in ("Conv", "Gemm") or len(node.inputs) < 3:
        return None
    if node.op == "Gemm" and (node.attrs["alpha"] != 1.0 or node.attrs["beta"] != 1.0 or node.attrs["transA"]):
        return None
    x, w = node.inputs[0], node.inputs[1]
    xs, ws = x.quant if x is not None else None, w.quant if w is not None else None
    if not (isinstance(xs, Uniform) and isinstance(ws, Uniform) and xs.axis is None and w.is_constant):
        return None
    out_axis = 0 if node.op == "Conv" or node.attrs["transB"] else 1
    w_scale = np.asarray(ws.scale, dtype=np.float64).reshape(-1)
    if ws.axis is not None and (ws.axis != out_axis or w_scale.size != channels):
        return None
    return float(xs.scale) * np.broadcast_to(w_scale, (channels,))


def _int32_bias(b: Builder, c: Value) -> bool:
    """A float bias of integer MACs as int32 codes at scale sx*sw -> DequantizeLinear.

    The codes are round_half_even(b / (sx sw)) (qcc.numerics.bias_to_accumulator), the bias the
    integer semantics adds to the accumulator; this is the form onnxruntime fuses into QLinearConv /
    QGemm. Only when every reader agrees on the scale and the codes fit int32; else the float stays.
    """
    data = np.asarray(c.data)
    if data.ndim != 1 or not data.size or data.dtype.kind != "f" or not c.uses or b.graph.is_output(c):
        return False
    scales = []
    for node, index in c.uses:
        acc = _accumulator_scale(node, data.shape[0]) if index == 2 else None
        if acc is None:
            return False
        scales.append(acc)
    if any(not np.array_equal(s, scales[0]) for s in scales[1:]):
        return False
    codes = bias_to_accumulator(data, scales[0])
    if codes.min(initial=0) < _INT32.min or codes.max(initial=0) > _INT32.max:
        return False
    scale = scales[0].astype(np.float32)
    per_channel = bool(np.ptp(scale))
    if per_channel and b.opset < 13:
        return False
    if not per_channel:
        scale = np.asarray(scale[0])
    # the same initializers and node as a 32-bit Uniform constant exports, so re-exports are identical
    scale_name = b.const(f"{c.name}_scale", scale)
    zp_name = b.const(f"{c.name}_zero_point", np.zeros(scale.shape, np.int32))
    raw = b.const(f"{c.name}_quantized", codes.astype(np.int32))
    b.node("DequantizeLinear", [raw, scale_name, zp_name], [c.name], name=b.fresh(f"{c.name}/dequantize"),
           axis=0 if per_channel else None)
    return True
