"""Data movement and reductions: Flatten, Reshape, Transpose, Concat, Identity, Squeeze, Unsqueeze,
ReduceMean, Pad.

Operands that ONNX passes as constant tensors (Reshape's shape, Squeeze/Unsqueeze/ReduceMean axes,
Pad's pads) are attributes here. Symbolic dims pass through; where dims are multiplied or added
(Flatten, Reshape's -1, Concat along a symbolic axis, Pad), the result is a derived name such as
'N_x_16' or 'N_plus_2' (see `qcc.ops._shapes.dim_product`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from qcc.errors import ShapeError
from qcc.ir.types import Dim, TensorType
from qcc.ops._shapes import dim_product, dim_sum, norm_axes, norm_axis, same_dtype
from qcc.ops.registry import REQUIRED, AttrSpec, OpDef, register

__all__: list[str] = []


# ----------------------------------------------------------------- Identity
def _identity_infer(in_types, attrs):
    return [in_types[0]]


def _identity_eval(args, attrs):
    return [args[0]]


register(OpDef(
    name="Identity",
    inputs=("X",),
    infer=_identity_infer,
    evaluate=_identity_eval,
    doc="Y = X.",
))


# ----------------------------------------------------------------- Flatten
def _flatten_infer(in_types, attrs):
    x = in_types[0]
    axis = norm_axis(attrs["axis"], x.rank, allow_end=True)
    return [TensorType((dim_product(x.shape[:axis]), dim_product(x.shape[axis:])), x.dtype)]


def _flatten_eval(args, attrs):
    x = args[0]
    axis = norm_axis(attrs["axis"], x.ndim, allow_end=True)
    return [x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))]


register(OpDef(
    name="Flatten",
    inputs=("X",),
    attrs={"axis": AttrSpec("int", 1)},
    infer=_flatten_infer,
    evaluate=_flatten_eval,
    doc="2-d view: dims before `axis` become rows, the rest columns.",
))


# ----------------------------------------------------------------- Reshape
def _factors(dims) -> tuple[int, Counter]:
    known = 1
    names: Counter = Counter()
    for d in dims:
        if isinstance(d, str):
            names[d] += 1
        else:
            known *= d
    return known, names


def _reshape_target(in_shape: tuple[Dim, ...], shape: list[int]) -> tuple[list[Dim | None], int | None]:
    """Dims of the target with 0 resolved (copied from the input); the -1 position left as None."""
    out: list[Dim | None] = []
    infer_at = None
    for i, v in enumerate(shape):
        if v == 0:
            if i >= len(in_shape):
                raise ShapeError(f"shape {shape}: 0 at position {i} copies a dim the rank-{len(in_shape)} "
                                 f"input does not have")
            out.append(in_shape[i])
        elif v == -1:
            if infer_at is not None:
                raise ShapeError(f"shape {shape} has more than one -1")
            infer_at = i
            out.append(None)
        elif v < -1:
            raise ShapeError(f"shape {shape} has a negative dim {v} (only -1 is allowed)")
        else:
            out.append(v)
    return out, infer_at


def _inferred_dim(in_shape, known_dims, shape) -> Dim:
    in_known, in_names = _factors(in_shape)
    out_known, out_names = _factors(known_dims)
    rest = list((in_names - out_names).elements())
    if out_known == 0:
        raise ShapeError(f"cannot infer -1 in shape {shape}: the other dims have zero elements")
    if in_known % out_known:
        if not rest:
            raise ShapeError(f"cannot reshape {list(in_shape)} ({in_known} elements) to {shape}")
        return "_x_".join(rest) + f"_x_{in_known}_div_{out_known}"
    return dim_product([*rest, in_known // out_known])


def _reshape_infer(in_types, attrs):
    x = in_types[0]
    shape = attrs["shape"]
    out, infer_at = _reshape_target(x.shape, shape)
    known = [d for d in out if d is not None]
    if infer_at is not None:
        out[infer_at] = _inferred_dim(x.shape, known, shape)
        return [TensorType(tuple(out), x.dtype)]
    in_known, in_names = _factors(x.shape)
    out_known, out_names = _factors(known)
    if in_names == out_names and in_known != out_known:
        raise ShapeError(f"cannot reshape {list(x.shape)} ({dim_product(x.shape)} elements) to {shape} "
                         f"({dim_product(known)} elements)")
    return [TensorType(tuple(out), x.dtype)]


def _reshape_eval(args, attrs):
    x = args[0]
    shape = [x.shape[i] if v == 0 else v for i, v in enumerate(attrs["shape"])]
    return [x.reshape(shape)]


register(OpDef(
    name="Reshape",
    inputs=("data",),
    attrs={"shape": AttrSpec("ints", REQUIRED)},
    infer=_reshape_infer,
    evaluate=_reshape_eval,
    doc="Same elements, new shape; in `shape`, 0 copies the input dim and one -1 is inferred.",
))


# ----------------------------------------------------------------- Transpose
def _perm_default(in_types):
    rank = in_types[0].rank if in_types and in_types[0] is not None else 0
    return list(range(rank))[::-1]


def _transpose_infer(in_types, attrs):
    x = in_types[0]
    perm = attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"perm {perm} is not a permutation of the {x.rank} input axes")
    return [TensorType(tuple(x.shape[p] for p in perm), x.dtype)]


def _transpose_eval(args, attrs):
    return [np.transpose(args[0], attrs["perm"])]


register(OpDef(
    name="Transpose",
    inputs=("data",),
    attrs={"perm": AttrSpec("ints", _perm_default)},
    infer=_transpose_infer,
    evaluate=_transpose_eval,
    doc="Permute the axes (default: reverse them).",
))


# ----------------------------------------------------------------- Concat
def _common_dim(dims: list[Dim], axis: int) -> Dim:
    ints = {d for d in dims if isinstance(d, int)}
    if len(ints) > 1:
        raise ShapeError(f"inputs differ in dim {axis} ({sorted(ints)}), which is not the concat axis")
    return ints.pop() if ints else dims[0]


def _concat_infer(in_types, attrs):
    if not in_types:
        raise ShapeError("Concat needs at least one input")
    first = in_types[0]
    ranks = {t.rank for t in in_types}
    if len(ranks) > 1:
        raise ShapeError(f"inputs differ in rank ({sorted(ranks)})")
    if first.rank == 0:
        raise ShapeError("cannot concatenate scalars")
    axis = norm_axis(attrs["axis"], first.rank)
    out = []
    for i in range(first.rank):
        dims = [t.shape[i] for t in in_types]
        out.append(dim_sum(dims) if i == axis else _common_dim(dims, i))
    return [TensorType(tuple(out), same_dtype(in_types))]


def _concat_eval(args, attrs):
    return [np.concatenate(args, axis=attrs["axis"])]


register(OpDef(
    name="Concat",
    inputs=("inputs*",),
    attrs={"axis": AttrSpec("int", REQUIRED)},
    infer=_concat_infer,
    evaluate=_concat_eval,
    doc="Join inputs along `axis`; all other dims must agree.",
))


# ----------------------------------------------------------------- Squeeze / Unsqueeze
def _squeeze_axes(shape: tuple[Dim, ...], axes: list[int]) -> list[int]:
    if not axes:
        return [i for i, d in enumerate(shape) if d == 1]
    axes = norm_axes(axes, len(shape))
    for a in axes:
        if isinstance(shape[a], int) and shape[a] != 1:
            raise ShapeError(f"cannot squeeze axis {a} of shape {list(shape)}: its size is {shape[a]}, not 1")
    return axes


def _squeeze_infer(in_types, attrs):
    x = in_types[0]
    drop = set(_squeeze_axes(x.shape, attrs["axes"]))
    return [TensorType(tuple(d for i, d in enumerate(x.shape) if i not in drop), x.dtype)]


def _squeeze_eval(args, attrs):
    x = args[0]
    axes = attrs["axes"]
    return [np.squeeze(x, axis=tuple(norm_axes(axes, x.ndim)) if axes else None)]


register(OpDef(
    name="Squeeze",
    inputs=("data",),
    attrs={"axes": AttrSpec("ints", [])},
    infer=_squeeze_infer,
    evaluate=_squeeze_eval,
    doc="Remove the given size-1 axes ([] = every axis of static size 1).",
))


def _unsqueeze_infer(in_types, attrs):
    x = in_types[0]
    axes = attrs["axes"]
    if not axes:
        raise ShapeError("Unsqueeze needs at least one axis")
    rank = x.rank + len(axes)
    new = set(norm_axes(axes, rank))
    dims = iter(x.shape)
    return [TensorType(tuple(1 if i in new else next(dims) for i in range(rank)), x.dtype)]


def _unsqueeze_eval(args, attrs):
    x = args[0]
    axes = norm_axes(attrs["axes"], x.ndim + len(attrs["axes"]))
    return [np.expand_dims(x, tuple(axes))]


register(OpDef(
    name="Unsqueeze",
    inputs=("data",),
    attrs={"axes": AttrSpec("ints", REQUIRED)},
    infer=_unsqueeze_infer,
    evaluate=_unsqueeze_eval,
    doc="Insert size-1 axes at the given positions of the output.",
))


# ----------------------------------------------------------------- ReduceMean
def _reduce_axes(rank: int, axes: list[int]) -> list[int]:
    return norm_axes(axes, rank) if axes else list(range(rank))


def _reduce_mean_infer(in_types, attrs):
    x = in_types[0]
    axes = set(_reduce_axes(x.rank, attrs["axes"]))
    if attrs["keepdims"] not in (0, 1):
        raise ShapeError(f"keepdims must be 0 or 1, got {attrs['keepdims']}")
    if attrs["keepdims"]:
        return [TensorType(tuple(1 if i in axes else d for i, d in enumerate(x.shape)), x.dtype)]
    return [TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)]


def _reduce_mean_eval(args, attrs):
    x = args[0]
    axes = tuple(_reduce_axes(x.ndim, attrs["axes"]))
    y = x.astype(np.float64).mean(axis=axes, keepdims=bool(attrs["keepdims"]))
    return [np.asarray(y).astype(x.dtype, copy=False)]


register(OpDef(
    name="ReduceMean",
    inputs=("data",),
    attrs={"axes": AttrSpec("ints", []), "keepdims": AttrSpec("int", 1)},
    infer=_reduce_mean_infer,
    evaluate=_reduce_mean_eval,
    doc="Mean over `axes` ([] = all axes), keeping them as size 1 when keepdims = 1.",
))


# ----------------------------------------------------------------- Pad
_PAD_MODES = ("constant", "reflect", "edge")


def _pad_infer(in_types, attrs):
    x = in_types[0]
    pads, mode = attrs["pads"], attrs["mode"]
    if mode not in _PAD_MODES:
        raise ShapeError(f"pad mode '{mode}' is not supported; supported: {', '.join(_PAD_MODES)}")
    if len(pads) != 2 * x.rank:
        raise ShapeError(f"pads {pads} should have 2 x rank = {2 * x.rank} entries")
    out = []
    for i, d in enumerate(x.shape):
        begin, end = pads[i], pads[i + x.rank]
        size = dim_sum([d, begin + end])
        if isinstance(size, int) and size < 0:
            raise ShapeError(f"pads {pads} crop dim {i} of size {d} below zero")
        if mode != "constant" and isinstance(d, int) and (begin > 0 or end > 0):
            _check_reflect_edge(mode, i, d + min(begin, 0) + min(end, 0), max(begin, 0), max(end, 0))
        out.append(size)
    return [TensorType(tuple(out), x.dtype)]


def _check_reflect_edge(mode: str, axis: int, size: int, begin: int, end: int) -> None:
    if size == 0:
        raise ShapeError(f"'{mode}' padding of axis {axis} needs a non-empty axis")
    if mode == "reflect" and max(begin, end) >= size:
        raise ShapeError(f"'reflect' pads ({begin}, {end}) of axis {axis} must be smaller than its size {size}")


def _pad_eval(args, attrs):
    x = args[0]
    pads, rank = attrs["pads"], x.ndim
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[i + rank], 0)) for i in range(rank))
    x = x[crop]  # negative pads crop first, as in onnxruntime
    widths = [(max(pads[i], 0), max(pads[i + rank], 0)) for i in range(rank)]
    if attrs["mode"] == "constant":
        return [np.pad(x, widths, mode="constant", constant_values=np.asarray(attrs["value"]).astype(x.dtype))]
    return [np.pad(x, widths, mode=attrs["mode"])]


register(OpDef(
    name="Pad",
    inputs=("data",),
    attrs={"pads": AttrSpec("ints", REQUIRED), "mode": AttrSpec("str", "constant"),
           "value": AttrSpec("float", 0.0)},
    infer=_pad_infer,
    evaluate=_pad_eval,
    doc="Pad (or crop, for negative pads) each axis; ONNX pads order [x1_begin, ..., x1_end, ...].",
))
