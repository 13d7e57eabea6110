"""assign-bits: choose per-layer weight and activation bit-widths and schemes from a sensitivity table.

An analysis that feeds `quantize`: it reads every layer's `sensitivity` attribute (written by
`annotate-sensitivity`; contract in qcc.sensitivity) and solves, exactly, the integer program of
qcc.bitassign (module docstring there): one option (w_scheme, w_bits, a_scheme, a_bits) per layer,
minimising the additive estimate

    sum_l  weights[w_scheme][w_bits].metric + activations[a_scheme][a_bits].metric

(metric "output_l2", or "top1": the drop of top-1 accuracy from float) under the budgets given, each
a string with units (qcc.budgets): `weight_budget` (weight storage, biases included), `act_budget`
(the on-chip buffer: every layer's input activation must fit, seed 001, with act_mode=peak; or
their sum, act_mode=sum), `bops_budget` (MACs x w_bits x a_bits), and `target_budget` in the unit
of `target_metric` when ctx.config["target"] is a qcc.target.Target.

Target costs are additive per layer: for each candidate option, one clone of the graph has every
layer offering it annotated with it (weights fitted, input quantizer from calibration statistics
or a placeholder range), and `target.cost(clone)` gives each such layer's `target_metric`. With a
target, options it cannot execute (`target.legal_bits(node)`: bits and schemes) are removed.

Per-layer constraints:
- pin: "layer=w_bits/a_bits" fixes a layer's bits ("*" leaves one free);
- keep_first_last (seed 001: wider first layer, higher precision last layer): the first layers (no
  layer upstream) get at least `first_bits` and the last layers (no layer downstream) at least
  `last_bits` for both weights and activations;
- share: "l1+l2+..." layers choose the same w_bits and a_bits;
- share_residual: for every residual Add (two non-constant operands of one shape), the layers that
  read its operands or its result, directly or through precision-preserving ops (Relu, Clip,
  MaxPool, Identity, Flatten, Reshape, Transpose, Squeeze, Unsqueeze), choose the same a_bits, so
  both branches and the sum live at one precision (groups that share a layer merge, which ties a
  whole residual stream).
Options are the products of each layer's swept weight and activation entries; `allow_float` adds the
unquantized choice (float, 32 bits, sensitivity 0).

Results: graph.attrs["bit_assignment"] = {"layers": {name: {w_bits, a_bits, w_scheme, a_scheme}},
"objective", "metric", "predicted_l2", "budgets": {name: {limit, used, unit, mode, text}}, "totals"
(weight_bits, act_bits_peak, act_bits_sum, bops; bits and BOPs of one sample), and, when calibration
data is given and measure=true, "measured_l2", "measured_top1", "float_top1", "measure_mode",
"measure_samples"} (measured by quantizing a clone and running it: qcc.bitassign.measure, on
ctx.config["eval"] when given, else the calibration data); ctx.config["quant_config"] gets the
configuration as a qcc.config.QuantConfig, so a following `quantize` applies it; apply=true applies
it at once. An infeasible problem is an error naming the binding budget(s) and the least amount
each needs, in the option's units. `AssignBitsPass(...).problem(graph, ctx)` returns the integer
program itself, for budget sweeps (qcc.bitassign.pareto / front).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from qcc.bitassign import Budget, LayerChoices, Option, Problem, Solution, Tie, measure, solve, total
from qcc.budgets import (
    ACT_BITS,
    BOPS,
    TARGET,
    WEIGHT_BITS,
    activation_bits,
    bops,
    layer_sizes,
    parse_budget,
    scheme_bits,
    weight_bits,
)
from qcc.calibration import calibration_of
from qcc.config import LayerConfig, QuantConfig
from qcc.errors import PassError, QccError
from qcc.ir.graph import Graph, Node, Value
from qcc.pass_manager import Pass, PassContext, PassResult
from qcc.passes.binarize import first_and_last_layers
from qcc.passes.quantize import LAYER_OPS, QuantizePass, output_axis
from qcc.quantizers import activation_spec, quantize_weights
from qcc.target import Target

__all__ = ["AssignBitsPass", "residual_groups"]

_VARIABLES = ("weights", "activations")
_TRANSPARENT = frozenset({"Relu", "Clip", "MaxPool", "Identity", "Flatten", "Reshape", "Transpose", "Squeeze",
                          "Unsqueeze"})
_PLACEHOLDER_STATS = {"range": [-1.0, 1.0], "mean": 0.0, "std": 1.0}  # target costs need bits, not scales
_OUTPUT_L2 = "output_l2"


@dataclass(frozen=True)
class AssignBitsPass(Pass):
    """Choose per-layer bit-widths minimising summed sensitivity under memory, BOPs and target budgets."""

    name = "assign-bits"
    weight_budget: str | None = None  # e.g. "1Mb", "64KB"
    act_budget: str | None = None
    act_mode: Literal["peak", "sum"] = "peak"
    bops_budget: str | None = None  # e.g. "2G"
    target_budget: float | None = None  # in the unit of target_metric
    target_metric: str | None = None  # default: the target's budget_metric (cim: energy_pj, fpga: luts)
    metric: Literal["output_l2", "top1"] = "output_l2"
    pin: tuple[str, ...] = ()  # "layer=w_bits/a_bits"
    keep_first_last: bool = False
    first_bits: int = 8
    last_bits: int = 8
    share: tuple[str, ...] = ()  # "layer1+layer2"
    share_residual: bool = False
    allow_float: bool = False
    per_channel: bool = True  # as quantize's option: codebook tables per output channel
    centroid_bits: int = 8  # as quantize's option
    apply: bool = False
    measure: bool = True
    measure_mode: Literal["int", "fake"] = "int"

    def __post_init__(self):
        self.budgets_given()  # budget strings are checked when the pipeline is parsed
        for key, bits in (("first-bits", self.first_bits), ("last-bits", self.last_bits)):
            if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
                raise QccError(f"{key} must be an integer from 1 to 32, got {bits!r}")
        if self.target_budget is not None and not self.target_budget > 0:
            raise QccError(f"target-budget must be positive, got {self.target_budget}")
        for text in self.pin:
            _parse_pin(text)
        for text in self.share:
            _parse_share(text)

    def budgets_given(self) -> list[tuple[str, str, str, Any]]:
        """(option name, quantity, mode, parsed value) of every budget string given."""
        out = []
        for option, quantity, kind, text in (("weight_budget", WEIGHT_BITS, "memory", self.weight_budget),
                                             ("act_budget", ACT_BITS, "memory", self.act_budget),
                                             ("bops_budget", BOPS, "bops", self.bops_budget)):
            if text is None:
                continue
            mode = self.act_mode if quantity == ACT_BITS else "sum"
            out.append((option, quantity, mode, parse_budget(text, kind, option.replace("_", "-"))))
        return out

    # ------------------------------------------------------------------------------- running
    def with_context_budgets(self, ctx: PassContext) -> AssignBitsPass:
        """Budgets given to the command (--weight-budget ...; ctx.config["budgets"]) fill unset options."""
        given = ctx.config.get("budgets") or {}
        unknown = sorted(set(given) - {"weight_budget", "act_budget", "bops_budget", "target_budget"})
        if unknown:
            raise QccError(f"unknown budget(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in given.items() if getattr(self, k) is None})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        layers = [n for n in graph.nodes if n.op in LAYER_OPS]
        if not layers:
            return PassResult(False)
        if ctx.config.get("budgets"):
            return self.with_context_budgets(ctx)._run(graph, ctx, layers)
        return self._run(graph, ctx, layers)

    def _run(self, graph: Graph, ctx: PassContext, layers: list[Node]) -> PassResult:
        problem = self.problem(graph, ctx)
        if ctx.progress is not None:
            ctx.progress(f"assign-bits: solving for {len(layers)} layers, "
                         f"{sum(len(lc.options) for lc in problem.layers)} options")
        solution = solve(problem)
        config = self.configuration(solution)
        record = self._record(problem, solution, self._metric(self._target(ctx)))
        ctx.config["quant_config"] = config
        if self.measure:
            record.update(self._measure(graph, config, ctx))
        changed = graph.attrs.get("bit_assignment") != record
        graph.attrs["bit_assignment"] = record
        if self.apply:
            changed |= self._apply(graph, config, ctx)
        return PassResult(changed)

    def problem(self, graph: Graph, ctx: PassContext) -> Problem:
        """The integer program of `graph`: options, budgets and ties (qcc.bitassign.Problem)."""
        target = self._target(ctx)
        layers = [n for n in graph.nodes if n.op in LAYER_OPS]
        float_top1 = _float_top1(graph) if self.metric == "top1" else None
        choices = {n.name: self._options(graph, n, float_top1, ctx) for n in layers}
        if target is not None:
            choices = {n.name: self._legal(n, choices[n.name], target, ctx) for n in layers}
        choices = self._first_last(graph, choices, ctx)
        choices = self._pinned(graph, choices, ctx)
        budgets = self._budgets(target)
        if self.target_budget is not None:
            choices = _with_target_costs(graph, choices, target.assignment_target(), self._metric(target), self, ctx)
        ties = self._ties(graph, [n.name for n in layers], ctx)
        return Problem(tuple(LayerChoices(name, tuple(opts)) for name, opts in choices.items()), budgets, ties)

    def configuration(self, solution: Solution) -> QuantConfig:
        """The chosen options as the configuration `quantize` applies."""
        layers = {name: LayerConfig(w_bits=None if o.w_scheme == "float" else o.w_bits,
                                    a_bits=None if o.a_scheme == "float" else o.a_bits,
                                    w_scheme=o.w_scheme, a_scheme=o.a_scheme)
                  for name, o in solution.choice.items()}
        default = LayerConfig(w_bits=8, a_bits=8, w_scheme="uniform", a_scheme="uniform",
                              per_channel=self.per_channel)
        return QuantConfig(default=default, layers=layers)

    # ------------------------------------------------------------------------------- options
    def _options(self, graph: Graph, node: Node, float_top1: float | None, ctx: PassContext) -> list[Option]:
        row = node.attrs.get("sensitivity")
        if not isinstance(row, Mapping):
            annotated = any(isinstance(n.attrs.get("sensitivity"), Mapping) for n in graph.nodes)
            hint = "annotate it too" if annotated else "run annotate-sensitivity first"
            raise PassError(self.name, f"layer has no sensitivity table; {hint} (e.g. -p \"calibrate,"
                            f"annotate-sensitivity,assign-bits{{weight-budget=1Mb}}\" --calib CALIB.npz)",
                            node=node.name, ran_before=tuple(ctx.history))
        sizes = layer_sizes(node, output_axis(node) if self.per_channel and _has_weight(node) else None)
        parts = [self._entries(node, row, variable, float_top1, ctx) for variable in _VARIABLES]
        options = []
        for (ws, wb, w_sens, w_l2), (as_, ab, a_sens, a_l2) in itertools.product(*parts):
            costs = {WEIGHT_BITS: weight_bits(sizes, ws, wb, self.centroid_bits),
                     ACT_BITS: activation_bits(sizes, as_, ab), BOPS: bops(sizes, ws, wb, as_, ab),
                     _OUTPUT_L2: w_l2 + a_l2}
            options.append(Option(ws, wb, as_, ab, w_sens + a_sens, {k: float(v) for k, v in costs.items()}))
        return options

    def _entries(self, node: Node, row: Mapping[str, Any], variable: str, float_top1: float | None,
                 ctx: PassContext) -> list[tuple[str, int, float, float]]:
        """(scheme, effective bits, sensitivity, output_l2) of one variable's swept entries."""
        quantizable = _has_weight(node) if variable == "weights" else _reads_activation(node)
        part = row.get(variable) or {}
        if not isinstance(part, Mapping):
            raise PassError(self.name, f"sensitivity['{variable}'] is not a table of schemes",
                            node=node.name, ran_before=tuple(ctx.history))
        out = []
        for scheme, by_bits in part.items():
            for key, entry in (by_bits or {}).items():
                bits = _entry_bits(key)
                if bits is None or not isinstance(entry, Mapping):
                    raise PassError(self.name, f"sensitivity['{variable}']['{scheme}'] has a bad entry "
                                    f"'{key}'", node=node.name, ran_before=tuple(ctx.history))
                l2 = _number(entry, _OUTPUT_L2, node, self, ctx)
                value = l2 if self.metric == _OUTPUT_L2 else float_top1 - _number(entry, "top1", node, self, ctx)
                out.append((scheme, scheme_bits(scheme, bits), value, l2))
        if not quantizable:
            return [("float", 32, 0.0, 0.0)]
        if self.allow_float:
            out = [e for e in out if e[0] != "float"] + [("float", 32, 0.0, 0.0)]
        if not out:
            raise PassError(self.name, f"the sensitivity table has no entries for the layer's {variable}; "
                            "re-run annotate-sensitivity", node=node.name, ran_before=tuple(ctx.history))
        return out

    # ------------------------------------------------------------------------------- constraints
    def _legal(self, node: Node, options: list[Option], target: Target, ctx: PassContext) -> list[Option]:
        legal = target.legal_bits(node)
        kept = [o for o in options
                if (o.w_scheme == "float" or o.w_bits in legal.weight_bits) and o.w_scheme in legal.schemes
                and (o.a_scheme == "float" or o.a_bits in legal.activation_bits) and o.a_scheme in legal.schemes]
        if not kept:
            raise PassError(self.name, f"target '{target.name}' executes none of the candidates (it takes weights "
                            f"of {_listed(legal.weight_bits)} bits, activations of "
                            f"{_listed(legal.activation_bits)} bits, schemes {', '.join(legal.schemes)})",
                            node=node.name, ran_before=tuple(ctx.history))
        return kept

    def _first_last(self, graph: Graph, choices: dict[str, list[Option]], ctx: PassContext) -> dict:
        if not self.keep_first_last:
            return choices
        first, last = first_and_last_layers(graph)
        out = dict(choices)
        for group, bits, label in ((first, self.first_bits, "first-bits"), (last, self.last_bits, "last-bits")):
            for node in group:
                if node.name not in out:
                    continue
                kept = [o for o in out[node.name] if o.w_bits >= bits and o.a_bits >= bits]
                if not kept:
                    raise PassError(self.name, f"keep-first-last: no candidate has at least {label}={bits} bits "
                                    f"for weights and activations ({_offered(out[node.name])})",
                                    node=node.name, ran_before=tuple(ctx.history))
                out[node.name] = kept
        return out

    def _pinned(self, graph: Graph, choices: dict[str, list[Option]], ctx: PassContext) -> dict:
        out = dict(choices)
        for text in self.pin:
            name, w, a = _parse_pin(text)
            _check_layer(name, out, graph, f"pin '{text}'")
            kept = [o for o in out[name] if (w is None or o.w_bits == w) and (a is None or o.a_bits == a)]
            if not kept:
                raise PassError(self.name, f"pin '{text}' matches none of the layer's candidates "
                                f"({_offered(out[name])})", node=name, ran_before=tuple(ctx.history))
            out[name] = kept
        return out

    def _ties(self, graph: Graph, layer_names: list[str], ctx: PassContext) -> tuple[Tie, ...]:
        known = dict.fromkeys(layer_names)
        ties = []
        for text in self.share:
            names = _parse_share(text)
            for name in names:
                _check_layer(name, known, graph, f"share '{text}'")
            ties.append(Tie(tuple(names), ("w_bits", "a_bits"), reason="share"))
        if self.share_residual:
            ties += [Tie(group, ("a_bits",), reason="residual") for group in residual_groups(graph)]
        return tuple(ties)

    def _budgets(self, target: Target | None) -> tuple[Budget, ...]:
        budgets = [Budget(option, quantity, value.value, mode, display=value.format)
                   for option, quantity, mode, value in self.budgets_given()]
        if self.target_budget is not None:
            if target is None:
                raise QccError("target-budget needs a target (ctx.config['target'], e.g. --target cim)")
            metric = self._metric(target)
            budgets.append(Budget("target_budget", TARGET, float(self.target_budget),
                                  display=lambda v: f"{v:.6g} {metric}"))
        return tuple(budgets)

    def _metric(self, target: Target | None) -> str | None:
        """The cost field the target budget limits: target-metric, else the target's budget_metric."""
        if self.target_budget is None or target is None:
            return self.target_metric
        metric = self.target_metric or target.budget_metric
        if metric is None:
            raise QccError(f"target '{target.name}' has no default budget metric; give target-metric=<a cost "
                           f"field of the target>")
        return metric

    def _target(self, ctx: PassContext) -> Target | None:
        target = ctx.config.get("target")
        if target is None:
            return None
        if not isinstance(target, Target):
            raise QccError(f"ctx.config['target'] must be a qcc.target.Target, got {type(target).__name__}")
        return target

    # ------------------------------------------------------------------------------- results
    def _record(self, problem: Problem, solution: Solution, metric: str | None) -> dict[str, Any]:
        layers = {name: {"w_bits": o.w_bits, "a_bits": o.a_bits, "w_scheme": o.w_scheme, "a_scheme": o.a_scheme}
                  for name, o in solution.choice.items()}
        units = {WEIGHT_BITS: "bits", ACT_BITS: "bits", BOPS: "BOPs", TARGET: metric}
        texts = {option: value.text for option, _, _, value in self.budgets_given()}
        texts["target_budget"] = f"{self.target_budget} {metric}"
        budgets = {b.name: {"limit": b.limit, "used": solution.used[b.name], "unit": units.get(b.quantity, ""),
                            "mode": b.mode, "text": texts.get(b.name, "")} for b in problem.budgets}
        totals = {"weight_bits": total(problem, solution.choice, WEIGHT_BITS),
                  "act_bits_peak": total(problem, solution.choice, ACT_BITS, "peak"),
                  "act_bits_sum": total(problem, solution.choice, ACT_BITS),
                  "bops": total(problem, solution.choice, BOPS)}
        if self.target_budget is not None:
            totals[f"target_{metric}"] = total(problem, solution.choice, TARGET)
        return {"layers": layers, "objective": solution.objective, "metric": self.metric,
                "predicted_l2": total(problem, solution.choice, _OUTPUT_L2), "budgets": budgets, "totals": totals}

    def _measure(self, graph: Graph, config: QuantConfig, ctx: PassContext) -> dict[str, Any]:
        calib = ctx.config.get("calib")
        data = ctx.config.get("eval")
        if calib is None and data is None:
            return {}
        try:
            result = measure(graph, config, calib if calib is not None else data, data, mode=self.measure_mode)
        except QccError as e:
            raise PassError(self.name, f"measuring the chosen configuration failed: {e}",
                            ran_before=tuple(ctx.history)) from None
        return {"measured_l2": result["measured_l2"], "measured_top1": result["measured_top1"],
                "float_top1": result["float_top1"], "measure_mode": result["mode"],
                "measure_samples": result["samples"]}

    def _apply(self, graph: Graph, config: QuantConfig, ctx: PassContext) -> bool:
        try:
            return QuantizePass(per_channel=self.per_channel, centroid_bits=self.centroid_bits).apply(graph, config,
                                                                                                      ctx)
        except PassError as e:  # the quantize logic names itself; this pass is the one that failed
            raise PassError(self.name, e.reason, node=e.node, ran_before=tuple(ctx.history)) from None


