"""Graph, Node and Value: the mutable part of the IR.

A `Value` is the tensor on an edge (type, quantization, producer, uses); constants are Values that
hold a read-only numpy array. A `Node` applies an op from the registry. The `Graph` owns both and
keeps a networkx DiGraph of nodes as its index (topological order, cycle checks, pattern matching,
partitioning). Passes change graphs only through the methods here, which keep uses and the index
consistent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import networkx as nx
import numpy as np

from qcc.errors import VerifyError
from qcc.ir.quant import QuantSpec, Region
from qcc.ir.types import TensorType

__all__ = ["Value", "Node", "Graph", "Use"]

Use = tuple["Node", int]


class Value:
    """A tensor edge. `producer` is None for graph inputs and constants; `data` is set for constants."""

    __slots__ = ("name", "type", "quant", "region", "producer", "uses", "data", "meta")

    def __init__(self, name: str, type: TensorType, *, quant: QuantSpec | None = None,
                 region: Region | None = None, data: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.quant = quant
        self.region = region
        self.producer: Node | None = None
        self.uses: list[Use] = []
        self.data = data
        self.meta: dict[str, Any] = {}

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def shape(self) -> tuple:
        return self.type.shape

    def __repr__(self) -> str:
        kind = "const " if self.is_constant else ""
        return f"<Value {kind}{self.name}: {self.type}>"


class Node:
    """One op application. `attrs` are saved and printed; `meta` is scratch space, never printed."""

    __slots__ = ("op", "name", "inputs", "outputs", "attrs", "meta", "_order")

    def __init__(self, op: str, name: str, inputs: list[Value | None], outputs: list[Value],
                 attrs: dict[str, Any]):
        self.op = op
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.attrs = attrs
        self.meta: dict[str, Any] = {}
        self._order = 0

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise VerifyError(f"node '{self.name}' ({self.op}) has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    def input_types(self) -> list[TensorType | None]:
        return [v.type if v is not None else None for v in self.inputs]

    def __repr__(self) -> str:
        return f"<Node {self.op} '{self.name}'>"


class Graph:
    """A dataflow graph of Nodes over Values, indexed by a networkx DiGraph."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: list[Value] = []
        self.attrs: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self._index = nx.DiGraph()
        self._counter = itertools.count()
        self._names: set[str] = set()
        self._node_names: set[str] = set()
        self._topo: list[Node] | None = None

    # ----------------------------------------------------------------- naming
    def fresh_name(self, hint: str) -> str:
        """A value name not yet used in this graph, derived from `hint`."""
        return _fresh(hint, self._names)

    def fresh_node_name(self, hint: str) -> str:
        return _fresh(hint, self._node_names)

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise VerifyError(f"value name '{name}' is defined twice")
        self._names.add(name)
        return name

    # ----------------------------------------------------------------- building
    def add_input(self, name: str, type: TensorType, *, quant: QuantSpec | None = None) -> Value:
        v = Value(self._claim(name), type, quant=quant)
        self.inputs.append(v)
        return v

    def add_constant(self, name: str, data: np.ndarray, *, quant: QuantSpec | None = None) -> Value:
        """A constant tensor; the array is copied once if writable and then frozen (shared by clones)."""
        array = np.asarray(data)
        if array.flags.writeable:
            array = array.copy()
            array.flags.writeable = False
        v = Value(self._claim(name), TensorType.of(array), quant=quant, data=array)
        self.constants.append(v)
        return v

    def add_node(self, op: str, inputs: Sequence[Value | None], *, attrs: dict[str, Any] | None = None,
                 name: str | None = None, output_types: Sequence[TensorType] | None = None,
                 output_names: Sequence[str] | None = None) -> Node:
        """Append a node; output types are inferred from the op registry unless given."""
        from qcc.ops import get_op  # the registry imports IR types; import here to avoid a cycle

        opdef = get_op(op, node_name=name or op)
        attrs = opdef.complete_attrs(dict(attrs or {}), [v.type if v else None for v in inputs])
        if output_types is None:
            output_types = opdef.infer_types([v.type if v else None for v in inputs], attrs,
                                             node_name=name or op)
        node_name = self.fresh_node_name(name or op)
        self._node_names.add(node_name)
        if output_names is None:
            output_names = [f"{node_name}:{i}" if len(output_types) > 1 else f"{node_name}:out"
                            for i in range(len(output_types))]
        outs = [Value(self._claim(self.fresh_name(n)), t) for n, t in zip(output_names, output_types)]
        node = Node(op, node_name, list(inputs), outs, attrs)
        node._order = next(self._counter)
        for v in outs:
            v.producer = node
        self._index.add_node(node)
        for i, v in enumerate(inputs):
            if v is not None:
                self._link(v, node, i)
        self._topo = None
        return node

    def _link(self, value: Value, node: Node, index: int) -> None:
        value.uses.append((node, index))
        if value.producer is not None:
            self._index.add_edge(value.producer, node)

    def _unlink(self, value: Value, node: Node, index: int) -> None:
        value.uses.remove((node, index))
        p = value.producer
        if p is not None and not any(u is node for u, _ in self._uses_of_node_outputs(p)):
            if self._index.has_edge(p, node):
                self._index.remove_edge(p, node)

    @staticmethod
    def _uses_of_node_outputs(node: Node) -> Iterator[Use]:
        for out in node.outputs:
            yield from out.uses

    def set_outputs(self, values: Iterable[Value]) -> None:
        self.outputs = list(values)

    # ----------------------------------------------------------------- queries
    @property
    def nodes(self) -> list[Node]:
        """Nodes in a deterministic topological order (ties broken by creation order)."""
        if self._topo is None:
            try:
                self._topo = list(nx.lexicographical_topological_sort(self._index, key=lambda n: n._order))
            except nx.NetworkXUnfeasible:
                cycle = nx.find_cycle(self._index)
                names = " -> ".join(u.name for u, _ in cycle)
                raise VerifyError(f"graph '{self.name}' has a cycle: {names}") from None
        return list(self._topo)

    def __len__(self) -> int:
        return self._index.number_of_nodes()

    def __contains__(self, node: Node) -> bool:
        return node in self._index

    def values(self) -> list[Value]:
        """Every value: inputs, constants, then node outputs in topological order."""
        out = list(self.inputs) + list(self.constants)
        for n in self.nodes:
            out.extend(n.outputs)
        return out

    def users(self, value: Value) -> list[Node]:
        seen: dict[int, Node] = {}
        for node, _ in value.uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def predecessors(self, node: Node) -> list[Node]:
        return sorted(self._index.predecessors(node), key=lambda n: n._order)

    def successors(self, node: Node) -> list[Node]:
        return sorted(self._index.successors(node), key=lambda n: n._order)

    def node(self, name: str) -> Node:
        for n in self._index:
            if n.name == name:
                return n
        raise KeyError(name)

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def is_output(self, value: Value) -> bool:
        return any(v is value for v in self.outputs)

    def index(self) -> nx.DiGraph:
        """The networkx view of the node graph (read-only use: analyses, matching, partitioning)."""
        return self._index.copy(as_view=True)

    # ----------------------------------------------------------------- rewriting
    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        old = node.inputs[index]
        if old is value:
            return
        if old is not None:
            self._unlink(old, node, index)
        node.inputs[index] = value
        if value is not None:
            self._link(value, node, index)
        self._topo = None

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every use of `old` (node inputs and graph outputs) at `new`."""
        if old is new:
            return
        for node, index in list(old.uses):
            self.set_input(node, index, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def erase(self, node: Node) -> None:
        """Remove a node whose outputs are unused."""
        for out in node.outputs:
            if out.uses or self.is_output(out):
                raise VerifyError(f"cannot erase node '{node.name}': its output '{out.name}' is still used")
        for i, v in enumerate(node.inputs):
            if v is not None:
                self._unlink(v, node, i)
        for out in node.outputs:
            self._names.discard(out.name)
        self._node_names.discard(node.name)
        self._index.remove_node(node)
        self._topo = None

    def replace_constant_input(self, node: Node, index: int, data: np.ndarray,
                               quant: QuantSpec | None = None) -> Value:
        """Give `node` new constant data at input `index`; the old constant goes (and leaves its name
        to the new one) when nothing else uses it."""
        old = node.inputs[index]
        new = self.add_constant(self.fresh_name(old.name if old is not None else f"{node.name}.{index}"),
                                data, quant=quant)
        self.set_input(node, index, new)
        if old is not None and old.is_constant and not old.uses and not self.is_output(old):
            name = old.name
            self.remove_constant(old)
            self.rename_value(new, name)
        return new

    def remove_constant(self, value: Value) -> None:
        if value.uses or self.is_output(value):
            raise VerifyError(f"cannot remove constant '{value.name}': it is still used")
        self.constants = [c for c in self.constants if c is not value]
        self._names.discard(value.name)

    def rename_value(self, value: Value, name: str) -> None:
        if name == value.name:
            return
        self._claim(name)
        self._names.discard(value.name)
        value.name = name

    def rename_node(self, node: Node, name: str) -> None:
        if name == node.name:
            return
        if name in self._node_names:
            raise VerifyError(f"node name '{name}' is defined twice")
        self._node_names.discard(node.name)
        self._node_names.add(name)
        node.name = name

    def remove_dead(self) -> int:
        """Erase nodes and constants that no graph output depends on; returns how many went."""
        removed = 0
        for node in reversed(self.nodes):
            if not any(o.uses or self.is_output(o) for o in node.outputs):
                self.erase(node)
                removed += 1
        for c in list(self.constants):
            if not c.uses and not self.is_output(c):
                self.remove_constant(c)
                removed += 1
        return removed

    # ----------------------------------------------------------------- copying
    def clone(self) -> Graph:
        """A structural copy; constant arrays are shared (they are read-only)."""
        g = Graph(self.name)
        g.attrs = _copy_attrs(self.attrs)
        mapping: dict[int, Value] = {}
        for v in self.inputs:
            nv = g.add_input(v.name, v.type, quant=v.quant)
            nv.region = v.region
            mapping[id(v)] = nv
        for c in self.constants:
            nv = Value(g._claim(c.name), c.type, quant=c.quant, region=c.region, data=c.data)
            g.constants.append(nv)
            mapping[id(c)] = nv
        for n in self.nodes:
            ins = [mapping[id(v)] if v is not None else None for v in n.inputs]
            nn = g.add_node(n.op, ins, attrs=_copy_attrs(n.attrs), name=n.name,
                            output_types=[o.type for o in n.outputs], output_names=[o.name for o in n.outputs])
            for o, no in zip(n.outputs, nn.outputs):
                no.quant, no.region = o.quant, o.region
                mapping[id(o)] = no
        g.outputs = [mapping[id(v)] for v in self.outputs]
        return g

    def __repr__(self) -> str:
        return f"<Graph '{self.name}': {len(self)} nodes, {len(self.constants)} constants>"


def _fresh(hint: str, taken: set[str]) -> str:
    if hint not in taken:
        return hint
    return next(c for c in (f"{hint}_{i}" for i in itertools.count(1)) if c not in taken)


def _copy_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    def cp(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: cp(x) for k, x in v.items()}
        if isinstance(v, list):
            return [cp(x) for x in v]
        return v

    return {k: cp(v) for k, v in attrs.items()}
