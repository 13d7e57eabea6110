"""canonicalize: folding, Identity removal and dead-code removal preserve outputs exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.interp import run
from qcc.ir import Graph, TensorType, Uniform
from qcc.ir.verify import verify
from qcc.pass_manager import run_pipeline
from qcc.passes.canonicalize import CanonicalizePass
from qcc.testing import graph_inputs, graphs


def _graph_with_constant_work() -> Graph:
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 4)))
    a = g.add_constant("a", np.arange(4, dtype=np.float32).reshape(1, 4))
    b = g.add_constant("b", np.full((1, 4), 0.5, np.float32))
    ab = g.add_node("Mul", [a, b], name="mul_const").output  # foldable
    i1 = g.add_node("Identity", [x], name="id1").output
    s = g.add_node("Add", [i1, ab], name="add").output
    g.add_node("Relu", [s], name="dead")  # unused
    out = g.add_node("Identity", [s], name="id_out", output_names=["y"]).output
    g.set_outputs([out])
    return g


def test_folds_removes_identities_and_dead_code():
    g = _graph_with_constant_work()
    x = np.array([[1, -2, 3, -4]], np.float32)
    before = run(g, {"x": x})
    assert CanonicalizePass()(g).changed
    assert [n.op for n in g.nodes] == ["Add"]
    assert [v.name for v in g.outputs] == ["y"]  # the interface name survives
    np.testing.assert_array_equal(run(g, {"x": x})["y"], before["y"])
    assert not CanonicalizePass()(g).changed  # fixed point: nothing more to do


def test_annotated_identity_is_kept():
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 4)))
    q = g.add_node("Identity", [x], name="q")
    q.output.quant = Uniform(bits=4, scale=0.25)
    g.set_outputs([g.add_node("Relu", [q.output], name="r").output])
    assert not CanonicalizePass()(g).changed


def test_input_passed_to_output_keeps_its_identity():
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 4)))
    g.set_outputs(g.add_node("Identity", [x], name="id", output_names=["y"]).outputs)
    assert not CanonicalizePass()(g).changed
    verify(g)


def test_options_switch_parts_off():
    g = _graph_with_constant_work()
    run_pipeline(g, "canonicalize{fold-constants=false,remove-identity=false}")
    assert sorted(n.op for n in g.nodes) == ["Add", "Identity", "Identity", "Mul"]


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_preserves_outputs_on_random_graphs(data):
    g = data.draw(graphs())
    x = data.draw(graph_inputs(g))
    expected = run(g, x, mode="fake")
    run_pipeline(g, "canonicalize")
    got = run(g, x, mode="fake")
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])


def test_bad_options_are_user_errors():
    import pytest

    from qcc.errors import QccError

    with pytest.raises(QccError, match=r"canonicalize\{fold-constants\}: expected bool"):
        run_pipeline(_graph_with_constant_work(), "canonicalize{fold-constants=maybe}")
    with pytest.raises(QccError, match="has no option 'fold'"):
        run_pipeline(_graph_with_constant_work(), "canonicalize{fold=true}")
