"""The numeric rules every backend must match, written once (DESIGN.md §3).

Rounding: round half to even everywhere (`np.rint`). It is what ONNX QuantizeLinear specifies, so a
QDQ export run by onnxruntime matches qcc bit for bit, and it has no bias on symmetric data.
Saturation: clip to [qmin, qmax] of the target format after rounding.
Quantization divides in the input's float type (float32), not float64: onnxruntime divides in
float32, and a float64 quotient can land on the other side of a .5 tie (6.079439 / 2.4317756 is
exactly 2.5 in float32), so only this order matches it bit for bit. Scales therefore act as float32.
"""

from __future__ import annotations

import math

import numpy as np

from qcc.errors import QccError
from qcc.ir.quant import Bipolar, Codebook, QuantSpec, Region, Thresholds, Uniform

__all__ = ["round_half_even", "channel_shape", "quantize_affine", "quantize", "dequantize", "fake_quant",
           "apply_thresholds", "apply_region", "nearest_index", "quantize_multiplier", "rounding_rshift", "requantize",
           "rounding_divide", "bias_to_accumulator", "MULTIPLIER_BITS"]


def round_half_even(x: np.ndarray) -> np.ndarray:
    return np.rint(x)


def channel_shape(rank: int, axis: int | None, n: int) -> tuple[int, ...]:
    """Broadcast shape of per-channel parameters along `axis` of a rank-`rank` tensor."""
    if axis is None:
        return ()
    shape = [1] * rank
    shape[axis] = n
    return tuple(shape)


