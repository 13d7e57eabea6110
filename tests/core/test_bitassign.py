"""qcc.bitassign and qcc.budgets: the integer program against brute force, budgets and their units."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.bitassign import (
    Budget,
    InfeasibleError,
    LayerChoices,
    Option,
    Problem,
    Tie,
    front,
    nondominated,
    pareto,
    smallest_feasible,
    solve,
    total,
    tradeoffs,
)
from qcc.budgets import (
    LayerSizes,
    activation_bits,
    bops,
    parse_budget,
    scheme_bits,
    weight_bits,
)
from qcc.errors import QccError

QUANTITIES = ("weight_bits", "act_bits", "bops")


# ----------------------------------------------------------------------------------- brute force

def _configs(problem: Problem):
    """Every configuration that meets the ties (budgets not checked)."""
    for combo in itertools.product(*(layer.options for layer in problem.layers)):
        choice = {layer.name: o for layer, o in zip(problem.layers, combo)}
        if all(len({tuple(getattr(choice[n], f) for f in tie.fields) for n in tie.layers}) <= 1
               for tie in problem.ties):
            yield choice


def _meets(problem: Problem, choice, budgets) -> bool:
    return all(total(problem, choice, b.quantity, b.mode) <= b.limit for b in budgets)


def _brute_optimum(problem: Problem):
    feasible = [c for c in _configs(problem) if _meets(problem, c, problem.budgets)]
    return min((sum(o.sensitivity for o in c.values()) for c in feasible), default=None)


def _brute_smallest(problem: Problem, budget: Budget, others) -> float | None:
    amounts = [total(problem, c, budget.quantity, budget.mode) for c in _configs(problem)
               if _meets(problem, c, others)]
    return min(amounts, default=None)


# ----------------------------------------------------------------------------------- instances

@st.composite
def problems(draw, with_ties: bool = True, min_budgets: int = 0):
    n_layers = draw(st.integers(2, 5))
    layers = []
    for li in range(n_layers):
        keys = draw(st.lists(st.tuples(st.sampled_from([2, 4, 8]), st.sampled_from([2, 4, 8])),
                             min_size=2, max_size=4, unique=True))
        options = []
        for wb, ab in keys:
            costs = {q: float(draw(st.integers(0, 50))) for q in QUANTITIES}
            sens = draw(st.integers(0, 1000)) / 100.0
            options.append(Option("uniform", wb, "uniform", ab, sens, costs))
        layers.append(LayerChoices(f"l{li}", tuple(options)))
    budgets = []
    for q in draw(st.lists(st.sampled_from(QUANTITIES), min_size=min_budgets, max_size=3, unique=True)):
        mode = draw(st.sampled_from(["sum", "peak"])) if q == "act_bits" else "sum"
        hi = 50 * n_layers if mode == "sum" else 50
        budgets.append(Budget(f"{q}_budget", q, float(draw(st.integers(0, hi))), mode))
    ties = []
    if with_ties and draw(st.booleans()):
        members = draw(st.lists(st.sampled_from([layer.name for layer in layers]), min_size=2, max_size=3,
                                unique=True))
        fields = draw(st.sampled_from([("a_bits",), ("w_bits", "a_bits")]))
        ties.append(Tie(tuple(members), fields))
    return Problem(tuple(layers), tuple(budgets), tuple(ties))


@settings(max_examples=100, deadline=None)
@given(problems())
def test_ilp_optimum_equals_brute_force(problem):
    expected = _brute_optimum(problem)
    try:
        sol = solve(problem)
    except InfeasibleError:
        structural = _brute_optimum(Problem(problem.layers, (), problem.ties))
        assert expected is None or structural is None
        return
    assert expected is not None
    assert sol.objective == pytest.approx(expected, abs=1e-9)
    assert _meets(problem, sol.choice, problem.budgets)  # never violates a budget
    for tie in problem.ties:
        assert len({tuple(getattr(sol.choice[n], f) for f in tie.fields) for n in tie.layers}) == 1
    for b in problem.budgets:
        assert sol.used[b.name] == total(problem, sol.choice, b.quantity, b.mode) <= b.limit


@settings(max_examples=100, deadline=None)
@given(problems(min_budgets=1))
def test_infeasible_budgets_name_the_smallest_feasible_value(problem):
    if _brute_optimum(problem) is not None:
        return
    with pytest.raises(InfeasibleError) as info:
        solve(problem)
    err = info.value
    if _brute_optimum(Problem(problem.layers, (), problem.ties)) is None:  # the tie itself is impossible
        assert "per-layer constraints" in str(err) and err.binding[0].startswith("share:")
        return
    assert err.binding
    for b in problem.budgets:
        others = [o for o in problem.budgets if o is not b]
        expected = _brute_smallest(problem, b, others)
        if expected is None:
            expected = _brute_smallest(problem, b, [])
        assert err.smallest[b.name] == expected
        if b.name in err.binding and expected is not None and expected > b.limit:
            assert b.display(expected) in str(err)
    binding = {b.name for b in problem.budgets if err.smallest[b.name] > b.limit}
    assert binding == set(err.binding) or not binding


def test_infeasible_message_names_budget_and_value_in_its_units():
    opts = (Option("uniform", 8, "uniform", 8, 0.0, {"weight_bits": 8e6}),
            Option("uniform", 4, "uniform", 8, 1.0, {"weight_bits": 4e6}))
    budget_text = parse_budget("64KB", "memory", "weight_budget")
    problem = Problem((LayerChoices("conv", opts),),
                      (Budget("weight_budget", "weight_bits", budget_text.value, display=budget_text.format),))
    with pytest.raises(InfeasibleError, match=r"weight_budget 64KB \(512000 bits\) is too small: needs at least "
                                              r"500KB \(4000000 bits\)") as info:
        solve(problem)
    assert info.value.binding == ("weight_budget",)
    assert info.value.smallest == {"weight_budget": 4e6}
    assert smallest_feasible(problem, problem.budgets[0]) == 4e6


def test_peak_budget_restricts_every_layer():
    a = (Option("uniform", 8, "uniform", 8, 0.0, {"act_bits": 800}),
         Option("uniform", 8, "uniform", 4, 1.0, {"act_bits": 400}))
    b = (Option("uniform", 8, "uniform", 8, 0.0, {"act_bits": 100}),
         Option("uniform", 8, "uniform", 2, 5.0, {"act_bits": 25}))
    problem = Problem((LayerChoices("a", a), LayerChoices("b", b)), (Budget("act", "act_bits", 500, "peak"),))
    sol = solve(problem)
    assert sol.choice["a"].a_bits == 4 and sol.choice["b"].a_bits == 8  # sum 500 would be exceeded, peak is not
    assert sol.used["act"] == 400
    with pytest.raises(InfeasibleError, match="the largest layer needs at least 400") as info:
        solve(Problem(problem.layers, (Budget("act", "act_bits", 399, "peak"),)))
    assert info.value.smallest == {"act": 400}


def test_conflicting_ties_are_named():
    a = (Option("uniform", 8, "uniform", 8, 0.0, {}),)
    b = (Option("uniform", 8, "uniform", 4, 0.0, {}),)
    problem = Problem((LayerChoices("a", a), LayerChoices("b", b)), ties=(Tie(("a", "b"), ("a_bits",)),))
    with pytest.raises(InfeasibleError, match=r"share a\+b on a_bits"):
        solve(problem)


def test_problem_rejects_bad_input():
    with pytest.raises(QccError, match="has no candidate bit-widths"):
        Problem((LayerChoices("a", ()),))
    opt = Option("uniform", 8, "uniform", 8, 0.0, {})
    with pytest.raises(QccError, match="unknown layer"):
        Problem((LayerChoices("a", (opt,)),), ties=(Tie(("a", "zz")),))
    with pytest.raises(QccError, match="not every option has a cost 'bops'"):
        Problem((LayerChoices("a", (opt,)),), (Budget("b", "bops", 1.0),))
    with pytest.raises(QccError, match="fields must be among"):
        Tie(("a", "b"), ("colour",))


# ----------------------------------------------------------------------------------- sweeps

def _sweep_problem() -> Problem:
    layers = []
    for li, scale in enumerate((1.0, 3.0, 0.5)):
        opts = tuple(Option("uniform", b, "uniform", 8, scale / b**2,
                            {"weight_bits": 100.0 * b, "bops": 1000.0 * b * 8, "act_bits": 8.0})
                     for b in (2, 4, 8))
        layers.append(LayerChoices(f"l{li}", opts))
    return Problem(tuple(layers))


def test_pareto_front_is_monotone_and_feasible():
    problem = _sweep_problem()
    points = pareto(problem, "weight_bits", [100, 600, 900, 1200, 1500, 2400, 5000])
    assert [p.limit for p in points][0] == 600  # 100 is infeasible (needs 600)
    assert all(p.used <= p.limit for p in points)
    assert all(a.objective > b.objective for a, b in zip(points, points[1:]))
    assert points[-1].objective == pytest.approx(sum(s / 64 for s in (1.0, 3.0, 0.5)))
    rows = tradeoffs(problem, [p.choice for p in points])
    assert [r["weight_bits"] for r in rows] == [p.used for p in points]
    assert rows[0]["configuration"] == {"l0": "2/8", "l1": "2/8", "l2": "2/8"}


def test_front_in_weight_bops_l2_space_is_nondominated():
    problem = _sweep_problem()
    rows = front(problem, {"weight_bits": [600, 1000, 1400, 2400], "bops": [48e3, 80e3, 200e3]})
    assert rows
    keys = ("weight_bits", "bops", "predicted_l2")
    for r in rows:
        assert not any(all(o[k] <= r[k] for k in keys) and any(o[k] < r[k] for k in keys) for o in rows)
    assert nondominated([{"a": 1, "b": 2}, {"a": 2, "b": 2}, {"a": 0, "b": 3}], ["a", "b"]) == \
        [{"a": 1, "b": 2}, {"a": 0, "b": 3}]


# ----------------------------------------------------------------------------------- budgets

@pytest.mark.parametrize("text, kind, value", [
    ("1Mb", "memory", 1e6), ("64KB", "memory", 512e3), ("64kB", "memory", 512e3), ("2G", "bops", 2e9),
    ("1.5Mb", "memory", 1.5e6), ("1000", "memory", 1000.0), ("2GOPs", "bops", 2e9), ("8B", "memory", 64.0),
])
def test_budget_strings(text, kind, value):
    assert parse_budget(text, kind).value == value


@pytest.mark.parametrize("text, kind, message", [
    ("12Q", "memory", "unknown unit 'Q'"),
    ("-1Mb", "memory", "negative"),
    ("1M", "memory", "say b .bits. or B .bytes."),
    ("2Gb", "bops", "takes no unit"),
    ("lots", "memory", "is not a budget"),
    ("0b", "memory", "positive"),
])
def test_bad_budget_strings(text, kind, message):
    with pytest.raises(QccError, match=message):
        parse_budget(text, kind, "weight_budget")


def test_budget_format_rounds_up_in_the_users_unit():
    kb = parse_budget("64KB", "memory")
    assert kb.format(512001) == "64.01KB (512001 bits)"
    assert parse_budget("1Mb", "memory").format(1234449) == "1.235Mb (1234449 bits)"
    assert parse_budget("2G", "bops").format(3e9) == "3G (3000000000 BOPs)"


def test_layer_costs():
    sizes = LayerSizes("c", weight_elements=144, weight_tables=16, fixed_bits=16 * 32, input_elements=64, macs=9216)
    assert weight_bits(sizes, "uniform", 4) == 144 * 4 + 512
    assert weight_bits(sizes, "kmeans-lloyd", 3, centroid_bits=8) == 144 * 3 + 512 + 16 * 8 * 8
    assert weight_bits(sizes, "kmeans-lloyd", 4, centroid_bits=8) == 144 * 4 + 512 + 16 * 9 * 8  # 9 per table
    assert weight_bits(sizes, "float", 8) == 144 * 32 + 512
    assert activation_bits(sizes, "bipolar", 8) == 64
    assert bops(sizes, "uniform", 4, "uniform", 2) == 9216 * 8
    assert scheme_bits("float", 3) == 32 and scheme_bits("bipolar", 8) == 1
