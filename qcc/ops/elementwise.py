"""Binary elementwise arithmetic: Add, Sub, Mul, Div with numpy (multidirectional) broadcasting.

Both operands must share a dtype and the result keeps it. Integer Div truncates toward zero, as
ONNX runtimes do (C semantics), not toward minus infinity as numpy's `//` does.
"""

from __future__ import annotations

import numpy as np

from qcc.ir.types import TensorType
from qcc.ops._shapes import broadcast, same_dtype
from qcc.ops.registry import OpDef, register

__all__: list[str] = []


def _binary_infer(in_types, attrs):
    a, b = in_types[0], in_types[1]
    return [TensorType(broadcast(a.shape, b.shape), same_dtype([a, b]))]


def _add_eval(args, attrs):
    return [np.add(args[0], args[1])]


def _sub_eval(args, attrs):
    return [np.subtract(args[0], args[1])]


def _mul_eval(args, attrs):
    return [np.multiply(args[0], args[1])]


def _truncating_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer quotient rounded toward zero (exact: no detour through floats)."""
    q = np.floor_divide(a, b)
    inexact = (a - q * b) != 0
    negative = (a < 0) != (b < 0)
    return q + (inexact & negative).astype(q.dtype)


def _div_eval(args, attrs):
    a, b = args[0], args[1]
    if np.issubdtype(a.dtype, np.integer):
        return [_truncating_divide(a, b)]
    return [np.divide(a, b)]


_BINARY = {
    "Add": (_add_eval, "Y = A + B (broadcasting)."),
    "Sub": (_sub_eval, "Y = A - B (broadcasting)."),
    "Mul": (_mul_eval, "Y = A * B (broadcasting)."),
    "Div": (_div_eval, "Y = A / B (broadcasting; integer division truncates toward zero)."),
}

for _name, (_evaluate, _doc) in _BINARY.items():
    register(OpDef(name=_name, inputs=("A", "B"), infer=_binary_infer, evaluate=_evaluate, doc=_doc))
