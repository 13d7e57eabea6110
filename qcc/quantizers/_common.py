"""Input checks and small numeric helpers shared by the quantizer fitters.

Every fitter validates its input the same way, so a bad call gets the same one-line error whichever
scheme it asked for: bits an integer in [1, 16], data a non-empty, finite, real array whose values
fit in +-2^100 (so every fitted scale and every dequantized value is a normal float32).

Scales are kept in [MIN_SCALE, 2^60]: the product of two scales (the accumulator scale sx*sw of
DESIGN.md §3) then stays a normal float32, so an all-zero tensor still gets a usable scale > 0.
"""

from __future__ import annotations

import math

import numpy as np

from qcc.errors import QccError

__all__ = [
    "MAX_BITS",
    "MIN_SCALE",
    "MAX_MAGNITUDE",
    "MAX_FRAC_BITS",
    "QuantizerError",
    "range_scale",
    "check_bits",
    "as_data",
    "result_dtype",
    "normalize_axis",
    "channels_first",
    "scale_at_least",
    "ceil_log2",
]

MAX_BITS = 16
MIN_SCALE = 2.0**-60
MAX_MAGNITUDE = 2.0**100
MAX_FRAC_BITS = 60  # |FL| bound of power-of-two scales 2^-FL (keeps them within [MIN_SCALE, 2^60])


class QuantizerError(QccError):
    """Bad input to a quantizer fit: bit-width, data or options."""


def check_bits(what: str, bits: object, lo: int = 1, hi: int = MAX_BITS, name: str = "bits") -> int:
    """`bits` as an int in [lo, hi], or a QuantizerError naming the caller and the option."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise QuantizerError(f"{what}: {name} must be an integer in [{lo}, {hi}], got {bits!r}")
    if not lo <= int(bits) <= hi:
        raise QuantizerError(f"{what}: {name} must be in [{lo}, {hi}], got {int(bits)}")
    return int(bits)


def as_data(what: str, data: object) -> np.ndarray:
    """Validated real array (float32, or float64 when given float64); no copy when none is needed."""
    if data is None:
        raise QuantizerError(f"{what}: no data given")
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as e:
        raise QuantizerError(f"{what}: data is not an array ({e})") from None
    if arr.dtype.kind not in "biuf":
        raise QuantizerError(f"{what}: data must be real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise QuantizerError(f"{what}: data is empty (shape {arr.shape})")
    arr = arr.astype(result_dtype(arr), copy=False)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise QuantizerError(f"{what}: data has {bad} non-finite value(s) (NaN or inf)")
    peak = float(np.max(np.abs(arr)))
    if peak > MAX_MAGNITUDE:
        raise QuantizerError(f"{what}: data magnitude {peak:g} exceeds 2^100; it cannot be quantized")
    return arr


def result_dtype(arr: np.ndarray) -> np.dtype:
    """Quantized data keeps float64 input as float64; everything else becomes float32 (the IR type)."""
    return np.dtype(np.float64) if arr.dtype == np.float64 else np.dtype(np.float32)


def normalize_axis(what: str, axis: object, ndim: int) -> int:
    """A channel axis in [-ndim, ndim) as a non-negative int."""
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise QuantizerError(f"{what}: channel axis must be an integer, got {axis!r}")
    if not -ndim <= int(axis) < ndim:
        raise QuantizerError(f"{what}: channel axis {int(axis)} is out of range for {ndim}-d data")
    return int(axis) % ndim


def channels_first(x: np.ndarray, axis: int | None) -> np.ndarray:
    """View of x as (channels, elements): one row per index along `axis`, or one row for all."""
    if axis is None:
        return x.reshape(1, -1)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def range_scale(value: float) -> float:
    """scale_at_least(value), but 1.0 for an exactly zero range (ONNX Runtime's rule).

    A tiny scale for an all-zero tensor (a dead ReLU, a pruned channel) would make the accumulator
    scale of the next layer so small that its bias no longer fits an int64 accumulator.
    """
    return 1.0 if float(value) == 0.0 else scale_at_least(value)


def scale_at_least(value: float) -> float:
    """The smallest float32 >= value, and >= MIN_SCALE: a scale that never shrinks the fitted range."""
    value = max(float(value), MIN_SCALE)
    f = np.float32(value)
    if float(f) < value:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def ceil_log2(value: float) -> int:
    """ceil(log2(value)) for value > 0, exact (no float log): 4 -> 2, 4.1 -> 3, 0.25 -> -2."""
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2^exponent, mantissa in [0.5, 1)
    return exponent - 1 if mantissa == 0.5 else exponent
