"""Quantization annotations on IR values (DESIGN.md §2).

A value's `quant` says how the tensor on that edge is represented at run time; the float data of a
constant is kept on the quantization grid. `Region` (zero-bit edge regions of a feature map) is
independent of the number format, so a value carries it separately (`Value.region`) and it composes
with any scheme.

Every spec is a frozen dataclass that validates itself; per-channel parameters are tuples so specs
stay hashable and comparable. `spec_to_dict` / `spec_from_dict` give the generic form used by the
text printer, the parser and the ONNX exporter.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcc.errors import VerifyError

__all__ = [
    "QuantSpec",
    "Uniform",
    "Codebook",
    "Thresholds",
    "Bipolar",
    "Region",
    "SCHEMES",
    "spec_to_dict",
    "spec_from_dict",
]

MAX_BITS = 32


def _check_bits(what: str, bits: int, lo: int = 1, hi: int = MAX_BITS) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise VerifyError(f"{what}: bits must be an integer in [{lo}, {hi}], got {bits!r}")


def _floats(what: str, value: Any) -> float | tuple[float, ...]:
    if isinstance(value, list | tuple):
        return tuple(_floats(what, v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VerifyError(f"{what}: expected a number, got {value!r}")
    return float(value)


def _float32(value: float | tuple[float, ...]) -> float | tuple[float, ...]:
    if isinstance(value, tuple):
        return tuple(_float32(v) for v in value)
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _ints(what: str, value: Any) -> int | tuple[int, ...]:
    if isinstance(value, list | tuple):
        return tuple(_ints(what, v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerifyError(f"{what}: expected an integer, got {value!r}")
    return value


def _check_axis_params(what: str, axis: int | None, **params: Any) -> None:
    """Per-tensor params are scalars; per-channel params (axis set) are non-empty tuples of one length."""
    if axis is None:
        for name, p in params.items():
            if isinstance(p, tuple):
                raise VerifyError(f"{what}: {name} is a list but axis is not set (per-tensor)")
        return
    if isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
        raise VerifyError(f"{what}: axis must be a non-negative integer, got {axis!r}")
    lengths = {name: len(p) for name, p in params.items() if isinstance(p, tuple)}
    if len(set(lengths.values())) > 1:
        raise VerifyError(f"{what}: per-channel parameters differ in length: {lengths}")
    if any(n == 0 for n in lengths.values()):
        raise VerifyError(f"{what}: per-channel parameters are empty")


def _as_tuple(p: Any) -> tuple:
    return p if isinstance(p, tuple) else (p,)


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """Base of all number-format annotations."""

    scheme: ClassVar[str] = ""

    @property
    def channels(self) -> int | None:
        """Number of per-channel parameter sets, or None for per-tensor."""
        return None

    def replace(self, **changes: Any) -> QuantSpec:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class Uniform(QuantSpec):
    """Affine integers q in [qmin, qmax] representing scale * (q - zero_point).

    Power-of-two fixed point (QKeras quantized_bits, dynamic fixed point with FL fractional bits)
    is the special case scale = 2^-FL, zero_point = 0.
    """

    scheme: ClassVar[str] = "uniform"
    bits: int
    signed: bool = True
    scale: float | tuple[float, ...] = 1.0
    zero_point: int | tuple[int, ...] = 0
    axis: int | None = None
    narrow: bool = False

    def __post_init__(self):
        _check_bits("uniform", self.bits)
        # Scales act as float32 (qcc.numerics, ONNX): store them so, and ONNX round trips are exact.
        object.__setattr__(self, "scale", _float32(_floats("uniform scale", self.scale)))
        object.__setattr__(self, "zero_point", _ints("uniform zero_point", self.zero_point))
        _check_axis_params("uniform", self.axis, scale=self.scale, zero_point=self.zero_point)
        for s in _as_tuple(self.scale):
            if not (math.isfinite(s) and s > 0):
                raise VerifyError(f"uniform: scale must be finite and > 0, got {s!r}")
        if self.narrow and self.bits < 2:
            raise VerifyError("uniform: narrow range needs at least 2 bits")
        for z in _as_tuple(self.zero_point):
            if not self.qmin <= z <= self.qmax:
                raise VerifyError(f"uniform: zero_point {z} outside [{self.qmin}, {self.qmax}]")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def channels(self) -> int | None:
        if self.axis is None:
            return None
        return max(len(_as_tuple(self.scale)), len(_as_tuple(self.zero_point)))

    @property
    def frac_bits(self) -> int | None:
        """FL when this is power-of-two fixed point (per-tensor, scale 2^-FL, zero point 0)."""
        if self.axis is not None or self.zero_point != 0:
            return None
        mantissa, exponent = math.frexp(self.scale)
        return 1 - exponent if mantissa == 0.5 else None

    @classmethod
    def fixed_point(cls, bits: int, frac_bits: int, signed: bool = True) -> Uniform:
        return cls(bits=bits, signed=signed, scale=2.0**-frac_bits, zero_point=0)


@dataclass(frozen=True, kw_only=True)
class Codebook(QuantSpec):
    """Indices of `bits` bits into a table of integer centroids worth centroid_scale each.

    With axis set, `centroids` holds one table per channel along that axis.
    """

    scheme: ClassVar[str] = "codebook"
    bits: int
    centroids: tuple[int, ...] | tuple[tuple[int, ...], ...]
    centroid_bits: int = 16
    centroid_scale: float = 1.0
    axis: int | None = None

    def __post_init__(self):
        _check_bits("codebook", self.bits, hi=16)
        _check_bits("codebook centroid", self.centroid_bits)
        object.__setattr__(self, "centroids", _ints("codebook centroids", self.centroids))
        object.__setattr__(self, "centroid_scale", _floats("codebook centroid_scale", self.centroid_scale))
        if not (math.isfinite(self.centroid_scale) and self.centroid_scale > 0):
            raise VerifyError(f"codebook: centroid_scale must be finite and > 0, got {self.centroid_scale}")
        tables = self.tables()
        if self.axis is None and any(isinstance(c, tuple) for c in self.centroids):
            raise VerifyError("codebook: nested centroid tables need an axis (per-channel)")
        if self.axis is not None:
            _check_axis_params("codebook", self.axis)
            if not all(isinstance(c, tuple) for c in self.centroids):
                raise VerifyError("codebook: per-channel (axis set) needs one centroid table per channel")
        lo, hi = -(2 ** (self.centroid_bits - 1)), 2 ** (self.centroid_bits - 1) - 1
        for table in tables:
            if not 1 <= len(table) <= 2**self.bits:
                raise VerifyError(f"codebook: {len(table)} centroids do not fit {self.bits}-bit indices "
                                  f"(at most {2 ** self.bits})")
            for c in table:
                if not lo <= c <= hi:
                    raise VerifyError(f"codebook: centroid {c} outside signed {self.centroid_bits}-bit range")

    def tables(self) -> tuple[tuple[int, ...], ...]:
        if self.centroids and isinstance(self.centroids[0], tuple):
            return self.centroids  # type: ignore[return-value]
        return (self.centroids,)  # type: ignore[return-value]

    @property
    def channels(self) -> int | None:
        return None if self.axis is None else len(self.centroids)


@dataclass(frozen=True, kw_only=True)
class Thresholds(QuantSpec):
    """Multi-threshold activation (FINN MultiThreshold): level = number of thresholds <= input.

    The value is out_scale * level + out_bias. Rows of `thresholds` are per channel along `axis`
    (one row = shared by all channels), each sorted ascending, at most 2^bits - 1 long.
    With `input_scale` set (per tensor or per channel), thresholds are integers on the input's
    integer grid (an accumulator at that scale): the real thresholds are input_scale * t, and the
    integer semantics compares the accumulator with t directly (FINN-style integer thresholds).
    """

    scheme: ClassVar[str] = "thresholds"
    bits: int
    thresholds: tuple[tuple[float, ...], ...]
    out_scale: float = 1.0
    out_bias: float = 0.0
    axis: int = 1
    input_scale: float | tuple[float, ...] | None = None

    def __post_init__(self):
        _check_bits("thresholds", self.bits, hi=16)
        rows = _floats("thresholds", self.thresholds)
        if not isinstance(rows, tuple) or not rows or not all(isinstance(r, tuple) for r in rows):
            raise VerifyError("thresholds: expected a non-empty list of per-channel threshold lists")
        object.__setattr__(self, "thresholds", rows)
        object.__setattr__(self, "out_scale", _floats("thresholds out_scale", self.out_scale))
        object.__setattr__(self, "out_bias", _floats("thresholds out_bias", self.out_bias))
        _check_axis_params("thresholds", self.axis)
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            raise VerifyError(f"thresholds: rows differ in length ({sorted(widths)})")
        width = widths.pop()
        if not 1 <= width <= 2**self.bits - 1:
            raise VerifyError(f"thresholds: {width} thresholds per channel do not fit {self.bits} output bits "
                              f"(at most {2 ** self.bits - 1})")
        if self.input_scale is not None:
            object.__setattr__(self, "input_scale", _floats("thresholds input_scale", self.input_scale))
            scales = _as_tuple(self.input_scale)
            if any(not (math.isfinite(v) and v > 0) for v in scales):
                raise VerifyError("thresholds: input_scale must be finite and > 0")
            if len(scales) > 1 and len(rows) not in (1, len(scales)):
                raise VerifyError(f"thresholds: {len(scales)} input scales for {len(rows)} threshold rows")
            if any(math.isfinite(t) and not float(t).is_integer() for row in rows for t in row):
                raise VerifyError("thresholds: with input_scale set, thresholds must be integers (or +-inf)")
        for ch, row in enumerate(rows):
            if any(math.isnan(t) for t in row):
                raise VerifyError(f"thresholds: channel {ch} has a NaN threshold")
            if any(b < a for a, b in zip(row, row[1:])):
                raise VerifyError(f"thresholds: channel {ch} thresholds are not sorted ascending")

    @property
    def channels(self) -> int | None:
        n = max(len(self.thresholds), len(_as_tuple(self.input_scale)) if self.input_scale is not None else 1)
        return None if n == 1 else n

    def real_thresholds(self) -> np.ndarray:
        """[C, T] thresholds in the input's real units (float64)."""
        t = np.asarray(self.thresholds, dtype=np.float64)
        if self.input_scale is None:
            return t
        return t * np.asarray(self.input_scale, dtype=np.float64).reshape(-1, 1)


