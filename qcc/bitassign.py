"""Mixed-precision bit-width assignment as an integer program, and checking its result for real.

Why here: choosing per-layer bit-widths under budgets is a small combinatorial problem that must be
solved exactly (not greedily) and explained when it has no solution. The math works on plain data
(layers, their options, budgets), so it is testable against brute force without graphs; the
`assign-bits` pass (qcc.passes.assign_bits) builds a `Problem` from a graph's sensitivity table.

Formulation (seed 002's Network Space Exploration, with seed 000/001 budgets). Layer l has options
c = (w_scheme, w_bits, a_scheme, a_bits), each with a sensitivity s_{l,c} (the additive estimate:
weights entry + activations entry) and costs q_{l,c} per quantity (weight_bits, act_bits, bops,
target). Binary x_{l,c}:

    minimise    sum_{l,c} s_{l,c} x_{l,c}
    subject to  sum_c x_{l,c} = 1                                   (one option per layer)
                sum_{l,c} q_{l,c} x_{l,c} <= B                      (a "sum" budget on q)
                x_{l,c} = 0 wherever q_{l,c} > B                    (a "peak" budget: every layer fits)
                sum_{c: k(c)=v} x_{l,c} = sum_{c: k(c)=v} x_{m,c}   (a tie of layers l, m on fields k,
                                                                     for every value v of k)

solved with scipy.optimize.milp (HiGHS) with a zero relative gap. HiGHS checks constraints with a
tolerance, so every solution is re-checked exactly; a configuration that breaks a budget by the
tolerance is cut off (sum over its x <= L - 1) and the program re-solved.

Infeasible budgets are diagnosed: for each budget, the smallest amount any configuration needs
while meeting the other budgets (a second integer program minimising that quantity; for a peak
budget, a bisection over the distinct per-layer amounts). A budget whose smallest amount exceeds
its limit is binding and named, with that amount in the budget's own unit.

`measure` runs a configuration for real: it quantizes a clone of the graph through the pass
registry (calibrate if needed, then quantize) and reports the mean per-image L2 distance of the
outputs to the float graph (seed 002 eq. 1, summed over outputs) and top-1 when labels are given.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from qcc.config import QuantConfig
from qcc.errors import QccError
from qcc.ir.graph import Graph

__all__ = [
    "Option",
    "LayerChoices",
    "Budget",
    "Tie",
    "Problem",
    "Solution",
    "ParetoPoint",
    "InfeasibleError",
    "solve",
    "smallest_feasible",
    "total",
    "pareto",
    "tradeoffs",
    "nondominated",
    "front",
    "measure",
]

OPTION_FIELDS = ("w_scheme", "w_bits", "a_scheme", "a_bits")


# ----------------------------------------------------------------------------------- the problem

@dataclass(frozen=True)
class Option:
    """One choice for a layer: its schemes and bits, estimated sensitivity, and costs by quantity."""

    w_scheme: str
    w_bits: int
    a_scheme: str
    a_bits: int
    sensitivity: float
    costs: Mapping[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, str, int]:
        return (self.w_scheme, self.w_bits, self.a_scheme, self.a_bits)

    def label(self) -> str:
        schemes = "" if (self.w_scheme, self.a_scheme) == ("uniform", "uniform") \
            else f" {self.w_scheme}/{self.a_scheme}"
        return f"{self.w_bits}/{self.a_bits}{schemes}"


@dataclass(frozen=True)
class LayerChoices:
    name: str
    options: tuple[Option, ...]


def _plain(amount: float) -> str:
    return f"{amount:.6g}"


@dataclass(frozen=True)
class Budget:
    """A limit on one cost quantity: on the sum over layers, or on every layer alone ("peak")."""

    name: str  # what errors call it, e.g. "weight_budget"
    quantity: str  # key into Option.costs
    limit: float
    mode: Literal["sum", "peak"] = "sum"
    display: Callable[[float], str] = field(default=_plain, compare=False)

    def __post_init__(self):
        if self.mode not in ("sum", "peak"):
            raise QccError(f"budget {self.name}: mode must be 'sum' or 'peak', got {self.mode!r}")


@dataclass(frozen=True)
class Tie:
    """Layers that must choose equal values of `fields` (e.g. ("a_bits",) for a residual stream)."""

    layers: tuple[str, ...]
    fields: tuple[str, ...] = ("w_bits", "a_bits")
    reason: str = "share"

    def __post_init__(self):
        unknown = [f for f in self.fields if f not in OPTION_FIELDS]
        if unknown or not self.fields:
            raise QccError(f"tie {'+'.join(self.layers)}: fields must be among {', '.join(OPTION_FIELDS)}, "
                           f"got {', '.join(self.fields) or 'none'}")


@dataclass(frozen=True)
class Problem:
    layers: tuple[LayerChoices, ...]
    budgets: tuple[Budget, ...] = ()
    ties: tuple[Tie, ...] = ()

    def __post_init__(self):
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise QccError("bit assignment: layer names repeat")
        for layer in self.layers:
            if not layer.options:
                raise QccError(f"layer '{layer.name}' has no candidate bit-widths left")
        for tie in self.ties:
            missing = [n for n in tie.layers if n not in names]
            if missing:
                raise QccError(f"tie {'+'.join(tie.layers)}: unknown layer(s) {', '.join(missing)}")
        quantities = {q for layer in self.layers for o in layer.options for q in o.costs}
        for b in self.budgets:
            if not all(b.quantity in o.costs for layer in self.layers for o in layer.options):
                raise QccError(f"budget {b.name}: not every option has a cost '{b.quantity}' "
                               f"(have: {', '.join(sorted(quantities)) or 'none'})")

    def layer(self, name: str) -> LayerChoices:
        return next(layer for layer in self.layers if layer.name == name)


@dataclass(frozen=True)
class Solution:
    choice: Mapping[str, Option]  # layer name -> chosen option
    objective: float  # summed sensitivity
    used: Mapping[str, float]  # budget name -> amount the choice uses (sum or peak)


@dataclass(frozen=True)
class ParetoPoint:
    limit: float  # the budget value swept
    used: float  # what the optimum uses of it
    objective: float
    choice: Mapping[str, Option]


class InfeasibleError(QccError):
    """No configuration meets the constraints; names the binding budgets and what each would need.

    smallest[name] is the least amount of that budget's quantity any configuration needs while
    meeting the other budgets (or, when the others cannot all be met, on its own; None if even
    that is impossible).
    """

    def __init__(self, message: str, *, binding: tuple[str, ...] = (),
                 smallest: Mapping[str, float | None] | None = None):
        super().__init__(message)
        self.binding = binding
        self.smallest = dict(smallest or {})


# ----------------------------------------------------------------------------------- solving

def total(problem: Problem, choice: Mapping[str, Option], quantity: str, mode: str = "sum") -> float:
    """A choice's amount of `quantity`: summed over layers, or the largest layer's ("peak")."""
    amounts = [choice[layer.name].costs[quantity] for layer in problem.layers]
    if mode == "peak":
        return float(max(amounts, default=0.0))
    return float(sum(amounts))


def solve(problem: Problem) -> Solution:
    """The configuration of least summed sensitivity under every constraint (InfeasibleError if none)."""
    cost = [[o.sensitivity for o in layer.options] for layer in problem.layers]
    picked = _optimum(problem, cost, scale=True)
    if picked is None:
        raise _diagnose(problem)
    return _solution(problem, picked)


def smallest_feasible(problem: Problem, budget: Budget) -> float | None:
    """The least amount of `budget`'s quantity (its mode) any configuration needs under the
    problem's constraints, ignoring budgets on the same name; None when nothing is feasible."""
    others = tuple(b for b in problem.budgets if b.name != budget.name)
    return _smallest(replace(problem, budgets=others), budget)