def _param(values, rank: int, axis: int | None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr.reshape(channel_shape(rank, axis, arr.size)) if axis is not None else arr


def quantize_affine(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """clip(round_half_even(x / scale) + zero_point, qmin, qmax) as int64, computed in x's float type."""
    xf = x if x.dtype.kind == "f" else x.astype(np.float32)
    q = round_half_even(xf / np.asarray(scale).astype(xf.dtype)) + np.asarray(zero_point).astype(xf.dtype)
    return np.clip(q, qmin, qmax).astype(np.int64)


def quantize(x: np.ndarray, spec: Uniform) -> np.ndarray:
    """Float to integer codes of `spec` (per tensor or per channel along spec.axis)."""
    scale = _param(spec.scale, x.ndim, spec.axis)
    zp = _param(spec.zero_point, x.ndim, spec.axis)
    return quantize_affine(x, scale, zp, spec.qmin, spec.qmax)


def dequantize(q: np.ndarray, spec: Uniform, dtype=np.float32) -> np.ndarray:
    scale = _param(spec.scale, q.ndim, spec.axis)
    zp = _param(spec.zero_point, q.ndim, spec.axis)
    return ((q.astype(np.float64) - zp) * scale).astype(dtype)


def apply_thresholds(x: np.ndarray, spec: Thresholds) -> np.ndarray:
    """out_scale * (number of thresholds <= x) + out_bias, per channel along spec.axis."""
    t = spec.real_thresholds()  # C x T
    xm = np.moveaxis(x.astype(np.float64), spec.axis, -1)[..., None]  # ..., C, 1
    levels = (xm >= t).sum(axis=-1)
    out = spec.out_scale * levels + spec.out_bias
    return np.moveaxis(out, -1, spec.axis).astype(x.dtype)


def _bipolar(x: np.ndarray, spec: Bipolar) -> np.ndarray:
    scale = _param(spec.scale, x.ndim, spec.axis)
    return (np.where(x >= 0, 1.0, -1.0) * scale).astype(x.dtype)


def nearest_index(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of an ascending table; ties go to the lower entry.

    A search on the midpoints, so the result is monotone in `values` even where table entries are
    closer together than the float spacing at the values (an argmin of distances is not).
    """
    midpoints = (table[:-1] + table[1:]) / 2.0
    return np.searchsorted(midpoints, values, side="left")


def _codebook(x: np.ndarray, spec: Codebook) -> np.ndarray:
    """Nearest centroid (ties to the lower one) of each element, per channel table if axis is set."""
    out = np.empty_like(x)
    tables = spec.tables()
    moved = np.moveaxis(x, spec.axis, 0) if spec.axis is not None else x[None]
    dst = np.moveaxis(out, spec.axis, 0) if spec.axis is not None else out[None]
    for ch in range(moved.shape[0]):
        table = np.sort(np.asarray(tables[ch if len(tables) > 1 else 0], dtype=np.float64))
        values = table * spec.centroid_scale
        dst[ch] = values[nearest_index(moved[ch].astype(np.float64), values)]
    return out


def fake_quant(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Quantize then dequantize in float: the fast approximation used for search."""
    if isinstance(spec, Uniform):
        return dequantize(quantize(x, spec), spec, x.dtype)
    if isinstance(spec, Thresholds):
        return apply_thresholds(x, spec)
    if isinstance(spec, Bipolar):
        return _bipolar(x, spec)
    if isinstance(spec, Codebook):
        return _codebook(x, spec)
    raise TypeError(f"no fake-quant rule for {type(spec).__name__}")


def apply_region(x: np.ndarray, region: Region) -> np.ndarray:
    """Zero the cropped edge rows/columns of an NCHW map."""
    h, w = x.shape[-2], x.shape[-1]
    out = x.copy()
    out[..., : region.top, :] = 0
    out[..., :, : region.left] = 0
    if region.right:
        out[..., :, w - region.right:] = 0
    if region.bottom:
        out[..., h - region.bottom:, :] = 0
    return out


# ----------------------------------------------------------------------------- integer rules
#
# Requantization multiplies an integer by a real M > 0 given as M0 * 2^-n, with M0 an integer of
# MULTIPLIER_BITS bits (M0 in [2^30, 2^31), so it fits int32) and n >= 0, followed by a rounding
# right shift (half to even, like everything else). M0 = round_half_even(mantissa(M) * 2^31).

MULTIPLIER_BITS = 31
_MAX_SHIFT = 62


def quantize_multiplier(m: float) -> tuple[int, int]:
    """(M0, n) with M0 * 2^-n the fixed-point form of m > 0 (M0 < 2^31, n <= 62).

    n < 0 (m >= 2^31, e.g. requantizing to a degenerate, all-zero activation's tiny scale) means
    a left shift; requantize handles it exactly in wide integers.
    """
    if not (math.isfinite(m) and m > 0):
        raise ValueError(f"requantization multiplier must be finite and > 0, got {m}")
    mantissa, exponent = math.frexp(m)  # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = round(mantissa * (1 << MULTIPLIER_BITS))  # Python's round() is half to even
    if m0 == 1 << MULTIPLIER_BITS:
        m0 //= 2
        exponent += 1
    n = MULTIPLIER_BITS - exponent
    if n > _MAX_SHIFT:  # tiny multipliers lose low mantissa bits rather than overflow the shift
        m0 = int(round_half_even(np.float64(m0) / 2.0 ** (n - _MAX_SHIFT)))
        n = _MAX_SHIFT
    return m0, n


def rounding_rshift(x: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """round_half_even(x / 2^n) for integer arrays (n >= 0, per element or broadcast)."""
    x = np.asarray(x)
    n = np.asarray(n, dtype=np.int64)
    if not np.any(n):
        return x
    one = np.ones_like(x)
    floor = x >> n
    rem = x - (floor << n)
    half = np.where(n > 0, one << np.maximum(n - 1, 0), 1)  # n == 0 never rounds (rem is 0)
    up = (rem > half) | ((rem == half) & ((floor & 1) == 1) & (n > 0))
    return floor + up.astype(x.dtype)


def requantize(acc: np.ndarray, m0: np.ndarray, n: np.ndarray, zero_point: np.ndarray | int,
               qmin: int, qmax: int) -> np.ndarray:
    """clip(zero_point + rounding_rshift(acc * M0, n), qmin, qmax), exact for any int64 acc.

    acc * M0 is computed in int64 when it cannot overflow (|acc| < 2^32), else in Python integers.
    """
    acc = np.asarray(acc, dtype=np.int64)
    m0 = np.asarray(m0, dtype=np.int64)
    if acc.size and (int(np.abs(acc).max()) >= 1 << 32 or np.any(np.asarray(n) < 0)):
        wide = acc.astype(object) * m0.astype(object)
        shifted = np.vectorize(_py_rounding_rshift, otypes=[object])(wide, np.asarray(n).astype(object))
        out = np.clip(shifted + np.asarray(zero_point).astype(object), qmin, qmax)
        return out.astype(np.int64)
    return np.clip(rounding_rshift(acc * m0, n) + zero_point, qmin, qmax).astype(np.int64)


def _py_rounding_rshift(x: int, n: int) -> int:
    if n <= 0:
        return x << -n
    floor = x >> n
    rem = x - (floor << n)
    half = 1 << (n - 1)
    return floor + (1 if rem > half or (rem == half and floor & 1) else 0)


def rounding_divide(a: np.ndarray, b: int) -> np.ndarray:
    """round_half_even(a / b) for integer a and a positive integer b, exactly."""
    a = np.asarray(a, dtype=np.int64)
    q, r = np.divmod(a, b)
    twice = 2 * r
    up = (twice > b) | ((twice == b) & ((q & 1) == 1))
    return q + up


def bias_to_accumulator(bias: np.ndarray, acc_scale: np.ndarray) -> np.ndarray:
    """A float bias in accumulator units: round_half_even(b / (sx * sw)) as int64 (DESIGN.md §3).

    Computed in float64 from the float32 bias and the float64 product of the float32 scales. A bias
    that needs more than 62 bits (a degenerate scale) is a clear error, never a wrapped int64.
    """
    units = round_half_even(np.asarray(bias, np.float64) / np.asarray(acc_scale, np.float64))
    if units.size and not np.all(np.abs(units) < 2.0**62):
        worst = float(np.max(np.abs(units)))
        raise QccError(f"a bias needs {worst:.3g} accumulator units (more than 62 bits): the layer's input or "
                       f"weight scale is degenerate (smallest accumulator scale {float(np.min(acc_scale)):.3g})")
    return units.astype(np.int64)


def integer_thresholds(spec: Thresholds, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Thresholds of `spec` on the integer codes q of an input worth scale * (q - zero_point).

    s (q - z) >= t  <=>  q >= z + ceil(t / s) for s > 0; computed in float64, infinities clipped to
    the int64 range. Integer thresholds (spec.input_scale set) on an input at exactly that scale
    are used as they are: q >= z + t. Returns a [C, T] (or [1, T]) int64 array, C along spec.axis.
    """
    s = np.asarray(scale, dtype=np.float64).reshape(-1, 1)
    z = np.asarray(zero_point, dtype=np.float64).reshape(-1, 1)
    own = None if spec.input_scale is None else np.asarray(spec.input_scale, np.float64).reshape(-1, 1)
    if own is not None and own.size in (1, s.size) and np.array_equal(np.broadcast_to(own, s.shape), s):
        q = np.asarray(spec.thresholds, dtype=np.float64) + z
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            q = np.ceil(spec.real_thresholds() / s) + z
    q = np.nan_to_num(q, nan=0.0, posinf=2.0**62, neginf=-(2.0**62))
    return np.clip(q, -(2.0**62), 2.0**62).astype(np.int64)


def step_thresholds(levels, lo: np.ndarray, hi: np.ndarray, n_levels: int) -> np.ndarray:
    """Integer thresholds of a non-decreasing step function, per channel.

    `levels(acc)` maps an int64 array [C, K] of accumulator values (row c for channel c) to integer
    levels; the result [C, n_levels] holds, for k = 1..n_levels, the smallest acc in [lo, hi] with
    levels(acc) >= k (-inf when already at lo, +inf when not reached by hi). Bisection evaluates
    the reference function itself, so the thresholds reproduce it exactly on every integer.
    """
    c = np.asarray(lo).reshape(-1, 1).shape[0]
    k = np.arange(1, n_levels + 1, dtype=np.int64)[None, :]
    a = np.broadcast_to(np.asarray(lo, np.int64).reshape(-1, 1), (c, n_levels)).copy()
    b = np.broadcast_to(np.asarray(hi, np.int64).reshape(-1, 1), (c, n_levels)).copy()
    below = levels(a) >= k  # reached already at lo
    above = levels(b) < k  # never reached
    while True:
        open_ = (b - a > 1) & ~below & ~above
        if not open_.any():
            break
        mid = a + (b - a) // 2
        reached = levels(mid) >= k
        b = np.where(open_ & reached, mid, b)
        a = np.where(open_ & ~reached, mid, a)
    out = b.astype(np.float64)
    out[below] = -np.inf
    out[above] = np.inf
    return out
