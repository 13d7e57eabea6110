"""Import-time folding of constants and of the shape computations exporters emit.

PyTorch's exporters compute Reshape targets at run time (`x.view(x.size(0), -1)` becomes
Shape -> Gather -> Unsqueeze -> Concat -> Reshape). qcc's IR keeps such operands as attributes, so
the frontend evaluates these chains while importing. With a dynamic batch the values are not all
numbers: a *symbolic* tensor is a numpy object array whose elements are ints, dim names (str, e.g.
'N') or `UNKNOWN` (something derived from a dim name, like N*4). Every folder here works on plain
and symbolic arrays alike; `NotFoldable` means "leave this node to the converter".

Each folder takes (inputs, attrs, opset) and returns the list of outputs. An input is an ndarray,
None for an absent optional input, or a `Typed` stand-in where only the type matters (Shape's input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

__all__ = ["UNKNOWN", "NotFoldable", "Typed", "FOLDERS", "TYPE_ONLY", "MAX_FOLD_ELEMENTS", "fold",
           "is_symbolic", "onnx_dtype"]


class _Unknown:
    """A run-time value derived from symbolic dims (N*4, N-1, ...); equal to nothing but itself."""

    def __repr__(self) -> str:
        return "?"


UNKNOWN: Any = _Unknown()


class NotFoldable(Exception):  # noqa: N818  (control flow, never shown to the user)
    """The node cannot be evaluated at import time; the converter handles it as a real op."""


@dataclass(frozen=True)
class Typed:
    """Shape and dtype of a run-time tensor, for ops that only look at the type (Shape, CastLike)."""

    shape: tuple
    dtype: np.dtype


MAX_FOLD_ELEMENTS = 1 << 24

# Input positions that only need the operand's type, not its data.
TYPE_ONLY: dict[str, tuple[int, ...]] = {"Shape": (0,), "Size": (0,), "CastLike": (1,)}


def is_symbolic(array: np.ndarray) -> bool:
    return isinstance(array, np.ndarray) and array.dtype == object


def onnx_dtype(code: int) -> np.dtype:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))
    except Exception:
        raise NotFoldable(f"ONNX type code {code}") from None


def _tidy(array: np.ndarray) -> np.ndarray:
    """Symbolic arrays that turned out all-integer become int64 again."""
    if is_symbolic(array) and all(isinstance(v, int | np.integer) for v in array.flat):
        return array.astype(np.int64)
    return array


def _plain(x: Any, what: str = "operand") -> np.ndarray:
    if not isinstance(x, np.ndarray) or is_symbolic(x):
        raise NotFoldable(what)
    return x


def _ints(x: Any) -> list[int]:
    return [int(v) for v in _plain(x).reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise NotFoldable(f"axis {axis}")
    return axis + rank if axis < 0 else axis


def _constant(inputs, attrs, opset):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key not in attrs:
            continue
        value = attrs[key]
        if isinstance(value, np.ndarray):
            return [value]
        dtype = np.float32 if key.startswith("value_float") else np.int64
        return [np.array(value, dtype=dtype)]
    raise NotFoldable("Constant without a numeric value")


def _shape(inputs, attrs, opset):
    dims = list(inputs[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    dims = dims[start:end]
    if all(isinstance(d, int) for d in dims):
        return [np.array(dims, dtype=np.int64)]
    return [np.array(dims, dtype=object)]


def _size(inputs, attrs, opset):
    dims = list(inputs[0].shape)
    if all(isinstance(d, int) for d in dims):
        return [np.array(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)]
    return [np.array(UNKNOWN, dtype=object)]


def _gather(inputs, attrs, opset):
    data, indices = inputs[0], _plain(inputs[1], "indices")
    axis = _axis(attrs.get("axis", 0), data.ndim)
    n = data.shape[axis]
    idx = np.where(indices < 0, indices + n, indices).astype(np.int64)
    if np.any(idx < 0) or np.any(idx >= n):
        raise NotFoldable("index out of range")
    return [_tidy(np.take(data, idx, axis=axis))]


def _axes_operand(inputs, attrs, opset, first_input_opset: int) -> list[int] | None:
    if opset >= first_input_opset:
        return _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
    return list(attrs["axes"]) if "axes" in attrs else None


def _unsqueeze(inputs, attrs, opset):
    x = inputs[0]
    axes = _axes_operand(inputs, attrs, opset, 13)
    if axes is None:
        raise NotFoldable("Unsqueeze without axes")
    rank = x.ndim + len(axes)
    out = x
    for a in sorted(_axis(a, rank) for a in axes):
        out = np.expand_dims(out, a)
    return [out]


def _squeeze(inputs, attrs, opset):
    x = inputs[0]
    axes = _axes_operand(inputs, attrs, opset, 13)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(_axis(a, x.ndim) for a in axes))]


def _concat(inputs, attrs, opset):
    parts = [x for x in inputs if x is not None]
    if any(is_symbolic(p) for p in parts):
        parts = [p.astype(object) for p in parts]
    axis = _axis(attrs["axis"], parts[0].ndim)
    return [_tidy(np.concatenate(parts, axis=axis))]


def _cast(inputs, attrs, opset):
    x = inputs[0]
    dtype = onnx_dtype(attrs["to"])
    if is_symbolic(x):
        if dtype.kind not in "iu":
            raise NotFoldable("symbolic dims cast to a non-integer type")
        return [x]
    return [x.astype(dtype)]


def _cast_like(inputs, attrs, opset):
    x, like = inputs[0], inputs[1]
    if is_symbolic(x):
        return [x]
    return [x.astype(like.dtype)]


def _slice(inputs, attrs, opset):
    data = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise NotFoldable("Slice step 0")
        index[_axis(a, data.ndim)] = slice(s, e, st)
    return [_tidy(data[tuple(index)])]


def _reshape(inputs, attrs, opset):
    data, shape = inputs[0], _ints(inputs[1])
    if not attrs.get("allowzero", 0):
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    try:
        return [data.reshape(shape)]
    except ValueError:
        raise NotFoldable("reshape size mismatch") from None


def _small(shape) -> tuple[int, ...]:
    """A shape to materialize at import; a hostile model cannot make qcc allocate gigabytes."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.float64)) > MAX_FOLD_ELEMENTS:
        raise NotFoldable(f"a folded tensor of shape {list(shape)} is too large")
    return shape


