"""assign-bits: budgets, per-layer constraints, target hooks, measured accuracy, and error paths."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcc.bitassign import front, measure, pareto
from qcc.budgets import layer_sizes, parse_budget, weight_bits
from qcc.config import LayerConfig, QuantConfig
from qcc.errors import QccError
from qcc.examples import MODEL, load_split
from qcc.frontend import load_model
from qcc.frontend.qir import parse_graph, print_graph
from qcc.ir.graph import Graph, Node
from qcc.pass_manager import PassContext, get_pass_class, parse_pipeline, run_pipeline
from qcc.passes.assign_bits import AssignBitsPass, residual_groups
from qcc.passes.quantize import LAYER_OPS, output_axis
from qcc.report import summarize
from qcc.target import Artifacts, CostReport, LayerCost, LegalBits, Target
from qcc.testing import GraphOptions, graph_inputs, graphs

LAYERS = ("/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/conv4/Conv", "/fc/Gemm")
BITS = (2, 3, 4, 6, 8)


# ----------------------------------------------------------------------------------- fixtures

def _entry(l2: float) -> dict:
    return {"output_l2": l2, "layers_l2": {}, "top1": max(0.0, 0.99 - l2 / 10), "top5": None}


def _annotate(graph: Graph, bits=BITS, w_schemes=("uniform",), a_schemes=("uniform",)) -> None:
    """A hand-made sensitivity table following the contract: layer k is (k + 1) times as sensitive
    in its weights as the first layer; activations are half as sensitive; L2 ~ 4^-bits."""
    layers = [n for n in graph.nodes if n.op in LAYER_OPS]
    for k, node in enumerate(layers):
        w_scale, a_scale = 40.0 * (k + 1), 20.0 * (len(layers) - k)
        node.attrs["sensitivity"] = {
            "weights": {s: {str(b): _entry(w_scale * 4.0**-b * (1.2 if s != "uniform" else 1.0)) for b in bits}
                        for s in w_schemes},
            "activations": {s: {str(b): _entry(a_scale * 4.0**-b) for b in bits} for s in a_schemes},
        }
    graph.attrs["sensitivity"] = {"samples": 8, "metric": "output_l2", "float_top1": 0.99, "float_top5": None,
                                  "bits": list(bits)}


@pytest.fixture(scope="module")
def data():
    (xc, yc), (xe, ye) = load_split("calib"), load_split("eval")
    return {"x": xc, "y": yc}, {"x": xe, "y": ye}


@pytest.fixture(scope="module")
def calibrated(data):
    g = load_model(MODEL)
    run_pipeline(g, "fold-bn,calibrate", PassContext(config={"calib": data[0]}))
    _annotate(g)
    return g


def _run(graph: Graph, pipeline: str, **config) -> tuple[Graph, PassContext]:
    g = graph.clone()
    ctx = PassContext(config=dict(config))
    run_pipeline(g, pipeline, ctx)
    return g, ctx


def _layer_rows(g: Graph):
    return [r for r in summarize(g).layers if r.op in LAYER_OPS]


# ----------------------------------------------------------------------------------- the example

def test_tight_weight_budget_is_not_uniform_and_measured(calibrated, data):
    calib, evals = data
    g, ctx = _run(calibrated, "assign-bits{weight-budget=60kb},quantize", calib=calib, eval=evals)
    record = g.attrs["bit_assignment"]
    chosen = {(c["w_bits"], c["a_bits"]) for c in record["layers"].values()}
    assert len(chosen) > 1  # not uniform
    assert record["budgets"]["weight_budget"]["used"] <= 60e3
    assert record["budgets"]["weight_budget"]["text"] == "60kb"
    # the cost model is the report's: the quantized graph's layer totals are what the pass predicted
    rows = _layer_rows(g)
    assert sum(r.weight_bits_total for r in rows) == record["totals"]["weight_bits"]
    assert sum(r.bops for r in rows) == record["totals"]["bops"]
    for r in rows:
        assert (r.w_bits, r.a_bits) == (record["layers"][r.name]["w_bits"], record["layers"][r.name]["a_bits"])
    # measured next to predicted: on the eval split, the integer path
    assert record["measure_mode"] == "int" and record["measure_samples"] == len(evals["x"])
    assert 0.9 <= record["measured_top1"] <= 1.0 and record["float_top1"] > 0.98
    assert record["measured_l2"] > 0 and record["predicted_l2"] == pytest.approx(record["objective"])
    assert isinstance(ctx.config["quant_config"], QuantConfig)
    again = parse_graph(print_graph(g), {c.name: c.data for c in g.constants})
    assert again.attrs["bit_assignment"] == record  # prints and parses


def test_apply_equals_pipeline_with_quantize(calibrated, data):
    g1, _ = _run(calibrated, "assign-bits{bops-budget=20M,measure=false},quantize", calib=data[0])
    g2, _ = _run(calibrated, "assign-bits{bops-budget=20M,measure=false,apply=true}", calib=data[0])
    assert print_graph(g1) == print_graph(g2)
    assert g1.attrs["bit_assignment"]["budgets"]["bops_budget"]["used"] <= 20e6


def test_measure_matches_a_manual_run(calibrated, data):
    config = QuantConfig(default=LayerConfig(w_bits=4, a_bits=4, w_scheme="uniform", a_scheme="uniform",
                                             per_channel=True), layers={})
    result = measure(calibrated, config, data[0], mode="fake")
    q, _ = _run(calibrated, "quantize{w_bits=4,a_bits=4}")
    from qcc.interp import run

    ref = run(calibrated, {"x": data[0]["x"]})["logits"]
    out = run(q, {"x": data[0]["x"]}, mode="fake")["logits"]
    assert result["measured_l2"] == pytest.approx(np.linalg.norm(ref - out, axis=1).mean())
    assert result["measured_top1"] == pytest.approx((out.argmax(1) == data[0]["y"]).mean())


def test_kmeans_chosen_when_cheapest(calibrated, data):
    """Codebook tables are charged at their full size (min(2^bits, elements per table)): an upper bound on
    the report's count, which drops centroids k-means leaves empty, so a budget is never exceeded."""
    g = calibrated.clone()
    _annotate(g, bits=(2, 3), w_schemes=("kmeans-lloyd",))
    g, _ = _run(g, "assign-bits{measure=false,apply=true}", calib=data[0])
    assert all(c["w_scheme"] == "kmeans-lloyd" for c in g.attrs["bit_assignment"]["layers"].values())
    predicted = g.attrs["bit_assignment"]["totals"]["weight_bits"]
    assert 0.99 * predicted <= sum(r.weight_bits_total for r in _layer_rows(g)) <= predicted


