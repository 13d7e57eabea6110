"""Quantization ops: QuantizeLinear, DequantizeLinear (ONNX QDQ) and MultiThreshold (QONNX).

QuantizeLinear: y = saturate(round_half_even(x / scale) + zero_point), saturated to the range of the
zero point's dtype (uint8 when absent). The division is done in the input's float type, not in
float64: onnxruntime divides in float32, and a float64 quotient can land on the other side of a .5
tie, so only this order matches it bit for bit.
DequantizeLinear: y = (x - zero_point) * scale, the difference taken exactly in integers.
Both are per-tensor (scalar or 1-element scale) or per-axis (1-d scale along `axis`).

MultiThreshold: level = number of thresholds <= x, per channel (axis 1 for NCHW, the last axis for
NHWC), y = out_scale * level + out_bias. `thresholds` is [C, T], or [1, T] shared by all channels.
The output keeps the input's float type; out_dtype only names the integer format of the levels.
"""

from __future__ import annotations

import numpy as np

from qcc.errors import ShapeError
from qcc.ir.types import TensorType
from qcc.numerics import channel_shape, quantize_affine
from qcc.ops._shapes import norm_axis
from qcc.ops.registry import AttrSpec, OpDef, register

__all__: list[str] = []

_QUANT_DTYPES = ("int8", "uint8", "int16", "uint16")
_DEQUANT_DTYPES = (*_QUANT_DTYPES, "int32")


def _check_params(x: TensorType, scale: TensorType, zero_point: TensorType | None, axis: int) -> None:
    """Scale is a scalar / 1-element vector (per tensor) or a vector along `axis`; zero point matches."""
    if not scale.dtype.startswith("float"):
        raise ShapeError(f"scale must be a float tensor, got {scale.dtype}")
    if scale.rank > 1:
        raise ShapeError(f"scale must be a scalar or 1-d, got shape {list(scale.shape)}")
    if zero_point is not None and zero_point.shape != scale.shape:
        raise ShapeError(f"zero_point shape {list(zero_point.shape)} differs from scale shape "
                         f"{list(scale.shape)}")
    if scale.rank == 0 or scale.shape[0] == 1:
        return
    a = norm_axis(axis, x.rank)
    n, c = scale.shape[0], x.shape[a]
    if isinstance(n, int) and isinstance(c, int) and n != c:
        raise ShapeError(f"per-axis scale has {n} entries but input axis {a} has {c}")


def _param(p: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A scale or zero point shaped to broadcast against a rank-`rank` input."""
    if p.ndim == 0 or p.size == 1:
        return p.reshape(())
    return p.reshape(channel_shape(rank, norm_axis(axis, rank), p.size))


def _quantize_infer(in_types, attrs):
    x, scale = in_types[0], in_types[1]
    zp = in_types[2] if len(in_types) > 2 else None
    if not x.dtype.startswith("float"):
        raise ShapeError(f"QuantizeLinear needs a float input, got {x.dtype}")
    out_dtype = zp.dtype if zp is not None else "uint8"
    if out_dtype not in _QUANT_DTYPES:
        raise ShapeError(f"zero_point dtype {out_dtype} is not one of {', '.join(_QUANT_DTYPES)}")
    _check_params(x, scale, zp, attrs["axis"])
    return [TensorType(x.shape, out_dtype)]


def _quantize_eval(args, attrs):
    x, scale = args[0], args[1]
    zp = args[2] if len(args) > 2 and args[2] is not None else np.zeros((), np.uint8)
    s = _param(scale, x.ndim, attrs["axis"])
    z = _param(zp, x.ndim, attrs["axis"])
    info = np.iinfo(zp.dtype)
    return [quantize_affine(x, s, z, int(info.min), int(info.max)).astype(zp.dtype)]


register(OpDef(
    name="QuantizeLinear",
    inputs=("X", "scale", "zero_point?"),
    attrs={"axis": AttrSpec("int", 1)},
    infer=_quantize_infer,
    evaluate=_quantize_eval,
    doc="Y = saturate(round_half_even(X / scale) + zero_point) in the zero point's integer type.",
))


def _dequantize_infer(in_types, attrs):
    x, scale = in_types[0], in_types[1]
    zp = in_types[2] if len(in_types) > 2 else None
    if x.dtype not in _DEQUANT_DTYPES:
        raise ShapeError(f"DequantizeLinear input dtype {x.dtype} is not one of {', '.join(_DEQUANT_DTYPES)}")
    if zp is not None and zp.dtype != x.dtype:
        raise ShapeError(f"zero_point dtype {zp.dtype} differs from the input dtype {x.dtype}")
    _check_params(x, scale, zp, attrs["axis"])
    return [TensorType(x.shape, scale.dtype)]


def _dequantize_eval(args, attrs):
    x, scale = args[0], args[1]
    zp = args[2] if len(args) > 2 and args[2] is not None else np.zeros((), np.int64)
    s = _param(scale, x.ndim, attrs["axis"])
    z = _param(zp, x.ndim, attrs["axis"]).astype(np.int64)
    return [(x.astype(np.int64) - z).astype(scale.dtype) * s]


register(OpDef(
    name="DequantizeLinear",
    inputs=("X", "scale", "zero_point?"),
    attrs={"axis": AttrSpec("int", 1)},
    infer=_dequantize_infer,
    evaluate=_dequantize_eval,
    doc="Y = (X - zero_point) * scale, per tensor or per axis.",
))


_LAYOUT_AXIS = {"NCHW": 1, "NHWC": -1}


def _threshold_infer(in_types, attrs):
    x, t = in_types[0], in_types[1]
    layout = attrs["data_layout"]
    if layout not in _LAYOUT_AXIS:
        raise ShapeError(f"data_layout '{layout}' is not one of {', '.join(_LAYOUT_AXIS)}")
    if x.rank < 2:
        raise ShapeError(f"MultiThreshold needs an input of rank >= 2, got rank {x.rank}")
    if not x.dtype.startswith("float") or not t.dtype.startswith("float"):
        raise ShapeError(f"MultiThreshold needs float input and thresholds, got {x.dtype} and {t.dtype}")
    if t.rank != 2:
        raise ShapeError(f"thresholds must be 2-d [channels, steps], got shape {list(t.shape)}")
    rows, channels = t.shape[0], x.shape[_LAYOUT_AXIS[layout]]
    if isinstance(rows, int) and isinstance(channels, int) and rows not in (1, channels):
        raise ShapeError(f"thresholds have {rows} rows but the input has {channels} channels ({layout})")
    return [x]


def _threshold_eval(args, attrs):
    x, t = args[0], args[1]
    axis = _LAYOUT_AXIS[attrs["data_layout"]]
    xm = np.moveaxis(x.astype(np.float64), axis, -1)[..., None]  # ..., C, 1
    levels = (xm >= t.astype(np.float64)).sum(axis=-1)  # against [C or 1, T]
    y = attrs["out_scale"] * levels + attrs["out_bias"]
    return [np.moveaxis(y, -1, axis).astype(x.dtype)]


register(OpDef(
    name="MultiThreshold",
    inputs=("X", "thresholds"),
    attrs={
        "out_scale": AttrSpec("float", 1.0),
        "out_bias": AttrSpec("float", 0.0),
        "out_dtype": AttrSpec("str", "FLOAT32"),
        "data_layout": AttrSpec("str", "NCHW"),
    },
    infer=_threshold_infer,
    evaluate=_threshold_eval,
    doc="QONNX multi-threshold: Y = out_scale * (number of thresholds <= X, per channel) + out_bias.",
))
