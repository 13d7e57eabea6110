"""fold-bn: folding BatchNormalization into Conv / Gemm / MatMul preserves float outputs; the cases it
cannot fold are left exactly as they were."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import qcc.examples as ex
from qcc.errors import QccError
from qcc.frontend import load_model
from qcc.frontend.qir import print_graph
from qcc.interp import run
from qcc.ir import Graph, Region, TensorType, Uniform
from qcc.ir.graph import Value
from qcc.pass_manager import parse_pipeline, run_pipeline
from qcc.passes.fold_bn import FoldBatchNormPass
from qcc.testing import GraphOptions, graph_inputs, graphs

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _close(before: dict, after: dict) -> None:
    """max|a - b| <= 1e-5 * max(1, max|a|) for every output (the issue's relative error bound)."""
    assert before.keys() == after.keys()
    for name, a in before.items():
        b = after[name]
        assert a.shape == b.shape and a.dtype == b.dtype
        bound = 1e-5 * max(1.0, float(np.abs(a).max(initial=0.0)))
        assert float(np.abs(a.astype(np.float64) - b).max(initial=0.0)) <= bound, name


def _bn_params(g: Graph, rng: np.random.Generator, c: int, prefix: str = "bn",
               gamma: np.ndarray | None = None) -> list[Value]:
    if gamma is None:
        gamma = rng.uniform(-2.0, 2.0, c)
        gamma[rng.random(c) < 0.25] = 0.0  # zero scales
    params = [gamma, rng.normal(0, 0.5, c), rng.normal(0, 0.5, c), rng.uniform(0.05, 2.0, c)]
    return [g.add_constant(f"{prefix}.{n}", np.asarray(p, np.float32))
            for n, p in zip(("scale", "bias", "mean", "var"), params)]


def _ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


# ---------------------------------------------------------------------------------- property tests

@st.composite
def _layer_bn_graphs(draw):
    """Conv (plain, grouped, depthwise, 1-d or 2-d, with or without bias), Gemm or MatMul, then BN."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["conv", "grouped", "depthwise", "gemm", "matmul"]))
    g = Graph("t")
    if kind in ("gemm", "matmul"):
        m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
        attrs: dict = {}
        if kind == "gemm":
            attrs = {"transA": draw(st.integers(0, 1)), "transB": draw(st.integers(0, 1)),
                     "alpha": draw(st.sampled_from([1.0, 0.5, -2.0])), "beta": draw(st.sampled_from([1.0, 0.0, 3.0]))}
        x = g.add_input("x", TensorType((k, m) if attrs.get("transA") else (m, k)))
        w = g.add_constant("w", rng.normal(0, 0.5, (n, k) if attrs.get("transB") else (k, n)).astype(np.float32))
        inputs = [x, w]
        c_shape = draw(st.sampled_from([None, (n,), (1, n), (m, n), (m, 1), (1,)])) if kind == "gemm" else None
        if c_shape is not None:
            inputs.append(g.add_constant("c", rng.normal(0, 0.5, c_shape).astype(np.float32)))
        y = g.add_node("Gemm" if kind == "gemm" else "MatMul", inputs, attrs=attrs, name="layer").output
        channels = n
    else:
        spatial = draw(st.sampled_from([(5,), (5, 6)]))
        group = {"conv": 1, "grouped": 2, "depthwise": draw(st.integers(1, 4))}[kind]
        cin = group * draw(st.integers(1, 3)) if kind != "depthwise" else group
        cout = group * draw(st.integers(1, 3)) if kind != "depthwise" else group
        ksize = draw(st.sampled_from([1, 3]))
        x = g.add_input("x", TensorType((2, cin, *spatial)))
        w = g.add_constant("w", rng.normal(0, 0.5, (cout, cin // group) + (ksize,) * len(spatial)).astype(np.float32))
        inputs = [x, w]
        if draw(st.booleans()):
            inputs.append(g.add_constant("b", rng.normal(0, 0.5, cout).astype(np.float32)))
        y = g.add_node("Conv", inputs, attrs={"group": group, "pads": [ksize // 2] * 2 * len(spatial)},
                       name="layer").output
        channels = cout
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.0]))
    y = g.add_node("BatchNormalization", [y, *_bn_params(g, rng, channels)], attrs={"epsilon": eps},
                   name="bn").output
    if draw(st.booleans()):
        y = g.add_node("Relu", [y], name="relu").output
    g.set_outputs([y])
    return g


@SETTINGS
@given(data=st.data())
def test_folding_preserves_float_outputs(data):
    g = data.draw(_layer_bn_graphs())
    x = data.draw(graph_inputs(g, low=-3.0, high=3.0))
    names = [v.name for v in g.outputs]
    before = run(g, x)
    assert FoldBatchNormPass()(g).changed
    assert "BatchNormalization" not in _ops(g) and "MatMul" not in _ops(g)
    assert g.node("layer").op in ("Conv", "Gemm")
    assert [v.name for v in g.outputs] == names
    _close(before, run(g, x))
    assert not FoldBatchNormPass()(g).changed


def _foldable_left(g: Graph) -> list[str]:
    """BNs still fed by a Conv output that nothing else uses (what an unannotated graph must not keep)."""
    left = []
    for node in g.nodes:
        src = node.inputs[0].producer if node.op == "BatchNormalization" else None
        if src is not None and src.op == "Conv" and len(src.output.uses) == 1 and not g.is_output(src.output):
            left.append(node.name)
    return left


# Threshold activations are the function itself even in float mode: a 1-ulp difference at a threshold
# would flip a level, so the float comparison draws the other schemes only.
_SCHEMES = ("uniform", "codebook", "bipolar", "region")


@settings(SETTINGS, max_examples=80)
@given(data=st.data(), annotate=st.booleans())
def test_folding_random_graphs(data, annotate):
    opts = GraphOptions(layers=("conv", "depthwise", "bn", "relu", "add"), schemes=_SCHEMES, annotate=annotate)
    g = data.draw(graphs(opts))
    x = data.draw(graph_inputs(g))
    bns = _ops(g).count("BatchNormalization")
    before = run(g, x)
    changed = FoldBatchNormPass()(g).changed
    event(f"folded: {changed}")
    assert changed == (_ops(g).count("BatchNormalization") < bns)
    if not annotate:
        assert _foldable_left(g) == []
    _close(before, run(g, x))


def test_example_model_loses_every_bn_and_keeps_its_accuracy():
    g = load_model(ex.MODEL)
    assert _ops(g).count("BatchNormalization") == 4
    x, y = ex.load_split("eval")
    before = run(g, {"x": x})
    assert run_pipeline(g, "fold-bn")
    assert "BatchNormalization" not in _ops(g)
    after = run(g, {"x": x})
    _close(before, after)
    (name,) = before
    assert ex.accuracy(after[name], y) == ex.accuracy(before[name], y)


# ---------------------------------------------------------------------------------- exact cases

def _conv_bn(gamma: list[float], *, bias: bool = True, relu: bool = True) -> Graph:
    rng = np.random.default_rng(0)
    c = len(gamma)
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 2, 4, 4)))
    inputs = [x, g.add_constant("w", rng.normal(0, 1, (c, 2, 3, 3)).astype(np.float32))]
    if bias:
        inputs.append(g.add_constant("b", rng.normal(0, 1, c).astype(np.float32)))
    conv = g.add_node("Conv", inputs, attrs={"pads": [1, 1, 1, 1]}, name="conv", output_names=["conv_out"])
    params = _bn_params(g, rng, c, gamma=np.asarray(gamma))
    y = g.add_node("BatchNormalization", [conv.output, *params], name="bn", output_names=["bn_out"]).output
    if relu:
        y = g.add_node("Relu", [y], name="relu").output
    g.set_outputs([y])
    return g


def test_zero_and_negative_scales():
    g = _conv_bn([0.0, -1.5, 2.0])
    w, beta = g.value("w").data, g.value("bn.bias").data
    g_scale = np.array([0.0, -1.5, 2.0]) / np.sqrt(g.value("bn.var").data.astype(np.float64) + 1e-5)
    assert FoldBatchNormPass()(g).changed
    conv = g.node("conv")
    new_w, new_b = conv.inputs[1].data, conv.inputs[2].data
    assert not new_w[0].any() and new_b[0] == beta[0]  # zero gamma: no weights, bias = beta
    expected = (w.astype(np.float64) * g_scale[:, None, None, None]).astype(np.float32)
    np.testing.assert_array_equal(new_w, expected)  # rounded once from float64
    assert (np.sign(new_w[1]) == -np.sign(w[1])).all()


def test_names_kept_and_bias_created():
    g = _conv_bn([1.0, 2.0], bias=False)
    assert FoldBatchNormPass()(g).changed
    conv = g.node("conv")
    assert _ops(g) == ["Conv", "Relu"]
    assert conv.output.name == "conv_out" and conv.inputs[1].name == "w"
    assert len(conv.inputs) == 3 and conv.inputs[2].is_constant
    assert sorted(c.name for c in g.constants) == sorted([conv.inputs[1].name, conv.inputs[2].name])


def test_graph_output_name_and_annotations_move_to_the_conv():
    g = _conv_bn([1.0, 2.0], relu=False)
    bn_out = g.value("bn_out")
    bn_out.quant = Uniform(bits=8, scale=0.05)
    bn_out.region = Region(1, 0, 0, 1)
    assert FoldBatchNormPass()(g).changed
    out = g.outputs[0]
    assert out.name == "bn_out" and out.producer is g.node("conv")
    assert out.quant == Uniform(bits=8, scale=0.05) and out.region == Region(1, 0, 0, 1)


def test_matmul_becomes_gemm():
    rng = np.random.default_rng(1)
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 3)))
    w = g.add_constant("w", rng.normal(0, 1, (3, 4)).astype(np.float32))
    mm = g.add_node("MatMul", [x, w], name="fc").output
    g.set_outputs([g.add_node("BatchNormalization", [mm, *_bn_params(g, rng, 4)], name="bn").output])
    xs = {"x": rng.normal(0, 1, (5, 3)).astype(np.float32)}
    before = run(g, xs)
    assert FoldBatchNormPass()(g).changed
    fc = g.node("fc")
    assert _ops(g) == ["Gemm"] and fc.attrs["transB"] == 0 and fc.output.type.shape == ("N", 4)
    _close(before, run(g, xs))


def test_chained_bns_fold_in_one_run():
    g = _conv_bn([1.0, -0.5], relu=False)
    rng = np.random.default_rng(2)
    y = g.add_node("BatchNormalization", [g.outputs[0], *_bn_params(g, rng, 2, prefix="bn2")], name="bn2").output
    g.set_outputs([y])
    x = {"x": rng.normal(0, 1, (1, 2, 4, 4)).astype(np.float32)}
    before = run(g, x)
    assert FoldBatchNormPass()(g).changed
    assert _ops(g) == ["Conv"]
    _close(before, run(g, x))


def test_shared_weight_is_left_for_its_other_user():
    g = _conv_bn([1.0, 2.0])
    w = g.value("w")
    other = g.add_node("Conv", [g.inputs[0], w], attrs={"pads": [1, 1, 1, 1]}, name="other").output
    g.set_outputs([*g.outputs, other])
    x = {"x": np.random.default_rng(3).normal(0, 1, (1, 2, 4, 4)).astype(np.float32)}
    before = run(g, x)
    assert FoldBatchNormPass()(g).changed
    assert g.node("other").inputs[1] is w and g.node("conv").inputs[1] is not w
    _close(before, run(g, x))


# ---------------------------------------------------------------------------------- left alone

def _other_user(g: Graph) -> None:
    g.set_outputs([*g.outputs, g.add_node("Relu", [g.value("conv_out")], name="tap").output])


def _conv_out_is_output(g: Graph) -> None:
    g.set_outputs([*g.outputs, g.value("conv_out")])


def _param_not_constant(g: Graph) -> None:
    scale = g.add_input("scale", TensorType((2,)))
    g.set_input(g.node("bn"), 1, scale)
    g.remove_constant(g.value("bn.scale"))


def _weight_not_constant(g: Graph) -> None:
    w = g.add_input("w_in", TensorType((2, 2, 3, 3)))
    g.set_input(g.node("conv"), 1, w)
    g.remove_constant(g.value("w"))


def _conv_out_annotated(g: Graph) -> None:
    g.value("conv_out").quant = Uniform(bits=8, scale=0.1)


def _weight_annotated(g: Graph) -> None:
    spec = Uniform(bits=8, scale=0.25)
    w = g.add_constant("wq", np.full((2, 2, 3, 3), 0.5, np.float32), quant=spec)
    g.set_input(g.node("conv"), 1, w)
    g.remove_constant(g.value("w"))


def _negative_var(g: Graph) -> None:
    var = g.add_constant("var_bad", np.array([1.0, -1.0], np.float32))
    g.set_input(g.node("bn"), 4, var)
    g.remove_constant(g.value("bn.var"))


def _overflowing_scale(g: Graph) -> None:
    big = g.add_constant("gamma_big", np.array([1.0, np.finfo(np.float32).max], np.float32))
    g.set_input(g.node("bn"), 1, big)
    g.remove_constant(g.value("bn.scale"))


def _bn_after_relu(g: Graph) -> None:
    relu = g.add_node("Relu", [g.value("conv_out")], name="r0")
    g.set_input(g.node("bn"), 0, relu.output)


@pytest.mark.parametrize("spoil", [_other_user, _conv_out_is_output, _param_not_constant, _weight_not_constant,
                                   _conv_out_annotated, _weight_annotated, _negative_var, _overflowing_scale,
                                   _bn_after_relu])
def test_unfoldable_conv_bn_is_left_untouched(spoil, caplog):
    g = _conv_bn([1.0, 2.0])
    spoil(g)
    text = print_graph(g)
    with caplog.at_level(logging.DEBUG, logger="qcc.passes.fold_bn"):
        assert not FoldBatchNormPass()(g).changed
    assert print_graph(g) == text
    if spoil is not _bn_after_relu:
        assert "left 'bn' unfolded" in caplog.text


def test_min_var_guard():
    g = _conv_bn([1.0, 2.0])
    g.set_input(g.node("bn"), 4, g.add_constant("small", np.array([1e-4, 1.0], np.float32)))
    g.remove_constant(g.value("bn.var"))
    text = print_graph(g)
    assert not FoldBatchNormPass(min_var=1e-3)(g).changed
    assert print_graph(g) == text
    assert FoldBatchNormPass()(g).changed


def _gemm_bn(c_input: bool = False, c_annotated: bool = False, batched: bool = False) -> Graph:
    rng = np.random.default_rng(4)
    g = Graph("t")
    if batched:  # MatMul [B, M, K] @ [K, N]: BN's channel axis 1 is M, not the output features
        x = g.add_input("x", TensorType((2, 3, 4)))
        y = g.add_node("MatMul", [x, g.add_constant("w", np.ones((4, 5), np.float32))], name="fc").output
        channels = 3
    else:
        x = g.add_input("x", TensorType((2, 4)))
        w = g.add_constant("w", np.ones((5, 4), np.float32))
        if c_input:
            c = g.add_input("c", TensorType((5,)))
        else:
            spec = Uniform(bits=8, scale=0.5) if c_annotated else None
            c = g.add_constant("c", np.full(5, 0.5, np.float32), quant=spec)
        y = g.add_node("Gemm", [x, w, c], attrs={"transB": 1}, name="fc").output
        channels = 5
    g.set_outputs([g.add_node("BatchNormalization", [y, *_bn_params(g, rng, channels)], name="bn").output])
    return g


@pytest.mark.parametrize("kwargs", [{"c_input": True}, {"c_annotated": True}, {"batched": True}])
def test_unfoldable_gemm_bn_is_left_untouched(kwargs):
    g = _gemm_bn(**kwargs)
    text = print_graph(g)
    assert not FoldBatchNormPass()(g).changed
    assert print_graph(g) == text


# ---------------------------------------------------------------------------------- bad options

@pytest.mark.parametrize("pipeline, message", [
    ("fold-bn{min-var=-1}", "min-var"),
    ("fold-bn{min-var=nan}", "min-var"),
    ("fold-bn{bogus=1}", "no option 'bogus'"),
])
def test_bad_options_name_the_pass(pipeline, message):
    with pytest.raises(QccError, match="fold-bn") as info:
        parse_pipeline(pipeline)
    assert message in str(info.value)


def test_bad_option_in_python():
    with pytest.raises(QccError, match="min-var"):
        FoldBatchNormPass(min_var=float("inf"))
