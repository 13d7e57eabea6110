"""Shape arithmetic shared by op definitions (symbolic dims pass through untouched)."""

from __future__ import annotations

from qcc.errors import ShapeError
from qcc.ir.types import Dim, TensorType

__all__ = ["broadcast", "conv_out", "dim_product", "dim_sum", "norm_axes", "norm_axis", "same_dtype",
           "spatial_defaults"]


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
    """Axis in [-rank, rank) as a non-negative index; allow_end also admits `rank` (Flatten's axis)."""
    hi = rank + 1 if allow_end else rank
    if not -rank <= axis < hi:
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def norm_axes(axes: list[int], rank: int, *, what: str = "axes") -> list[int]:
    """Normalise possibly negative axes against `rank`; repeated axes are an error."""
    out = [norm_axis(a, rank) for a in axes]
    if len(set(out)) != len(out):
        raise ShapeError(f"{what} {axes} repeat an axis (rank {rank})")
    return out


def dim_product(dims: tuple[Dim, ...] | list[Dim]) -> Dim:
    """Product of dims; with symbolic factors, a derived name such as 'N_x_16' (a single 'N' stays 'N')."""
    known = 1
    names: list[str] = []
    for d in dims:
        if isinstance(d, str):
            names.append(d)
        else:
            known *= d
    if not names or known == 0:
        return known
    if known == 1 and len(names) == 1:
        return names[0]
    return "_x_".join(names + ([str(known)] if known != 1 else []))


def dim_sum(dims: tuple[Dim, ...] | list[Dim]) -> Dim:
    """Sum of dims (ints may be negative); with symbolic terms, a derived name such as 'N_plus_3'."""
    known = sum(d for d in dims if isinstance(d, int))
    names = [d for d in dims if isinstance(d, str)]
    if not names:
        return known
    name = "_plus_".join(names)
    if known > 0:
        return f"{name}_plus_{known}"
    if known < 0:
        return f"{name}_minus_{-known}"
    return name


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