def _solution(problem: Problem, picked: Sequence[int]) -> Solution:
    choice = {layer.name: layer.options[i] for layer, i in zip(problem.layers, picked)}
    objective = float(sum(o.sensitivity for o in choice.values()))
    used = {b.name: total(problem, choice, b.quantity, b.mode) for b in problem.budgets}
    return Solution(choice=choice, objective=objective, used=used)


def _violates(problem: Problem, picked: Sequence[int]) -> bool:
    choice = {layer.name: layer.options[i] for layer, i in zip(problem.layers, picked)}
    return any(total(problem, choice, b.quantity, b.mode) > b.limit for b in problem.budgets)


def _optimum(problem: Problem, cost: Sequence[Sequence[float]], *, scale: bool) -> list[int] | None:
    """Option index per layer minimising `cost`, or None when infeasible."""
    if not problem.layers:
        return []
    offsets = np.cumsum([0] + [len(layer.options) for layer in problem.layers])
    n = int(offsets[-1])
    c = np.concatenate([np.asarray(row, dtype=np.float64) for row in cost])
    if scale and np.abs(c).max() > 0:
        c = c * (1e3 / np.abs(c).max())  # HiGHS stops within an absolute gap of 1e-6
    rows, lower, upper, allowed = _constraints(problem, offsets, n)
    while True:
        constraints = LinearConstraint(np.array(rows), np.array(lower), np.array(upper))
        res = milp(c, constraints=constraints, integrality=np.ones(n), bounds=Bounds(np.zeros(n), allowed),
                   options={"mip_rel_gap": 0.0})
        if res.status == 2:
            return None
        if res.status != 0 or res.x is None:
            raise QccError(f"bit assignment: the integer program did not solve ({res.message})")
        picked = [int(np.argmax(res.x[offsets[li]:offsets[li + 1]])) for li in range(len(problem.layers))]
        if not _violates(problem, picked) and _ties_hold(problem, picked):
            return picked
        cut = np.zeros(n)  # broke a budget within HiGHS's tolerance: exclude exactly this configuration
        for li, i in enumerate(picked):
            cut[offsets[li] + i] = 1.0
        rows.append(cut)
        lower.append(-np.inf)
        upper.append(len(problem.layers) - 1.0)


