"""residual-rewrite: exact in integer semantics on random residual blocks, chains and the example."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc import examples
from qcc.errors import PassError, QccError
from qcc.frontend import load_model
from qcc.frontend.qir import print_graph
from qcc.integer import QTensor, run_integer
from qcc.interp import run
from qcc.ir import Graph, TensorType, Uniform
from qcc.ir.quant import Region
from qcc.numerics import fake_quant
from qcc.pass_manager import PassContext, parse_pipeline, run_pipeline
from qcc.testing import GraphOptions, graph_inputs, graphs

POW2 = [2.0**-k for k in range(1, 9)]
ANY_SCALE = [0.013, 0.05, 0.1, 0.37, 0.0173, 2.0**-5]


# ------------------------------------------------------------------------------ random residual blocks


def _weight(g: Graph, draw, rng, name: str, shape: tuple[int, ...], scales: list[float]) -> object:
    cout = shape[0]
    bits = draw(st.integers(2, 8))
    if draw(st.booleans()):
        spec = Uniform(bits=bits, scale=tuple(draw(st.sampled_from(scales)) for _ in range(cout)),
                       zero_point=(0,) * cout, axis=0)
    else:
        spec = Uniform(bits=bits, scale=draw(st.sampled_from(scales)), zero_point=0)
    data = fake_quant(rng.normal(0, 0.4, shape).astype(np.float32), spec)
    return g.add_constant(g.fresh_name(name), data, quant=spec)


def _activation_spec(draw, scales: list[float], signed: bool) -> Uniform:
    bits = draw(st.integers(2, 8))
    if signed:
        return Uniform(bits=bits, signed=True, scale=draw(st.sampled_from(scales)), zero_point=0)
    zp = draw(st.sampled_from([0, 0, 1]))
    return Uniform(bits=bits, signed=False, scale=draw(st.sampled_from(scales)), zero_point=zp)


def _block(g: Graph, draw, rng, x, k: int, scales: list[float], last: bool):
    """Conv(+Relu, quantized) -> Conv branch, skip x, Add, optional activation and MaxPool, quantizer."""
    c = int(x.type.shape[1])
    branch = x
    if draw(st.booleans()):  # two-layer branch: the middle activation carries its own quantizer
        w1 = _weight(g, draw, rng, f"b{k}.w1", (c, c, 3, 3), scales)
        mid = g.add_node("Conv", [branch, w1], attrs={"pads": [1, 1, 1, 1]}, name=f"b{k}.conv1").output
        branch = g.add_node("Relu", [mid], name=f"b{k}.relu1").output
        branch.quant = _activation_spec(draw, scales, signed=False)
    ksize = draw(st.sampled_from([1, 3]))
    w2 = _weight(g, draw, rng, f"b{k}.w2", (c, c, ksize, ksize), scales)
    inputs = [branch, w2]
    if draw(st.booleans()):
        inputs.append(g.add_constant(g.fresh_name(f"b{k}.bias"), rng.normal(0, 0.3, c).astype(np.float32)))
    acc = g.add_node("Conv", inputs, attrs={"pads": [ksize // 2] * 4}, name=f"b{k}.conv2").output
    operands = [acc, x] if draw(st.booleans()) else [x, acc]
    y = g.add_node("Add", operands, name=f"b{k}.add").output
    act = draw(st.sampled_from(["relu", "clip", "none"]))
    if act == "relu":
        y = g.add_node("Relu", [y], name=f"b{k}.relu").output
    elif act == "clip":
        y = g.add_node("Clip", [y], attrs={"min": 0.0, "max": 1.5}, name=f"b{k}.clip").output
    tail = draw(st.sampled_from(["", "pool", "pool-id"] if last else ["", "same-pool"]))
    if tail in ("pool", "pool-id"):
        y = g.add_node("MaxPool", [y], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, name=f"b{k}.pool").output
    if tail == "same-pool":
        y = g.add_node("MaxPool", [y], attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
                       name=f"b{k}.pool").output
    if tail == "pool-id":
        y = g.add_node("Identity", [y], name=f"b{k}.id").output
    y.quant = _activation_spec(draw, scales, signed=act == "none")
    return y


@st.composite
def residual_blocks(draw, pow2: bool | None = None):
    """One or two chained residual blocks on a quantized NCHW input, and an input batch."""
    pow2 = draw(st.booleans()) if pow2 is None else pow2
    scales = POW2 if pow2 else ANY_SCALE
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    c, side = draw(st.integers(1, 3)), draw(st.sampled_from([4, 6]))
    g = Graph("residual")
    x_spec = _activation_spec(draw, scales, signed=draw(st.booleans()))
    x = g.add_input("x", TensorType((2, c, side, side)), quant=x_spec)
    blocks = draw(st.integers(1, 2))
    y = x
    for k in range(blocks):
        y = _block(g, draw, rng, y, k, scales, last=k == blocks - 1)
    g.set_outputs([y])
    data = rng.uniform(-1.5, 3.0, (2, c, side, side)).astype(np.float32)  # past every quantizer's range
    return g, {"x": data}


def _assert_same(before: Graph, after: Graph, inputs: dict, modes: tuple[str, ...] = ("int", "float")) -> None:
    for mode in modes:
        want, got = run(before, inputs, mode=mode), run(after, inputs, mode=mode)
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f"{mode} output {name}")
    want, got = run_integer(before, inputs), run_integer(after, inputs)
    for name, value in want.items():
        assert isinstance(value, QTensor) and isinstance(got[name], QTensor)
        np.testing.assert_array_equal(got[name].q, value.q)
        np.testing.assert_array_equal(got[name].scale, value.scale)


def _add_scales(g: Graph, inputs: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    view = run_integer(g, inputs, keep_all=True)
    return {n.name: (view[n.inputs[0].name].scale, view[n.inputs[1].name].scale) for n in g.nodes if n.op == "Add"}


@settings(max_examples=60, deadline=None)
@given(residual_blocks())
def test_rewrite_is_exact_on_residual_blocks_and_chains(case):
    g, inputs = case
    before = g.clone()
    run_pipeline(g, "residual-rewrite")
    _assert_same(before, g, inputs)
    text = print_graph(g)
    assert not run_pipeline(g, "residual-rewrite")  # a fixed point after one run
    assert print_graph(g) == text


@settings(max_examples=40, deadline=None)
@given(residual_blocks(pow2=True))
def test_power_of_two_blocks_add_operands_at_one_scale(case):
    """Power-of-two scales: an Add whose skip is above the accumulator scale becomes a plain add."""
    g, inputs = case
    aligned = {}
    for name, scales in _add_scales(g, inputs).items():
        skip = 0 if g.node(name).inputs[0].producer is None or g.node(name).inputs[0].producer.op != "Conv" else 1
        aligned[name] = bool(np.all(scales[skip] >= scales[1 - skip]) and np.any(scales[skip] > scales[1 - skip]))
    before = g.clone()
    run_pipeline(g, "residual-rewrite")
    _assert_same(before, g, inputs, modes=("int", "float", "fake"))  # integer ratios: fake-quant unchanged too
    for name, (a, b) in _add_scales(g, inputs).items():
        if aligned[name]:
            np.testing.assert_array_equal(*np.broadcast_arrays(a, b))
            assert any(v.producer is not None and v.producer.name == f"{name}.align" for v in g.node(name).inputs)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_rewrite_is_exact_on_library_graphs(data):
    g = data.draw(graphs(GraphOptions(layers=("conv", "relu", "add", "maxpool", "clip"), max_layers=6)))
    inputs = data.draw(graph_inputs(g))
    before = g.clone()
    run_pipeline(g, "residual-rewrite")
    for mode in ("int", "float"):
        want, got = run(before, inputs, mode=mode), run(g, inputs, mode=mode)
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value)


# ------------------------------------------------------------------------------ the bundled example


@pytest.fixture(scope="module")
def example():
    x, y = examples.load_split("calib")
    xe, ye = examples.load_split("eval")
    graphs_ = {}
    for key, quantize in (("uniform", "quantize"),
                          ("fixed", 'quantize{w_scheme="dynamic-fixed",a_scheme="dynamic-fixed"}')):
        g = load_model(examples.MODEL)
        run_pipeline(g, f"fold-bn,calibrate,{quantize}", PassContext(config={"calib": {"x": x, "y": y}}))
        graphs_[key] = g
    return graphs_, xe, ye


def _check_example(g: Graph, xe, ye) -> Graph:
    before = run(g, {"x": xe}, mode="int")["logits"]
    h = g.clone()
    assert run_pipeline(h, "residual-rewrite")
    after = run(h, {"x": xe}, mode="int")["logits"]
    np.testing.assert_array_equal(after, before)
    assert examples.accuracy(after, ye) == examples.accuracy(before, ye) > 0.9
    # the post-add Relu now sits with the quantizer conv4 reads; the residual path is the raw sum
    relu = h.node("/relu3/Relu")
    assert relu.inputs[0].producer.op == "MaxPool" and h.node("/pool/MaxPool").inputs[0].producer.op == "Add"
    assert relu.output.quant is not None and h.node("/pool/MaxPool").output.quant is None
    assert h.node("/conv4/Conv").inputs[0] is relu.output
    return h


def test_example_uniform_sinks_the_activation_exactly(example):
    graphs_, xe, ye = example
    h = _check_example(graphs_["uniform"], xe, ye)
    add = h.node("/Add")  # calibrated scales: s_x * s_w is no float32, so the skip is aligned by the Add
    assert [v.producer.op for v in add.inputs] == ["Conv", "Relu"]


def test_example_power_of_two_aligns_the_skip_exactly(example):
    graphs_, xe, ye = example
    h = _check_example(graphs_["fixed"], xe, ye)
    add = h.node("/Add")
    ident = add.inputs[1].producer
    assert ident.op == "Identity" and ident.name == "/Add.align"
    assert ident.inputs[0] is add.inputs[0].producer.inputs[0]  # the skip is conv3's input
    (a, b), = _add_scales(h, {"x": xe[:1]}).values()
    np.testing.assert_array_equal(*np.broadcast_arrays(a, b))


# ------------------------------------------------------------------------------ negative tests


@pytest.mark.parametrize("spec, message", [
    ("residual-rewrite{max-bits=1}", "max-bits must be an integer in [2, 32]"),
    ("residual-rewrite{max-bits=33}", "max-bits must be an integer in [2, 32]"),
    ("residual-rewrite{align=false,sink-activation=false}", "nothing to rewrite"),
    ("residual-rewrite{max-bits=1.5}", "expected int"),
    ("residual-rewrite{shift=3}", "has no option 'shift'"),
])
def test_bad_options(spec, message):
    with pytest.raises(QccError, match="residual-rewrite") as err:
        parse_pipeline(spec)
    assert message in str(err.value)


def _small_block(*, x_spec=None, w_scale=0.25, act="Relu", pool=True, out_spec=None) -> Graph:
    """x -> Conv -> Add(acc, x) -> act -> MaxPool -> quantizer (power-of-two scales by default)."""
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 2, 4, 4)),
                    quant=x_spec or Uniform(bits=8, signed=False, scale=0.0625))
    w_spec = Uniform(bits=4, scale=w_scale, zero_point=0)
    w = g.add_constant("w", fake_quant(np.linspace(-1, 1, 18, dtype=np.float32).reshape(2, 1, 3, 3), w_spec),
                       quant=w_spec)
    acc = g.add_node("Conv", [x, w], attrs={"pads": [1, 1, 1, 1], "group": 2}, name="conv").output
    y = g.add_node("Add", [acc, x], name="add").output
    if act:
        y = g.add_node(act, [y], name="act").output
    if pool:
        y = g.add_node("MaxPool", [y], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, name="pool").output
    y.quant = out_spec or Uniform(bits=8, signed=False, scale=0.125)
    g.set_outputs([y])
    return g


def _unchanged(g: Graph, pipeline: str = "residual-rewrite") -> None:
    text = print_graph(g)
    assert not run_pipeline(g, pipeline)
    assert print_graph(g) == text


def test_small_block_rewrites_both_parts():
    g = _small_block()
    before = g.clone()
    assert run_pipeline(g, "residual-rewrite")
    assert [n.op for n in g.nodes] == ["Conv", "Identity", "Add", "MaxPool", "Relu"]
    # x codes 0..255 times 0.0625 / (0.0625 * 0.25) = 4: at most 1020, 11 signed bits
    assert g.node("add.align").output.quant == Uniform(bits=11, signed=True, scale=0.015625, zero_point=0)
    x = np.random.default_rng(0).uniform(-1, 20, (1, 2, 4, 4)).astype(np.float32)
    _assert_same(before, g, {"x": x})


def test_options_select_the_parts():
    g = _small_block()
    assert run_pipeline(g, "residual-rewrite{sink-activation=false}")
    assert [n.op for n in g.nodes] == ["Conv", "Identity", "Add", "Relu", "MaxPool"]
    g = _small_block()
    assert run_pipeline(g, "residual-rewrite{align=false}")
    assert [n.op for n in g.nodes] == ["Conv", "Add", "MaxPool", "Relu"]
    g = _small_block()
    assert run_pipeline(g, 'residual-rewrite{nodes=["add"]}')
    _unchanged(g)


@pytest.mark.parametrize("nodes, message", [
    ('["nope"]', "at node 'nope': no node of this name"),
    ('["act"]', "at node 'act': Relu node is not a residual Add"),
])
def test_bad_node_names(nodes, message):
    g = _small_block()
    with pytest.raises(PassError, match="residual-rewrite") as err:
        run_pipeline(g, f"residual-rewrite{{nodes={nodes}}}")
    assert message in str(err.value)


def test_skips_a_common_scale_that_is_no_float32_number():
    # 0.1 * 0.05 (float64 product of float32 scales) is not a float32: the Add keeps its own rescale
    g = _small_block(x_spec=Uniform(bits=8, signed=False, scale=0.1), w_scale=0.05, pool=False)
    _unchanged(g)


def test_skips_a_per_channel_skip_operand():
    g = _small_block(x_spec=Uniform(bits=8, signed=False, scale=(0.0625, 0.125), zero_point=(0, 0), axis=1),
                     pool=False)
    _unchanged(g)


def test_skips_an_aligned_operand_wider_than_max_bits():
    g = _small_block(pool=False)
    _unchanged(g, "residual-rewrite{max-bits=8}")


def test_skips_a_float_island_operand():
    g = _small_block(pool=False)
    g.inputs[0].quant = None  # the Conv and the Add run in float
    _unchanged(g)


def test_skips_crossing_per_channel_scales():
    g = _small_block(pool=False)
    w = g.node("conv").inputs[1]
    spec = Uniform(bits=8, scale=(0.25, 4.0), zero_point=(0, 0), axis=0)  # s_acc = [s/4, 4s]: crosses s
    g.set_input(g.node("conv"), 1, g.add_constant("w2", fake_quant(w.data, spec), quant=spec))
    g.remove_constant(w)
    _unchanged(g)


def test_does_not_sink_through_other_ops_or_past_crops():
    g = _small_block(pool=False, x_spec=Uniform(bits=8, signed=False, scale=0.1), w_scale=0.05)
    pool = g.node("act").output
    avg = g.add_node("AveragePool", [pool], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, name="avg").output
    avg.quant, pool.quant = pool.quant, None
    g.set_outputs([avg])
    _unchanged(g)  # Relu does not commute with an average
    g = _small_block(x_spec=Uniform(bits=8, signed=False, scale=0.1), w_scale=0.05)
    g.node("act").output.region = Region(1, 0, 0, 0)
    _unchanged(g)
    g = _small_block(x_spec=Uniform(bits=8, signed=False, scale=0.1), w_scale=0.05, act="Clip", pool=False)
    g.node("act").output.quant = None
    flat = g.add_node("Flatten", [g.node("act").output], name="flat").output
    flat.quant = Uniform(bits=8, signed=False, scale=0.125)
    g.set_outputs([flat])
    _unchanged(g)  # Clip passes MaxPool only (its integer bounds differ from the float ones)


def test_bypass_makes_skips_read_the_exact_block_output():
    """Fig. 2a in full: the skip reads the block output unquantized, layers still read it quantized,
    and every node in the residual block computes on integers (no float islands)."""
    from qcc.examples import MODEL as EXAMPLE
    from qcc.examples import load_split as split
    from qcc.frontend import load_model as load
    from qcc.integer import IntegerSemantics, QTensor
    from qcc.interp import run as interpret
    from qcc.pass_manager import PassContext as Ctx
    from qcc.pass_manager import run_pipeline as pipeline

    calib, _ = split("calib")
    x, y = split("eval")
    g = load(EXAMPLE)
    pipeline(g, "fold-bn,calibrate,quantize{w_bits=4,a_bits=4}", Ctx(config={"calib": {"x": calib}}))
    before = float((interpret(g, {"x": x}, mode="int")["logits"].argmax(1) == y).mean())
    pipeline(g, "residual-rewrite{bypass=true}")
    add = g.node("/Add")
    skip = next(v for v in add.inputs if v.producer is not None and v.producer.op != "Conv")
    assert skip.quant is None
    (bypass,) = [n for n in g.nodes if n.name == "/Add.bypass"]
    assert bypass.output.quant is not None and g.node("/conv3/Conv").inputs[0] is bypass.output

    floats = []

    class Recording(IntegerSemantics):
        def evaluate(self, node, args):
            out = super().evaluate(node, args)
            if node.op in ("Conv", "Add", "Relu", "MaxPool") and not isinstance(out[0], QTensor):
                floats.append(node.name)
            return out

    interpret(g, {"x": x[:4]}, mode=Recording())
    assert floats == []
    after = float((interpret(g, {"x": x}, mode="int")["logits"].argmax(1) == y).mean())
    assert after >= before - 0.01  # measured: 0.9917 before, 0.9944 after
