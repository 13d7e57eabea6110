"""RTL of convolutions, pooling, residual adds, bipolar and codebook layers simulates (Icarus) bit-exactly.

Every case compares the simulated design with qcc.interp.run(graph, x, mode="int"). A handful of
hypothesis examples run by default; the `slow` tests run many more.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcc.errors import QccError
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.ir.quant import Bipolar, Codebook, Thresholds, Uniform
from qcc.ir.types import TensorType
from qcc.numerics import quantize
from qcc.targets.fpga.plan import AddLayer, ConvLayer, ForkLayer, GapLayer, PoolLayer, plan_graph
from qcc.targets.fpga.rtl import emit_design
from qcc.targets.fpga.sim import emit_testbench, simulate_codes

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs iverilog")
_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _simulate(g: Graph, x: np.ndarray, tmp_path, folding=None):
    plan = plan_graph(g)
    for layer in plan.layers:
        layer.pe, layer.simd = (folding or {}).get(layer.name, (layer.pe, layer.simd))
    rtl = emit_design(plan, tmp_path / "rtl")
    tb = emit_testbench(plan, tmp_path / "tb.v")
    codes, _ = simulate_codes(plan, list(rtl.verilog), tb, quantize(x, plan.input_spec).reshape(len(x), -1))
    out = ((codes - plan.out_zp).astype(np.float64) * plan.out_scale).astype(np.float32)
    return plan, out


def _check(g: Graph, x: np.ndarray, tmp_path, folding=None):
    plan, out = _simulate(g, x, tmp_path, folding)
    ref = run(g, {"x": x}, mode="int")[plan.output_name]
    np.testing.assert_array_equal(out, ref.reshape(len(x), -1))
    return plan


def _act_spec(draw, rng) -> Uniform:
    bits = draw(st.integers(2, 8))
    spec = Uniform(bits=bits, signed=draw(st.booleans()), scale=draw(st.sampled_from([0.05, 0.1, 0.37])))
    if draw(st.booleans()):
        spec = Uniform(bits=bits, signed=spec.signed, scale=spec.scale,
                       zero_point=int(rng.integers(spec.qmin, spec.qmax + 1)))
    return spec


def _weights(draw, rng, shape):
    """Random quantized weights [cout, ...]: uniform 2-8 bits per channel, or bipolar."""
    cout = shape[0]
    bits = draw(st.integers(1, 8))
    if bits == 1:
        spec = Bipolar(scale=tuple(float(s) for s in rng.uniform(0.01, 0.5, cout)), axis=0)
        sc = np.asarray(spec.scale).reshape(-1, *[1] * (len(shape) - 1))
        return np.where(rng.random(shape) < 0.5, -1.0, 1.0) * sc, spec
    scales = tuple(float(np.float32(s)) for s in rng.uniform(0.01, 0.3, cout))
    spec = Uniform(bits=bits, scale=scales, zero_point=tuple([0] * cout), axis=0)
    codes = rng.integers(spec.qmin, spec.qmax + 1, shape)
    return codes * np.asarray(scales).reshape(-1, *[1] * (len(shape) - 1)), spec


def _post(draw, rng, g: Graph, h, channels: int):
    post = draw(st.sampled_from(["raw", "requant", "relu-requant", "thresholds"]))
    if post == "relu-requant":
        h = g.add_node("Relu", [h]).outputs[0]
    if post in ("requant", "relu-requant"):
        h.quant = Uniform(bits=draw(st.integers(2, 8)), signed=post == "requant",
                          scale=float(draw(st.sampled_from([0.1, 0.3, 1.7]))))
    elif post == "thresholds":
        t_bits = draw(st.integers(1, 3))
        rows = np.sort(rng.normal(0, 2, (channels, 2**t_bits - 1)), axis=1)
        h.quant = Thresholds(bits=t_bits, thresholds=tuple(map(tuple, rows.tolist())), out_scale=0.5, out_bias=-1.0)
    return h


def _divisor(draw, n: int) -> int:
    return draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))


@st.composite
def conv_layers(draw):
    """A quantized Conv (kernel 1-3, stride 1-2, padding, groups 1 or depthwise) with a random post-op."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    cin, h, w = draw(st.integers(1, 3)), draw(st.integers(3, 6)), draw(st.integers(3, 6))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = [draw(st.integers(0, min(1, k - 1))) for k in (kh, kw, kh, kw)]
    stride = draw(st.integers(1, 2))
    depthwise = cin > 1 and draw(st.booleans())
    cout = cin if depthwise else draw(st.integers(1, 4))
    groups = cin if depthwise else 1
    g = Graph()
    x = g.add_input("x", TensorType(("N", cin, h, w), "float32"))
    x.quant = _act_spec(draw, rng)
    data, w_spec = _weights(draw, rng, (cout, cin // groups, kh, kw))
    wv = g.add_constant("w", data.astype(np.float32), quant=w_spec)
    b = g.add_constant("b", rng.normal(0, 1, cout).astype(np.float32))
    attrs = {"kernel_shape": [kh, kw], "strides": [stride, stride], "pads": pads, "group": groups}
    y = g.add_node("Conv", [x, wv, b], attrs=attrs, name="conv").outputs[0]
    g.set_outputs([_post(draw, rng, g, y, cout)])
    xs = rng.normal(0, 1.5, (draw(st.integers(1, 3)), cin, h, w)).astype(np.float32)
    return g, xs, {"conv": (_divisor(draw, cout), _divisor(draw, kh * kw * cin))}


@settings(max_examples=8, **_SETTINGS)
@given(case=conv_layers())
def test_conv_layer_matches_integer_reference(case, tmp_path_factory):
    g, x, folding = case
    plan = _check(g, x, tmp_path_factory.mktemp("conv"), folding)
    assert isinstance(plan.layers[0], ConvLayer)


@pytest.mark.slow
@settings(max_examples=80, **_SETTINGS)
@given(case=conv_layers())
def test_conv_layer_matches_integer_reference_more(case, tmp_path_factory):
    test_conv_layer_matches_integer_reference.hypothesis.inner_test(case, tmp_path_factory)


def _sign_layer(g: Graph, rng, x, cin: int):
    """A 1x1 conv with uniform weights and a bipolar annotation: the +-1 stream a bipolar conv reads."""
    w = g.add_constant("w0", (rng.integers(-7, 8, (cin, cin, 1, 1)) * 0.1).astype(np.float32),
                       quant=Uniform(bits=4, scale=0.1))
    b = g.add_constant("b0", rng.normal(0, 0.3, cin).astype(np.float32))
    h = g.add_node("Conv", [x, w, b], attrs={"kernel_shape": [1, 1]}, name="sign").outputs[0]
    h.quant = Bipolar(scale=float(rng.choice([0.5, 1.0])))
    return h


@st.composite
def bipolar_convs(draw):
    """A bipolar-weight conv on a +-1 stream (kernel 1-3, strides 1-2, any padding < kernel, folding)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    cin, cout = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(3, 6)), draw(st.integers(3, 6))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = [draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw)]
    strides = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    g = Graph()
    x = g.add_input("x", TensorType(("N", cin, h, w), "float32"))
    x.quant = Uniform(bits=4, signed=True, scale=0.2)
    hid = _sign_layer(g, rng, x, cin)
    if draw(st.booleans()):  # max pooling keeps the stream +-1
        attrs = {"kernel_shape": [2, 2], "strides": [1, 1], "pads": [0, 0, 1, 1]}
        hid = g.add_node("MaxPool", [hid], attrs=attrs, name="pool").outputs[0]
    spec = Bipolar(scale=tuple(float(v) for v in rng.uniform(0.01, 0.5, cout)), axis=0)
    signs = np.where(rng.random((cout, cin, kh, kw)) < 0.5, -1.0, 1.0)
    wv = g.add_constant("w", (signs * np.asarray(spec.scale)[:, None, None, None]).astype(np.float32), quant=spec)
    b = g.add_constant("b", rng.normal(0, 1, cout).astype(np.float32))
    attrs = {"kernel_shape": [kh, kw], "strides": strides, "pads": pads}
    y = g.add_node("Conv", [hid, wv, b], attrs=attrs, name="conv").outputs[0]
    if draw(st.booleans()):
        y.quant = Bipolar(scale=0.5)
    else:
        y = _post(draw, rng, g, y, cout)
    g.set_outputs([y])
    xs = rng.normal(0, 1, (draw(st.integers(1, 3)), cin, h, w)).astype(np.float32)
    return g, xs, {"conv": (_divisor(draw, cout), _divisor(draw, kh * kw * cin))}


@settings(max_examples=10, **_SETTINGS)
@given(case=bipolar_convs())
def test_bipolar_conv_xnor_popcount_matches_integer_reference(case, tmp_path_factory):
    g, x, folding = case
    plan = _check(g, x, tmp_path_factory.mktemp("bconv"), folding)
    assert plan.layers[-1].name == "conv" and plan.layers[-1].bipolar


@pytest.mark.slow
@settings(max_examples=80, **_SETTINGS)
@given(case=bipolar_convs())
def test_bipolar_conv_xnor_popcount_matches_integer_reference_more(case, tmp_path_factory):
    test_bipolar_conv_xnor_popcount_matches_integer_reference.hypothesis.inner_test(case, tmp_path_factory)


@pytest.mark.parametrize("kernel,pads,folding", [(1, 0, (1, 1)), (1, 0, (3, 2)), (3, 1, (1, 1)), (3, 1, (3, 9))])
def test_bipolar_conv_regression(tmp_path, kernel, pads, folding):
    """The equivalence matrix's case: a 1x1 bipolar conv (each ~^ term once counted 2^W - 2 too much)."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 2, 4, 4), "float32"))
    x.quant = Uniform(bits=4, signed=True, scale=0.2)
    hid = _sign_layer(g, rng, x, 2)
    w = g.add_constant("w", (np.where(rng.random((3, 2, kernel, kernel)) < 0.5, -1, 1) * 0.1).astype(np.float32),
                       quant=Bipolar(scale=0.1))
    b = g.add_constant("b", np.array([-0.7, -1.3, 0.6], np.float32))  # a bias: no lucky wrap-around
    attrs = {"kernel_shape": [kernel, kernel], "pads": [pads] * 4}
    g.set_outputs([g.add_node("Conv", [hid, w, b], attrs=attrs, name="conv").outputs[0]])
    plan = _check(g, rng.normal(0, 1, (2, 2, 4, 4)).astype(np.float32), tmp_path, {"conv": folding})
    assert plan.layers[-1].bipolar
    assert "~^" in (tmp_path / "rtl" / "qcc_conv1.v").read_text()


def test_grouped_bipolar_conv_uses_multipliers(tmp_path):
    """A depthwise bipolar conv's block-diagonal matrix holds zeros: exact, on the multiplier path."""
    rng = np.random.default_rng(1)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 2, 4, 4), "float32"))
    x.quant = Uniform(bits=4, signed=True, scale=0.2)
    hid = _sign_layer(g, rng, x, 2)
    w = g.add_constant("w", (np.where(rng.random((2, 1, 3, 3)) < 0.5, -1, 1) * 0.1).astype(np.float32),
                       quant=Bipolar(scale=0.1))
    attrs = {"kernel_shape": [3, 3], "pads": [1] * 4, "group": 2}
    g.set_outputs([g.add_node("Conv", [hid, w], attrs=attrs, name="conv").outputs[0]])
    plan = _check(g, rng.normal(0, 1, (2, 2, 4, 4)).astype(np.float32), tmp_path)
    assert not plan.layers[-1].bipolar


