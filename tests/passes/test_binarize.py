"""binarize: bipolar layers (XNOR-popcount) and seed 001's wider-first / higher-precision-last rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.errors import PassError, QccError
from qcc.examples import MODEL, load_split
from qcc.frontend import load_model
from qcc.frontend.qir import print_graph
from qcc.integer import QTensor, run_integer
from qcc.interp import run
from qcc.ir import Bipolar, Graph, TensorType, Uniform
from qcc.ir.verify import verify
from qcc.pass_manager import PassContext, run_pipeline
from qcc.passes.binarize import BinarizePass, first_and_last_layers
from qcc.testing import GraphOptions, graph_inputs, graphs

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


@pytest.fixture(scope="module")
def calib():
    return load_split("calib")[0]


def _example(pipeline: str, calib: np.ndarray) -> Graph:
    g = load_model(MODEL)
    run_pipeline(g, pipeline, PassContext(config={"calib": {"x": calib}}))
    return g


# ------------------------------------------------------------------------------ XNOR-popcount
def _xnor_popcount_dot(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_k sign(a[n, k]) sign(w[m, k]) as 2 popcount(xnor) - K on bits packed 8 to a byte.

    Bit 1 stands for +1 (a value >= 0) and 0 for -1; the pad bits of the last byte are masked out.
    """
    k = a.shape[1]
    pa = np.packbits(a >= 0, axis=1)  # [N, ceil(K/8)], big-endian bit order, zero padded
    pw = np.packbits(w >= 0, axis=1)  # [M, ceil(K/8)]
    xnor = ~(pa[:, None, :] ^ pw[None, :, :])
    mask = np.full(pa.shape[1], 0xFF, np.uint8)
    if k % 8:
        mask[-1] = (0xFF << (8 - k % 8)) & 0xFF
    popcount = _POPCOUNT[xnor & mask].sum(axis=2)
    return 2 * popcount - k


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 70), st.integers(1, 6), st.integers(1, 4), st.booleans(), st.booleans(),
       st.integers(0, 2**31))
def test_binarized_gemm_is_xnor_popcount(k, m, batch, trans_b, with_bias, seed):
    rng = np.random.default_rng(seed)
    g = Graph("fc")
    x = g.add_input("x", TensorType(("N", k)))
    w = rng.normal(0, 0.5, (m, k) if trans_b else (k, m)).astype(np.float32)
    inputs = [x, g.add_constant("w", w)]
    if with_bias:
        inputs.append(g.add_constant("b", rng.normal(0, 0.3, m).astype(np.float32)))
    g.set_outputs(g.add_node("Gemm", inputs, attrs={"transB": int(trans_b)}, name="fc").outputs)
    xs = rng.normal(0.2, 1.0, (batch, k)).astype(np.float32)
    run_pipeline(g, "calibrate,binarize", PassContext(config={"calib": {"x": xs}}))
    verify(g)
    x_spec, w_spec = g.inputs[0].quant, g.node("fc").inputs[1].quant
    assert isinstance(x_spec, Bipolar) and isinstance(w_spec, Bipolar) and w_spec.axis == (0 if trans_b else 1)
    # the scales: s = sqrt(mean^2 + std^2) of x, alpha = mean |w| per output channel
    assert x_spec.scale == pytest.approx(float(np.hypot(xs.astype(np.float64).mean(), xs.astype(np.float64).std())),
                                         rel=1e-9)
    wk = w if trans_b else w.T  # [M, K]
    np.testing.assert_allclose(w_spec.scale, np.abs(wk.astype(np.float64)).mean(axis=1), rtol=1e-6)
    # the integer accumulator is the XNOR-popcount dot product (plus the bias in accumulator units)
    acc = run_integer(g, {"x": xs})["fc:out"]
    assert isinstance(acc, QTensor)
    dot = _xnor_popcount_dot(xs, wk)
    alpha = np.asarray(w_spec.scale, np.float64)
    expected = dot
    if with_bias:
        bias = g.node("fc").inputs[2].data.astype(np.float64)
        expected = dot + np.rint(bias / (x_spec.scale * alpha)).astype(np.int64)
    np.testing.assert_array_equal(acc.q, expected)
    np.testing.assert_allclose(acc.scale.reshape(-1), x_spec.scale * alpha, rtol=1e-15)
    # fake-quant sums +-s times +-alpha in float32 and adds the float bias: the same up to float32
    # rounding and the bias's rounding to the accumulator scale (half a step, DESIGN.md §3)
    fake = run(g, {"x": xs}, mode="fake")["fc:out"].astype(np.float64)
    step = x_spec.scale * alpha
    assert np.all(np.abs(run(g, {"x": xs}, mode="int")["fc:out"] - fake) <= 0.5 * step * with_bias + 1e-5 * k)


