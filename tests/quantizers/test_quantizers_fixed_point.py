"""QKeras quantized_bits (seed 000) and QUENN dynamic fixed point (seed 002 §4.1)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.numerics import fake_quant
from qcc.quantizers import fit_dynamic_fixed_point, integer_length, quantized_bits, quantized_bits_formula
from qcc.testing.tensors import arrays, shapes

_X = np.float32([-3.0, -2.1, -0.13, 0.125, 0.375, 0.6, 1.0, 1.76, 1.9, 5.0])


# Hand computed: x * 2^(bits-int-1), round half to even, clip, times 2^(int-bits+1).
@pytest.mark.parametrize(("bits", "integer", "symmetric", "keep_negative", "expected"), [
    # 4 bits, 1 integer bit: x*4 = -12 -8.4 -0.52 0.5 1.5 2.4 4 7.04 7.6 20 -> clip [-8, 7] -> /4
    (4, 1, False, True, [-2.0, -2.0, -0.25, 0.0, 0.5, 0.5, 1.0, 1.75, 1.75, 1.75]),
    # symmetric: clip [-7, 7]
    (4, 1, True, True, [-1.75, -1.75, -0.25, 0.0, 0.5, 0.5, 1.0, 1.75, 1.75, 1.75]),
    # unsigned, 2 integer bits: x*4, clip [0, 15] -> /4
    (4, 2, False, False, [0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.75, 2.0, 3.75]),
    # 8 bits, 0 integer bits: x*128 -> clip [-128, 127] -> /128
    (8, 0, False, True, [-1.0, -1.0, -0.1328125, 0.125, 0.375, 0.6015625, 0.9921875, 0.9921875, 0.9921875,
                         0.9921875]),
    # 3 bits, 3 integer bits (scale 2): x/2 = -1.5 -1.05 ... 2.5 -> round -2 -1 0 0 0 0 0 1 1 2 -> clip [-4, 3]
    (3, 3, False, True, [-4.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 4.0]),
])
def test_quantized_bits_matches_a_hand_computed_table(bits, integer, symmetric, keep_negative, expected):
    spec = quantized_bits(bits, integer, symmetric=symmetric, keep_negative=keep_negative)
    expected = np.float32(expected)
    assert np.array_equal(quantized_bits_formula(_X, bits, integer, symmetric=symmetric,
                                                 keep_negative=keep_negative), expected)
    assert np.array_equal(fake_quant(_X, spec), expected)


def test_quantized_bits_spec_is_the_fixed_point_uniform():
    spec = quantized_bits(8, 3)
    assert (spec.bits, spec.signed, spec.scale, spec.zero_point, spec.frac_bits) == (8, True, 2.0**-4, 0, 4)
    assert quantized_bits(8, 3, symmetric=True).narrow
    assert quantized_bits(6, 2, keep_negative=False).frac_bits == 4


@settings(max_examples=60, deadline=None)
@given(arrays(shapes(max_rank=2), np.float32, min_value=-300, max_value=300), st.integers(1, 16),
       st.integers(-4, 12), st.booleans(), st.booleans())
def test_formula_and_spec_agree_and_are_idempotent_and_monotone(x, bits, integer, symmetric, keep_negative):
    if (keep_negative and bits == 1) or (symmetric and not keep_negative):
        return
    spec = quantized_bits(bits, integer, symmetric=symmetric, keep_negative=keep_negative)
    q = fake_quant(x, spec)
    assert np.array_equal(q, quantized_bits_formula(x, bits, integer, symmetric=symmetric,
                                                    keep_negative=keep_negative))
    assert np.array_equal(fake_quant(q, spec), q)
    ordered = np.sort(x.ravel())
    assert np.all(np.diff(fake_quant(ordered, spec)) >= 0)


@pytest.mark.parametrize(("data", "signed", "il"), [
    ([4.0], True, 3),        # ceil(log2 4) = 2, plus the sign bit
    ([4.1, -1.0], True, 4),
    ([-4.1, 1.0], True, 4),  # max |V|
    ([0.3], True, 0),        # ceil(log2 0.3) = -1
    ([0.3], False, -1),
    ([1.0], False, 0),
    ([0.0, 0.0], True, 1),
    ([0.0], False, 0),
])
def test_integer_length_eq2(data, signed, il):
    assert integer_length(np.float32(data), signed=signed) == il


def test_dynamic_fixed_point_without_search_is_eq3():
    x = np.float32([0.9, -0.2, 0.05])  # IL = 0 + 1, FL = 8 - 1
    assert fit_dynamic_fixed_point(x, 8, search=False).frac_bits == 7


def test_dynamic_fixed_point_unsigned_gains_a_bit():
    x = np.float32([0.9, 0.2, 0.05])
    spec = fit_dynamic_fixed_point(x, 8, search=False, signed=False)
    assert (spec.signed, spec.frac_bits) == (False, 8)


def test_search_lowers_fl_when_the_maximum_would_saturate():
    # max = 4 exactly: eq. 3 gives IL 3, FL = 4 - 3 = 1 and 4.0 saturates to 3.5; FL 0 represents it.
    x = np.float32([4.0, 4.0, 4.0, 1.0])
    assert fit_dynamic_fixed_point(x, 4, search=False).frac_bits == 1
    assert fit_dynamic_fixed_point(x, 4).frac_bits == 0


def test_cap_keeps_fl_at_or_below_eq3_and_uncapped_may_clip_outliers():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 0.05, 4000), [6.0]]).astype(np.float32)  # one outlier
    fl0 = fit_dynamic_fixed_point(x, 6, search=False).frac_bits
    assert fit_dynamic_fixed_point(x, 6).frac_bits <= fl0
    assert fit_dynamic_fixed_point(x, 6, cap=False).frac_bits > fl0


def _l2(x, spec):
    return float(np.linalg.norm(x.astype(np.float64) - fake_quant(x, spec)))


@settings(max_examples=50, deadline=None)
@given(arrays(shapes(max_rank=2, max_side=8), np.float32, min_value=-1000, max_value=1000),
       st.integers(2, 16), st.booleans())
def test_search_never_has_larger_l2_error_than_eq3(x, bits, cap):
    plain = fit_dynamic_fixed_point(x, bits, search=False)
    searched = fit_dynamic_fixed_point(x, bits, cap=cap)
    assert _l2(x, searched) <= _l2(x, plain)
    assert np.array_equal(fake_quant(fake_quant(x, searched), searched), fake_quant(x, searched))


def test_explicit_candidates_are_searched():
    x = np.float32([0.3, -0.7, 0.11])
    spec = fit_dynamic_fixed_point(x, 8, candidates=[2, 3], cap=False)
    assert spec.frac_bits in (2, 3, 7)
