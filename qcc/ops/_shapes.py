"""Shape arithmetic shared by op definitions (symbolic dims pass through untouched)."""

from __future__ import annotations

from qcc.errors import ShapeError
from qcc.ir.types import Dim, TensorType

__all__ = ["broadcast", "conv_out", "norm_axis", "same_dtype", "spatial_defaults"]


def broadcast(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """Numpy broadcasting; a symbolic dim broadcasts with 1 or itself."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0]
        picked: Dim = 1
        for d in dims:
            if d == 1 or d == picked:
                continue
            if picked == 1:
                picked = d
            else:
                raise ShapeError(f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast")
        out.append(picked)
    return tuple(out)


def conv_out(size: Dim, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1,
             ceil_mode: bool = False) -> Dim:
    if isinstance(size, str):
        return size
    span = dilation * (kernel - 1) + 1
    total = size + pad_begin + pad_end - span
    if total < 0:
        raise ShapeError(f"window {span} (kernel {kernel}, dilation {dilation}) is larger than the "
                         f"padded input {size + pad_begin + pad_end}")
    out = -(-total // stride) + 1 if ceil_mode else total // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window must start inside the input or its left padding (ONNX rule)
    return out


def norm_axis(axis: int, rank: int, *, allow_end: bool = False) -> int:
    hi = rank + 1 if allow_end else rank
    if not -hi <= axis < hi:
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    return axis + hi if axis < 0 else axis


def same_dtype(types: list[TensorType | None]) -> str:
    dtypes = {t.dtype for t in types if t is not None}
    if len(dtypes) > 1:
        raise ShapeError(f"inputs mix dtypes {sorted(dtypes)}")
    return dtypes.pop()


def spatial_defaults(value: int):
    """Default for a per-spatial-dim attribute, sized from the first input's rank."""

    def default(in_types: list[TensorType | None]) -> list[int]:
        rank = in_types[0].rank if in_types and in_types[0] is not None else 4
        return [value] * max(rank - 2, 0)

    return default