def _constraints(problem: Problem, offsets: np.ndarray, n: int):
    """Rows, their lower and upper bounds, and the variables' upper bounds (0 = excluded)."""
    rows: list[np.ndarray] = []
    lower: list[float] = []
    upper: list[float] = []
    for li in range(len(problem.layers)):  # one option per layer
        row = np.zeros(n)
        row[offsets[li]:offsets[li + 1]] = 1.0
        rows.append(row)
        lower.append(1.0)
        upper.append(1.0)
    for row in _tie_rows(problem, offsets, n):
        rows.append(row)
        lower.append(0.0)
        upper.append(0.0)
    allowed = np.ones(n)
    for b in problem.budgets:
        amounts = np.array([o.costs[b.quantity] for layer in problem.layers for o in layer.options], np.float64)
        if b.mode == "peak":
            allowed[amounts > b.limit] = 0.0
            continue
        norm = max(float(np.abs(amounts).max(initial=0.0)), abs(b.limit), 1e-300)
        rows.append(amounts / norm)
        lower.append(-np.inf)
        upper.append(b.limit / norm)
    return rows, lower, upper, allowed


def _tie_rows(problem: Problem, offsets: np.ndarray, n: int) -> Iterable[np.ndarray]:
    index = {layer.name: li for li, layer in enumerate(problem.layers)}
    for tie in problem.ties:
        members = [index[name] for name in dict.fromkeys(tie.layers)]
        values = {_tie_key(o, tie) for li in members for o in problem.layers[li].options}
        for other in members[1:]:
            for v in sorted(values, key=repr):
                row = np.zeros(n)
                for li, sign in ((members[0], 1.0), (other, -1.0)):
                    for i, o in enumerate(problem.layers[li].options):
                        if _tie_key(o, tie) == v:
                            row[offsets[li] + i] = sign
                yield row


def _tie_key(option: Option, tie: Tie) -> tuple:
    return tuple(getattr(option, f) for f in tie.fields)


def _ties_hold(problem: Problem, picked: Sequence[int]) -> bool:
    chosen = {layer.name: layer.options[i] for layer, i in zip(problem.layers, picked)}
    return all(len({_tie_key(chosen[name], tie) for name in tie.layers}) <= 1 for tie in problem.ties)


def _feasible(problem: Problem) -> bool:
    zero = [[0.0] * len(layer.options) for layer in problem.layers]
    return _optimum(problem, zero, scale=False) is not None


def _smallest(problem: Problem, budget: Budget) -> float | None:
    """Least amount of budget.quantity (in budget.mode) under `problem`'s constraints, or None."""
    q = budget.quantity
    if budget.mode == "sum":
        cost = [[o.costs[q] for o in layer.options] for layer in problem.layers]
        picked = _optimum(problem, cost, scale=False)
        if picked is None:
            return None
        choice = {layer.name: layer.options[i] for layer, i in zip(problem.layers, picked)}
        return total(problem, choice, q, "sum")
    values = sorted({o.costs[q] for layer in problem.layers for o in layer.options})
    floor = max(min(o.costs[q] for o in layer.options) for layer in problem.layers)
    values = [v for v in values if v >= floor]
    lo, hi = 0, len(values)  # bisection: the first value whose peak limit is feasible
    while lo < hi:
        mid = (lo + hi) // 2
        if _feasible(replace(problem, budgets=problem.budgets + (replace(budget, limit=values[mid]),))):
            hi = mid
        else:
            lo = mid + 1
    return values[lo] if lo < len(values) else None


