"""fold-bn: fold an inference BatchNormalization into the Conv or Gemm that feeds it.

Inference BN is a per-channel affine map, so it folds exactly into the preceding linear layer.
With `g = gamma / sqrt(var + epsilon)` per output channel c:

    BN(W * x + b) = g * (W * x + b - mean) + beta = (g * W) * x + ((b - mean) * g + beta)

    W'[c] = W[c] * g[c]                    (Conv: W is [Cout, Cin/group, *K], scaled along axis 0;
                                            Gemm: along the output axis of B, 0 if transB else 1)
    b'[c] = (b[c] - mean[c]) * g[c] + beta[c]   (b = 0 when the Conv has no bias; one is created)

For Gemm, Y = alpha * A'B' + beta_attr * C, so b = beta_attr * C and the folded Gemm has
beta_attr = 1 (C keeps its broadcast shape, widened to [.., Cout] if needed). MatMul with a
constant 2-d weight [K, Cout] and a 2-d input becomes `Gemm(transB=0)` with the folded C as bias:
one node, like the Conv case, whose bias sits in the accumulator (DESIGN.md §3).

Exactness: a negative gamma flips the channel's weights and bias (the sign is in W'); a zero gamma
makes the channel's weights zero and its bias beta. Grouped and depthwise Convs fold the same way
(axis 0 of W is always the output channel). Folded parameters are computed in float64 and rounded
once to the weight dtype (float32 in practice).

Names and annotations: the folded layer keeps the layer's node name and its output value name, or
the BN output's name when that is a graph output; the folded output takes over every use of the BN
output and its quant / crop annotation (the quantizer now applies to the folded result). Replaced
constants keep their names when nothing else uses them.

Left alone (changed stays False, a debug log line says why): BN parameters, weights or bias that
are not constants; a layer output that has other users or is a graph output (it is needed
unnormalised); a layer output with a quant / crop annotation (that quantizer between layer and BN
would be lost); an annotated weight or bias (folding changes the weights, so their quantizer no
longer applies: fold-bn belongs before `quantize` in a pipeline); non-float weights; a channel with
`var + epsilon <= min_var`; folded parameters that are not finite.

The pass is a list of rewrites (`REWRITES`), each a pattern and a function that folds one match.

Threshold form (`fold-bn{thresholds=true}`, for integer targets; FINN streamlining, seed 003):
a quantized layer whose accumulator feeds BN -> (Relu | Clip)? -> a uniform quantizer becomes the
layer alone with a `thresholds` annotation on its accumulator:

    q_out(acc) = Q(act(BN(acc * s_acc)))   is non-decreasing in acc when g > 0, so
    q_out(acc) - qmin = #{k : T_k <= acc},  T_k = min{acc : q_out(acc) - qmin >= k}

The T_k are integers on the accumulator (input_scale = s_acc), found by bisection on the integer
reference itself (qcc.numerics.step_thresholds over qcc.integer), so the rewrite is exact on every
integer. Channels with g < 0 would need their weights negated; such layers keep the float form.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcc.errors import QccError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.pattern import ANY, OPTIONAL, Match, Pattern
from qcc.pass_manager import Pass, PassContext, PassResult

__all__ = ["FoldBatchNormPass", "Rewrite", "REWRITES", "THRESHOLD_REWRITES"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldBatchNormPass(Pass):
    """Fold BatchNormalization into the preceding Conv, Gemm or constant-weight MatMul."""

    name = "fold-bn"
    min_var: float = 0.0  # skip a BN with a channel whose var + epsilon <= min_var
    thresholds: bool = False  # integer targets: BN + activation + quantizer -> accumulator thresholds

    def __post_init__(self):
        if not math.isfinite(self.min_var) or self.min_var < 0:
            raise QccError(f"option min-var must be a finite number >= 0, got {self.min_var}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = False
        rewrites = (*THRESHOLD_REWRITES, *REWRITES) if self.thresholds else REWRITES
        for rewrite in rewrites:
            changed |= _apply_to_fixed_point(graph, rewrite, self)
        return PassResult(changed)


@dataclass(frozen=True)
class Rewrite:
    """One named rewrite: a pattern and a function that rewrites a match (True) or declines (False)."""

    name: str
    pattern: Callable[[], Pattern]
    apply: Callable[[Graph, Match, FoldBatchNormPass], bool]


def _apply_to_fixed_point(graph: Graph, rewrite: Rewrite, options: FoldBatchNormPass) -> bool:
    """Apply `rewrite` to every match; match again while folds happen (Conv -> BN -> BN folds twice)."""
    changed = False
    progress = True
    while progress:
        progress = False
        for match in list(rewrite.pattern().match(graph)):
            if not all(node in graph for node in match.nodes.values()):
                continue  # an earlier fold in this round replaced part of the match
            progress |= rewrite.apply(graph, match, options)
        changed |= progress
    return changed


def _skip(bn: Node, reason: str) -> bool:
    _log.debug("fold-bn: left '%s' unfolded: %s", bn.name, reason)
    return False


# ---------------------------------------------------------------------------------- checks

def _skip_reason(graph: Graph, layer: Node, bn: Node, params: list[Value | None],
                 options: FoldBatchNormPass) -> str | None:
    """Why the BN after `layer` cannot fold (None when it can); `params` are weight and bias."""
    if not all(v is not None and v.is_constant for v in bn.inputs[1:]):
        return "its scale, bias, mean or var is not a constant"
    if not all(v is None or v.is_constant for v in params):
        return f"the weight or bias of '{layer.name}' is not a constant"
    out = layer.output
    if graph.is_output(out) or len(out.uses) != 1:
        return f"the output of '{layer.name}' has other users, which need it unnormalised"
    if out.quant is not None or out.region is not None:
        return f"the output of '{layer.name}' is annotated; folding would lose that quantizer"
    if any(v is not None and v.quant is not None for v in params):
        return f"the weight or bias of '{layer.name}' is quantized; run fold-bn before quantize"
    if not np.issubdtype(np.dtype(params[0].type.dtype), np.floating):
        return f"the weight of '{layer.name}' is not a float tensor"
    var = bn.inputs[4].data.astype(np.float64)
    if not np.all(var + bn.attrs["epsilon"] > options.min_var):  # also catches NaN
        return f"a channel has var + epsilon <= min-var ({options.min_var})"
    return None


def _bn_scale(bn: Node) -> np.ndarray:
    """g = gamma / sqrt(var + epsilon), float64."""
    gamma, var = (bn.inputs[i].data.astype(np.float64) for i in (1, 4))
    return gamma / np.sqrt(var + bn.attrs["epsilon"])


def _folded_bias(bn: Node, g: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """b' = (b - mean) * g + beta, float64; `bias` broadcasts against the channel axis (last)."""
    beta, mean = (bn.inputs[i].data.astype(np.float64) for i in (2, 3))
    return (bias - mean) * g + beta


