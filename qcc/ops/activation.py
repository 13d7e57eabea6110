"""Activations: Relu, Sigmoid, LeakyRelu, Clip, Softmax.

All keep the input's shape and dtype. Clip's bounds are attributes in the IR (ONNX >= 11 passes them
as inputs; the frontend folds them), with -inf / inf meaning "no bound".
"""

from __future__ import annotations

import math

import numpy as np

from qcc.errors import ShapeError
from qcc.ir.types import TensorType
from qcc.ops._shapes import norm_axis
from qcc.ops.registry import AttrSpec, OpDef, register

__all__: list[str] = []


def _same_type(in_types, attrs):
    return [in_types[0]]


def _relu_eval(args, attrs):
    x = args[0]
    return [np.maximum(x, np.zeros((), dtype=x.dtype))]


def _sigmoid_eval(args, attrs):
    x = args[0]
    e = np.exp(-np.abs(x))  # never overflows; both branches below stay in [0, 1]
    y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return [y.astype(x.dtype, copy=False)]


def _leaky_relu_eval(args, attrs):
    x = args[0]
    y = np.where(x >= 0, x, attrs["alpha"] * x)
    return [y.astype(x.dtype, copy=False)]


def _clip_infer(in_types, attrs):
    lo, hi = attrs["min"], attrs["max"]
    if math.isnan(lo) or math.isnan(hi):
        raise ShapeError(f"Clip bounds must not be NaN, got min={lo}, max={hi}")
    return [in_types[0]]


def _clip_eval(args, attrs):
    x = args[0]
    # ONNX order: max(x, min) first, then min(., max); so min > max yields max everywhere.
    y = np.minimum(np.maximum(x, attrs["min"]), attrs["max"])
    return [y.astype(x.dtype, copy=False)]


def _softmax_infer(in_types, attrs):
    x = in_types[0]
    if x.rank == 0:
        raise ShapeError("Softmax needs an input of rank >= 1")
    norm_axis(attrs["axis"], x.rank)
    return [x]


def _softmax_eval(args, attrs):
    x = args[0]
    axis = norm_axis(attrs["axis"], x.ndim)
    shifted = x.astype(np.float64) - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return [(e / e.sum(axis=axis, keepdims=True)).astype(x.dtype, copy=False)]


def _float_input(infer):
    def checked(in_types: list[TensorType | None], attrs):
        dtype = in_types[0].dtype
        if not dtype.startswith("float"):
            raise ShapeError(f"needs a float input, got {dtype}")
        return infer(in_types, attrs)

    checked.__name__ = infer.__name__
    return checked


register(OpDef(
    name="Relu",
    inputs=("X",),
    infer=_same_type,
    evaluate=_relu_eval,
    doc="Y = max(X, 0).",
))

register(OpDef(
    name="Sigmoid",
    inputs=("X",),
    infer=_float_input(_same_type),
    evaluate=_sigmoid_eval,
    doc="Y = 1 / (1 + exp(-X)), computed without overflow.",
))

register(OpDef(
    name="LeakyRelu",
    inputs=("X",),
    attrs={"alpha": AttrSpec("float", 0.01)},
    infer=_float_input(_same_type),
    evaluate=_leaky_relu_eval,
    doc="Y = X where X >= 0, else alpha * X.",
))

register(OpDef(
    name="Clip",
    inputs=("X",),
    attrs={"min": AttrSpec("float", -math.inf), "max": AttrSpec("float", math.inf)},
    infer=_clip_infer,
    evaluate=_clip_eval,
    doc="Y = min(max(X, min), max); the bounds are attributes (-inf / inf = unbounded).",
))

register(OpDef(
    name="Softmax",
    inputs=("X",),
    attrs={"axis": AttrSpec("int", -1)},
    infer=_float_input(_softmax_infer),
    evaluate=_softmax_eval,
    doc="Normalised exponential along one axis (ONNX opset >= 13 semantics).",
))