def _diagnose(problem: Problem) -> InfeasibleError:
    structural = replace(problem, budgets=())
    if not _feasible(structural):
        return _structural_error(problem)
    smallest: dict[str, float | None] = {}
    alone: set[str] = set()
    for b in problem.budgets:
        others = replace(problem, budgets=tuple(o for o in problem.budgets if o is not b))
        value = _smallest(others, b)
        if value is None:
            value = _smallest(structural, b)
            alone.add(b.name)
        smallest[b.name] = value
    binding = tuple(b.name for b in problem.budgets
                    if smallest[b.name] is not None and smallest[b.name] > b.limit)
    if not binding:
        binding = tuple(b.name for b in problem.budgets if b.name in alone)
        listed = ", ".join(binding)
        return InfeasibleError(f"budgets {listed} cannot all be met together, though each can on its own",
                               binding=binding, smallest=smallest)
    parts = []
    for b in problem.budgets:
        if b.name not in binding:
            continue
        context = "on its own" if b.name in alone else "with the other budgets"
        kind = "the largest layer needs" if b.mode == "peak" else "needs"
        parts.append(f"{b.name} {b.display(b.limit)} is too small: {kind} at least "
                     f"{b.display(smallest[b.name])} {context}")
    return InfeasibleError("no bit assignment meets the budgets: " + "; ".join(parts),
                           binding=binding, smallest=smallest)


def _structural_error(problem: Problem) -> InfeasibleError:
    without = []
    for tie in problem.ties:
        rest = tuple(t for t in problem.ties if t is not tie)
        if _feasible(replace(problem, budgets=(), ties=rest)):
            without.append(tie)
    culprits = without or list(problem.ties)
    named = "; ".join(f"{t.reason} {'+'.join(t.layers)} on {'/'.join(t.fields)}" for t in culprits)
    return InfeasibleError(f"no bit assignment meets the per-layer constraints: the candidates of the tied "
                           f"layers have no common value ({named})",
                           binding=tuple(f"{t.reason}:{'+'.join(t.layers)}" for t in culprits))


# ----------------------------------------------------------------------------------- sweeps

def pareto(problem: Problem, budget_kind: str, values: Iterable[float], *,
           mode: Literal["sum", "peak"] | None = None) -> list[ParetoPoint]:
    """Sweep a budget on quantity `budget_kind` over `values` (other budgets kept); the front.

    A budget of the problem on the same quantity is replaced. Infeasible values are skipped; of the
    rest, points that do not lower the objective compared with a smaller budget are dropped.
    """
    existing = next((b for b in problem.budgets if b.quantity == budget_kind), None)
    mode = mode or (existing.mode if existing is not None else "sum")
    kept = tuple(b for b in problem.budgets if b.quantity != budget_kind)
    name = existing.name if existing is not None else f"{budget_kind}_budget"
    points: list[ParetoPoint] = []
    for value in sorted(float(v) for v in values):
        budget = Budget(name=name, quantity=budget_kind, limit=value, mode=mode)
        swept = replace(problem, budgets=kept + (budget,))
        try:
            sol = solve(swept)
        except InfeasibleError:
            continue
        if points and sol.objective >= points[-1].objective:
            continue
        points.append(ParetoPoint(limit=value, used=sol.used[name], objective=sol.objective, choice=sol.choice))
    return points


def tradeoffs(problem: Problem, choices: Iterable[Mapping[str, Option]],
              quantities: Sequence[str] = ("weight_bits", "bops")) -> list[dict[str, Any]]:
    """Each choice as a row: its summed quantities, its predicted L2 (the objective) and config."""
    rows = []
    for choice in choices:
        row: dict[str, Any] = {q: total(problem, choice, q) for q in quantities}
        row["predicted_l2"] = float(sum(o.sensitivity for o in choice.values()))
        row["configuration"] = {name: o.label() for name, o in choice.items()}
        rows.append(row)
    return rows