def _expand(inputs, attrs, opset):
    x, shape = inputs[0], _ints(inputs[1])
    out_shape = _small(np.broadcast_shapes(x.shape, tuple(shape)))
    return [np.broadcast_to(x, out_shape).copy()]


def _constant_of_shape(inputs, attrs, opset):
    shape = _small(_ints(inputs[0]))
    value = attrs.get("value", np.zeros(1, dtype=np.float32))
    return [np.full(shape, value.reshape(-1)[0], dtype=value.dtype)]


def _range(inputs, attrs, opset):
    start, limit, delta = (_plain(x).reshape(()) for x in inputs[:3])
    if delta == 0:
        raise NotFoldable("Range with delta 0")
    _small([max(0, int(np.ceil((float(limit) - float(start)) / float(delta))))])
    return [np.arange(start, limit, delta, dtype=start.dtype)]


def _binary(fn: Callable[[Any, Any], Any], int_fn: Callable[[Any, Any], Any] | None = None):
    """An elementwise folder; on symbolic operands each element is computed when both are ints."""

    def scalar(a, b):
        if isinstance(a, int | np.integer) and isinstance(b, int | np.integer):
            return int((int_fn or fn)(int(a), int(b)))
        return UNKNOWN

    def folder(inputs, attrs, opset):
        a, b = inputs[0], inputs[1]
        if is_symbolic(a) or is_symbolic(b):
            out = np.frompyfunc(scalar, 2, 1)(a.astype(object), b.astype(object))
            return [_tidy(np.asarray(out, dtype=object))]
        if a.dtype.kind in "iu" and int_fn is not None:
            return [np.asarray(int_fn(a, b)).astype(a.dtype)]
        return [np.asarray(fn(a, b)).astype(np.result_type(a.dtype, b.dtype))]

    return folder