# ----------------------------------------------------------------------------------- target costs

def _with_target_costs(graph: Graph, choices: dict[str, list[Option]], target: Target | None, metric: str,
                       pass_: AssignBitsPass, ctx: PassContext) -> dict[str, list[Option]]:
    """Each option with costs[TARGET] = the target's `metric` for its layer annotated with it."""
    if target is None:
        raise QccError("target-budget needs a target (ctx.config['target'], e.g. --target cim)")
    keys = list(dict.fromkeys(o.key for opts in choices.values() for o in opts))
    cost: dict[tuple[str, tuple], float] = {}
    for i, key in enumerate(keys):
        if ctx.progress is not None:
            ctx.progress(f"assign-bits: target cost of option {i + 1}/{len(keys)}")
        names = [name for name, opts in choices.items() if any(o.key == key for o in opts)]
        clone = graph.clone()
        for name in names:
            _annotate(clone, clone.node(name), key, pass_)
        report = target.cost(clone)
        by_name = {lc.name: lc for lc in report.layers}
        for name in names:
            row = by_name.get(name)
            if row is None:
                cost[(name, key)] = 0.0  # the target charges nothing for this layer
                continue
            if metric not in row.fields:
                raise PassError(pass_.name, f"target '{target.name}' reports no '{metric}' for the layer (it "
                                f"reports: {', '.join(sorted(row.fields)) or 'nothing'})", node=name,
                                ran_before=tuple(ctx.history))
            cost[(name, key)] = float(row.fields[metric])
    return {name: [_with_cost(o, TARGET, cost[(name, o.key)]) for o in opts] for name, opts in choices.items()}


