"""Quantizers by scheme name: what a per-layer configuration's `w_scheme` / `a_scheme` means.

Weights are fitted on their data; activations on their calibration statistics (the range chosen by
`calibrate`, and mean / std for k-quantile). Passes (quantize, sensitivity, bit assignment) call
these two functions so a scheme name means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from qcc.ir.quant import Bipolar, QuantSpec
from qcc.numerics import fake_quant
from qcc.quantizers._common import QuantizerError
from qcc.quantizers.binary import fit_bipolar
from qcc.quantizers.fixed_point import fit_dynamic_fixed_point, integer_length, quantized_bits
from qcc.quantizers.kmeans import fit_kmeans_gaussian, fit_kmeans_linear, fit_kmeans_lloyd
from qcc.quantizers.kquantile import fit_kquantile_weights, kquantile_thresholds
from qcc.quantizers.uniform import fit_uniform

__all__ = ["quantize_weights", "activation_spec"]


def quantize_weights(data: np.ndarray, scheme: str, bits: int, *, axis: int | None = 0,
                     centroid_bits: int = 8, seed: int = 0) -> tuple[QuantSpec, np.ndarray]:
    """(spec, quantized data) for a weight tensor; `axis` is the per-channel axis or None."""
    per_channel = axis is not None
    if scheme == "uniform":
        spec = fit_uniform(data, bits, symmetric=True, per_channel_axis=axis)
    elif scheme == "fixed":  # QKeras quantized_bits with enough integer bits for max |w|
        spec = quantized_bits(bits, max(0, integer_length(data, signed=True) - 1))
    elif scheme == "dynamic-fixed":
        spec = fit_dynamic_fixed_point(data, bits, signed=True, search=True)
    elif scheme == "bipolar":
        fit = fit_bipolar(data, per_channel_axis=axis)
        return fit.spec, fit.data.astype(data.dtype)
    elif scheme in ("kmeans-linear", "kmeans-gaussian", "kmeans-lloyd", "kquantile"):
        if per_channel and axis != 0:
            data_first = np.moveaxis(data, axis, 0)
        else:
            data_first = data
        options: dict[str, Any] = {"per_channel": per_channel, "centroid_bits": centroid_bits}
        fitter = {"kmeans-linear": fit_kmeans_linear, "kmeans-gaussian": fit_kmeans_gaussian,
                  "kmeans-lloyd": fit_kmeans_lloyd, "kquantile": fit_kquantile_weights}[scheme]
        if scheme == "kmeans-lloyd":
            options["seed"] = seed
        fit = fitter(data_first, bits, **options)
        out = fit.data if not (per_channel and axis != 0) else np.moveaxis(fit.data, 0, axis)
        spec = fit.spec if not (per_channel and axis != 0) else fit.spec.replace(axis=axis)
        return spec, out.astype(data.dtype)
    else:
        raise QuantizerError(f"unknown weight scheme '{scheme}'")
    return spec, fake_quant(data, spec)


def activation_spec(stats: Mapping[str, Any], scheme: str, bits: int) -> QuantSpec:
    """The quantizer of an activation from its calibration statistics (qcc.calibration)."""
    lo, hi = (float(v) for v in stats["range"])
    if scheme == "uniform":
        return fit_uniform(None, bits, symmetric=False, lo=lo, hi=hi)
    if scheme in ("fixed", "dynamic-fixed"):
        signed = lo < 0
        return fit_dynamic_fixed_point(np.array([lo, hi], np.float64), bits, signed=signed, search=False)
    if scheme == "bipolar":
        rms = float(np.hypot(stats["mean"], stats["std"]))
        return Bipolar(scale=rms if rms > 0 else 1.0)
    if scheme == "kquantile":
        return _kquantile(stats, bits)
    raise QuantizerError(f"unknown activation scheme '{scheme}'")


def _kquantile(stats: Mapping[str, Any], bits: int) -> QuantSpec:
    """Seed 003 thresholds, with the output levels scaled to the bins' medians (least squares through 0).

    The thresholds are equiprobable under N(mean, std) restricted to x > 0; level i stands for the
    median of its bin, and out_scale is the least-squares slope of those medians over the levels.
    """
    mean, std = float(stats["mean"]), float(stats["std"])
    if not std > 0:
        raise QuantizerError(f"k-quantile needs a spread-out activation; std is {std}")
    spec = kquantile_thresholds(mean, std, bits)
    z = ndtr((0.0 - mean) / std)
    levels = np.arange(2**bits, dtype=np.float64)
    medians = mean + std * ndtri(z + (1 - z) * (levels + 0.5) / 2**bits)
    slope = float(np.dot(levels, medians) / np.dot(levels, levels))
    out_scale = float(np.float32(slope)) if slope > 0 else 1.0
    return spec.replace(out_scale=out_scale, out_bias=0.0)


