"""residual-rewrite: integer-only residual blocks (seed 003, Fig. 2), exact in integer semantics.

Seed 003 moves the post-add activation (ReLU + quantizer) of a residual block to the input of the
next block, so the residual path stays at accumulator scale and the block runs on integers only.
In qcc a residual block ends with `S = Add(branch, skip)`, the branch being a layer's accumulator
(scale s_x * s_w, zero point 0) and the skip a quantized activation. The integer Add (qcc.integer,
the contract) brings both operands to the smaller scale s = min(s_a, s_b), the other one by the
fixed-point multiplier M = s_i / s = M0 * 2^-n with a rounding shift, then adds exactly. This pass
makes that structure explicit with two rewrites, each exact: `run(g, x, mode="int")` (and "float")
is bit for bit what it was before; no number changes.

AlignResidualOperands (option `align`). When exactly one operand X of a residual Add is above the
common scale s, the Add requantizes it internally. The rewrite puts that requantization on the skip
edge as a stated quantizer and leaves the Add a plain integer addition of operands at one scale:

    Add(branch, X)  ->  Add(branch, Identity(X) : uniform{bits = B, signed, scale = s, zero_point = 0})

The annotation's rule (requantize the exact codes by M = s_X / s, zero point 0, clip to B bits) is
the Add's own rescale: the same float64 ratio, so the same M0, n and rounding; and
B = bitlen(ceil(c * M0 / 2^n)) + 1, with c = max |q_X - z_X| over X's code range, is wide enough
that the clip never acts. The Add then sees two operands at scale s (ratio 1: no rescale). When
s_X / s is an integer (power-of-two scales: fixed point, dynamic fixed point, seed 003's integer
networks) the Identity is an exact left shift: no rounding anywhere on the skip path. Otherwise
it rounds exactly where the Add rounded before (the original graph's rounding, made explicit).
s is per output channel when the branch's weights are (axis 1 of the Identity's quantizer). In
fake-quant mode the Identity quantizes the skip to s in float: no change when s_X / s is an
integer, at most s / 2 (the rounding the integer Add applies) otherwise.

SinkPostAddActivation (option `sink_activation`). The post-add activation moves past the data
movement between it and the quantizer that the next block reads, so it sits with that quantizer
at the next block's input (Fig. 2a) and the residual path up to there stays at accumulator scale:

    Add -> Relu -> f1 -> ... -> fk -> V : Q   becomes   Add -> f1 -> ... -> fk -> Relu -> V : Q

f_i in {MaxPool, Identity, Reshape, Flatten, Transpose, Squeeze, Unsqueeze} for Relu, MaxPool only
for Clip. Relu(f(x)) = f(Relu(x)): each f_i picks or moves elements (MaxPool: the window max of
max(x, 0) is max(window max, 0); every window holds an input element since pads < kernel) and
Relu is elementwise with Relu(0) = 0, on integer codes (zero point 0 after an Add) and on the real
values of a float island alike. Clip commutes with max (both monotone), but its integer bounds
floor(max / s) differ from the float ones, so it only passes MaxPool, which stays integer for
per-channel scales. The activation keeps its node name; the annotated value keeps its name, its
quantizer and its calibration record; the moved-over nodes lose theirs (they now see the sum).

Rewritten: every Add of two non-constant tensors of one shape (or those named in `nodes`).
Left alone (changed stays False; a debug log line says why):
- align: an operand that is a float island (not an integer tensor); both operands above s (per
  channel scales that cross); the operand to rescale not a per-tensor uniform-quantized value (a
  per-channel tensor would make the Identity a float island; an unannotated accumulator has no
  stated code range); s not exactly a float32 number (annotations hold float32 scales; s_x * s_w
  is one when s_w is a power of two, but a product of two calibrated scales rarely is, so graphs
  with calibrated weight scales keep the Add's own rescale); B > max_bits.
- sink: an activation that already carries the quantizer (nothing to move); one whose output is
  cropped, a graph output or used twice before the quantizer; a chain through any other op; a
  chain that reaches no quantizer.
BypassSkipQuantizer (option `bypass`, off by default: it changes the numbers). The rest of Fig. 2a:
a skip operand V of a residual Add that carries a quantizer Q and also feeds layers gives Q to an
Identity that the layers read, and the skip reads V unquantized, i.e. the block output at its
exact integer (accumulator-aligned) scale:

    V : Q -> {layer, Add}   becomes   V -> Add,  V -> Identity : Q -> layer

The network stays integer-only (V is the exact integer result of the previous block), but the skip
no longer rounds and saturates at Q: each skip element changes by up to s_Q / 2 inside Q's range
and by the clipped amount outside it. The layers read exactly what they read before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from qcc.errors import PassError, QccError
from qcc.integer import QTensor, run_integer
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import MAX_BITS, Uniform
from qcc.numerics import quantize_multiplier
from qcc.pass_manager import Pass, PassContext, PassResult

__all__ = ["RewriteResidualPass", "SINKABLE"]

_log = logging.getLogger(__name__)

_DATA_MOVEMENT = frozenset({"MaxPool", "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})

SINKABLE: dict[str, frozenset[str]] = {"Relu": _DATA_MOVEMENT, "Clip": frozenset({"MaxPool"})}
"""Post-add activation op -> the ops it moves past exactly."""

_CALIBRATION_META = ("histogram", "abs_histogram")


@dataclass(frozen=True)
class RewriteResidualPass(Pass):
    """Align residual Add operands to one accumulator scale and sink the post-add activation, exactly."""

    name = "residual-rewrite"
    align: bool = True  # requantize the operand above the common scale on its own edge
    sink_activation: bool = True  # move the post-add Relu / Clip to the quantizer the next block reads
    max_bits: int = 32  # widest aligned operand (bits of the Identity's quantizer)
    nodes: tuple[str, ...] = ()  # only these Add nodes (default: every residual Add)
    bypass: bool = False  # Fig. 2a in full: skips read the block output unquantized (changes numbers)

    def __post_init__(self):
        if isinstance(self.max_bits, bool) or not isinstance(self.max_bits, int) or not 2 <= self.max_bits <= MAX_BITS:
            raise QccError(f"option max-bits must be an integer in [2, {MAX_BITS}], got {self.max_bits!r}")
        if not (self.align or self.sink_activation or self.bypass):
            raise QccError("options align, sink-activation and bypass are all false: nothing to rewrite")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        adds = self._residual_adds(graph, ctx)
        changed = False
        if self.align and adds:
            view = _integer_view(graph)
            for add in adds:
                changed |= _align_operands(graph, add, view, self.max_bits)
        if self.sink_activation:
            for add in adds:
                for act in [u for u in graph.users(add.output) if u.op in SINKABLE]:
                    changed |= _sink_activation(graph, act)
        if self.bypass:
            for add in adds:
                changed |= _bypass_skip_quantizer(graph, add)
        return PassResult(changed)

    def _residual_adds(self, graph: Graph, ctx: PassContext) -> list[Node]:
        if not self.nodes:
            return [n for n in graph.nodes if _is_residual_add(n)]
        by_name = {n.name: n for n in graph.nodes}
        for name in self.nodes:
            node = by_name.get(name)
            if node is None:
                raise PassError(self.name, "no node of this name in the graph", node=name,
                                ran_before=tuple(ctx.history))
            if not _is_residual_add(node):
                raise PassError(self.name, f"{node.op} node is not a residual Add of two tensors of one shape",
                                node=name, ran_before=tuple(ctx.history))
        return [n for n in graph.nodes if n.name in self.nodes]


def _is_residual_add(node: Node) -> bool:
    if node.op != "Add" or len(node.inputs) != 2 or any(v is None or v.is_constant for v in node.inputs):
        return False
    a, b = node.inputs
    return a.type.shape == b.type.shape == node.output.type.shape


def _skip(node: Node, reason: str) -> bool:
    _log.debug("residual-rewrite: left '%s' alone: %s", node.name, reason)
    return False


def _integer_view(graph: Graph) -> dict[str, QTensor | np.ndarray]:
    """Every value's integer-semantics result on all-zero inputs: its scale and zero point.

    Scales and zero points in qcc.integer depend on the annotations and ops only, never on the data,
    so one run on zeros (symbolic dims as 1) gives the scale every value has at run time.
    """
    zeros = {v.name: np.zeros(v.type.concrete(), dtype=v.type.dtype) for v in graph.inputs}
    with np.errstate(all="ignore"):
        return run_integer(graph, zeros, keep_all=True)


# ------------------------------------------------------------------------------ align


def _align_operands(graph: Graph, add: Node, view: dict[str, QTensor | np.ndarray], max_bits: int) -> bool:
    """AlignResidualOperands: requantize the operand above the common scale on its own edge."""
    args = [view.get(v.name) for v in add.inputs]
    if not all(isinstance(a, QTensor) for a in args):
        return _skip(add, "an operand is not an integer tensor (a float island)")
    target = np.minimum(args[0].scale, args[1].scale)
    above = [i for i, a in enumerate(args) if not np.all(np.broadcast_to(a.scale / target, target.shape) == 1.0)]
    if not above:
        return False  # both operands already at one scale: a plain integer addition
    if len(above) == 2:
        return _skip(add, "both operands are above the common scale (their per-channel scales cross)")
    index = above[0]
    x, xt = add.inputs[index], args[index]
    spec = x.quant
    if not isinstance(spec, Uniform) or spec.axis is not None or xt.scale.size != 1:
        return _skip(add, f"operand '{x.name}' is not a per-tensor uniform-quantized value")
    axis = _channel_axis(target)
    if axis is False:
        return _skip(add, "the common scale varies along more than one axis")
    if not np.array_equal(target.astype(np.float32).astype(np.float64), target):
        return _skip(add, "the common scale is not a float32 number, so no quantizer can state it")
    bits = _aligned_bits(spec, float(xt.scale), target)
    if bits > max_bits:
        return _skip(add, f"operand '{x.name}' needs {bits} bits at the common scale (max-bits = {max_bits})")
    ident = graph.add_node("Identity", [x], name=f"{add.name}.align")
    ident.output.quant = _aligned_spec(bits, target, axis)
    graph.set_input(add, index, ident.output)
    return True


def _channel_axis(scale: np.ndarray) -> int | None | bool:
    """None for one scale, the axis of a per-channel scale array, False if it varies along several."""
    if scale.size == 1:
        return None
    axes = [i for i, d in enumerate(scale.shape) if d > 1]
    return axes[0] if len(axes) == 1 else False


def _aligned_bits(spec: Uniform, scale: float, target: np.ndarray) -> int:
    """Signed bits that hold every code of `spec` rescaled by the Add's multiplier to `target`."""
    reach = max(spec.qmax - spec.zero_point, spec.zero_point - spec.qmin)
    bound = 0
    for ratio in np.unique(scale / target.reshape(-1)):
        m0, n = quantize_multiplier(float(ratio))
        bound = max(bound, -(-(reach * m0) >> n))  # ceil(reach * M0 / 2^n) bounds the rounded result
    return max(2, bound.bit_length() + 1)


