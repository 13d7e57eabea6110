"""Tests of qcc.ranges and the range-analysis pass: the accumulator range is sound (contains every
accumulator the integer interpreter computes) and tight (an input built per channel reaches each
bound exactly), overflowing layers are rejected, the bundled example is accepted at 32 bits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcc.errors import PassError, QccError
from qcc.integer import IntegerSemantics, QTensor, constant_value, run_integer
from qcc.ir.graph import Graph
from qcc.ir.quant import Uniform
from qcc.ir.types import TensorType
from qcc.numerics import dequantize
from qcc.ops import get_op
from qcc.pass_manager import PassContext, run_pipeline
from qcc.ranges import accumulator_range, analyze, prove_no_overflow, required_bits
from qcc.testing import GraphOptions, activation_annotations, graph_inputs, graphs

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ builders

@st.composite
def input_specs(draw):
    bits = draw(st.integers(1, 8))
    signed = draw(st.booleans()) if bits > 1 else False
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return Uniform(bits=bits, signed=signed, scale=2.0 ** -draw(st.integers(0, 4)),
                   zero_point=draw(st.integers(lo, hi)))


@st.composite
def weight_codes(draw, shape, axis=0):
    bits = draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = rng.integers(lo, hi + 1, size=shape)
    channels = shape[axis]
    scale = tuple(float(s) for s in rng.choice([0.5, 0.1, 0.03, 0.25], size=channels))
    zp = tuple(int(z) for z in rng.integers(lo // 2, hi // 2 + 1, size=channels)) if draw(st.booleans()) \
        else (0,) * channels
    spec = Uniform(bits=bits, signed=True, scale=scale, zero_point=zp, axis=axis)
    data = dequantize(codes, spec)
    return data, spec


def _bias(draw, n):
    if not draw(st.booleans()):
        return None
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(0, 2.0, n).astype(np.float32)


@st.composite
def conv_layers(draw):
    """A graph with one Conv (padding, stride, dilation, groups) on a quantized input, output = accumulator."""
    group = draw(st.integers(1, 2))
    cin, cout = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dil = draw(st.integers(1, 2))
    span = dil * (k - 1) + 1
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    if h + pads[0] + pads[2] < span or w + pads[1] + pads[3] < span:
        pads = [span] * 4
    stride = draw(st.integers(1, 2))
    g = Graph("conv")
    x = g.add_input("x", TensorType(("N", cin, h, w)), quant=draw(input_specs()))
    data, spec = draw(weight_codes((cout, cin // group, k, k)))
    inputs = [x, g.add_constant("w", data, quant=spec)]
    bias = _bias(draw, cout)
    if bias is not None:
        inputs.append(g.add_constant("b", bias))
    y = g.add_node("Conv", inputs, attrs={"group": group, "kernel_shape": [k, k], "pads": pads,
                                          "strides": [stride, stride], "dilations": [dil, dil]}, name="conv")
    g.set_outputs([y.output])
    return g


@st.composite
def dense_layers(draw):
    """A graph with one Gemm (transB) or MatMul on a quantized input, output = accumulator."""
    k, n = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    op = draw(st.sampled_from(["Gemm", "MatMul"]))
    g = Graph("dense")
    x = g.add_input("x", TensorType(("N", k)), quant=draw(input_specs()))
    shape = (n, k) if op == "Gemm" else (k, n)
    data, spec = draw(weight_codes(shape, axis=0 if op == "Gemm" else 1))  # per output channel
    inputs = [x, g.add_constant("w", data, quant=spec)]
    bias = _bias(draw, n) if op == "Gemm" else None
    if bias is not None:
        inputs.append(g.add_constant("b", bias))
    attrs = {"transB": 1} if op == "Gemm" else {}
    y = g.add_node(op, inputs, attrs=attrs, name="layer")
    g.set_outputs([y.output])
    return g


def _extreme_inputs(graph: Graph) -> np.ndarray:
    """For every output element and both directions, the input that drives it to its extreme:
    each input element at its upper code where its coefficient is positive, else at its lower."""
    x = graph.inputs[0]
    spec = x.quant
    node = graph.nodes[0]
    shape = x.type.concrete(1)[1:]
    size = int(np.prod(shape))
    units = np.eye(size, dtype=np.int64).reshape(size, *shape)
    w = constant_value(node.inputs[1]).centred()
    attrs = node.attrs
    if node.op == "Conv":
        coef = get_op("Conv").evaluate([units, w], attrs)[0]
    else:
        coef = units @ (w.T if node.op == "Gemm" else w)
    coef = coef.reshape(size, -1)  # input element x output element
    lo_c, hi_c = spec.qmin - spec.zero_point, spec.qmax - spec.zero_point
    up = np.where(coef > 0, hi_c, lo_c).T + spec.zero_point  # output element x input element (codes)
    down = np.where(coef > 0, lo_c, hi_c).T + spec.zero_point
    return np.concatenate([up, down]).reshape(-1, *shape)


def _codes_to_float(codes: np.ndarray, spec: Uniform) -> np.ndarray:
    return ((codes - spec.zero_point) * spec.scale).astype(np.float32)


def _accumulators(graph: Graph, codes: np.ndarray) -> np.ndarray:
    x = graph.inputs[0]
    (out,) = run_integer(graph, {x.name: _codes_to_float(codes, x.quant)}).values()
    assert isinstance(out, QTensor)
    return out.q


def _per_channel(acc: np.ndarray, op: str) -> tuple[np.ndarray, np.ndarray]:
    axis = 1 if op == "Conv" else acc.ndim - 1
    m = np.moveaxis(acc, axis, 0).reshape(acc.shape[axis], -1)
    return m.min(axis=1), m.max(axis=1)


def _check_sound_and_tight(graph: Graph, seed: int) -> None:
    node = graph.nodes[0]
    lo, hi = accumulator_range(node)
    assert np.array_equal((lo, hi), (analyze(graph)[node.name].lo, analyze(graph)[node.name].hi))
    spec = graph.inputs[0].quant
    shape = graph.inputs[0].type.concrete(1)[1:]
    rng = np.random.default_rng(seed)
    random = rng.integers(spec.qmin, spec.qmax + 1, size=(16, *shape))
    extremes = _extreme_inputs(graph)
    acc_lo, acc_hi = _per_channel(_accumulators(graph, np.concatenate([random, extremes])), node.op)
    assert np.all(lo <= acc_lo) and np.all(acc_hi <= hi)  # sound
    assert np.array_equal(acc_lo, lo) and np.array_equal(acc_hi, hi)  # tight: the extremes are reached


# ------------------------------------------------------------------------------ properties

@SETTINGS
@given(conv_layers(), st.integers(0, 2**32 - 1))
def test_conv_range_is_exact(graph, seed):
    _check_sound_and_tight(graph, seed)


@SETTINGS
@given(dense_layers(), st.integers(0, 2**32 - 1))
def test_dense_range_is_exact(graph, seed):
    _check_sound_and_tight(graph, seed)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_ranges_contain_every_accumulator_of_random_graphs(data):
    opts = GraphOptions(max_layers=4, max_channels=4, max_side=6)
    graph = data.draw(graphs(opts))
    graph.inputs[0].quant = data.draw(activation_annotations(("uniform",), channels=graph.inputs[0].type.shape[1]))
    layers = analyze(graph)
    feeds = [data.draw(graph_inputs(graph, batch=3)), data.draw(graph_inputs(graph, batch=2, low=-500, high=500))]
    semantics = IntegerSemantics()
    for feed in feeds:
        env = run_integer(graph, feed, keep_all=True)
        for node in graph.nodes:
            if node.name not in layers:
                continue
            args = [None if v is None else constant_value(v) if v.is_constant else env[v.name] for v in node.inputs]
            acc = semantics.evaluate(node, args)[0]
            assert isinstance(acc, QTensor), node
            q = acc.q
            region = node.outputs[0].region
            layer = layers[node.name]
            axis = 1 if node.op not in ("Gemm", "MatMul") else q.ndim - 1
            if region is not None and not region.empty:
                keep = np.ones(q.shape[-2:], bool)
                keep[: region.top] = keep[q.shape[-2] - region.bottom:] = False
                keep[:, : region.left] = keep[:, q.shape[-1] - region.right:] = False
                q = q[..., keep]
            m = np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1)
            assert np.all(layer.lo <= m.min(axis=1)) and np.all(m.max(axis=1) <= layer.hi), node.name


@pytest.mark.parametrize("lo,hi,bits", [(0, 0, 1), (-1, 0, 1), (0, 1, 2), (-128, 127, 8), (-129, 0, 9),
                                        (0, 128, 9), (-2**31, 2**31 - 1, 32), (np.array([-5, 3]), np.array([7, 9]), 5)])
def test_required_bits(lo, hi, bits):
    assert required_bits(lo, hi) == bits


# ------------------------------------------------------------------------------ the pass

def _wide_layer(fan_in: int = 4096) -> Graph:
    """8-bit x 8-bit Gemm with a huge fan-in: |acc| up to fan_in * 128 * 128 = 2^26 at fan_in 4096."""
    g = Graph("wide")
    x = g.add_input("x", TensorType(("N", fan_in)), quant=Uniform(bits=8, signed=True, scale=0.5))
    spec = Uniform(bits=8, signed=True, scale=0.25)
    w = g.add_constant("w", np.full((2, fan_in), -128 * 0.25, np.float32), quant=spec)
    y = g.add_node("Gemm", [x, w], attrs={"transB": 1}, name="wide_fc")
    g.set_outputs([y.output])
    return g


def test_wide_layer_overflows_narrow_accumulators():
    g = _wide_layer()
    (layer,) = analyze(g).values()
    assert (int(layer.lo.min()), int(layer.hi.max())) == (-4096 * 128 * 127, 4096 * 128 * 128)
    assert layer.bits == 28
    (v,) = prove_no_overflow(g, 16)
    assert (v.node, v.bits, v.acc_bits) == ("wide_fc", 28, 16)
    assert "needs an accumulator of 28 bits" in v.message()
    assert prove_no_overflow(g, 28) == []
    with pytest.raises(PassError, match=r"layer 'wide_fc' \(Gemm\) needs an accumulator of 28 bits .*acc-bits=16"):
        run_pipeline(g, "range-analysis{acc-bits=16}", PassContext())


def test_allow_overflow_records_ranges():
    g = _wide_layer()
    run_pipeline(g, "range-analysis{acc-bits=16,allow-overflow=true}", PassContext())
    record = g.nodes[0].attrs["ranges"]
    assert record["bits"] == 28 and record["hi"] == [4096 * 128 * 128] * 2


def test_ranges_attribute_round_trips_through_text(tmp_path):
    from qcc.frontend.qir import load, print_graph, save

    g = _wide_layer(8)
    run_pipeline(g, "range-analysis", PassContext())
    save(g, tmp_path / "w.qir")
    h = load(tmp_path / "w.qir")
    assert print_graph(h) == print_graph(g)
    lo, hi = accumulator_range(h.nodes[0])
    assert lo.tolist() == [-8 * 128 * 127] * 2 and hi.tolist() == [8 * 128 * 128] * 2


def test_pass_reports_changed_only_once():
    g = _wide_layer(8)
    pass_cls = __import__("qcc.pass_manager", fromlist=["get_pass_class"]).get_pass_class("range-analysis")
    assert pass_cls()(g).changed
    assert not pass_cls()(g).changed


def test_bad_option_is_a_clear_error():
    with pytest.raises(QccError, match="acc-bits must be between 2 and 64"):
        run_pipeline(_wide_layer(8), "range-analysis{acc-bits=0}", PassContext())


def test_accumulator_range_alone_needs_annotated_inputs():
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 4)))
    w = g.add_constant("w", np.ones((2, 4), np.float32), quant=Uniform(bits=4, scale=1.0))
    y = g.add_node("Gemm", [x, w], attrs={"transB": 1}, name="fc")
    g.set_outputs([y.output])
    with pytest.raises(QccError, match="input 'x' has no annotation"):
        accumulator_range(g.nodes[0])
    assert analyze(g) == {}  # a float input: a float island, nothing accumulates in integers


def test_bundled_example_fits_32_bits_but_not_16():
    from qcc.examples import MODEL, load_split
    from qcc.frontend.onnx import import_model

    g = import_model(MODEL)
    ctx = PassContext()
    ctx.config["calib"] = {"x": load_split("calib")[0][:64]}
    run_pipeline(g, "fold-bn,calibrate,quantize{w_bits=8,a_bits=8},range-analysis{acc-bits=32}", ctx)
    convs = [n for n in g.nodes if n.op in ("Conv", "Gemm")]
    assert all("ranges" in n.attrs and n.attrs["ranges"]["bits"] <= 32 for n in convs)
    assert prove_no_overflow(g, 32) == []
    assert prove_no_overflow(g, 16)
    with pytest.raises(PassError, match="more than acc-bits=16"):
        run_pipeline(g, "range-analysis{acc-bits=16}", PassContext())
