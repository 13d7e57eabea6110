"""Tensor types: a shape (ints, or names for symbolic dims such as a dynamic batch) and a dtype."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from qcc.errors import VerifyError

__all__ = ["DTYPES", "Dim", "TensorType", "dtype_of", "is_symbolic"]

# Short names used in the text form, mapped to numpy dtype names.
DTYPES: dict[str, str] = {
    "f16": "float16",
    "f32": "float32",
    "f64": "float64",
    "i8": "int8",
    "i16": "int16",
    "i32": "int32",
    "i64": "int64",
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
    "bool": "bool",
}
_SHORT = {v: k for k, v in DTYPES.items()}
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Dim = int | str


def is_symbolic(dim: Dim) -> bool:
    return isinstance(dim, str)


def dtype_of(array: np.ndarray) -> str:
    name = np.dtype(array.dtype).name
    if name not in _SHORT:
        raise VerifyError(f"unsupported tensor dtype {name}; supported: {', '.join(sorted(_SHORT))}")
    return name


@dataclass(frozen=True)
class TensorType:
    """Shape and element type of a tensor; symbolic dims are identifiers (e.g. 'N')."""

    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))
        if self.dtype not in _SHORT:
            raise VerifyError(f"unknown dtype '{self.dtype}'; known: {', '.join(sorted(_SHORT))}")
        for d in self.shape:
            if isinstance(d, bool) or not isinstance(d, int | str):
                raise VerifyError(f"shape {self.shape}: dim {d!r} is neither an int nor a name")
            if isinstance(d, int) and d < 0:
                raise VerifyError(f"shape {self.shape}: negative dim {d}")
            if isinstance(d, str) and not _SYMBOL.match(d):
                raise VerifyError(f"shape {self.shape}: symbolic dim {d!r} is not an identifier")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def short_dtype(self) -> str:
        return _SHORT[self.dtype]

    def numel(self, symbol_value: int = 1) -> int:
        """Element count, with every symbolic dim taken as `symbol_value` (batch 1 for reports)."""
        n = 1
        for d in self.shape:
            n *= symbol_value if isinstance(d, str) else d
        return n

    def concrete(self, symbol_value: int = 1) -> tuple[int, ...]:
        return tuple(symbol_value if isinstance(d, str) else d for d in self.shape)

    def matches(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete shape fits this type (symbolic dims match anything)."""
        if len(shape) != len(self.shape):
            return False
        return all(isinstance(d, str) or d == s for d, s in zip(self.shape, shape))

    def __str__(self) -> str:
        return f"{self.short_dtype}[{','.join(str(d) for d in self.shape)}]"

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        return TensorType(tuple(int(s) for s in array.shape), dtype_of(array))