def nondominated(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[Mapping[str, Any]]:
    """Rows not dominated in `keys` (all minimised): no other row is <= everywhere and < somewhere."""
    def dominates(a, b) -> bool:
        return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)

    unique = list({tuple(r[k] for k in keys): r for r in rows}.values())
    return [r for r in unique if not any(dominates(o, r) for o in unique if o is not r)]


def front(problem: Problem, sweeps: Mapping[str, Iterable[float]],
          quantities: Sequence[str] = ("weight_bits", "bops")) -> list[Mapping[str, Any]]:
    """The Pareto front in (quantities..., predicted L2) space from a grid of budgets.

    `sweeps` maps quantities to budget values (e.g. {"weight_bits": [...], "bops": [...]}); every
    combination is solved (sum budgets), and the non-dominated results are returned as rows of
    `tradeoffs`, sorted by the first quantity: the accuracy-memory-BOPs bubble chart's front.
    """
    kinds = list(sweeps)
    choices = []
    for combo in itertools.product(*(sorted(float(v) for v in sweeps[k]) for k in kinds)):
        budgets = tuple(Budget(name=f"{k}_budget", quantity=k, limit=v) for k, v in zip(kinds, combo))
        kept = tuple(b for b in problem.budgets if b.quantity not in kinds)
        try:
            choices.append(solve(replace(problem, budgets=kept + budgets)).choice)
        except InfeasibleError:
            continue
    rows = tradeoffs(problem, choices, quantities)
    best = nondominated(rows, [*quantities, "predicted_l2"])
    return sorted(best, key=lambda r: tuple(r[q] for q in quantities))


# ----------------------------------------------------------------------------------- measuring

def measure(graph: Graph, config: QuantConfig, calib: Mapping[str, np.ndarray] | np.ndarray,
            eval: Mapping[str, np.ndarray] | np.ndarray | None = None, *, mode: str = "int",
            batch_size: int = 128) -> dict[str, Any]:
    """Quantize a clone of `graph` by `config` and compare it with the float graph.

    calib: calibration data ({"x": ..., "y": ...} or one array per input); used to calibrate the
    clone when the graph carries no calibration statistics, and as evaluation data when `eval` is
    None. mode: how the quantized clone runs ("int" integer-exact, or "fake").
    Returns measured_l2 (mean over images of the L2 distance between float and quantized outputs,
    summed over outputs), measured_top1 and float_top1 (None without labels "y"), samples, mode.
    """
    from qcc.pass_manager import PassContext, run_pipeline

    calib = _as_data(calib)
    data = _as_data(eval) if eval is not None else calib
    quantized = graph.clone()
    pipeline = "quantize" if all("calibration" in n.attrs for n in graph.nodes) else "calibrate,quantize"
    ctx = PassContext(config={"calib": calib, "quant_config": config})
    run_pipeline(quantized, pipeline, ctx)
    labels = data.get("y")
    inputs = {k: np.asarray(v) for k, v in data.items() if k != "y"}
    count = _count(inputs)
    distances, hits_q, hits_f = [], 0, 0
    for start in range(0, count, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in inputs.items()}
        ref = _run(graph, batch, "float")
        out = _run(quantized, batch, mode)
        distances.append(sum(_per_image_l2(ref[k], out[k]) for k in ref))
        if labels is not None:
            first = next(iter(ref))
            y = np.asarray(labels)[start:start + batch_size]
            hits_f += int((ref[first].reshape(len(y), -1).argmax(1) == y).sum())
            hits_q += int((out[first].reshape(len(y), -1).argmax(1) == y).sum())
    l2 = float(np.concatenate(distances).mean()) if distances else 0.0
    top = (lambda hits: float(hits / count)) if labels is not None and count else (lambda hits: None)
    return {"measured_l2": l2, "measured_top1": top(hits_q), "float_top1": top(hits_f), "samples": count,
            "mode": mode}


def _as_data(data: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(data, np.ndarray):
        return {"x": data}
    if not isinstance(data, Mapping):
        raise QccError(f"data must be a dict of arrays (x, y), got {type(data).__name__}")
    return dict(data)


def _count(inputs: Mapping[str, np.ndarray]) -> int:
    counts = {int(v.shape[0]) for v in inputs.values()}
    if len(counts) != 1:
        raise QccError(f"evaluation arrays hold different numbers of samples: {sorted(counts)}")
    return counts.pop()


def _run(graph: Graph, batch: Mapping[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    from qcc.interp import run

    return run(graph, batch, mode=mode)


def _per_image_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.linalg.norm(diff.reshape(diff.shape[0], -1), axis=1)