def _aligned_spec(bits: int, target: np.ndarray, axis: int | None) -> Uniform:
    if axis is None:
        return Uniform(bits=bits, signed=True, scale=float(target.reshape(())), zero_point=0)
    scales = tuple(float(s) for s in target.reshape(-1))
    return Uniform(bits=bits, signed=True, scale=scales, zero_point=(0,) * len(scales), axis=axis)


# ------------------------------------------------------------------------------ sink


def _sink_activation(graph: Graph, act: Node) -> bool:
    """SinkPostAddActivation: move `act` past data movement to the quantizer the next block reads."""
    allowed = SINKABLE[act.op]
    chain: list[Node] = []
    value = act.output
    while value.quant is None:
        if _cropped(value) or graph.is_output(value) or len(value.uses) != 1:
            return _skip(act, f"'{value.name}' is cropped, a graph output or used twice before any quantizer")
        node, index = value.uses[0]
        if node.op not in allowed or index != 0 or len(node.outputs) != 1:
            return _skip(act, f"no quantizer before {node.op} '{node.name}', which {act.op} does not pass")
        chain.append(node)
        value = node.output
    if not chain:
        return False  # the activation already carries the quantizer
    if _cropped(value):
        return _skip(act, f"the quantized value '{value.name}' is cropped")
    _move_after(graph, act, chain)
    return True


