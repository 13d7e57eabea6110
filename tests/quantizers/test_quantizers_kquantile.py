"""Seed 003 k-quantile activation thresholds: equiprobable bins above F(0), integer accumulator form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare, norm

from qcc.ir.quant import Thresholds
from qcc.numerics import apply_thresholds
from qcc.quantizers import fit_kquantile_thresholds, kquantile_thresholds


def _positive_level_counts(x: np.ndarray, spec: Thresholds) -> np.ndarray:
    levels = apply_thresholds(x, spec).astype(np.int64)
    return np.bincount(levels[x > 0], minlength=2**spec.bits)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize(("mean", "std"), [(0.5, 1.2), (900.0, 900.0), (-1.0, 2.0)])
def test_bins_are_equiprobable_on_gaussian_samples(bits, mean, std):
    x = np.random.default_rng(1234).normal(mean, std, 20000)
    for spec in (kquantile_thresholds(mean, std, bits, axis=0), fit_kquantile_thresholds(x, bits)):
        assert chisquare(_positive_level_counts(x, spec)).pvalue > 0.001


def test_thresholds_are_the_gaussian_quantiles_above_f0():
    mean, std, bits = 900.0, 900.0, 2  # seed 003 Fig. 1's example statistics
    spec = kquantile_thresholds(mean, std, bits)
    z = norm.cdf(0, mean, std)
    expected = norm.ppf(z + (1 - z) * np.arange(1, 4) / 4, mean, std)
    assert spec.thresholds == (pytest.approx(tuple(expected), rel=1e-9),)
    assert (spec.bits, spec.out_scale, spec.out_bias) == (2, 1.0, 0.0)
    assert all(t > 0 for t in spec.thresholds[0])


def test_relu_zeros_map_to_level_zero_even_with_little_positive_mass():
    for mean in (-5.0, -40.0, -1e6):
        spec = kquantile_thresholds(mean, 1.0, 3, axis=0)
        row = spec.thresholds[0]
        assert all(0 < a <= b for a, b in zip(row, row[1:])) and row[0] > 0
        assert apply_thresholds(np.float32([0.0, -1.0]), spec).tolist() == [0.0, 0.0]


@settings(max_examples=40, deadline=None)
@given(st.floats(-50, 50), st.floats(0.01, 50), st.integers(1, 8), st.floats(0.001, 2.0))
def test_integer_thresholds_reproduce_the_seed_bins_on_every_accumulator_value(mean, std, bits, scale):
    exact = kquantile_thresholds(mean, std, bits, axis=0)
    spec = kquantile_thresholds(mean, std, bits, input_scale=scale, axis=0)
    assert spec.input_scale == pytest.approx(scale) and all(float(t).is_integer() for t in spec.thresholds[0])
    t = np.asarray(exact.thresholds[0])
    acc = np.arange(int(np.floor(-10 / scale)), int(np.ceil(t[-1] / scale)) + 3, max(1, int(1 / scale) // 50))
    real = acc * spec.input_scale
    seed_level = (real[:, None] > t[None, :]).sum(axis=1)  # seed 003: level i on (t_i, t_{i+1}]
    assert np.array_equal(apply_thresholds(real.astype(np.float64), spec), seed_level)


@settings(max_examples=40, deadline=None)
@given(st.floats(-5, 5), st.floats(0.1, 5), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_levels_are_monotone_and_in_range(mean, std, bits, seed):
    spec = kquantile_thresholds(mean, std, bits, axis=0)
    x = np.sort(np.random.default_rng(seed).normal(mean, 3 * std, 500))
    levels = apply_thresholds(x, spec)
    assert np.all(np.diff(levels) >= 0) and levels.min() >= 0 and levels.max() <= 2**bits - 1
    # Each threshold is the lower edge of its level (FINN: level = number of thresholds <= x).
    t = np.asarray(spec.thresholds[0])
    assert np.array_equal(apply_thresholds(t, spec), np.searchsorted(t, t, side="right"))


def test_per_channel_thresholds_from_nchw_data():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (64, 3, 4, 4)) * np.array([1.0, 5.0, 0.2])[None, :, None, None]
    spec = fit_kquantile_thresholds(x, 2, channel_axis=1)
    assert spec.axis == 1 and len(spec.thresholds) == 3 and len(spec.thresholds[0]) == 3
    assert spec.thresholds[1][0] > spec.thresholds[0][0] > spec.thresholds[2][0]
    assert apply_thresholds(x, spec).shape == x.shape


def test_per_tensor_spec_axis_and_constant_channel():
    spec = fit_kquantile_thresholds(np.zeros((2, 3, 2, 2)), 2)
    assert spec.axis == 1 and len(spec.thresholds) == 1
    assert apply_thresholds(np.zeros((2, 3, 2, 2)), spec).max() == 0
    assert fit_kquantile_thresholds(np.float32([1.0, 2.0]), 1).axis == 0


def test_out_scale_and_bias_are_passed_through():
    spec = kquantile_thresholds([0.0, 1.0], [1.0, 2.0], 2, out_scale=0.5, out_bias=-1.0, axis=0)
    assert (spec.out_scale, spec.out_bias, spec.axis, len(spec.thresholds)) == (0.5, -1.0, 0, 2)
