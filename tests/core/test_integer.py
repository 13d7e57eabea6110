"""Integer-exact semantics: the rounding rules, and agreement with fake-quant within 1 LSB."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.integer import QTensor, run_integer
from qcc.interp import run
from qcc.ir import Bipolar, Codebook, Graph, Region, TensorType, Thresholds, Uniform
from qcc.numerics import (
    fake_quant,
    quantize_multiplier,
    requantize,
    rounding_divide,
    rounding_rshift,
)


def _py_round_half_even_div(x: int, d: int) -> int:
    q, r = divmod(x, d)
    return q + (1 if 2 * r > d or (2 * r == d and q % 2) else 0)


@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=30), st.integers(0, 20))
def test_rounding_rshift_is_half_to_even_division(xs, n):
    got = rounding_rshift(np.array(xs, np.int64), n)
    assert got.tolist() == [_py_round_half_even_div(x, 2**n) for x in xs]


@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=30), st.integers(1, 1000))
def test_rounding_divide(xs, d):
    assert rounding_divide(np.array(xs, np.int64), d).tolist() == [_py_round_half_even_div(x, d) for x in xs]


@given(st.floats(1e-12, 1e6, allow_subnormal=False))
def test_quantize_multiplier_is_accurate(m):
    m0, n = quantize_multiplier(m)
    assert 0 < m0 < 2**31 and 0 <= n <= 62
    assert abs(m0 * 2.0**-n - m) <= m * 2.0**-30 + 2.0**-62


@given(st.lists(st.integers(-(2**45), 2**45), min_size=1, max_size=20), st.floats(1e-6, 10.0))
def test_requantize_wide_accumulators_exactly(accs, m):
    m0, n = quantize_multiplier(m)
    got = requantize(np.array(accs, np.int64), m0, n, 3, -(2**60), 2**60)
    assert got.tolist() == [_py_round_half_even_div(a * m0, 2**n) + 3 for a in accs]


def _conv_layer(draw, w_spec_kind: str):
    """One quantized conv: uniform input, weights of the given scheme, uniform or threshold output."""
    g = Graph("layer")
    cin, cout, side = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(3, 6))
    x_spec = Uniform(bits=8, signed=False, scale=draw(st.sampled_from([0.02, 0.05, 1 / 255])),
                     zero_point=draw(st.integers(0, 20)))
    x = g.add_input("x", TensorType((1, cin, side, side)), quant=x_spec)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    w = rng.normal(0, 0.4, (cout, cin, 3, 3)).astype(np.float32)
    if w_spec_kind == "uniform":
        scales = tuple(float(s) for s in rng.uniform(0.005, 0.05, cout))
        w_spec = Uniform(bits=draw(st.integers(2, 8)), scale=scales, zero_point=(0,) * cout, axis=0)
    elif w_spec_kind == "codebook":
        w_spec = Codebook(bits=2, centroids=(-7, -2, 1, 6), centroid_bits=8, centroid_scale=0.05)
    else:
        w_spec = Bipolar(scale=tuple(float(s) for s in rng.uniform(0.1, 0.5, cout)), axis=0)
    wc = g.add_constant("w", fake_quant(w, w_spec), quant=w_spec)
    b = g.add_constant("b", rng.normal(0, 0.2, cout).astype(np.float32))
    conv = g.add_node("Conv", [x, wc, b], attrs={"pads": [1, 1, 1, 1]}, name="conv")
    if draw(st.booleans()):
        conv.output.quant = Uniform(bits=8, signed=True, scale=draw(st.sampled_from([0.01, 0.03, 0.1])),
                                    zero_point=draw(st.integers(-10, 10)))
        lsb = conv.output.quant.scale
    else:
        rows = tuple(tuple(sorted(rng.normal(0, 0.5, 3).tolist())) for _ in range(cout))
        conv.output.quant = Thresholds(bits=2, thresholds=rows, out_scale=0.5)
        lsb = 0.5
    g.set_outputs([conv.output])
    x_data = rng.uniform(0, 255 * x_spec.scale, (1, cin, side, side)).astype(np.float32)
    return g, {"x": x_data}, lsb


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(["uniform", "codebook", "bipolar"]))
def test_integer_within_one_lsb_of_fake_quant(data, kind):
    g, inputs, lsb = _conv_layer(data.draw, kind)
    fake = run(g, inputs, mode="fake")["conv:out"]
    exact = run(g, inputs, mode="int")["conv:out"]
    assert np.max(np.abs(fake - exact)) <= lsb * 1.001  # one step, up to float32 rounding of the values


def test_bipolar_layer_is_xnor_popcount():
    """2 * popcount(xnor(a, w)) - N equals the integer dot product of the +-1 values."""
    rng = np.random.default_rng(0)
    g = Graph("xnor")
    x = g.add_input("x", TensorType((3, 64)), quant=Bipolar(scale=1.0))
    w = np.where(rng.normal(size=(5, 64)) >= 0, 1.0, -1.0).astype(np.float32)
    wc = g.add_constant("w", w, quant=Bipolar(scale=1.0))
    g.set_outputs(g.add_node("Gemm", [x, wc], attrs={"transB": 1}, name="fc").outputs)
    xs = rng.normal(size=(3, 64)).astype(np.float32)
    acc = run_integer(g, {"x": xs})["fc:out"]
    a_bits = np.packbits(xs >= 0, axis=1)
    w_bits = np.packbits(w >= 0, axis=1)
    xnor = ~(a_bits[:, None, :] ^ w_bits[None, :, :])
    popcount = np.unpackbits(xnor, axis=2).sum(axis=2).astype(np.int64)
    np.testing.assert_array_equal(acc.q, 2 * popcount - 64)


def test_codebook_weights_compute_through_centroid_table():
    g = Graph("cb")
    x = g.add_input("x", TensorType((1, 4)), quant=Uniform(bits=8, scale=0.5))
    spec = Codebook(bits=2, centroids=(-3, 0, 1, 5), centroid_bits=4, centroid_scale=0.25)
    idx = np.array([[0, 1, 2, 3], [3, 3, 0, 1]])
    w = (np.array(spec.centroids)[idx] * 0.25).astype(np.float32)
    g.set_outputs(g.add_node("Gemm", [x, g.add_constant("w", w, quant=spec)], attrs={"transB": 1},
                             name="fc").outputs)
    out = run_integer(g, {"x": np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)})["fc:out"]
    assert isinstance(out, QTensor)
    np.testing.assert_array_equal(out.q, [[2 * -3 + -4 * 0 + 1 * 1 + 6 * 5, 2 * 5 - 4 * 5 + 1 * -3 + 0]])
    assert float(out.scale) == 0.5 * 0.25


def test_crop_regions_are_exactly_zero():
    g = Graph("crop")
    x = g.add_input("x", TensorType((1, 1, 4, 4)), quant=Uniform(bits=8, signed=False, scale=0.1, zero_point=7))
    r = g.add_node("Relu", [x], name="r")
    r.output.quant = Uniform(bits=8, signed=False, scale=0.1, zero_point=7)
    r.output.region = Region(1, 0, 0, 2)
    g.set_outputs([r.output])
    out = run(g, {"x": np.full((1, 1, 4, 4), 1.0, np.float32)}, mode="int")["r:out"]
    assert out[0, 0, 0].tolist() == [0, 0, 0, 0] and out[0, 0, 1:, 2:].max() == 0
    assert out[0, 0, 1:, :2].min() == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_integer_mode_runs_every_random_graph(data):
    """Every scheme and layer kind has an integer rule or a float island; results are finite."""
    from qcc.testing import graph_inputs, graphs

    g = data.draw(graphs())
    x = data.draw(graph_inputs(g))
    out = run(g, x, mode="int")
    assert all(np.all(np.isfinite(v)) for v in out.values())


def test_degenerate_all_zero_activation_does_not_crash():
    """An activation that is all zeros on the calibration data gets a tiny scale; requantizing to it
    needs a multiplier >= 2^31 (a left shift), which must still be exact, not an internal error."""
    from qcc.pass_manager import PassContext, run_pipeline

    g = Graph("zero")
    x = g.add_input("x", TensorType((1, 3)))
    w1 = g.add_constant("w1", -np.ones((2, 3), np.float32))
    h = g.add_node("Gemm", [x, w1], attrs={"transB": 1}, name="fc1").output
    r = g.add_node("Relu", [h], name="relu").output
    w2 = g.add_constant("w2", np.ones((2, 2), np.float32))
    g.set_outputs(g.add_node("Gemm", [r, w2], attrs={"transB": 1}, name="fc2").outputs)
    run_pipeline(g, "calibrate,quantize", PassContext(config={"calib": {"x": np.ones((4, 3), np.float32)}}))
    out = run(g, {"x": np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], np.float32).reshape(2, 3)[:1]},
              mode="int")
    assert np.all(np.isfinite(out["fc2:out"]))
    m0, n = quantize_multiplier(2.0**40)
    assert n < 0 and requantize(np.array([3, -2]), m0, n, 0, -(2**62), 2**62).tolist() == [3 * 2**40, -2 * 2**40]


def test_a_bias_beyond_62_bits_is_a_clear_error_not_a_wrapped_int64():
    from qcc.errors import QccError
    from qcc.numerics import bias_to_accumulator

    assert bias_to_accumulator(np.float32([0.5, -0.25]), np.float64(0.25)).tolist() == [2, -1]
    with pytest.raises(QccError, match="more than 62 bits"):
        bias_to_accumulator(np.float32([0.1]), np.float64(2.0**-70))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 62), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_integer_contraction_is_exact_on_either_side_of_the_float64_limit(magnitude_bits, k, seed):
    """The float64 (BLAS) path of integer contractions must give int64's exact result, and large codes
    (partial sums >= 2^53) must fall back to int64 rather than round."""
    from qcc.integer import exact_contraction

    rng = np.random.default_rng(seed)
    limit = 2 ** min(magnitude_bits, 31)
    x = rng.integers(-limit, limit, (3, k), dtype=np.int64)
    w = rng.integers(-limit, limit, (k, 5), dtype=np.int64)
    want = (x.astype(object) @ w.astype(object))
    if np.all(np.abs(want) < 2**62):
        np.testing.assert_array_equal(exact_contraction(np.matmul, x, w, (-2,)), want.astype(np.int64))
