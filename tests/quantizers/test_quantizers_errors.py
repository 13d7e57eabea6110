"""Bad input to every quantizer gets a one-line QuantizerError (a QccError) naming the function."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import QccError, VerifyError
from qcc.ir.quant import Codebook
from qcc.quantizers import (
    QuantizerError,
    codebook_memory_bits,
    encode_codebook,
    fit_bipolar,
    fit_dynamic_fixed_point,
    fit_kmeans_gaussian,
    fit_kmeans_linear,
    fit_kmeans_lloyd,
    fit_kquantile_thresholds,
    fit_kquantile_weights,
    fit_uniform,
    gaussian_range_k,
    integer_length,
    kmeans_1d,
    kquantile_thresholds,
    quantized_bits,
)

X = np.float32([-1.0, 0.5, 2.0])
BITS_FITS = {
    "fit_uniform": lambda b: fit_uniform(X, b),
    "fit_dynamic_fixed_point": lambda b: fit_dynamic_fixed_point(X, b),
    "quantized_bits": lambda b: quantized_bits(b, 0),
    "fit_kmeans_linear": lambda b: fit_kmeans_linear(X, b),
    "fit_kmeans_gaussian": lambda b: fit_kmeans_gaussian(X, b),
    "fit_kmeans_lloyd": lambda b: fit_kmeans_lloyd(X, b),
    "fit_kquantile_weights": lambda b: fit_kquantile_weights(X, b),
    "fit_kquantile_thresholds": lambda b: fit_kquantile_thresholds(X, b),
    "kquantile_thresholds": lambda b: kquantile_thresholds(0.0, 1.0, b),
    "gaussian_range_k": gaussian_range_k,
    "encode_codebook": lambda b: encode_codebook(X, [0.0], b),
}
DATA_FITS = {
    "fit_uniform": lambda d: fit_uniform(d, 8),
    "fit_dynamic_fixed_point": lambda d: fit_dynamic_fixed_point(d, 8),
    "integer_length": integer_length,
    "fit_kmeans_linear": lambda d: fit_kmeans_linear(d, 3),
    "fit_kmeans_gaussian": lambda d: fit_kmeans_gaussian(d, 3),
    "fit_kmeans_lloyd": lambda d: fit_kmeans_lloyd(d, 3),
    "fit_kquantile_weights": lambda d: fit_kquantile_weights(d, 3),
    "fit_kquantile_thresholds": lambda d: fit_kquantile_thresholds(d, 3),
    "fit_bipolar": fit_bipolar,
}


def _raises(fn, *match: str) -> str:
    with pytest.raises(QuantizerError) as info:
        fn()
    message = str(info.value)
    assert isinstance(info.value, QccError) and "\n" not in message
    for m in match:
        assert m in message, message
    return message


@pytest.mark.parametrize("name", sorted(BITS_FITS))
@pytest.mark.parametrize(("bits", "why"), [(0, "got 0"), (17, "got 17"), (-2, "got -2"), (2.5, "2.5"),
                                           (True, "True"), ("4", "'4'"), (None, "None")])
def test_bad_bit_widths(name, bits, why):
    _raises(lambda: BITS_FITS[name](bits), name, "bits", why)


@pytest.mark.parametrize("name", sorted(DATA_FITS))
@pytest.mark.parametrize(("data", "why"), [
    (np.zeros((0, 3), np.float32), "empty"),
    ([], "empty"),
    (np.float32([1.0, np.nan]), "non-finite"),
    (np.float32([np.inf, 1.0]), "non-finite"),
    (np.array([1 + 2j]), "real numbers"),
    (np.array(["a"]), "real numbers"),
    (None, "no data"),
    (np.float64([1e120]), "2^100"),
])
def test_bad_data(name, data, why):
    _raises(lambda: DATA_FITS[name](data), name, why)


def test_uniform_option_errors():
    _raises(lambda: fit_uniform(X, 1), "at least 2 bits")
    _raises(lambda: fit_uniform(X, 4, signed=False), "negative values")
    _raises(lambda: fit_uniform(X, 1, narrow=True, symmetric=False), "narrow")
    _raises(lambda: fit_uniform(X, 4, per_channel_axis=1), "axis 1 is out of range")
    _raises(lambda: fit_uniform(X, 4, per_channel_axis="0"), "axis must be an integer")
    _raises(lambda: fit_uniform(X, 4, lo=3.0, hi=1.0), "lo > hi")
    _raises(lambda: fit_uniform(X, 4, lo=float("nan")), "lo must be finite")
    _raises(lambda: fit_uniform(X, 4, lo=[0.0, 1.0]), "per-tensor")
    _raises(lambda: fit_uniform(np.zeros((3, 2)), 4, per_channel_axis=0, hi=[1.0, 2.0]), "2 values for 3 channels")
    _raises(lambda: fit_uniform(None, 4, lo=0.0), "no data")
    _raises(lambda: fit_uniform(None, 4, lo=0.0, hi=1.0, per_channel_axis=-1), "non-negative")


def test_fixed_point_option_errors():
    _raises(lambda: quantized_bits(1, 0), "fit_bipolar")
    _raises(lambda: quantized_bits(4, 1, symmetric=True, keep_negative=False), "keep_negative")
    _raises(lambda: quantized_bits(4, 200), "fractional bits")
    _raises(lambda: quantized_bits(4, 1.5), "integer must be an integer")
    _raises(lambda: integer_length(X, signed=False), "negative values")
    _raises(lambda: fit_dynamic_fixed_point(X, 8, signed=False), "fit_dynamic_fixed_point", "negative values")
    _raises(lambda: fit_dynamic_fixed_point(X, 8, candidates=[1.5]), "candidate")


def test_codebook_errors():
    _raises(lambda: encode_codebook(X, [0.0, 1.0, 2.0, 3.0, 4.0], 2), "5 values", "2-bit", "at most 4")
    _raises(lambda: encode_codebook(X, [], 2), "empty")
    _raises(lambda: fit_kmeans_linear(X, 3, centroid_bits=1),
            "fit_kmeans_linear: centroid_bits must be in [2, 24], got 1")
    _raises(lambda: fit_kmeans_lloyd(X, 3, centroid_bits=25), "centroid_bits")
    _raises(lambda: fit_kmeans_lloyd(X, 3, max_iter=0), "max_iter")
    _raises(lambda: kmeans_1d(X, 0), "k must be")
    _raises(lambda: fit_kmeans_gaussian(X, 3, n_std=0.0), "n_std")
    _raises(lambda: fit_kmeans_linear(np.float32(1.0), 3, per_channel=True), "per_channel")
    _raises(lambda: codebook_memory_bits(-1, 4, 16, 16), "n_weights")
    _raises(lambda: codebook_memory_bits(10, 0, 16, 16), "bits")
    with pytest.raises(VerifyError, match="do not fit 2-bit indices"):  # the spec itself refuses too
        Codebook(bits=2, centroids=(0, 1, 2, 3, 4))


def test_kquantile_errors():
    _raises(lambda: kquantile_thresholds(0.0, 0.0, 2), "std must be > 0")
    _raises(lambda: kquantile_thresholds(0.0, -1.0, 2), "std must be > 0")
    _raises(lambda: kquantile_thresholds(float("nan"), 1.0, 2), "mean must be finite")
    _raises(lambda: kquantile_thresholds([0.0, 1.0], [1.0, 1.0, 1.0], 2), "lengths differ")
    _raises(lambda: kquantile_thresholds(0.0, 1.0, 2, input_scale=0.0), "input_scale must be > 0")
    _raises(lambda: kquantile_thresholds("a", 1.0, 2), "mean must be")
    _raises(lambda: fit_kquantile_thresholds(X, 2, channel_axis=3), "axis 3")


def test_bipolar_errors():
    _raises(lambda: fit_bipolar(X, per_channel_axis=2), "fit_bipolar", "axis 2")
