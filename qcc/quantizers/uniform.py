"""Uniform affine quantizer fitted from a data range (issue 3 item 1; DESIGN.md §3).

The fitted spec represents scale * (q - zero_point) with q an integer in [qmin, qmax]:

- symmetric, signed:    zero_point = 0, scale = max(|lo|, |hi|) / (2^(bits-1) - 1)
- symmetric, unsigned:  zero_point = 0, scale = hi / (2^bits - 1)            (needs lo >= 0)
- asymmetric:           the range is widened to contain 0 (lo' = min(lo, 0), hi' = max(hi, 0)) so
                        0 is exact; scale = (hi' - lo') / (qmax - qmin),
                        zero_point = round(qmin - lo' / scale), an integer in [qmin, qmax]

The scale is rounded UP to a float32 (the numeric contract computes with float32 scales), so the
fitted grid always covers [lo, hi]: a min/max fit never clips, and every value inside the range is
within scale/2 of its quantized value. A zero range (all-zero data) gets scale 1.0, as in ONNX Runtime.
"""

from __future__ import annotations

import numpy as np

from qcc.ir.quant import Uniform
from qcc.quantizers._common import (
    QuantizerError,
    as_data,
    channels_first,
    check_bits,
    normalize_axis,
    range_scale,
)

__all__ = ["fit_uniform"]


def fit_uniform(data: object, bits: int, *, symmetric: bool = True, signed: bool | None = None,
                per_channel_axis: int | None = None, narrow: bool = False,
                lo: object = None, hi: object = None) -> Uniform:
    """Fit a uniform affine quantizer to `data` (or to a calibrated range [lo, hi]).

    Formula (module docstring): symmetric scale = max|x| / qmax with zero point 0; asymmetric
    scale = (max(hi, 0) - min(lo, 0)) / (qmax - qmin), zero_point = round(qmin - min(lo, 0) / scale).
    `signed=None` picks signed exactly when the range has negative values. `per_channel_axis` fits
    one scale / zero point per index along that axis. `lo` / `hi` (scalars, or one value per channel)
    replace the data's min / max, e.g. from calibration; with both given, `data` may be None.
    Apply the result with `qcc.numerics.fake_quant(x, spec)` or `qcc.numerics.quantize(x, spec)`.
    """
    what = "fit_uniform"
    bits = check_bits(what, bits)
    x = None if data is None and lo is not None and hi is not None else as_data(what, data)
    axis = _axis(what, per_channel_axis, x)
    lows, highs = _range(what, x, axis, lo, hi)
    if signed is None:
        signed = bool(np.any(lows < 0))
    if narrow and bits < 2:
        raise QuantizerError(f"{what}: narrow range needs at least 2 bits, got {bits}")
    spec = Uniform(bits=bits, signed=signed, narrow=narrow)  # for qmin / qmax only
    if symmetric:
        scales = _symmetric_scales(what, lows, highs, spec)
        zero_points = np.zeros(len(scales), dtype=np.int64)
    else:
        scales, zero_points = _asymmetric_params(lows, highs, spec)
    if axis is None:
        return Uniform(bits=bits, signed=signed, scale=scales[0], zero_point=int(zero_points[0]), narrow=narrow)
    return Uniform(bits=bits, signed=signed, scale=tuple(scales), zero_point=tuple(int(z) for z in zero_points),
                   axis=axis, narrow=narrow)


def _axis(what: str, per_channel_axis: object, x: np.ndarray | None) -> int | None:
    if per_channel_axis is None:
        return None
    if x is not None:
        return normalize_axis(what, per_channel_axis, x.ndim)
    if isinstance(per_channel_axis, bool) or not isinstance(per_channel_axis, int) or per_channel_axis < 0:
        raise QuantizerError(f"{what}: without data the channel axis must be a non-negative integer, "
                             f"got {per_channel_axis!r}")
    return per_channel_axis


def _range(what: str, x: np.ndarray | None, axis: int | None, lo: object, hi: object
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (or one-element) float64 arrays of the range lows and highs."""
    rows = None if x is None else channels_first(x, axis).astype(np.float64)
    n = None if rows is None else rows.shape[0]
    lows = rows.min(axis=1) if lo is None else _bound(what, "lo", lo, axis, n)
    highs = rows.max(axis=1) if hi is None else _bound(what, "hi", hi, axis, n)
    if lows.shape != highs.shape:
        lows, highs = np.broadcast_arrays(lows, highs)
    bad = np.flatnonzero(lows > highs)
    if bad.size:
        raise QuantizerError(f"{what}: range lo > hi ({lows[bad[0]]:g} > {highs[bad[0]]:g})")
    return lows, highs


def _bound(what: str, name: str, value: object, axis: int | None, n: int | None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise QuantizerError(f"{what}: {name} must be a number or a list of numbers, got {value!r}") from None
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise QuantizerError(f"{what}: {name} must be finite numbers, got {value!r}")
    if axis is None and arr.size != 1:
        raise QuantizerError(f"{what}: {name} has {arr.size} values but the fit is per-tensor")
    if n is not None and arr.size not in (1, n):
        raise QuantizerError(f"{what}: {name} has {arr.size} values for {n} channels")
    if n is not None and arr.size == 1:
        arr = np.repeat(arr, n)
    return arr


def _symmetric_scales(what: str, lows: np.ndarray, highs: np.ndarray, spec: Uniform) -> list[float]:
    if spec.signed:
        if spec.qmax < 1:
            raise QuantizerError(f"{what}: symmetric signed quantization needs at least 2 bits "
                                 "(use signed=False, symmetric=False or a bipolar quantizer)")
        peaks = np.maximum(np.abs(lows), np.abs(highs))
    else:
        if np.any(lows < 0):
            raise QuantizerError(f"{what}: signed=False but the range has negative values "
                                 f"(min {lows.min():g}); use signed=True or symmetric=False")
        peaks = highs
    return [range_scale(p / spec.qmax) for p in peaks]


def _asymmetric_params(lows: np.ndarray, highs: np.ndarray, spec: Uniform) -> tuple[list[float], np.ndarray]:
    lows, highs = np.minimum(lows, 0.0), np.maximum(highs, 0.0)
    levels = spec.qmax - spec.qmin
    scales = [range_scale((h - l) / levels) for l, h in zip(lows, highs)]
    zero_points = np.rint(spec.qmin - lows / np.asarray(scales))
    return scales, np.clip(zero_points, spec.qmin, spec.qmax).astype(np.int64)