def _rounded(arrays: list[np.ndarray], dtype: str) -> list[np.ndarray] | None:
    """Round the float64 results once to `dtype`; None if any element is not finite there."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = [a.astype(dtype) for a in arrays]
    return out if all(np.isfinite(a).all() for a in out) else None


# ---------------------------------------------------------------------------------- Conv

def _conv_bn_pattern() -> Pattern:
    p = Pattern(allow_external_uses=True)  # other users of the Conv output are checked (and noted) below
    p.op("layer", "Conv", ANY, ANY, OPTIONAL)
    p.op("bn", "BatchNormalization", "layer", ANY, ANY, ANY, ANY)
    return p


def _fold_into_conv(graph: Graph, match: Match, options: FoldBatchNormPass) -> bool:
    conv, bn = match["layer"], match["bn"]
    weight, bias = conv.inputs[1], (conv.inputs[2] if len(conv.inputs) > 2 else None)
    reason = _skip_reason(graph, conv, bn, [weight, bias], options)
    if reason is not None:
        return _skip(bn, reason)
    g = _bn_scale(bn)
    w = weight.data.astype(np.float64) * g.reshape((-1,) + (1,) * (weight.type.rank - 1))
    b = _folded_bias(bn, g, bias.data.astype(np.float64) if bias is not None else 0.0)
    rounded = _rounded([w, b], weight.type.dtype)
    if rounded is None:
        return _skip(bn, f"the folded parameters are not finite in {weight.type.dtype}")
    _replace(graph, conv, bn, "Conv", dict(conv.attrs), rounded, [weight, bias])
    return True


# ---------------------------------------------------------------------------------- Gemm / MatMul

def _gemm_bn_pattern() -> Pattern:
    p = Pattern(allow_external_uses=True)
    p.op("layer", ("Gemm", "MatMul"), ANY, ANY, OPTIONAL)
    p.op("bn", "BatchNormalization", "layer", ANY, ANY, ANY, ANY)
    return p


def _gemm_view(layer: Node) -> tuple[dict, Value | None]:
    """The layer as Gemm attributes and its bias C (MatMul A @ W is Gemm with transB=0, no C)."""
    if layer.op == "MatMul":
        return {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}, None
    return dict(layer.attrs), (layer.inputs[2] if len(layer.inputs) > 2 else None)


def _fold_into_gemm(graph: Graph, match: Match, options: FoldBatchNormPass) -> bool:
    layer, bn = match["layer"], match["bn"]
    if layer.output.type.rank != 2 or any(v.type.rank != 2 for v in layer.inputs[:2]):
        return _skip(bn, f"'{layer.name}' is not a 2-d [N, C] product")
    attrs, c = _gemm_view(layer)
    weight = layer.inputs[1]
    reason = _skip_reason(graph, layer, bn, [weight, c], options)
    if reason is not None:
        return _skip(bn, reason)
    g = _bn_scale(bn)
    w = weight.data.astype(np.float64) * (g[:, None] if attrs["transB"] else g[None, :])
    c_eff = attrs["beta"] * c.data.astype(np.float64) if c is not None else 0.0
    rounded = _rounded([w, _folded_bias(bn, g, c_eff)], weight.type.dtype)
    if rounded is None:
        return _skip(bn, f"the folded parameters are not finite in {weight.type.dtype}")
    _replace(graph, layer, bn, "Gemm", {**attrs, "beta": 1.0}, rounded, [weight, c])
    return True


# ---------------------------------------------------------------------------------- rewriting

def _replace(graph: Graph, layer: Node, bn: Node, op: str, attrs: dict, data: list[np.ndarray],
             old_params: list[Value | None]) -> None:
    """Replace `layer -> bn` by one `op` node on (X, W', b'); keep names, move BN's annotations."""
    old_weight, old_bias = old_params
    weight = graph.add_constant(graph.fresh_name(old_weight.name), data[0])
    bias_hint = old_bias.name if old_bias is not None else f"{layer.name}.bias"
    bias = graph.add_constant(graph.fresh_name(bias_hint), data[1])
    bn_out = bn.output
    new = graph.add_node(op, [layer.inputs[0], weight, bias], attrs=attrs, name=layer.name,
                         output_types=[bn_out.type])
    new.output.quant, new.output.region = bn_out.quant, bn_out.region
    graph.replace_all_uses(bn_out, new.output)
    node_name = layer.name
    value_name = bn_out.name if graph.is_output(new.output) else layer.output.name
    old_consts = [*old_params, *bn.inputs[1:]]
    graph.erase(bn)
    graph.erase(layer)
    graph.rename_node(new, node_name)
    graph.rename_value(new.output, value_name)
    removed = _remove_unused(graph, old_consts)
    for old, new_const in ((old_weight, weight), (old_bias, bias)):
        if old is not None and id(old) in removed:
            graph.rename_value(new_const, old.name)