@dataclass(frozen=True, kw_only=True)
class Bipolar(QuantSpec):
    """Binary ±1 values times a (per-tensor or per-channel) scale; computed by XNOR-popcount."""

    scheme: ClassVar[str] = "bipolar"
    scale: float | tuple[float, ...] = 1.0
    axis: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "scale", _floats("bipolar scale", self.scale))
        _check_axis_params("bipolar", self.axis, scale=self.scale)
        for s in _as_tuple(self.scale):
            if not (math.isfinite(s) and s > 0):
                raise VerifyError(f"bipolar: scale must be finite and > 0, got {s!r}")

    @property
    def bits(self) -> int:
        return 1

    @property
    def channels(self) -> int | None:
        return None if self.axis is None else len(_as_tuple(self.scale))


@dataclass(frozen=True)
class Region:
    """Zero-bit edge regions of an NCHW feature map: rows/cols cut at top, bottom, left, right."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def __post_init__(self):
        for name in ("top", "bottom", "left", "right"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise VerifyError(f"region: {name} must be a non-negative integer, got {v!r}")

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.top, self.bottom, self.left, self.right)

    def fits(self, height: int, width: int) -> bool:
        return self.top + self.bottom < height and self.left + self.right < width

    @property
    def empty(self) -> bool:
        return self.as_tuple() == (0, 0, 0, 0)


SCHEMES: dict[str, type[QuantSpec]] = {c.scheme: c for c in (Uniform, Codebook, Thresholds, Bipolar)}


def spec_to_dict(spec: QuantSpec | Region) -> dict[str, Any]:
    """Field values of a spec in generic form (tuples as lists), fields in declaration order."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, tuple) else v

    return {f.name: plain(getattr(spec, f.name)) for f in dataclasses.fields(spec)}


def spec_from_dict(scheme: str, values: dict[str, Any]) -> QuantSpec | Region:
    """Build a spec from its scheme name and generic field values; unknown names are errors."""
    cls: type = Region if scheme == "region" else SCHEMES.get(scheme)  # type: ignore[assignment]
    if cls is None:
        raise VerifyError(f"unknown quantization scheme '{scheme}'; known: "
                          f"{', '.join(sorted([*SCHEMES, 'region']))}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise VerifyError(f"{scheme}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(sorted(names))}")

    def frozen(v: Any) -> Any:
        return tuple(frozen(x) for x in v) if isinstance(v, list) else v

    try:
        return cls(**{k: frozen(v) for k, v in values.items()})
    except TypeError as e:  # missing required field
        raise VerifyError(f"{scheme}: {e}") from None