def _with_cost(option: Option, quantity: str, value: float) -> Option:
    return Option(option.w_scheme, option.w_bits, option.a_scheme, option.a_bits, option.sensitivity,
                  {**option.costs, quantity: value})


def _annotate(graph: Graph, node: Node, key: tuple[str, int, str, int], pass_: AssignBitsPass) -> None:
    """Give one layer of a clone the weight and input quantizers of option `key` (for costing only)."""
    w_scheme, w_bits, a_scheme, a_bits = key
    if w_scheme != "float" and _has_weight(node):
        axis = output_axis(node) if pass_.per_channel else None
        spec, data = quantize_weights(node.inputs[1].data, w_scheme, w_bits, axis=axis,
                                      centroid_bits=pass_.centroid_bits)
        graph.replace_constant_input(node, 1, data, spec)
    if a_scheme != "float" and _reads_activation(node):
        x = node.inputs[0]
        stats = calibration_of(graph, x) or _PLACEHOLDER_STATS
        x.quant = activation_spec(stats, a_scheme, a_bits)


# ----------------------------------------------------------------------------------- residual ties

def residual_groups(graph: Graph) -> list[tuple[str, ...]]:
    """Layers that must share a_bits around residual Adds (rule in the module docstring), in graph order."""
    layers = [n.name for n in graph.nodes if n.op in LAYER_OPS]
    parent = {name: name for name in layers}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in graph.nodes:
        if not _is_residual_add(node):
            continue
        readers = [r for v in (*node.inputs, node.output) for r in _layer_readers(v, set(layers))]
        for other in readers[1:]:
            parent[find(other)] = find(readers[0])
    groups: dict[str, list[str]] = {}
    for name in layers:
        groups.setdefault(find(name), []).append(name)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def _is_residual_add(node: Node) -> bool:
    if node.op != "Add" or len(node.inputs) != 2 or any(v is None or v.is_constant for v in node.inputs):
        return False
    return node.inputs[0].type.shape == node.inputs[1].type.shape