def _remove_unused(graph: Graph, values: list[Value | None]) -> set[int]:
    """Remove the constants among `values` that nothing uses any more; returns their ids."""
    removed: set[int] = set()
    for v in values:
        if v is None or id(v) in removed or not v.is_constant or v.uses or graph.is_output(v):
            continue
        graph.remove_constant(v)
        removed.add(id(v))
    return removed


# ---------------------------------------------------------------------------------- thresholds

def _threshold_pattern(with_activation: bool):
    def build() -> Pattern:
        p = Pattern()
        p.op("layer", ("Conv", "Gemm", "MatMul"), ANY, ANY, OPTIONAL)
        p.op("bn", "BatchNormalization", "layer", ANY, ANY, ANY, ANY)
        if with_activation:
            p.op("act", ("Relu", "Clip"), "bn")
        return p

    return build


def _fold_into_thresholds(graph: Graph, match: Match, options: FoldBatchNormPass) -> bool:
    from qcc.integer import QTensor, constant_value, evaluate_node, quantize_result, to_float
    from qcc.ir.quant import Thresholds, Uniform
    from qcc.numerics import step_thresholds

    layer, bn = match["layer"], match["bn"]
    last = match.nodes.get("act", bn)
    x, out_spec = layer.inputs[0], last.output.quant
    if not isinstance(x.quant, Uniform) or x.quant.axis is not None or not isinstance(out_spec, Uniform) \
            or out_spec.axis is not None:
        return _skip(bn, "threshold form needs a per-tensor uniform input and output quantizer")
    if layer.output.quant is not None or (last is not bn and bn.output.quant is not None):
        return _skip(bn, "an intermediate value is annotated")
    if not all(v is None or v.is_constant for v in layer.inputs[1:]) or layer.inputs[1].quant is None:
        return _skip(bn, f"'{layer.name}' needs constant, quantized weights")
    if not all(v.is_constant for v in bn.inputs[1:]) or np.any(_bn_scale(bn) < 0):
        return _skip(bn, "BN parameters are not constants or a channel has a negative scale")
    # the accumulator scale and a bound on |acc|, from the integer semantics of the layer itself
    shape = x.type.concrete()
    xq = x.quant
    zeros = QTensor(np.full(shape, xq.zero_point, np.int64), np.asarray(xq.scale), np.asarray(xq.zero_point))
    args = [zeros] + [constant_value(v) if v is not None else None for v in layer.inputs[1:]]
    acc0 = evaluate_node(layer, args)[0]
    if not isinstance(acc0, QTensor):
        return _skip(bn, f"'{layer.name}' has no integer accumulator")
    weight = args[1]
    reach = max(abs(xq.qmin - xq.zero_point), abs(xq.qmax - xq.zero_point))
    bound = int(np.abs(weight.centred()).sum()) * reach + int(np.abs(acc0.q).max()) + 1
    channels = layer.output.type.shape[1]
    rank = layer.output.type.rank
    acc_scale = np.broadcast_to(np.asarray(acc0.scale, np.float64).reshape(-1), (channels,))

    def levels(acc: np.ndarray) -> np.ndarray:  # acc [C, K] -> codes - qmin [C, K]
        q = np.moveaxis(acc, 0, 1).reshape((acc.shape[1], channels) + (1,) * (rank - 2))
        scale = acc_scale.reshape((1, channels) + (1,) * (rank - 2))
        real = to_float(QTensor(q, scale, np.zeros((), np.int64)))
        y = evaluate_node(bn, [real] + [v.data for v in bn.inputs[1:]])[0]
        if last is not bn:
            y = evaluate_node(last, [y])[0]
        codes = quantize_result(np.asarray(y, np.float32), out_spec).q
        return np.moveaxis(codes.reshape(acc.shape[1], channels), 1, 0) - out_spec.qmin

    n_levels = out_spec.qmax - out_spec.qmin
    table = step_thresholds(levels, np.full(channels, -bound), np.full(channels, bound), n_levels)
    spec = Thresholds(bits=out_spec.bits, thresholds=tuple(tuple(row) for row in table.tolist()),
                      out_scale=out_spec.scale, out_bias=out_spec.scale * (out_spec.qmin - out_spec.zero_point),
                      axis=1, input_scale=tuple(acc_scale.tolist()) if channels > 1 else float(acc_scale[0]))
    final = last.output
    layer.output.quant = spec
    layer.output.region = final.region
    graph.replace_all_uses(final, layer.output)
    name = final.name if graph.is_output(layer.output) else None
    bn_consts = list(bn.inputs[1:])
    if last is not bn:
        graph.erase(last)
    graph.erase(bn)
    if name is not None:
        graph.rename_value(layer.output, name)
    _remove_unused(graph, bn_consts)
    return True


THRESHOLD_REWRITES: tuple[Rewrite, ...] = (
    Rewrite("AbsorbBatchNormActivationIntoThresholds", _threshold_pattern(True), _fold_into_thresholds),
    Rewrite("AbsorbBatchNormIntoThresholds", _threshold_pattern(False), _fold_into_thresholds),
)

REWRITES: tuple[Rewrite, ...] = (
    Rewrite("FoldBatchNormIntoConv", _conv_bn_pattern, _fold_into_conv),
    Rewrite("FoldBatchNormIntoGemm", _gemm_bn_pattern, _fold_into_gemm),
)