# ------------------------------------------------------------------------------ seed 001's rule
def test_example_keep_first_last(calib):
    g = _example("fold-bn,calibrate,binarize{keep_first_last=true,last_bits=6}", calib)
    verify(g)
    conv1, fc = g.node("/conv1/Conv"), g.node("/fc/Gemm")
    assert conv1.inputs[1].quant.bits == 8 and conv1.inputs[0].quant == Uniform(
        bits=8, signed=False, scale=conv1.inputs[0].quant.scale)
    assert isinstance(fc.inputs[1].quant, Uniform) and fc.inputs[1].quant.bits == 6
    assert isinstance(fc.inputs[0].quant, Uniform) and fc.inputs[0].quant.bits == 6
    for name in ("/conv2/Conv", "/conv3/Conv", "/conv4/Conv"):
        node = g.node(name)
        assert isinstance(node.inputs[1].quant, Bipolar) and node.inputs[1].quant.axis == 0
        assert isinstance(node.inputs[0].quant, Bipolar)
    assert not run_pipeline(g, "binarize{keep_first_last=true,last_bits=6}")  # idempotent
    out = run(g, {"input": calib[:8]}, mode="int")["logits"]
    assert np.all(np.isfinite(out))


def test_first_and_last_follow_the_dataflow():
    """First: no layer upstream; last: no layer downstream (two heads are both last)."""
    g = Graph("two_heads")
    x = g.add_input("x", TensorType((1, 4)))
    h = g.add_node("Gemm", [x, g.add_constant("w0", np.ones((3, 4), np.float32))], attrs={"transB": 1}, name="fc0")
    r = g.add_node("Relu", [h.output], name="relu")
    heads = [g.add_node("Gemm", [r.output, g.add_constant(f"w{i}", np.ones((2, 3), np.float32))],
                        attrs={"transB": 1}, name=f"head{i}") for i in (1, 2)]
    g.set_outputs([n.output for n in heads])
    first, last = first_and_last_layers(g)
    assert [n.name for n in first] == ["fc0"] and sorted(n.name for n in last) == ["head1", "head2"]
    config = BinarizePass(keep_first_last=True, first_bits=4, last_bits=2).configuration(g)
    assert config.for_layer("fc0").w_scheme == "uniform" and config.for_layer("fc0").w_bits == 4
    assert config.for_layer("head2").a_bits == 2
    only = BinarizePass(keep_first_last=True).configuration(Graph("empty"))
    assert only.layers == {}


def test_a_layer_both_first_and_last_gets_the_wider_bits():
    g = Graph("one")
    x = g.add_input("x", TensorType((1, 4)))
    g.set_outputs(g.add_node("Gemm", [x, g.add_constant("w", np.ones((2, 4), np.float32))], attrs={"transB": 1},
                             name="fc").outputs)
    assert BinarizePass(keep_first_last=True, first_bits=3, last_bits=5).configuration(g).for_layer("fc").w_bits == 5


def test_same_graph_as_quantize_with_the_equivalent_configuration(calib):
    """binarize is a convenience over quantize: the same QuantConfig gives the same IR."""
    layers = ["/conv2/Conv", "/conv4/Conv"]
    by_pass = _example(f"fold-bn,calibrate,binarize{{layers={layers}}}".replace("'", '"'), calib)
    doc = {"default": {"w_scheme": "float", "a_scheme": "float"},
           "layers": {n: {"w_scheme": "bipolar", "a_scheme": "bipolar", "w_bits": 1, "a_bits": 1} for n in layers}}
    by_quantize = load_model(MODEL)
    run_pipeline(by_quantize, "fold-bn,calibrate,quantize", PassContext(config={"calib": {"x": calib},
                                                                                "quant_config": doc}))
    assert print_graph(by_pass) == print_graph(by_quantize)
    assert _untouched(by_pass, "/conv3/Conv")


def _untouched(g: Graph, name: str) -> bool:
    node = g.node(name)
    return node.inputs[0].quant is None and node.inputs[1].quant is None


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_graphs_binarize_and_run(data):
    g = data.draw(graphs(GraphOptions(annotate=False)))
    x = data.draw(graph_inputs(g, batch=3))
    run_pipeline(g, "calibrate,binarize", PassContext(config={"calib": x}))
    verify(g)
    for n in g.nodes:
        if n.op in ("Conv", "Gemm"):
            assert isinstance(n.inputs[1].quant, Bipolar) and isinstance(n.inputs[0].quant, Bipolar)
            signs = np.unique(np.sign(n.inputs[1].data))
            assert set(signs.tolist()) <= {-1.0, 1.0}
    out = run(g, x, mode="int")
    assert all(np.all(np.isfinite(v)) for v in out.values())


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("pipeline, message", [
    ("binarize{first_bits=0}", r"pass 'binarize': first-bits must be an integer from 1 to 16, got 0"),
    ("binarize{last_bits=17}", r"last-bits must be an integer from 1 to 16, got 17"),
    ('binarize{layers=["/conv5/Conv"]}', r"pass 'binarize' failed: option 'layers': unknown layer '/conv5/Conv'; "
                                         r"did you mean '/conv\d/Conv'"),
    ('binarize{layers=["/pool/MaxPool"]}', r"pass 'binarize' failed at node '/pool/MaxPool': a MaxPool node is not "
                                           r"a layer with a constant weight"),
    ("binarize", r"pass 'binarize' failed at node '/conv1/Conv': input 'input' has no calibration statistics; "
                 r"run 'calibrate' first"),
])
def test_bad_input_is_a_clear_error(pipeline, message):
    with pytest.raises(QccError, match=message):
        run_pipeline(load_model(MODEL), pipeline)


def test_error_names_binarize_not_quantize():
    with pytest.raises(PassError) as info:
        run_pipeline(load_model(MODEL), "fold-bn,binarize")
    assert info.value.pass_name == "binarize" and info.value.ran_before == ("fold-bn",)