def _layer_readers(value: Value, layers: set[str]) -> list[str]:
    """Layers reading `value` as their input 0, directly or through precision-preserving ops."""
    out, stack, seen = [], [value], set()
    while stack:
        v = stack.pop()
        for user, index in v.uses:
            if user.name in layers and index == 0:
                out.append(user.name)
            elif user.op in _TRANSPARENT and index == 0 and user.name not in seen:
                seen.add(user.name)
                stack.extend(user.outputs)
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------------- small helpers

def _has_weight(node: Node) -> bool:
    return len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].is_constant


def _reads_activation(node: Node) -> bool:
    return bool(node.inputs) and node.inputs[0] is not None and not node.inputs[0].is_constant


def _entry_bits(key: Any) -> int | None:
    try:
        bits = int(str(key))
    except ValueError:
        return None
    return bits if bits >= 1 else None


def _number(entry: Mapping[str, Any], key: str, node: Node, pass_: AssignBitsPass, ctx: PassContext) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        hint = " (top1 needs labels: calibration data with 'y')" if key == "top1" else ""
        raise PassError(pass_.name, f"a sensitivity entry has no number '{key}'{hint}", node=node.name,
                        ran_before=tuple(ctx.history))
    return float(value)


def _float_top1(graph: Graph) -> float:
    info = graph.attrs.get("sensitivity")
    value = info.get("float_top1") if isinstance(info, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QccError("metric=top1 needs graph.attrs['sensitivity']['float_top1']: run annotate-sensitivity "
                       "with labeled calibration data ('y')")
    return float(value)


def _parse_pin(text: str) -> tuple[str, int | None, int | None]:
    name, eq, bits = str(text).rpartition("=")
    parts = bits.split("/")
    if not eq or not name or len(parts) != 2:
        raise QccError(f"pin '{text}' is not 'layer=w_bits/a_bits' (e.g. \"/conv1/Conv=8/8\", '*' = free)")
    values = []
    for part in parts:
        part = part.strip()
        if part == "*":
            values.append(None)
        elif part.isdigit() and 1 <= int(part) <= 32:
            values.append(int(part))
        else:
            raise QccError(f"pin '{text}': bits must be 1 to 32 or '*', got '{part}'")
    return name.strip(), values[0], values[1]


def _parse_share(text: str) -> list[str]:
    names = [n.strip() for n in str(text).split("+")]
    if len(names) < 2 or not all(names):
        raise QccError(f"share '{text}' is not 'layer1+layer2[+...]'")
    return names


def _check_layer(name: str, layers: Iterable[str], graph: Graph, where: str) -> None:
    known = list(layers)
    if name in known:
        return
    if any(n.name == name for n in graph.nodes):
        raise QccError(f"{where}: node '{name}' is not a layer ({', '.join(LAYER_OPS)})")
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; layers are: {', '.join(known)}"
    raise QccError(f"{where}: unknown layer '{name}'{hint}")


def _offered(options: list[Option]) -> str:
    return "candidates: " + ", ".join(dict.fromkeys(o.label() for o in options))


def _listed(bits: Iterable[int]) -> str:
    return ", ".join(map(str, bits)) or "none"