def _act(g: Graph, h, bits: int, scale: float, relu=True):
    if relu:
        h = g.add_node("Relu", [h]).outputs[0]
    h.quant = Uniform(bits=bits, signed=not relu, scale=scale)
    return h


def _conv(g, rng, h, cin, cout, k=3, pad=1, stride=1, w_bits=4, name=None):
    scales = tuple(float(np.float32(s)) for s in rng.uniform(0.02, 0.2, cout))
    spec = Uniform(bits=w_bits, scale=scales, zero_point=tuple([0] * cout), axis=0)
    codes = rng.integers(spec.qmin, spec.qmax + 1, (cout, cin, k, k))
    w = g.add_constant(f"w_{name}", (codes * np.asarray(scales)[:, None, None, None]).astype(np.float32), quant=spec)
    b = g.add_constant(f"b_{name}", rng.normal(0, 0.5, cout).astype(np.float32))
    attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [pad] * 4}
    return g.add_node("Conv", [h, w, b], attrs=attrs, name=name).outputs[0]


@st.composite
def small_nets(draw):
    """conv -> relu -> [residual conv + add] -> relu -> maxpool -> conv -> relu -> GAP -> flatten -> gemm."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    bits = draw(st.integers(2, 8))
    c, hw = draw(st.integers(1, 3)), draw(st.integers(4, 6))
    g = Graph()
    x = g.add_input("x", TensorType(("N", 1, hw, hw), "float32"))
    x.quant = Uniform(bits=bits, signed=False, scale=1.0 / (2**bits - 1))
    h = _act(g, _conv(g, rng, x, 1, c, name="c1"), bits, 0.2)
    if draw(st.booleans()):
        r = _conv(g, rng, h, c, c, name="c2")
        op = draw(st.sampled_from(["Add", "Sub"]))
        h = g.add_node(op, [r, h] if draw(st.booleans()) else [h, r], name="add").outputs[0]
    h = g.add_node("Relu", [h]).outputs[0]
    k, s, p = draw(st.sampled_from([(2, 2, 0), (3, 1, 1), (2, 1, 0)]))
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4}
    h = g.add_node("MaxPool", [h], attrs=attrs, name="pool").outputs[0]
    h.quant = Uniform(bits=bits, signed=False, scale=0.3)
    if draw(st.booleans()):
        k = draw(st.sampled_from([1, 3]))
        h = _act(g, _conv(g, rng, h, c, 4, k=k, pad=k // 2, name="c3"), bits, 0.4)
    if draw(st.booleans()):
        h = g.add_node("GlobalAveragePool", [h], name="gap").outputs[0]
    h = g.add_node("Flatten", [h], name="flat").outputs[0]
    h.quant = Uniform(bits=bits, signed=False, scale=0.25)
    n_in = int(np.prod(h.type.shape[1:]))
    wspec = Uniform(bits=bits, scale=0.05)
    codes = rng.integers(wspec.qmin, wspec.qmax + 1, (3, n_in))
    w = g.add_constant("wf", (codes * 0.05).astype(np.float32), quant=wspec)
    out = g.add_node("Gemm", [h, w], attrs={"transB": 1}, name="fc").outputs[0]
    g.set_outputs([out])
    xs = rng.uniform(0, 1, (draw(st.integers(1, 3)), 1, hw, hw)).astype(np.float32)
    return g, xs


@settings(max_examples=6, **_SETTINGS)
@given(case=small_nets())
def test_small_nets_match_integer_reference(case, tmp_path_factory):
    g, x = case
    _check(g, x, tmp_path_factory.mktemp("net"))


@pytest.mark.slow
@settings(max_examples=60, **_SETTINGS)
@given(case=small_nets())
def test_small_nets_match_integer_reference_more(case, tmp_path_factory):
    test_small_nets_match_integer_reference.hypothesis.inner_test(case, tmp_path_factory)


def _residual_block(seed=0, bits=4) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 1, 6, 6), "float32"))
    x.quant = Uniform(bits=bits, signed=False, scale=1 / 15)
    h = _act(g, _conv(g, rng, x, 1, 4, name="c1"), bits, 0.2)
    r = _conv(g, rng, h, 4, 4, name="c2")
    h = g.add_node("Add", [r, h], name="add").outputs[0]
    h = g.add_node("Relu", [h], name="relu").outputs[0]
    h = g.add_node("MaxPool", [h], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, name="pool").outputs[0]
    h.quant = Uniform(bits=bits, signed=False, scale=0.3)
    h = g.add_node("GlobalAveragePool", [_act(g, _conv(g, rng, h, 4, 6, name="c3"), bits, 0.4, relu=False)],
                   name="gap").outputs[0]
    h = g.add_node("Flatten", [h], name="flat").outputs[0]
    h.quant = Uniform(bits=bits, signed=False, scale=0.25)
    w = g.add_constant("wf", (rng.integers(-7, 8, (3, 6)) * 0.05).astype(np.float32), quant=Uniform(bits=4, scale=0.05))
    g.set_outputs([g.add_node("Gemm", [h, w], attrs={"transB": 1}, name="fc").outputs[0]])
    return g


def test_residual_block_plan_and_simulation(tmp_path):
    g = _residual_block()
    plan = _check(g, np.random.default_rng(1).uniform(0, 1, (3, 1, 6, 6)).astype(np.float32), tmp_path,
                  {"c1": (2, 3), "c2": (4, 12), "c3": (3, 36)})
    kinds = [type(s) for s in plan.stages]
    assert ForkLayer in kinds and AddLayer in kinds and PoolLayer in kinds and GapLayer in kinds
    fork = next(s for s in plan.stages if isinstance(s, ForkLayer))
    assert max(fork.fifo_depths) >= plan.layers[1].window_rows * 6  # the skip FIFO covers the line buffer


def test_bipolar_layers_use_xnor_popcount(tmp_path):
    rng = np.random.default_rng(3)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 12), "float32"))
    x.quant = Uniform(bits=4, scale=0.2)
    h = x
    for i, (a, b) in enumerate([(12, 8), (8, 6)]):
        spec = Bipolar(scale=0.1)
        w = g.add_constant(f"w{i}", (np.where(rng.random((b, a)) < 0.5, -1.0, 1.0) * 0.1).astype(np.float32),
                           quant=spec)
        h = g.add_node("Gemm", [h, w], attrs={"transB": 1}, name=f"fc{i}").outputs[0]
        if i == 0:
            h.quant = Bipolar(scale=1.0)
    g.set_outputs([h])
    plan = _check(g, rng.normal(0, 1, (5, 12)).astype(np.float32), tmp_path, {"fc1": (2, 4)})
    assert [layer.bipolar for layer in plan.layers] == [False, True]
    assert "~^" in (tmp_path / "rtl" / "qcc_dense1.v").read_text()


def test_codebook_weights(tmp_path):
    rng = np.random.default_rng(4)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 2, 5, 5), "float32"))
    x.quant = Uniform(bits=5, signed=True, scale=0.1)
    spec = Codebook(bits=2, centroids=(-9, -2, 3, 11), centroid_scale=0.02)
    data = np.asarray(spec.centroids)[rng.integers(0, 4, (3, 2, 3, 3))] * 0.02
    w = g.add_constant("w", data.astype(np.float32), quant=spec)
    y = g.add_node("Conv", [x, w], attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, name="conv").outputs[0]
    g.set_outputs([y])
    plan = _check(g, rng.normal(0, 1, (2, 2, 5, 5)).astype(np.float32), tmp_path, {"conv": (3, 6)})
    assert plan.layers[0].weights.min() == -9 and plan.layers[0].weights.max() == 11


def test_conv_folding_must_divide(tmp_path):
    g = _residual_block()
    plan = plan_graph(g)
    plan.layers[1].simd = 5
    with pytest.raises(QccError, match=r"layer 'c2': SIMD=5 does not divide its 36 window inputs \(kh\*kw\*cin\)"):
        emit_design(plan, tmp_path / "rtl")
    assert not (tmp_path / "rtl" / "qcc_top.v").exists()


def test_unsupported_op_is_named():
    g = Graph()
    x = g.add_input("x", TensorType(("N", 4), "float32"))
    x.quant = Uniform(bits=4, scale=0.1)
    g.set_outputs([g.add_node("Sigmoid", [x], name="sig").outputs[0]])
    with pytest.raises(QccError, match="lowering to target 'fpga' failed at Sigmoid 'sig': the op is not supported "
                                       r"\(.*\); compile for --target cpu, which runs every op$"):
        plan_graph(g)


def _example(pipeline: str):
    from qcc.examples import MODEL, load_split
    from qcc.frontend import load_model
    from qcc.pass_manager import PassContext, run_pipeline

    g = load_model(MODEL)
    x, _ = load_split("calib")
    run_pipeline(g, pipeline, PassContext(config={"calib": {g.inputs[0].name: x}}))
    return g


_EXAMPLE_FOLDING = {"/conv1/Conv": (16, 9), "/conv2/Conv": (16, 36), "/conv3/Conv": (16, 36),
                    "/conv4/Conv": (8, 36), "/fc/Gemm": (10, 32)}


def _example_check(tmp_path, pipeline: str, count: int):
    from qcc.examples import load_split

    g = _example(pipeline)
    x, _ = load_split("eval")
    x = x[:count]
    plan, out = _simulate(g, x, tmp_path, _EXAMPLE_FOLDING)
    ref = run(g, {g.inputs[0].name: x}, mode="int")[plan.output_name]
    np.testing.assert_array_equal(out, ref)


def test_example_cnn_simulates_bit_exactly(tmp_path):
    _example_check(tmp_path, "fold-bn,calibrate,quantize{w_bits=4,a_bits=4}", 3)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
def test_example_cnn_whole_eval_set(tmp_path, bits):
    _example_check(tmp_path, f"fold-bn,calibrate,quantize{{w_bits={bits},a_bits={bits}}}", 360)


# ----------------------------------------------------------------------------------- float BN chains

@st.composite
def float_bn_nets(draw):
    """conv / dense -> BN with signed scales -> (Relu | Clip | nothing) -> quantizer -> 1x1 conv / dense,
    through calibrate, quantize, fold-bn{thresholds=true}: a BN with a negative scale stays float, and
    the FPGA lowers acc -> BN -> act -> quantizer as a comparator chain counting down on those channels."""
    from qcc.ir.quant import Bipolar as _Bipolar
    from qcc.pass_manager import PassContext, run_pipeline

    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    conv = draw(st.booleans())
    cin, cout = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    g = Graph()
    shape = ("N", cin, 4, 4) if conv else ("N", cin * 3)
    x = g.add_input("x", TensorType(shape, "float32"))
    if conv:
        k = draw(st.sampled_from([1, 3]))
        w = g.add_constant("w", rng.normal(0, 0.5, (cout, cin, k, k)).astype(np.float32))
        h = g.add_node("Conv", [x, w, g.add_constant("b", rng.normal(0, 0.3, cout).astype(np.float32))],
                       attrs={"kernel_shape": [k, k], "pads": [k // 2] * 4}, name="l0").outputs[0]
    else:
        w = g.add_constant("w", rng.normal(0, 0.5, (cout, cin * 3)).astype(np.float32))
        h = g.add_node("Gemm", [x, w, g.add_constant("b", rng.normal(0, 0.3, cout).astype(np.float32))],
                       attrs={"transB": 1}, name="l0").outputs[0]
    gamma = rng.uniform(0.3, 2.0, cout) * np.where(rng.random(cout) < 0.5, -1.0, 1.0)
    gamma[draw(st.integers(0, cout - 1))] *= -1 if gamma.min() > 0 else 1  # at least one negative channel
    if draw(st.booleans()):
        gamma[draw(st.integers(0, cout - 1))] = 0.0  # a constant channel
    bn = [gamma, rng.normal(0, 0.5, cout), rng.normal(0, 0.5, cout), rng.uniform(0.5, 2.0, cout)]
    h = g.add_node("BatchNormalization", [h, *(g.add_constant(f"bn{i}", p.astype(np.float32))
                                               for i, p in enumerate(bn))], name="bn").outputs[0]
    act = draw(st.sampled_from(["none", "relu", "clip"]))
    if act == "relu":
        h = g.add_node("Relu", [h], name="act").outputs[0]
    elif act == "clip":
        h = g.add_node("Clip", [h], attrs={"min": -0.5, "max": 1.5}, name="act").outputs[0]
    if conv and draw(st.booleans()):  # pooled in float, then quantized: the RTL pools the quantized codes
        k, stride, pad = draw(st.sampled_from([(2, 2, 0), (3, 1, 1), (2, 1, 0)]))
        h = g.add_node("MaxPool", [h], attrs={"kernel_shape": [k, k], "strides": [stride, stride],
                                              "pads": [pad] * 4}, name="pool").outputs[0]
        if draw(st.booleans()):
            h = g.add_node("Relu", [h], name="act2").outputs[0]
    if conv:
        w2 = g.add_constant("w2", rng.normal(0, 0.5, (2, cout, 1, 1)).astype(np.float32))
        out = g.add_node("Conv", [h, w2], attrs={"kernel_shape": [1, 1]}, name="l1").outputs[0]
    else:
        w2 = g.add_constant("w2", rng.normal(0, 0.5, (2, cout)).astype(np.float32))
        out = g.add_node("Gemm", [h, w2], attrs={"transB": 1}, name="l1").outputs[0]
    g.set_outputs([out])
    calib = {"x": rng.normal(0, 1, (16, *shape[1:])).astype(np.float32)}
    bits = draw(st.integers(2, 8))
    run_pipeline(g, f"calibrate,quantize{{w_bits={draw(st.integers(2, 8))},a_bits={bits}}},fold-bn{{thresholds=true}}",
                 PassContext(config={"calib": calib}))
    if draw(st.booleans()):  # a bipolar quantizer at the end of the chain: counts in steps of 2
        h.quant = _Bipolar(scale=0.5)
    xs = np.concatenate([calib["x"][:3], rng.normal(0, 2.5, (3, *shape[1:])).astype(np.float32)])
    layers = {n.name: n for n in g.nodes}
    folding = {}
    for name in ("l0", "l1"):
        n_out = int(layers[name].outputs[0].type.shape[1])
        n_in = int(np.prod(layers[name].inputs[1].data.shape[1:])) if layers[name].op == "Conv" \
            else int(layers[name].inputs[1].data.shape[1])
        folding[name] = (_divisor(draw, n_out), _divisor(draw, n_in))
    return g, xs, folding


@settings(max_examples=8, **_SETTINGS)
@given(case=float_bn_nets())
def test_float_batchnorm_chain_matches_integer_reference(case, tmp_path_factory):
    g, x, folding = case
    plan = _check(g, x, tmp_path_factory.mktemp("bnchain"), folding)
    if any(n.op == "BatchNormalization" for n in g.nodes):  # lowered as a comparator chain with a direction
        assert any("step" in op.params for op in plan.layers[0].post)


@pytest.mark.parametrize("pool", [False, True])
def test_float_batchnorm_chain_counts_down_on_negative_channels(tmp_path, pool):
    from qcc.ir.quant import Uniform as _Uniform
    from qcc.pass_manager import PassContext, run_pipeline

    rng = np.random.default_rng(4)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 2, 5, 5), "float32"))
    w = g.add_constant("w", rng.normal(size=(3, 2, 3, 3)).astype(np.float32))
    h = g.add_node("Conv", [x, w], attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, name="conv").outputs[0]
    params = [np.array([1.0, -0.5, 2.0]), rng.normal(size=3), rng.normal(size=3), np.array([1.0, 0.5, 2.0])]
    h = g.add_node("BatchNormalization", [h, *(g.add_constant(f"bn{i}", p.astype(np.float32))
                                               for i, p in enumerate(params))], name="bn").outputs[0]
    h = g.add_node("Relu", [h], name="relu").outputs[0]
    if pool:  # BN -> Relu -> MaxPool in float, then the quantizer: the RTL pools the quantized codes
        h = g.add_node("MaxPool", [h], attrs={"kernel_shape": [2, 2], "strides": [1, 1]}, name="pool").outputs[0]
    w2 = g.add_constant("w2", rng.normal(size=(2, 3, 1, 1)).astype(np.float32))
    g.set_outputs([g.add_node("Conv", [h, w2], attrs={"kernel_shape": [1, 1]}, name="conv2").outputs[0]])
    calib = rng.normal(size=(16, 2, 5, 5)).astype(np.float32)
    run_pipeline(g, "calibrate,quantize{w_bits=4,a_bits=4},fold-bn{thresholds=true}",
                 PassContext(config={"calib": {"x": calib}}))
    assert [n.op for n in g.nodes] == ["Conv", "BatchNormalization", "Relu", *(["MaxPool"] if pool else []), "Conv"]
    assert (g.nodes[2].outputs[0].quant is None) == pool  # pooled in float before the quantizer
    plan = _check(g, np.concatenate([calib[:4], rng.normal(0, 3, (4, 2, 5, 5)).astype(np.float32)]), tmp_path,
                  {"conv": (3, 6), "conv2": (1, 3)})
    (chain,) = plan.layers[0].post
    assert [type(st).__name__ for st in plan.stages] == ["ConvLayer", *(["PoolLayer"] if pool else []), "ConvLayer"]
    spec = h.quant
    assert isinstance(spec, _Uniform) and chain.kind == "thresholds"
    assert chain.params["step"].tolist() == [1, -1, 1]
    assert chain.params["base"].tolist() == [spec.qmin, spec.qmax, spec.qmin]


@pytest.mark.slow
@settings(max_examples=60, **_SETTINGS)
@given(case=float_bn_nets())
def test_float_batchnorm_chain_matches_integer_reference_more(case, tmp_path_factory):
    test_float_batchnorm_chain_matches_integer_reference.hypothesis.inner_test(case, tmp_path_factory)