@pytest.mark.parametrize("mode", ["peak", "sum"])
def test_activation_budget(calibrated, data, mode):
    g, _ = _run(calibrated, f"assign-bits{{act-budget=10kb,act-mode={mode},measure=false,apply=true}}",
                calib=data[0])
    inputs = [layer_sizes(n).input_elements * g.attrs["bit_assignment"]["layers"][n.name]["a_bits"]
              for n in g.nodes if n.op in LAYER_OPS]
    assert (max(inputs) if mode == "peak" else sum(inputs)) <= 10e3
    assert g.attrs["bit_assignment"]["totals"][f"act_bits_{mode}"] == (max(inputs) if mode == "peak" else sum(inputs))


def test_pareto_sweep_on_the_example(calibrated):
    problem = AssignBitsPass(bops_budget="50M").problem(calibrated, PassContext())
    points = pareto(problem, "weight_bits", [20e3, 30e3, 40e3, 60e3, 80e3, 120e3])
    assert len(points) >= 3 and all(p.used <= p.limit for p in points)
    assert all(a.objective > b.objective for a, b in zip(points, points[1:]))
    rows = front(problem, {"weight_bits": [30e3, 60e3, 120e3], "bops": [5e6, 20e6, 80e6]})
    assert rows and all({"weight_bits", "bops", "predicted_l2", "configuration"} <= set(r) for r in rows)


# ----------------------------------------------------------------------------------- constraints

def test_pins_and_first_last(calibrated):
    g, _ = _run(calibrated, 'assign-bits{weight-budget=40kb,pin=["/conv2/Conv=2/*"],keep-first-last=true,'
                            'first-bits=8,last-bits=6,measure=false}')
    layers = g.attrs["bit_assignment"]["layers"]
    assert layers["/conv2/Conv"]["w_bits"] == 2
    assert layers["/conv1/Conv"]["w_bits"] >= 8 and layers["/conv1/Conv"]["a_bits"] >= 8
    assert layers["/fc/Gemm"]["w_bits"] >= 6 and layers["/fc/Gemm"]["a_bits"] >= 6


def test_share_and_residual_ties(calibrated):
    assert residual_groups(calibrated) == [("/conv3/Conv", "/conv4/Conv")]
    g, _ = _run(calibrated, 'assign-bits{weight-budget=40kb,share=["/conv1/Conv+/fc/Gemm"],share-residual=true,'
                            'measure=false}')
    layers = g.attrs["bit_assignment"]["layers"]
    assert layers["/conv3/Conv"]["a_bits"] == layers["/conv4/Conv"]["a_bits"]
    assert (layers["/conv1/Conv"]["w_bits"], layers["/conv1/Conv"]["a_bits"]) == \
        (layers["/fc/Gemm"]["w_bits"], layers["/fc/Gemm"]["a_bits"])


