"""IR core: graph editing keeps uses and index consistent; the verifier rejects broken graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.errors import ShapeError, UnsupportedOpError, VerifyError
from qcc.ir import Bipolar, Codebook, Graph, Region, TensorType, Thresholds, Uniform
from qcc.ir.quant import spec_from_dict, spec_to_dict
from qcc.ir.verify import verify
from qcc.testing import graphs


def _conv_graph() -> Graph:
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 2, 6, 6)))
    w = g.add_constant("w", np.ones((4, 2, 3, 3), np.float32))
    c = g.add_node("Conv", [x, w], attrs={"pads": [1, 1, 1, 1]}, name="conv")
    g.set_outputs(c.outputs)
    return g


def test_add_node_infers_types_and_fills_defaults():
    g = _conv_graph()
    conv = g.node("conv")
    assert conv.output.type == TensorType(("N", 4, 6, 6))
    assert conv.attrs["strides"] == [1, 1] and conv.attrs["group"] == 1
    assert g.users(g.inputs[0]) == [conv]
    verify(g)


def test_constants_are_frozen_and_shared_by_clones():
    g = _conv_graph()
    with pytest.raises(ValueError):
        g.constants[0].data[0, 0, 0, 0] = 5
    h = g.clone()
    assert h.constants[0].data is g.constants[0].data
    assert h.nodes[0] is not g.nodes[0] and h.nodes[0].name == "conv"
    verify(h)


def test_replace_all_uses_and_erase():
    g = _conv_graph()
    w2 = g.add_constant("w2", np.zeros((4, 2, 3, 3), np.float32))
    g.replace_all_uses(g.value("w"), w2)
    assert g.node("conv").inputs[1] is w2
    assert g.remove_dead() == 1  # the old weight
    with pytest.raises(VerifyError, match="still used"):
        g.erase(g.node("conv"))


def test_topological_order_is_deterministic():
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 4)))
    a = g.add_node("Relu", [x], name="a").output
    b = g.add_node("Relu", [x], name="b").output
    g.set_outputs(g.add_node("Add", [b, a], name="c").outputs)
    assert [n.name for n in g.nodes] == ["a", "b", "c"]


def test_verifier_rejects_cycles():
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 4)))
    a = g.add_node("Relu", [x], name="a")
    b = g.add_node("Relu", [a.output], name="b")
    g.set_outputs(b.outputs)
    g.set_input(a, 0, b.output)
    with pytest.raises(VerifyError, match="cycle"):
        verify(g)


def test_verifier_rejects_dangling_values():
    g = _conv_graph()
    other = Graph("other")
    stray = other.add_input("stray", TensorType(("N", 2, 6, 6)))
    g.set_input(g.node("conv"), 0, stray)
    with pytest.raises(VerifyError, match="dangling"):
        verify(g)


def test_verifier_rejects_shape_mismatch():
    g = _conv_graph()
    g.node("conv").output.type = TensorType(("N", 5, 6, 6))
    with pytest.raises(VerifyError, match="shape mismatch"):
        verify(g)


def test_add_node_rejects_bad_shapes_and_unknown_ops():
    g = _conv_graph()
    w = g.add_constant("w3", np.ones((4, 3, 3, 3), np.float32))
    with pytest.raises(ShapeError, match="node 'bad'.*channels"):
        g.add_node("Conv", [g.inputs[0], w], name="bad")
    with pytest.raises(UnsupportedOpError, match="'FancyOp' at node 'n'.*supported ops: .*Conv"):
        g.add_node("FancyOp", [g.inputs[0]], name="n")


def test_verifier_checks_annotations():
    g = _conv_graph()
    g.node("conv").output.quant = Uniform(bits=4, scale=(0.1, 0.2, 0.3), zero_point=(0, 0, 0), axis=1)
    with pytest.raises(VerifyError, match="3 per-channel uniform parameters for 4 channels"):
        verify(g)
    g.node("conv").output.quant = None
    g.node("conv").output.region = Region(3, 3, 0, 0)
    with pytest.raises(VerifyError, match="crop .* larger than the 6x6"):
        verify(g)
    g.node("conv").output.region = None
    g.value("w").quant = Uniform(bits=2, scale=0.3)
    with pytest.raises(VerifyError, match="cannot represent"):
        verify(g)


@pytest.mark.parametrize("make, message", [
    (lambda: Uniform(bits=0), "bits must be an integer"),
    (lambda: Uniform(bits=4, scale=0.0), "scale must be finite and > 0"),
    (lambda: Uniform(bits=4, signed=False, zero_point=16), "zero_point 16 outside"),
    (lambda: Uniform(bits=4, scale=(1.0, 2.0)), "axis is not set"),
    (lambda: Codebook(bits=1, centroids=(1, 2, 3)), "3 centroids do not fit 1-bit"),
    (lambda: Thresholds(bits=2, thresholds=((1.0, 0.0, 2.0),)), "not sorted"),
    (lambda: Thresholds(bits=1, thresholds=((0.0, 1.0),)), "do not fit 1 output bits"),
    (lambda: Bipolar(scale=-1.0), "scale must be finite"),
    (lambda: Region(-1, 0, 0, 0), "non-negative"),
])
def test_quant_specs_validate_themselves(make, message):
    with pytest.raises(VerifyError, match=message):
        make()


def test_fixed_point_is_uniform_special_case():
    q = Uniform.fixed_point(bits=8, frac_bits=5)
    assert q.scale == 2.0**-5 and q.frac_bits == 5 and (q.qmin, q.qmax) == (-128, 127)
    assert Uniform(bits=8, scale=0.1).frac_bits is None


@settings(max_examples=40, deadline=None)
@given(graphs())
def test_random_graphs_verify_and_specs_round_trip(g):
    verify(g)
    for v in g.values():
        if v.quant is not None:
            assert spec_from_dict(v.quant.scheme, spec_to_dict(v.quant)) == v.quant
        if v.region is not None:
            assert spec_from_dict("region", spec_to_dict(v.region)) == v.region


@settings(max_examples=20, deadline=None)
@given(graphs(), st.integers(0, 2**31))
def test_clone_runs_identically(g, seed):
    from qcc.interp import run

    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, g.inputs[0].type.concrete()).astype(np.float32)
    a = run(g, {"x": x}, mode="fake")
    b = run(g.clone(), {"x": x}, mode="fake")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@settings(max_examples=40, deadline=None)
@given(graphs(), st.data())
def test_verifier_rejects_random_breakage(g, data):
    """Break a random valid graph in one of three ways; the verifier must name the breakage."""
    nodes = g.nodes
    kind = data.draw(st.sampled_from(["cycle", "dangling", "shape"]))
    if kind == "cycle" and len(nodes) >= 2:
        i = data.draw(st.integers(0, len(nodes) - 2))
        j = data.draw(st.integers(i + 1, len(nodes) - 1))
        g.set_input(nodes[i], 0, nodes[j].outputs[0])  # an earlier node now reads a later one
        message = "cycle"
    elif kind == "dangling":
        node = data.draw(st.sampled_from(nodes))
        stray = Graph("other").add_input("stray", node.inputs[0].type)
        g.set_input(node, 0, stray)
        message = "dangling"
    else:
        node = data.draw(st.sampled_from(nodes))
        out = node.outputs[0]
        shape = list(out.type.shape)
        axis = data.draw(st.integers(0, len(shape) - 1))
        shape[axis] = int(shape[axis]) + data.draw(st.integers(1, 3))
        out.type = TensorType(tuple(shape), out.type.dtype)
        message = "shape mismatch|does not match|do not|differ|channels|cannot|expects|inner dims"
    with pytest.raises(VerifyError, match=message):
        verify(g)


def test_error_messages_stay_one_line_whatever_the_input_holds():
    from qcc.errors import ParseError, QccError

    assert str(QccError("missing weight 'a\nb\tc'")) == "missing weight 'a\\nb\\tc'"
    assert "\n" not in str(ParseError("unknown 'x\ny'", line=3, column=2, source="m.qir"))