def _cropped(value: Value) -> bool:
    return value.region is not None and not value.region.empty


def _move_after(graph: Graph, act: Node, chain: list[Node]) -> None:
    """Rebuild `act` after the last node of `chain`; the annotated value keeps its name and quantizer."""
    last = chain[-1].output
    moved = graph.add_node(act.op, [last], attrs=dict(act.attrs), name=act.name, output_types=[last.type])
    out = moved.output
    for node, index in list(last.uses):
        if node is not moved:
            graph.set_input(node, index, out)
    graph.set_outputs([out if v is last else v for v in graph.outputs])
    out.quant, last.quant = last.quant, None
    graph.set_input(chain[0], 0, act.inputs[0])
    _move_calibration(act, moved, chain)
    name, act_name = last.name, act.name
    graph.erase(act)
    graph.rename_value(last, graph.fresh_name(f"{chain[-1].name}:out"))
    graph.rename_value(out, name)
    graph.rename_node(moved, act_name)


def _move_calibration(act: Node, moved: Node, chain: list[Node]) -> None:
    """The moved activation's output is the old annotated value: it takes that value's statistics."""
    source = chain[-1]
    moved.attrs.pop("calibration", None)
    if "calibration" in source.attrs:
        moved.attrs["calibration"] = source.attrs["calibration"]
    for key in _CALIBRATION_META:
        if key in source.meta:
            moved.meta[key] = source.meta[key]
    for node in chain:
        node.attrs.pop("calibration", None)
        for key in _CALIBRATION_META:
            node.meta.pop(key, None)


def _bypass_skip_quantizer(graph: Graph, add: Node) -> bool:
    """Skips of `add` read their block output unquantized; the layers keep reading it through Q."""
    changed = False
    for value in add.inputs:
        if value is None or value.quant is None or value.producer is None or graph.is_output(value):
            continue
        others = [n for n in graph.users(value) if n is not add]
        if not others or any(n.op == "Add" for n in others):
            continue  # nothing reads Q besides skips: moving Q would only drop it
        quantize = graph.add_node("Identity", [value], name=graph.fresh_node_name(f"{add.name}.bypass"))
        quantize.output.quant, value.quant = value.quant, None
        for node in others:
            for i, v in enumerate(node.inputs):
                if v is value:
                    graph.set_input(node, i, quantize.output)
        changed = True
    return changed
