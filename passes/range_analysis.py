"""range-analysis: record every integer layer's exact worst-case accumulator range, and prove that an
accumulator of `acc-bits` bits cannot overflow.

An analysis (qcc.ranges has the algebra): the graph's structure and numbers are unchanged. Every node
the integer semantics computes with an accumulator (Conv, Gemm, MatMul, Add, Sub, Mul,
GlobalAveragePool, AveragePool) gets

    node.attrs["ranges"] = {"lo": [per output channel], "hi": [...], "bits": signed width of [lo, hi],
                            "out": [lo, hi] of the requantized output codes (when annotated)}

With `acc-bits=N`, a layer whose range needs more than N signed bits is an error naming the layer and
the width it needs, unless `allow-overflow=true` (then the ranges are still recorded).
"""

from __future__ import annotations

from dataclasses import dataclass

from qcc.errors import PassError, QccError
from qcc.ir.graph import Graph
from qcc.pass_manager import Pass, PassContext, PassResult
from qcc.ranges import ATTR, analyze, layer_record

__all__ = ["RangeAnalysisPass"]


@dataclass(frozen=True)
class RangeAnalysisPass(Pass):
    """Record per-layer accumulator ranges; with acc-bits, reject layers that would overflow."""

    name = "range-analysis"
    acc_bits: int | None = None
    allow_overflow: bool = False

    def __post_init__(self):
        if self.acc_bits is not None and not 2 <= self.acc_bits <= 64:
            raise QccError(f"acc-bits must be between 2 and 64, got {self.acc_bits}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        layers = analyze(graph)
        changed = False
        for node in graph.nodes:
            layer = layers.get(node.name)
            record = layer_record(layer) if layer is not None else None
            if node.attrs.get(ATTR) == record:
                continue
            if record is None:
                del node.attrs[ATTR]
            else:
                node.attrs[ATTR] = record
            changed = True
        self._check(layers, ctx)
        return PassResult(changed)

    def _check(self, layers, ctx: PassContext) -> None:
        if self.acc_bits is None or self.allow_overflow:
            return
        over = [layer for layer in layers.values() if layer.bits > self.acc_bits]
        if not over:
            return
        first = over[0]
        more = f"; {len(over) - 1} more layer(s) too" if len(over) > 1 else ""
        raise PassError(self.name, f"layer '{first.node}' ({first.op}) needs an accumulator of {first.bits} bits "
                        f"(range [{int(first.lo.min())}, {int(first.hi.max())}]), more than acc-bits="
                        f"{self.acc_bits}{more}; widen the accumulator or pass allow-overflow=true",
                        node=first.node, ran_before=tuple(ctx.history))
