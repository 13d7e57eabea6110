"""canonicalize: constant folding, Identity removal and dead-code removal.

- Fold: a node whose inputs are all constants (and whose outputs carry no annotation) is evaluated
  by the float reference and replaced by constants.
- Identity: `y = Identity(x)` is removed and y's uses read x, unless y carries a quantization or crop
  annotation (then the Identity is the quantization point), or both x and y are graph interface
  values (an input passed straight to an output keeps its Identity).
- Dead code: nodes and constants that no graph output depends on are erased.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcc.interp import FloatSemantics
from qcc.ir.graph import Graph, Node
from qcc.pass_manager import Pass, PassContext, PassResult

__all__ = ["CanonicalizePass"]

# Folding a node whose result is larger than this many elements would bloat the weights file
# (e.g. a broadcast of a scalar), so such nodes are left in the graph.
_MAX_FOLDED_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class CanonicalizePass(Pass):
    """Fold constants, drop Identity nodes, erase dead code."""

    name = "canonicalize"
    fold_constants: bool = True
    remove_identity: bool = True
    remove_dead: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = False
        if self.fold_constants:
            changed |= _fold_constants(graph)
        if self.remove_identity:
            changed |= _remove_identities(graph)
        if self.remove_dead:
            changed |= graph.remove_dead() > 0
        return PassResult(changed)


def _foldable(node: Node) -> bool:
    if not node.inputs or any(v is None or not v.is_constant for v in node.inputs):
        return False
    if any(o.quant is not None or o.region is not None for o in node.outputs):
        return False
    return all(o.type.is_static and o.type.numel() <= _MAX_FOLDED_ELEMENTS for o in node.outputs)


def _fold_constants(graph: Graph) -> bool:
    changed = False
    semantics = FloatSemantics()
    for node in graph.nodes:
        if not _foldable(node):
            continue
        results = semantics.evaluate(node, [v.data for v in node.inputs])
        for i, (out, array) in enumerate(zip(node.outputs, results)):
            hint = f"{node.name}.folded" + (f".{i}" if len(node.outputs) > 1 else "")
            const = graph.add_constant(graph.fresh_name(hint), array.astype(out.type.dtype))
            graph.replace_all_uses(out, const)
        graph.erase(node)
        changed = True
    return changed


def _remove_identities(graph: Graph) -> bool:
    changed = False
    for node in graph.nodes:
        if node.op != "Identity":
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if dst.quant is not None or dst.region is not None:
            continue
        if not graph.is_output(dst):
            graph.replace_all_uses(dst, src)
            graph.erase(node)
            changed = True
            continue
        # dst is a graph output: src takes over its name, which only a node's private output can.
        if src.producer is None or graph.is_output(src):
            continue
        name = dst.name
        graph.replace_all_uses(dst, src)
        graph.erase(node)
        graph.rename_value(src, name)
        changed = True
    return changed
