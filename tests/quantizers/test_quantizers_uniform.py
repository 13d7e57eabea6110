"""fit_uniform: covers the fitted range, error <= scale/2 inside it, idempotent, monotone, per-channel."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.ir.quant import Uniform
from qcc.numerics import fake_quant, quantize
from qcc.quantizers import fit_uniform
from qcc.testing.tensors import arrays, shapes

_DATA = arrays(shapes(min_rank=1, max_rank=3, max_side=5), np.float32, min_value=-50.0, max_value=50.0)
_OPTIONS = st.fixed_dictionaries({
    "bits": st.integers(2, 16),
    "symmetric": st.booleans(),
    "narrow": st.booleans(),
})


def _bound(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """scale/2 plus float32 rounding of the quotient x/scale and of the dequantized value."""
    slack = 2.0**-22
    return scale * (0.5 + slack * (np.abs(x) / scale + np.abs(zero_point))) + slack * np.abs(x)


def _params(spec: Uniform, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    shape = [1] * ndim
    if spec.axis is not None:
        shape[spec.axis] = -1
    return (np.asarray(spec.scale, dtype=np.float64).reshape(shape),
            np.asarray(spec.zero_point, dtype=np.float64).reshape(shape))


@settings(max_examples=60, deadline=None)
@given(_DATA, _OPTIONS, st.booleans())
def test_min_max_fit_covers_the_data_within_half_a_step(x, options, per_channel):
    spec = fit_uniform(x, per_channel_axis=0 if per_channel else None, **options)
    scale, zp = _params(spec, x.ndim)
    err = np.abs(fake_quant(x, spec).astype(np.float64) - x)
    assert np.all(err <= _bound(x, scale, zp))


@settings(max_examples=40, deadline=None)
@given(_DATA, _OPTIONS, st.integers(0, 2**32 - 1))
def test_every_point_inside_the_range_is_within_half_a_step(x, options, seed):
    spec = fit_uniform(x, **options)
    lo, hi = float(x.min()), float(x.max())
    y = np.random.default_rng(seed).uniform(lo, hi, size=200).astype(np.float32)
    y = np.concatenate([y, np.float32([lo, hi])])
    scale, zp = _params(spec, 1)
    err = np.abs(fake_quant(y, spec).astype(np.float64) - y)
    assert np.all(err <= _bound(y, scale, zp))


@settings(max_examples=60, deadline=None)
@given(_DATA, _OPTIONS, st.booleans())
def test_idempotent(x, options, per_channel):
    spec = fit_uniform(x, per_channel_axis=-1 if per_channel else None, **options)
    once = fake_quant(x, spec)
    assert np.array_equal(fake_quant(once, spec), once)


@settings(max_examples=60, deadline=None)
@given(_DATA, _OPTIONS, st.integers(0, 2**32 - 1))
def test_monotone_inside_and_outside_the_range(x, options, seed):
    spec = fit_uniform(x, **options)
    wide = np.random.default_rng(seed).uniform(-200, 200, size=100).astype(np.float32)
    y = np.sort(np.concatenate([x.ravel(), wide]))
    assert np.all(np.diff(fake_quant(y, spec)) >= 0)


@settings(max_examples=40, deadline=None)
@given(_DATA, st.integers(2, 16))
def test_per_channel_monotone_within_each_channel(x, bits):
    spec = fit_uniform(x, bits, per_channel_axis=0, symmetric=False)
    rows = np.sort(x.reshape(x.shape[0], -1), axis=1)
    q = fake_quant(rows.reshape(x.shape), spec).reshape(rows.shape)
    assert np.all(np.diff(q, axis=1) >= 0)


def test_signed_is_chosen_from_the_sign_of_the_data():
    assert fit_uniform(np.float32([0.0, 1.0, 3.0]), 8).signed is False
    assert fit_uniform(np.float32([-0.1, 1.0]), 8).signed is True
    assert fit_uniform(np.float32([0.0, 1.0]), 8, signed=True).signed is True


def test_symmetric_scale_and_extremes():
    spec = fit_uniform(np.float32([-2.0, 0.5, 1.0]), 8)
    assert spec.zero_point == 0 and spec.scale == pytest.approx(2.0 / 127, rel=2e-7)
    assert spec.scale >= 2.0 / 127  # rounded up to float32: never shrinks the range
    assert quantize(np.float32([-2.0]), spec)[0] == -127
    unsigned = fit_uniform(np.float32([0.0, 3.0]), 4)
    assert unsigned.scale == pytest.approx(3.0 / 15) and quantize(np.float32([3.0]), unsigned)[0] == 15


def test_asymmetric_zero_point_is_an_integer_and_zero_is_exact():
    x = np.float32([-1.0, 0.0, 3.0])
    spec = fit_uniform(x, 8, symmetric=False, signed=False)
    assert isinstance(spec.zero_point, int) and 0 <= spec.zero_point <= 255
    assert spec.scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert fake_quant(np.float32([0.0]), spec)[0] == 0.0
    q = quantize(x, spec)
    assert q[0] == 0 and q[-1] == 255


def test_asymmetric_range_is_widened_to_contain_zero():
    spec = fit_uniform(np.float32([2.0, 4.0]), 4, symmetric=False)
    assert spec.zero_point == 0 and spec.scale == pytest.approx(4.0 / 15)


def test_all_zero_data_gets_scale_one():
    """Not a tiny scale: the next layer's accumulator scale would make its bias overflow int64."""
    for symmetric in (True, False):
        spec = fit_uniform(np.zeros((3, 2), np.float32), 8, symmetric=symmetric, per_channel_axis=1)
        assert all(s == 1.0 for s in spec.scale)
        assert np.array_equal(fake_quant(np.zeros((3, 2), np.float32), spec), np.zeros((3, 2), np.float32))


def test_per_channel_scales_follow_each_channel():
    w = np.stack([np.linspace(-1, 1, 5), np.linspace(-4, 2, 5)]).astype(np.float32)
    spec = fit_uniform(w, 8, per_channel_axis=0)
    assert spec.axis == 0 and spec.scale == pytest.approx((1 / 127, 4 / 127), rel=1e-6)


def test_calibrated_range_replaces_min_max_and_data_may_be_absent():
    spec = fit_uniform(None, 8, lo=-1.0, hi=6.0, symmetric=False)
    assert spec.signed is True and spec.scale == pytest.approx(7.0 / 255, rel=1e-6)
    clipped = fit_uniform(np.float32([-10.0, 10.0]), 8, lo=-1.0, hi=1.0)
    assert clipped.scale == pytest.approx(1 / 127, rel=1e-6)
    per_channel = fit_uniform(None, 4, per_channel_axis=1, lo=[0.0, 0.0], hi=[1.0, 3.0])
    assert per_channel.axis == 1 and per_channel.scale == pytest.approx((1 / 15, 3 / 15), rel=1e-6)


def test_float64_data_is_quantized_in_float64():
    x = np.linspace(-1, 1, 7)
    spec = fit_uniform(x, 4)
    assert fake_quant(x, spec).dtype == np.float64


def test_one_bit_unsigned_and_asymmetric_work():
    spec = fit_uniform(np.float32([0.0, 1.0]), 1)
    assert (spec.bits, spec.signed, spec.scale) == (1, False, 1.0)
    spec = fit_uniform(np.float32([-1.0, 1.0]), 1, symmetric=False)  # grid {-2, 0} (0 stays exact)
    assert spec.scale == 2.0
    assert np.all(np.abs(fake_quant(np.float32([-1.0, 0.0, 1.0]), spec) - np.float32([-1.0, 0.0, 1.0])) <= 1.0)