class _FakeTarget(Target):
    """Executes 2/4/8-bit weights and 4/8-bit activations; energy = MACs x w x a / 1000 + weight bits / 100."""

    name = "fake"
    budget_metric = "energy_pj"

    def legal_bits(self, node: Node) -> LegalBits:
        return LegalBits(weight_bits=(2, 4, 8), activation_bits=(4, 8), schemes=("uniform",))

    @property
    def default_pipeline(self) -> str:
        return "fold-bn"

    def cost(self, graph: Graph) -> CostReport:
        rows = [LayerCost(r.name, r.op, {"energy_pj": r.bops / 1000 + r.weight_bits_total / 100})
                for r in summarize(graph).layers if r.op in LAYER_OPS]
        return CostReport(tuple(rows), {"energy_pj": sum(r.fields["energy_pj"] for r in rows)}, {"energy_pj": "pJ"})

    def lower(self, graph: Graph, out_dir: Path) -> Artifacts:
        raise NotImplementedError

    def simulate(self, artifacts: Artifacts, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def test_target_legal_bits_and_additive_cost(calibrated, data):
    target = _FakeTarget()
    full = target.cost(calibrated).totals["energy_pj"]  # everything float: 32 bits
    budget = full / 40
    g, _ = _run(calibrated, f"assign-bits{{target-budget={budget},measure=false,apply=true}}", target=target,
                calib=data[0])
    record = g.attrs["bit_assignment"]
    assert all(c["w_bits"] in (2, 4, 8) and c["a_bits"] in (4, 8) for c in record["layers"].values())
    measured = target.cost(g).totals["energy_pj"]
    assert measured == pytest.approx(record["totals"]["target_energy_pj"])
    assert measured <= budget
    assert record["budgets"]["target_budget"]["unit"] == "energy_pj"


def test_target_without_the_metric_is_an_error(calibrated):
    with pytest.raises(QccError, match="reports no 'latency_ns' for the layer"):
        _run(calibrated, "assign-bits{target-budget=10.0,target-metric=latency_ns,measure=false}",
             target=_FakeTarget())


def test_infeasible_budget_names_it_and_the_smallest_value(calibrated):
    smallest = sum(weight_bits(layer_sizes(n, output_axis(n)), "uniform", 2) for n in calibrated.nodes
                   if n.op in LAYER_OPS)
    shown = parse_budget("10kb", "memory").format(smallest)
    with pytest.raises(QccError) as info:
        _run(calibrated, "assign-bits{weight-budget=10kb,bops-budget=1G}")
    message = str(info.value)
    assert "pass 'assign-bits' failed" in message
    assert f"weight_budget 10kb (10000 bits) is too small: needs at least {shown} with the other budgets" in message
    assert "bops_budget" not in message


# ----------------------------------------------------------------------------------- property

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_graphs_never_exceed_the_budgets(data):
    g = data.draw(graphs(GraphOptions(annotate=False, max_layers=4)))
    x = data.draw(graph_inputs(g))
    layers = [n for n in g.nodes if n.op in LAYER_OPS]
    _annotate(g, bits=(2, 4, 8))
    low = sum(weight_bits(layer_sizes(n, output_axis(n)), "uniform", 2) for n in layers)
    high = sum(weight_bits(layer_sizes(n, output_axis(n)), "uniform", 8) for n in layers)
    budget = data.draw(st.integers(low, high))
    ctx = PassContext(config={"calib": x})
    run_pipeline(g, f"calibrate,assign-bits{{weight-budget={budget},share-residual=true,measure=false,apply=true}}",
                 ctx)
    record = g.attrs["bit_assignment"]
    rows = _layer_rows(g)
    assert sum(r.weight_bits_total for r in rows) == record["totals"]["weight_bits"] <= budget
    assert sum(r.bops for r in rows) == record["totals"]["bops"]
    for group in residual_groups(g):
        assert len({record["layers"][name]["a_bits"] for name in group}) == 1


# ----------------------------------------------------------------------------------- the real table

def test_pipeline_with_annotate_sensitivity(data):
    try:
        get_pass_class("annotate-sensitivity")
    except QccError:
        pytest.skip("annotate-sensitivity is not available")
    g = load_model(MODEL)
    ctx = PassContext(config={"calib": {"x": data[0]["x"][:64], "y": data[0]["y"][:64]}})
    run_pipeline(g, "fold-bn,calibrate,annotate-sensitivity{workers=1,bits=[2,4,8]},"
                    "assign-bits{weight-budget=40kb,measure-mode=fake},quantize", ctx)
    record = g.attrs["bit_assignment"]
    assert len({(c["w_bits"], c["a_bits"]) for c in record["layers"].values()}) > 1
    assert record["measured_top1"] is not None and record["budgets"]["weight_budget"]["used"] <= 40e3


# ----------------------------------------------------------------------------------- errors

def test_budgets_with_units_parse_unquoted_in_pipelines():
    (p,) = parse_pipeline("assign-bits{weight-budget=1.5Mb,act-budget=64KB,bops-budget=2G}")
    assert (p.weight_budget, p.act_budget, p.bops_budget) == ("1.5Mb", "64KB", "2G")
    assert parse_pipeline(p.spec()) == [p]
    (c,) = parse_pipeline("calibrate{percentile=9.999e1}")  # exponents stay numbers
    assert c.percentile == 99.99


@pytest.mark.parametrize("pipeline, message", [
    ("assign-bits{weight-budget=12Q}", "weight-budget '12Q': unknown unit 'Q'"),
    ("assign-bits{weight-budget=-1Mb}", "weight-budget '-1Mb' is negative"),
    ("assign-bits{bops-budget=2Gb}", "takes no unit"),
    ('assign-bits{pin=["/conv1/Conv=4"]}', "is not 'layer=w_bits/a_bits'"),
    ('assign-bits{pin=["/conv1/Conv=4/x"]}', "bits must be 1 to 32 or"),
    ('assign-bits{share=["/conv1/Conv"]}', "is not 'layer1\\+layer2"),
    ("assign-bits{first-bits=0}", "first-bits must be an integer from 1 to 32"),
    ("assign-bits{target-budget=-1.0}", "target-budget must be positive"),
])
def test_bad_options(pipeline, message):
    with pytest.raises(QccError, match=message):
        parse_pipeline(pipeline)


@pytest.mark.parametrize("pipeline, message", [
    ('assign-bits{pin=["/conv9/Conv=4/4"]}', "pin '/conv9/Conv=4/4': unknown layer '/conv9/Conv'; did you mean"),
    ('assign-bits{pin=["/relu1/Relu=4/4"]}', "node '/relu1/Relu' is not a layer"),
    ('assign-bits{pin=["/conv1/Conv=5/4"]}', "pin '/conv1/Conv=5/4' matches none of the layer's candidates"),
    ('assign-bits{share=["/conv1/Conv+/conv7/Conv"]}', "share .*unknown layer '/conv7/Conv'"),
    ("assign-bits{target-budget=3.0}", "target-budget needs a target"),
    ("assign-bits{keep-first-last=true,first-bits=16}", "no candidate has at least first-bits=16"),
])
def test_bad_constraints_name_the_layer(calibrated, pipeline, message):
    with pytest.raises(QccError, match=message):
        _run(calibrated, pipeline)


def test_missing_sensitivity_says_run_annotate_sensitivity():
    g = load_model(MODEL)
    with pytest.raises(QccError, match=r"pass 'assign-bits' failed at node '/conv1/Conv': layer has no sensitivity "
                                       r"table; run annotate-sensitivity first"):
        run_pipeline(g, "assign-bits")


def test_metric_top1_needs_labels(calibrated):
    g = calibrated.clone()
    g.attrs["sensitivity"] = {**g.attrs["sensitivity"], "float_top1": None}
    with pytest.raises(QccError, match="metric=top1 needs"):
        run_pipeline(g, "assign-bits{metric=top1}")
    g2, _ = _run(calibrated, "assign-bits{metric=top1,weight-budget=40kb,measure=false}")
    assert g2.attrs["bit_assignment"]["metric"] == "top1"


def test_target_legal_bits_that_exclude_everything(calibrated):
    class _Narrow(_FakeTarget):
        def legal_bits(self, node):
            return LegalBits(weight_bits=(5,), activation_bits=(5,))

    with pytest.raises(QccError, match="target 'fake' executes none of the candidates"):
        _run(calibrated, "assign-bits{measure=false}", target=_Narrow())


def test_rerun_is_unchanged(calibrated):
    g, ctx = _run(calibrated, "assign-bits{weight-budget=40kb,measure=false}")
    assert not AssignBitsPass(weight_budget="40kb", measure=False)(g, ctx).changed


def test_target_budget_without_a_metric_is_a_clear_error(calibrated):
    class NoMetric(_FakeTarget):
        budget_metric = None

    with pytest.raises(QccError, match="target 'fake' has no default budget metric; give target-metric"):
        _run(calibrated, "assign-bits{target-budget=10.0,measure=false}", target=NoMetric())
