"""Partition a graph into connected regions of nodes that satisfy a predicate.

Targets use it to find what they can run (e.g. the low-bit layers a kernel covers) and what falls
back. Regions are weakly connected components (networkx) of the nodes that satisfy the predicate,
each in topological order; regions are listed in the order of their first node.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from qcc.ir.graph import Graph, Node

__all__ = ["partition"]


def partition(graph: Graph, predicate: Callable[[Node], bool]) -> list[list[Node]]:
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    chosen = [n for n in graph.nodes if predicate(n)]
    sub = graph.index().subgraph(chosen)
    regions = [sorted(c, key=lambda n: order[id(n)]) for c in nx.weakly_connected_components(sub)]
    return sorted(regions, key=lambda r: order[id(r[0])])
