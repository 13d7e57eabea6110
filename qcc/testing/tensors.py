"""Hypothesis strategies for tensor shapes and arrays with bounded, finite elements.

Bounded elements keep float comparisons meaningful: results of a few multiply-adds stay far from
overflow, so a relative tolerance is enough to compare qcc against another runtime.

    from hypothesis import given
    from qcc.testing.tensors import arrays, shapes

    @given(arrays(shapes(min_rank=2, max_rank=4)))
    def test_my_kernel(x):
        ...
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["shapes", "arrays"]


def shapes(min_rank: int = 1, max_rank: int = 4, min_side: int = 1,
           max_side: int = 6) -> st.SearchStrategy[tuple[int, ...]]:
    """Tensor shapes of rank in [min_rank, max_rank] with every dim in [min_side, max_side]."""
    if not 0 <= min_rank <= max_rank:
        raise ValueError(f"need 0 <= min_rank <= max_rank, got {min_rank} and {max_rank}")
    if not 0 <= min_side <= max_side:
        raise ValueError(f"need 0 <= min_side <= max_side, got {min_side} and {max_side}")
    return hnp.array_shapes(min_dims=min_rank, max_dims=max_rank, min_side=min_side, max_side=max_side)


def _inward(lo: float, hi: float, dtype: np.dtype) -> tuple[float, float]:
    """Bounds rounded into [lo, hi] so they are exactly representable in `dtype`."""
    flo, fhi = dtype.type(lo), dtype.type(hi)
    if flo < lo:
        flo = np.nextafter(flo, dtype.type(np.inf))
    if fhi > hi:
        fhi = np.nextafter(fhi, dtype.type(-np.inf))
    return float(flo), float(fhi)


def _elements(dtype: np.dtype, min_value: float, max_value: float) -> st.SearchStrategy:
    if np.issubdtype(dtype, np.floating):
        lo, hi = _inward(min_value, max_value, dtype)
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False,
                         width=8 * dtype.itemsize)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = max(int(np.ceil(min_value)), int(info.min)), min(int(np.floor(max_value)), int(info.max))
        if lo > hi:
            raise ValueError(f"no {dtype} value lies in [{min_value}, {max_value}]")
        return st.integers(lo, hi)
    if dtype == np.bool_:
        return st.booleans()
    raise ValueError(f"unsupported dtype {dtype}")


def arrays(shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]], dtype: np.dtype | type = np.float32,
           *, min_value: float = -8.0, max_value: float = 8.0) -> st.SearchStrategy[np.ndarray]:
    """Arrays of `shape` (a tuple or a strategy of tuples) with finite elements in [min_value, max_value].

    Float elements are never NaN, infinite or subnormal; integer bounds are clipped to the dtype's
    range (so the defaults give [-8, 8] for signed and [0, 8] for unsigned types).
    """
    dtype = np.dtype(dtype)
    if not min_value <= max_value:
        raise ValueError(f"need min_value <= max_value, got {min_value} and {max_value}")
    return hnp.arrays(dtype, shape, elements=_elements(dtype, min_value, max_value))