def _int_div(a, b):
    """ONNX integer division truncates toward zero."""
    q = np.abs(a) // np.abs(b)
    return np.where((np.sign(a) * np.sign(b)) < 0, -q, q) if isinstance(q, np.ndarray) else (
        -q if (a < 0) != (b < 0) else q)


def _sym_mul(p, q):
    if isinstance(p, int | np.integer) and isinstance(q, int | np.integer):
        return int(p) * int(q)
    return UNKNOWN


_SYM_MUL = np.frompyfunc(_sym_mul, 2, 1)


def _reduce_prod(inputs, attrs, opset):
    """Products of shape vectors (flatten's target); with a symbolic factor the result is UNKNOWN."""
    x = inputs[0]
    axes = _axes_operand(inputs, attrs, opset, 18)
    keep = bool(attrs.get("keepdims", 1))
    if not axes and attrs.get("noop_with_empty_axes", 0):
        return [x]
    axis = tuple(_axis(a, x.ndim) for a in axes) if axes else None
    if not is_symbolic(x):
        return [np.prod(x, axis=axis, keepdims=keep).astype(x.dtype)]
    if axis is not None and len(axis) != 1:
        raise NotFoldable("symbolic product over several axes")
    values = x.astype(object)
    out = np.asarray(_SYM_MUL.reduce(values.reshape(-1) if axis is None else values,
                                     axis=0 if axis is None else axis[0]), dtype=object)
    if keep:
        out = np.expand_dims(out, axis if axis is not None else tuple(range(x.ndim)))
    return [_tidy(out)]


def _neg(inputs, attrs, opset):
    return [-_plain(inputs[0])]


def _equal(inputs, attrs, opset):
    return [np.equal(_plain(inputs[0]), _plain(inputs[1]))]


def _where(inputs, attrs, opset):
    cond = _plain(inputs[0], "condition").astype(bool)
    a, b = inputs[1], inputs[2]
    if is_symbolic(a) or is_symbolic(b):
        return [_tidy(np.where(cond, a.astype(object), b.astype(object)))]
    return [np.where(cond, a, b)]


def _transpose(inputs, attrs, opset):
    x = inputs[0]
    perm = attrs.get("perm") or list(reversed(range(x.ndim)))
    return [np.transpose(x, perm)]


def _identity(inputs, attrs, opset):
    return [inputs[0]]


FOLDERS: dict[str, Callable[[list, dict, int], list[np.ndarray]]] = {
    "Constant": _constant,
    "Identity": _identity,
    "Shape": _shape,
    "Size": _size,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Slice": _slice,
    "Reshape": _reshape,
    "Expand": _expand,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(np.divide, _int_div),
    "Neg": _neg,
    "ReduceProd": _reduce_prod,
    "Equal": _equal,
    "Where": _where,
    "Transpose": _transpose,
}


def _as_array(r: Any) -> np.ndarray:
    """numpy hands back scalars from object arrays (np.take with a 0-d index); keep them symbolic."""
    if isinstance(r, np.ndarray):
        return r
    if isinstance(r, str | _Unknown):
        return np.array(r, dtype=object)
    return np.asarray(r)


def fold(op: str, inputs: list, attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    """Evaluate one node at import time; raises NotFoldable when it cannot (or should not)."""
    folder = FOLDERS.get(op)
    if folder is None:
        raise NotFoldable(op)
    try:
        return [_as_array(r) for r in folder(inputs, attrs, opset)]
    except (ValueError, IndexError, TypeError, KeyError, OverflowError, ZeroDivisionError) as e:
        raise NotFoldable(str(e)) from None
