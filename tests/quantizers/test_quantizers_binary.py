"""fit_bipolar: sign with XNOR-Net scale mean|w|, per tensor or per channel; idempotent and monotone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.numerics import fake_quant
from qcc.quantizers import MIN_SCALE, fit_bipolar
from qcc.testing.tensors import arrays, shapes

_DATA = arrays(shapes(min_rank=1, max_rank=4, max_side=5), np.float32, min_value=-10.0, max_value=10.0)


@settings(max_examples=60, deadline=None)
@given(_DATA, st.booleans(), st.booleans())
def test_data_matches_the_spec_and_is_idempotent(x, per_channel, scaled):
    fit = fit_bipolar(x, per_channel_axis=0 if per_channel else None, scaled=scaled)
    assert np.array_equal(fit.data, fake_quant(x, fit.spec))
    assert np.array_equal(fake_quant(fit.data, fit.spec), fit.data)
    assert set(np.unique(fit.signs).tolist()) <= {-1, 1} and fit.signs.dtype == np.int8
    assert np.array_equal(np.sign(fit.data), fit.signs)


@settings(max_examples=60, deadline=None)
@given(_DATA)
def test_monotone_within_each_channel(x):
    fit = fit_bipolar(x, per_channel_axis=0)
    rows = np.sort(x.reshape(x.shape[0], -1), axis=1)
    q = fake_quant(rows.reshape(x.shape), fit.spec).reshape(rows.shape)
    assert np.all(np.diff(q, axis=1) >= 0)


def test_scale_is_mean_abs_per_channel():
    w = np.float32([[1.0, -3.0], [0.5, 0.5], [0.0, 0.0]])
    fit = fit_bipolar(w, per_channel_axis=0)
    assert fit.spec.axis == 0 and fit.spec.scale == pytest.approx((2.0, 0.5, MIN_SCALE))
    assert fit.data.tolist() == [[2.0, -2.0], [0.5, 0.5], [pytest.approx(MIN_SCALE)] * 2]
    assert fit_bipolar(w).spec.scale == pytest.approx(5.0 / 6.0)
    assert fit_bipolar(w, scaled=False).spec.scale == 1.0


def test_sign_of_zero_is_plus_one():
    assert fit_bipolar(np.float32([0.0, -0.0, -1.0])).signs.tolist() == [1, 1, -1]
