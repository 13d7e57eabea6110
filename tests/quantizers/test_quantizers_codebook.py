"""Codebook quantizers: QUENN linear / Gaussian (seed 002 §4.2), Lloyd's k-means, seed 003's CDF weights.

Every fit decodes exactly (table[index] * centroid_scale == data, and data lies on the spec's grid),
is idempotent and monotone, and accounts memory per seed 002 eq. 5.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from qcc.numerics import fake_quant
from qcc.quantizers import (
    codebook_memory_bits,
    encode_codebook,
    fit_kmeans_gaussian,
    fit_kmeans_linear,
    fit_kmeans_lloyd,
    fit_kquantile_weights,
    gaussian_range_k,
    kmeans_1d,
)
from qcc.testing.tensors import arrays, shapes

FITS = {
    "linear": fit_kmeans_linear,
    "gaussian": fit_kmeans_gaussian,
    "lloyd": fit_kmeans_lloyd,
    "kquantile": fit_kquantile_weights,
}
_DATA = arrays(shapes(min_rank=1, max_rank=3, max_side=6), np.float32, min_value=-20.0, max_value=20.0)


def _decode(fit) -> np.ndarray:
    spec = fit.spec
    tables = [np.asarray(t, dtype=np.float64) for t in spec.tables()]
    rows = fit.indices.reshape(len(tables), -1) if spec.axis is not None else fit.indices.reshape(1, -1)
    decoded = np.stack([t[i] * spec.centroid_scale for t, i in zip(tables, rows)])
    return decoded.astype(fit.data.dtype).reshape(fit.data.shape)


@settings(max_examples=25, deadline=None)
@given(_DATA, st.integers(1, 8), st.sampled_from(sorted(FITS)), st.booleans())
def test_decode_is_exact_idempotent_and_monotone(x, bits, scheme, per_channel):
    fit = FITS[scheme](x, bits, per_channel=per_channel)
    spec = fit.spec
    assert fit.indices.shape == x.shape and fit.data.shape == x.shape and fit.data.dtype == x.dtype
    assert all(len(t) <= 2**bits for t in spec.tables())
    assert all(list(t) == sorted(set(t)) for t in spec.tables())
    assert np.array_equal(_decode(fit), fit.data)
    assert np.array_equal(fake_quant(fit.data, spec), fit.data)
    assert np.array_equal(fake_quant(fake_quant(x, spec), spec), fake_quant(x, spec))
    rows = x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)
    decoded = fit.data.reshape(rows.shape)
    for row, dec in zip(rows, decoded):
        order = np.argsort(row, kind="stable")
        assert np.all(np.diff(dec[order]) >= 0)


@settings(max_examples=15, deadline=None)
@given(_DATA, st.integers(9, 16), st.sampled_from(sorted(FITS)))
def test_wide_codebooks_decode_exactly(x, bits, scheme):
    fit = FITS[scheme](x, bits)
    assert np.array_equal(_decode(fit), fit.data)
    assert np.array_equal(fake_quant(fit.data, fit.spec), fit.data)


@settings(max_examples=25, deadline=None)
@given(_DATA, st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_spec_is_monotone_on_any_points(x, bits, seed):
    # Points up to one data span beyond the data. (qcc.numerics.fake_quant picks the nearest centroid
    # by |y - c| in float64, which cannot order centroids closer than ulp(y); far larger inputs than the
    # fitted data can hit that.)
    spec = fit_kmeans_lloyd(x, bits).spec
    lo, hi = float(x.min()), float(x.max())
    span = max(hi - lo, abs(lo), abs(hi))
    y = np.sort(np.random.default_rng(seed).uniform(lo - span, hi + span, 300).astype(np.float32))
    assert np.all(np.diff(fake_quant(y, spec)) >= 0)


@settings(max_examples=20, deadline=None)
@given(_DATA, st.integers(1, 6), st.integers(0, 1000))
def test_lloyd_is_deterministic_and_refitting_its_output_is_a_fixed_point(x, bits, seed):
    a = fit_kmeans_lloyd(x, bits, seed=seed)
    b = fit_kmeans_lloyd(x.copy(), bits, seed=seed)
    assert a.spec == b.spec and np.array_equal(a.indices, b.indices)
    again = fit_kmeans_lloyd(a.data, bits, seed=seed + 1)
    assert np.array_equal(again.data, a.data)


def _l2(fit, x) -> float:
    return float(np.linalg.norm(fit.data.astype(np.float64) - x))


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_lloyd_beats_linear_on_gaussian_data(bits):
    for seed in range(3):
        x = np.random.default_rng(seed).normal(0.1, 0.5, 3000).astype(np.float32)
        assert _l2(fit_kmeans_lloyd(x, bits, seed=seed), x) <= _l2(fit_kmeans_linear(x, bits), x)


def test_gaussian_beats_linear_on_gaussian_data():
    x = np.random.default_rng(7).normal(0, 1, 20000).astype(np.float32)
    for bits in (3, 4, 6):
        assert _l2(fit_kmeans_gaussian(x, bits), x) < _l2(fit_kmeans_linear(x, bits), x)


def test_gaussian_range_k_is_maxs_optimal_uniform_quantizer():
    # Max (1960), Table II optimal uniform step for N levels of N(0, 1): k = N * step / 2.
    for bits, step in ((1, 1.596), (2, 0.9957), (3, 0.5860), (4, 0.3352), (5, 0.1881)):
        assert gaussian_range_k(bits) == pytest.approx(2**bits * step / 2, abs=2e-3 * 2**bits)


def test_linear_steps_1_to_5():
    x = np.float32([0.0, 0.1, 0.49, 0.5, 0.99, 1.0])  # range [0, 1], 4 intervals of 0.25
    fit = fit_kmeans_linear(x, 2, compact=False)
    assert np.array_equal(fit.indices, [0, 0, 1, 2, 3, 3])
    assert np.allclose(fit.data, [0.125, 0.125, 0.375, 0.625, 0.875, 0.875], atol=1e-4)
    assert len(fit.spec.centroids) == 4


def test_gaussian_range_saturates_outliers_into_the_end_intervals():
    x = np.concatenate([np.random.default_rng(0).normal(0, 1, 1000), [50.0]]).astype(np.float32)
    fit = fit_kmeans_gaussian(x, 3, n_std=2.0)
    top = float(np.mean(x.astype(np.float64)) + 2.0 * np.std(x.astype(np.float64)))
    assert fit.data[-1] == fit.data.max() < top < 50.0


def test_compact_drops_unused_intervals():
    x = np.float32([0.0, 0.01, 1.0])
    assert len(fit_kmeans_linear(x, 4).spec.centroids) == 2
    assert len(fit_kmeans_linear(x, 4, compact=False).spec.centroids) == 16


def test_fewer_distinct_values_than_clusters_are_represented_exactly():
    x = np.float32([0.5, -2.0, 0.5, 1.25, -2.0])
    fit = fit_kmeans_lloyd(x, 4)
    assert len(fit.spec.centroids) == 3 and np.array_equal(fit.data, x)
    assert np.array_equal(kmeans_1d(x, 16), [-2.0, 0.5, 1.25])


def test_constant_data_gets_one_centroid():
    for scheme, fit_fn in FITS.items():
        fit = fit_fn(np.full((2, 3), 0.75, np.float32), 3)
        assert fit.spec.centroids == (fit.spec.centroids[0],), scheme
        assert np.array_equal(fit.data, np.full((2, 3), 0.75, np.float32)), scheme


def test_per_channel_tables_along_axis_0():
    w = np.stack([np.linspace(-1, 1, 12), np.linspace(0, 8, 12)]).reshape(2, 3, 4).astype(np.float32)
    fit = fit_kmeans_lloyd(w, 2, per_channel=True)
    assert fit.spec.axis == 0 and len(fit.spec.centroids) == 2
    assert all(len(t) == 4 for t in fit.spec.centroids)
    assert fit.data[0].min() >= -1 and fit.data[1].min() >= 0
    assert np.array_equal(fake_quant(fit.data, fit.spec), fit.data)


def test_centroid_table_is_fixed_point_with_power_of_two_scale():
    fit = fit_kmeans_linear(np.float32([-3.0, 0.2, 2.9]), 3, centroid_bits=8)
    mantissa, _ = np.frexp(fit.spec.centroid_scale)
    assert mantissa == 0.5 and fit.spec.centroid_bits == 8
    assert max(abs(c) for c in fit.spec.centroids) <= 127


def test_kquantile_weight_bins_are_equiprobable_and_centres_are_bin_medians():
    x = np.random.default_rng(5).normal(0.2, 0.7, 40000).astype(np.float32)
    fit = fit_kquantile_weights(x, 3, compact=False)
    counts = np.bincount(fit.indices.ravel(), minlength=8)
    assert np.all(np.abs(counts / x.size - 1 / 8) < 0.01)
    mean, std = float(np.mean(x.astype(np.float64))), float(np.std(x.astype(np.float64)))
    medians = mean + std * norm.ppf((np.arange(8) + 0.5) / 8)
    assert np.allclose(np.asarray(fit.spec.centroids) * fit.spec.centroid_scale, medians, atol=1e-4)


def test_encode_codebook_uses_the_given_table():
    fit = encode_codebook(np.float32([-1.0, 0.1, 0.3, 2.0]), [0.0, 0.25, -1.0, 2.0], 2)
    assert np.array_equal(fit.data, np.float32([-1.0, 0.0, 0.25, 2.0]))
    assert np.array_equal(fit.indices, [0, 1, 2, 3])


def test_memory_accounting_eq5():
    assert codebook_memory_bits(1000, 4, 16, 16) == 1000 * 4 + 16 * 16
    fit = fit_kmeans_linear(np.linspace(-1, 1, 100).astype(np.float32), 3, compact=False)
    assert fit.memory_bits == 100 * 3 + 8 * 16
    per_channel = fit_kmeans_lloyd(np.linspace(-1, 1, 100).reshape(4, 25).astype(np.float32), 2, per_channel=True)
    assert per_channel.memory_bits == 100 * 2 + per_channel.table_size * 16 and per_channel.table_size == 16
