"""Declarative subgraph patterns, matched with networkx's VF2 matcher on the graph index.

    p = Pattern()
    p.op("conv", "Conv", ANY, CONST, OPTIONAL)
    p.op("bn", "BatchNormalization", "conv", CONST, CONST, CONST, CONST)
    for m in p.match(graph):
        conv, bn = m["conv"], m["bn"]

An input of a pattern op is the name of an earlier pattern op (its first output feeds this input),
ANY (any value), CONST (a constant) or OPTIONAL (absent or anything). A match also requires every
intermediate output to be used only inside the match unless `allow_external_uses` is set, since
rewrites usually replace the whole match.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import networkx as nx
from networkx.algorithms.isomorphism import DiGraphMatcher

from qcc.ir.graph import Graph, Node, Value

__all__ = ["Pattern", "Match", "ANY", "CONST", "OPTIONAL"]


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


ANY = _Marker("ANY")
CONST = _Marker("CONST")
OPTIONAL = _Marker("OPTIONAL")

PatternInput = str | _Marker


@dataclass(frozen=True)
class Match:
    nodes: dict[str, Node]

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    @property
    def root(self) -> Node:
        """The last node in pattern order (the one whose output the rewrite replaces)."""
        return next(reversed(self.nodes.values()))


class Pattern:
    """A small DAG of op predicates; `match` finds its occurrences in a Graph."""

    def __init__(self, allow_external_uses: bool = False):
        self._g = nx.DiGraph()
        self._order: list[str] = []
        self.allow_external_uses = allow_external_uses

    def op(self, name: str, op: str | tuple[str, ...], *inputs: PatternInput,
           where: Callable[[Node], bool] | None = None) -> str:
        ops = (op,) if isinstance(op, str) else tuple(op)
        self._g.add_node(name, ops=ops, inputs=inputs, where=where)
        for i in inputs:
            if isinstance(i, str):
                if i not in self._g:
                    raise ValueError(f"pattern input '{i}' is not an earlier pattern op")
                self._g.add_edge(i, name)
        self._order.append(name)
        return name

    def match(self, graph: Graph) -> Iterator[Match]:
        """Every occurrence, in the topological order of the root; matches may overlap."""
        index = graph.index()
        labelled = nx.DiGraph()
        labelled.add_nodes_from((n, {"op": n.op}) for n in index.nodes)
        labelled.add_edges_from(index.edges)
        matcher = DiGraphMatcher(labelled, self._g, node_match=lambda a, b: a["op"] in b["ops"])
        found = []
        for mapping in matcher.subgraph_monomorphisms_iter():
            nodes = {p: g for g, p in mapping.items()}
            if self._check(graph, nodes):
                found.append(Match({name: nodes[name] for name in self._order}))
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        found.sort(key=lambda m: order[id(m.root)])
        yield from found

    def _check(self, graph: Graph, nodes: dict[str, Node]) -> bool:
        for name in self._order:
            node = nodes[name]
            spec = self._g.nodes[name]
            if spec["where"] is not None and not spec["where"](node):
                return False
            if not _inputs_fit(node, spec["inputs"], nodes):
                return False
        if self.allow_external_uses:
            return True
        inside = {id(n) for n in nodes.values()}
        root = nodes[self._order[-1]]
        for node in nodes.values():
            if node is root:
                continue
            for out in node.outputs:
                if graph.is_output(out) or any(id(u) not in inside for u, _ in out.uses):
                    return False
        return True


def _inputs_fit(node: Node, inputs: tuple[PatternInput, ...], nodes: dict[str, Node]) -> bool:
    required = sum(1 for i in inputs if i is not OPTIONAL)
    if not required <= len(node.inputs) <= len(inputs):
        return False
    for i, want in enumerate(inputs):
        value: Value | None = node.inputs[i] if i < len(node.inputs) else None
        if want is OPTIONAL or want is ANY and value is not None:
            continue
        if value is None:
            return False
        if want is CONST:
            if not value.is_constant:
                return False
        elif value.producer is not nodes[want] or value is not nodes[want].outputs[0]:
            return False
    return True
