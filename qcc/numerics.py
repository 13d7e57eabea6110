"""The numeric rules every backend must match, written once (DESIGN.md §3).

Rounding: round half to even everywhere (`np.rint`). It is what ONNX QuantizeLinear specifies, so a
QDQ export run by onnxruntime matches qcc bit for bit, and it has no bias on symmetric data.
Saturation: clip to [qmin, qmax] of the target format after rounding.
Quantization divides in the input's float type (float32), not float64: onnxruntime divides in
float32, and a float64 quotient can land on the other side of a .5 tie (6.079439 / 2.4317756 is
exactly 2.5 in float32), so only this order matches it bit for bit. Scales therefore act as float32.
"""

from __future__ import annotations

import numpy as np

from qcc.ir.quant import Bipolar, Codebook, QuantSpec, Region, Thresholds, Uniform

__all__ = ["round_half_even", "channel_shape", "quantize_affine", "quantize", "dequantize", "fake_quant",
           "apply_thresholds", "apply_region"]


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
    t = np.asarray(spec.thresholds, dtype=np.float64)  # C x T
    xm = np.moveaxis(x.astype(np.float64), spec.axis, -1)[..., None]  # ..., C, 1
    levels = (xm >= t).sum(axis=-1)
    out = spec.out_scale * levels + spec.out_bias
    return np.moveaxis(out, -1, spec.axis).astype(x.dtype)


def _bipolar(x: np.ndarray, spec: Bipolar) -> np.ndarray:
    scale = _param(spec.scale, x.ndim, spec.axis)
    return (np.where(x >= 0, 1.0, -1.0) * scale).astype(x.dtype)


def _codebook(x: np.ndarray, spec: Codebook) -> np.ndarray:
    """Nearest centroid (ties to the lower one) of each element, per channel table if axis is set."""
    out = np.empty_like(x)
    tables = spec.tables()
    moved = np.moveaxis(x, spec.axis, 0) if spec.axis is not None else x[None]
    dst = np.moveaxis(out, spec.axis, 0) if spec.axis is not None else out[None]
    for ch in range(moved.shape[0]):
        table = np.sort(np.asarray(tables[ch if len(tables) > 1 else 0], dtype=np.float64))
        values = table * spec.centroid_scale
        idx = np.abs(moved[ch][..., None].astype(np.float64) - values).argmin(axis=-1)
        dst[ch] = values[idx]
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
