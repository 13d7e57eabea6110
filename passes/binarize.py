"""binarize: make layers bipolar, computed by XNOR-popcount (seed 001), a convenience over `quantize`.

Rewrite, for every selected layer (Conv, Gemm, MatMul with a constant weight W; all, or `layers`):

    W -> alpha * sign(W)      Bipolar(scale=alpha, axis=output channels), alpha_c = mean |W_c|
    x -> s * sign(x)          Bipolar(scale=s), s = sqrt(mean^2 + std^2) of x on the calibration data

with sign(0) = +1 (qcc.quantizers.fit_bipolar and activation_spec(stats, "bipolar", 1)). The layer's
accumulator is then s * alpha_c * sum(sign(x) sign(W_c)) = s * alpha_c * (2 popcount(xnor) - N): the
integer semantics (qcc.integer) computes bipolar x bipolar as that sum of +-1 products.

Seed 001's rule, `keep_first_last=true`: the first layers (no layer upstream of them) keep uniform
weights and input activations of `first_bits`, the last layers (no layer downstream) of `last_bits`
("wider at the first layer, higher precision at the last layer"); a layer that is both gets the
larger. The rule applies whether or not those layers are named in `layers`.

The pass builds a qcc.config.QuantConfig (unselected layers "float": untouched) and applies it with
the `quantize` pass's logic (QuantizePass.apply), so weights, shared activations (an Identity
requantizes an input that layers want quantized differently) and errors behave as in `quantize`.
Run `calibrate` first: activation scales come from the calibration statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qcc.config import LayerConfig, QuantConfig
from qcc.errors import PassError, QccError
from qcc.ir.graph import Graph, Node
from qcc.pass_manager import Pass, PassContext, PassResult
from qcc.passes.quantize import LAYER_OPS, QuantizePass

__all__ = ["BinarizePass", "first_and_last_layers"]

_UNTOUCHED = LayerConfig(w_bits=8, a_bits=8, w_scheme="float", a_scheme="float", per_channel=True)
_BIPOLAR = LayerConfig(w_bits=1, a_bits=1, w_scheme="bipolar", a_scheme="bipolar", per_channel=True)


@dataclass(frozen=True)
class BinarizePass(Pass):
    """Make layers bipolar (sign weights and input activations, XNOR-popcount)."""

    name = "binarize"
    layers: tuple[str, ...] = ()  # node names; empty = every layer
    keep_first_last: bool = False  # seed 001: first / last layers stay uniform
    first_bits: int = 8
    last_bits: int = 8

    def __post_init__(self):
        for name, bits in (("first-bits", self.first_bits), ("last-bits", self.last_bits)):
            if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
                raise QccError(f"{name} must be an integer from 1 to 16, got {bits!r}")

    def configuration(self, graph: Graph) -> QuantConfig:
        """The per-layer configuration this pass applies to `graph`."""
        selected = self._selected(graph)
        layers = {n.name: _BIPOLAR for n in selected}
        if self.keep_first_last:
            first, last = first_and_last_layers(graph)
            for node in graph.nodes:
                bits = max([b for b, group in ((self.first_bits, first), (self.last_bits, last)) if node in group],
                           default=None)
                if bits is not None:
                    layers[node.name] = LayerConfig(w_bits=bits, a_bits=bits, w_scheme="uniform",
                                                    a_scheme="uniform", per_channel=True)
        return QuantConfig(default=_UNTOUCHED, layers=layers)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        config = self.configuration(graph)
        try:
            changed = QuantizePass().apply(graph, config, ctx)
        except PassError as e:  # the quantize logic names itself; this pass is the one that failed
            raise PassError(self.name, e.reason, node=e.node, ran_before=tuple(ctx.history)) from None
        return PassResult(changed)

    def _selected(self, graph: Graph) -> list[Node]:
        if not self.layers:
            return [n for n in graph.nodes if _has_weight(n)]
        named = QuantConfig(default=LayerConfig(), layers=dict.fromkeys(self.layers, LayerConfig()))
        named.check_layers([n.name for n in graph.nodes], where="option 'layers'")
        nodes = [graph.node(name) for name in dict.fromkeys(self.layers)]
        for node in nodes:
            if not _has_weight(node):
                raise PassError(self.name, f"a {node.op} node is not a layer with a constant weight "
                                f"({', '.join(LAYER_OPS)})", node=node.name)
        return nodes


def first_and_last_layers(graph: Graph) -> tuple[list[Node], list[Node]]:
    """Layers with no other layer upstream (first) and with none downstream (last), in graph order."""
    layers = [n for n in graph.nodes if _has_weight(n)]
    names = {n.name for n in layers}
    first = [n for n in layers if not _reaches(n, names, graph.predecessors)]
    last = [n for n in layers if not _reaches(n, names, graph.successors)]
    return first, last


def _reaches(node: Node, names: set[str], step: Callable[[Node], Iterable[Node]]) -> bool:
    """Whether walking `step` from `node` meets a node named in `names`."""
    seen: set[str] = set()
    stack = list(step(node))
    while stack:
        n = stack.pop()
        if n.name in names:
            return True
        if n.name not in seen:
            seen.add(n.name)
            stack.extend(step(n))
    return False


def _has_weight(node: Node) -> bool:
    return node.op in LAYER_OPS and len(node.inputs) > 1 and node.inputs[1] is not None \
        and node.inputs[1].is_constant
