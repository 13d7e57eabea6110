"""fold-bn{thresholds=true}: BN + activation + quantizer as integer thresholds, exact on integers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.interp import run
from qcc.ir import Graph, TensorType, Thresholds, Uniform
from qcc.numerics import fake_quant
from qcc.pass_manager import run_pipeline


@st.composite
def quantized_bn_layers(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    gemm = draw(st.booleans())
    cin, cout = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    g = Graph("layer")
    x_spec = Uniform(bits=draw(st.integers(2, 8)), signed=False, scale=draw(st.sampled_from([0.02, 0.1, 1 / 255])),
                     zero_point=0)
    shape = (2, cin * 9) if gemm else (2, cin, 5, 5)
    x = g.add_input("x", TensorType(shape), quant=x_spec)
    w_shape = (cout, cin * 9) if gemm else (cout, cin, 3, 3)
    w_spec = Uniform(bits=draw(st.integers(2, 8)), scale=tuple(rng.uniform(0.01, 0.1, cout).tolist()),
                     zero_point=(0,) * cout, axis=0)
    w = g.add_constant("w", fake_quant(rng.normal(0, 0.3, w_shape).astype(np.float32), w_spec), quant=w_spec)
    b = g.add_constant("b", rng.normal(0, 0.2, cout).astype(np.float32))
    if gemm:
        layer = g.add_node("Gemm", [x, w, b], attrs={"transB": 1}, name="layer")
    else:
        layer = g.add_node("Conv", [x, w, b], attrs={"pads": [1, 1, 1, 1]}, name="layer")
    gamma = rng.uniform(0.0, 2.0, cout)
    gamma[rng.random(cout) < 0.2] = 0.0  # zero scales: constant channels
    params = [gamma, rng.normal(0, 0.3, cout), rng.normal(0, 0.3, cout), rng.uniform(0.2, 2.0, cout)]
    consts = [g.add_constant(f"bn{i}", p.astype(np.float32)) for i, p in enumerate(params)]
    y = g.add_node("BatchNormalization", [layer.output, *consts], name="bn").output
    act = draw(st.sampled_from(["relu", "clip", "none"]))
    if act == "relu":
        y = g.add_node("Relu", [y], name="act").output
    elif act == "clip":
        y = g.add_node("Clip", [y], attrs={"min": 0.0, "max": 1.5}, name="act").output
    signed = act == "none" and draw(st.booleans())
    y.quant = Uniform(bits=draw(st.integers(1, 4)) + (1 if signed else 0), signed=signed,
                      scale=draw(st.sampled_from([0.05, 0.1, 0.25])), zero_point=0)
    g.set_outputs([y])
    lo, hi = x_spec.qmin * x_spec.scale, x_spec.qmax * x_spec.scale
    x_data = rng.uniform(lo, hi * 1.2, shape).astype(np.float32)
    return g, {"x": x_data}


@settings(max_examples=60, deadline=None)
@given(quantized_bn_layers())
def test_thresholds_equal_bn_activation_quantizer_on_integers(case):
    g, inputs = case
    expected = run(g, inputs, mode="int")
    run_pipeline(g, "fold-bn{thresholds=true}")
    assert [n.op for n in g.nodes] in (["Conv"], ["Gemm"])
    assert isinstance(g.nodes[0].output.quant, Thresholds)
    got = run(g, inputs, mode="int")
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)


@settings(max_examples=10, deadline=None)
@given(quantized_bn_layers())
def test_negative_bn_scale_keeps_float_form(case):
    g, _ = case
    bn = g.node("bn")
    gamma = bn.inputs[1]
    neg = g.add_constant("neg", -np.abs(gamma.data) - 0.1)
    g.set_input(bn, 1, neg)
    run_pipeline(g, "fold-bn{thresholds=true}")
    assert not any(isinstance(v.quant, Thresholds) for v in g.values())
