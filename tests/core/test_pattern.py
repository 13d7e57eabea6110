"""Pattern matching and partitioning over the networkx index."""

from __future__ import annotations

import numpy as np

from qcc.ir import Graph, TensorType
from qcc.ir.partition import partition
from qcc.ir.pattern import ANY, CONST, OPTIONAL, Pattern


def _conv_bn_relu(g: Graph, x, name: str):
    c = x.type.shape[1]
    w = g.add_constant(f"{name}.w", np.ones((c, c, 1, 1), np.float32))
    conv = g.add_node("Conv", [x, w], name=f"{name}.conv").output
    params = [g.add_constant(f"{name}.bn{i}", np.ones(c, np.float32)) for i in range(4)]
    bn = g.add_node("BatchNormalization", [conv, *params], name=f"{name}.bn").output
    return g.add_node("Relu", [bn], name=f"{name}.relu").output


def _conv_bn_pattern() -> Pattern:
    p = Pattern()
    p.op("conv", "Conv", ANY, CONST, OPTIONAL)
    p.op("bn", "BatchNormalization", "conv", CONST, CONST, CONST, CONST)
    return p


def test_matches_in_topological_order():
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 2, 4, 4)))
    y = _conv_bn_relu(g, _conv_bn_relu(g, x, "a"), "b")
    g.set_outputs([y])
    matches = list(_conv_bn_pattern().match(g))
    assert [(m["conv"].name, m["bn"].name) for m in matches] == [("a.conv", "a.bn"), ("b.conv", "b.bn")]
    assert matches[0].root.name == "a.bn"


def test_external_use_of_intermediate_blocks_match():
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 2, 4, 4)))
    y = _conv_bn_relu(g, x, "a")
    conv_out = g.node("a.conv").output
    g.set_outputs([y, g.add_node("Relu", [conv_out], name="tap").output])
    assert list(_conv_bn_pattern().match(g)) == []
    loose = _conv_bn_pattern()
    loose.allow_external_uses = True
    assert len(list(loose.match(g))) == 1


def test_const_and_where_predicates():
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 2, 4, 4)))
    w = g.add_input("w", TensorType((2, 2, 1, 1)))
    g.set_outputs(g.add_node("Conv", [x, w], name="dyn").outputs)
    p = Pattern()
    p.op("conv", "Conv", ANY, CONST, OPTIONAL)
    assert list(p.match(g)) == []
    q = Pattern()
    q.op("conv", "Conv", ANY, ANY, OPTIONAL, where=lambda n: n.attrs["group"] == 1)
    assert [m["conv"].name for m in q.match(g)] == ["dyn"]


def test_partition_groups_connected_regions():
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 2, 4, 4)))
    y = _conv_bn_relu(g, _conv_bn_relu(g, x, "a"), "b")
    g.set_outputs([y])
    regions = partition(g, lambda n: n.op != "Relu")
    assert [[n.name for n in r] for r in regions] == [["a.conv", "a.bn"], ["b.conv", "b.bn"]]
