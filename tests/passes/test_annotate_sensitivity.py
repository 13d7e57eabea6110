"""annotate-sensitivity: cached downstream evaluation equals naive full re-runs exactly, every executor
writes the same table, group mode and labels work, the example gets a full (mostly monotone) table,
bad options and missing calibration fail clearly, Ctrl-C leaves no partial attributes, and the
tables print and parse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.errors import PassError, QccError
from qcc.examples import MODEL, accuracy, load_split
from qcc.frontend import load_model
from qcc.frontend.qir import parse_graph, print_graph
from qcc.interp import run
from qcc.ir import Graph, TensorType
from qcc.pass_manager import PassContext, parse_pipeline, run_pipeline
from qcc.passes.annotate_sensitivity import AnnotateSensitivityPass
from qcc.progress import bar, shown, track
from qcc.quantizers import quantize_weights
from qcc.sensitivity import (
    Config,
    Sweep,
    group_table,
    layer_variables,
    run_sweep,
    sensitivity_of,
    table,
)
from qcc.testing import GraphOptions, graphs

CONV = ("/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/conv4/Conv", "/fc/Gemm")


def _example(samples: int | None = None, labels: bool = True) -> tuple[Graph, PassContext]:
    x, y = load_split("calib")
    if samples is not None:
        x, y = x[:samples], y[:samples]
    g = load_model(MODEL)
    ctx = PassContext(config={"calib": {"x": x, "y": y} if labels else {"x": x}})
    run_pipeline(g, "calibrate", ctx)
    return g, ctx


def _two_gemms() -> Graph:
    """x[N,4] -> Gemm fc1 (3x4) -> Relu -> Gemm fc2 (2x3) -> y."""
    rng = np.random.default_rng(3)
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 4)))
    w1 = g.add_constant("w1", rng.normal(0, 0.7, (3, 4)).astype(np.float32))
    w2 = g.add_constant("w2", rng.normal(0, 0.7, (2, 3)).astype(np.float32))
    h = g.add_node("Gemm", [x, w1], attrs={"transB": 1}, name="fc1").output
    r = g.add_node("Relu", [h], name="relu").output
    g.set_outputs(g.add_node("Gemm", [r, w2], attrs={"transB": 1}, name="fc2", output_names=["y"]).outputs)
    return g


def _sweep(graph: Graph, ctx: PassContext, pipeline: str) -> Graph:
    run_pipeline(graph, pipeline, ctx)
    return graph


# ------------------------------------------------------------------------------ exactness
def _configs(sweep: Sweep, schemes: dict[str, tuple[str, ...]], bits: tuple[int, ...]) -> list[Config]:
    layers = sweep.layers()
    out = [Config((n.name,), v, s, b) for n in layers for v in layer_variables(n) for s in schemes[v] for b in bits]
    for v in ("weights", "activations"):
        members = tuple(n.name for n in layers if v in layer_variables(n))
        if len(members) > 1:
            out += [Config(members, v, "uniform", b, group="+".join(members)) for b in bits]
    return out


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_cached_equals_naive_full_rerun(data):
    """Every entry (distances at every downstream layer and the output, top-1/top-5) is the same float."""
    symbolic = data.draw(st.booleans(), label="symbolic batch")
    g = data.draw(graphs(GraphOptions(annotate=False, max_layers=4, max_channels=4, max_side=8,
                                      symbolic_batch=symbolic)))
    samples = 5 if symbolic else 3
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = rng.uniform(-2, 2, (samples, *g.inputs[0].type.shape[1:])).astype(np.float32)
    classes = int(g.outputs[0].type.shape[1])
    y = rng.integers(0, classes, samples)
    run_pipeline(g, "calibrate", PassContext(config={"calib": {"x": x}}))
    step = 2 if symbolic else 1  # uneven last batch when symbolic
    sweep = Sweep(g, {"x": x}, [(s, min(s + step, samples)) for s in range(0, samples, step)], labels=y)
    schemes = {"weights": ("uniform", "kmeans-linear"), "activations": ("uniform", "fixed")}
    configs = _configs(sweep, schemes, (2, 5))
    cached = run_sweep(sweep, configs)
    naive = run_sweep(sweep, configs, naive=True)
    assert cached == naive
    assert all(e["top1"] is not None and e["top5"] >= e["top1"] for e in cached)


def test_entry_matches_a_hand_computation():
    """fc2's 2-bit weights: mean over samples of ||y_float - y_quant||, by plain numpy."""
    g = _two_gemms()
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    ctx = PassContext(config={"calib": {"x": x}})
    _sweep(g, ctx, "calibrate,annotate-sensitivity{bits=[2],workers=1,batch-size=3}")
    w1, w2 = (g.node(n).inputs[1].data for n in ("fc1", "fc2"))
    _, w2q = quantize_weights(w2, "uniform", 2, axis=0)
    hidden = np.maximum(x @ w1.T, 0)
    expected = np.mean(np.linalg.norm(hidden @ w2.T - hidden @ w2q.T, axis=1))
    entry = table(g)["fc2"]["weights"]["uniform"]["2"]
    assert entry["output_l2"] == pytest.approx(expected, rel=1e-5)
    assert entry["layers_l2"] == {"fc2": entry["output_l2"]}
    assert set(table(g)["fc1"]["weights"]["uniform"]["2"]["layers_l2"]) == {"fc1", "fc2"}


# ------------------------------------------------------------------------------ executors
def test_process_pool_inline_and_dask_give_identical_tables():
    """A 2-process Dask LocalCluster (processes=True), reached by its address, and `cluster=local`."""
    distributed = pytest.importorskip("dask.distributed")
    import logging

    pipeline = "annotate-sensitivity{{bits=[2,8],samples=64,batch-size=32,{}}}"
    texts = {}
    for label, options in (("inline", "workers=1"), ("pool", "workers=2")):
        g, ctx = _example()
        texts[label] = print_graph(_sweep(g, ctx, pipeline.format(options)))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        g, ctx = _example()
        texts["dask"] = print_graph(_sweep(g, ctx, pipeline.format(f'cluster="{cluster.scheduler_address}"')))
    g, ctx = _example()
    texts["dask local"] = print_graph(_sweep(g, ctx, pipeline.format('cluster=local,workers=2,layers=["/fc/Gemm"]')))
    assert texts["pool"] == texts["inline"] == texts["dask"]
    assert table(parse_graph(texts["dask local"], {c.name: c.data for c in g.constants}))["/fc/Gemm"] == \
        table(parse_graph(texts["inline"], {c.name: c.data for c in g.constants}))["/fc/Gemm"]


# ------------------------------------------------------------------------------ the example
def test_example_full_table_labels_and_monotone_bits():
    g, ctx = _example()
    x, y = ctx.config["calib"]["x"], ctx.config["calib"]["y"]
    _sweep(g, ctx, "annotate-sensitivity{workers=2}")
    info = g.attrs["sensitivity"]
    assert info["samples"] == len(x) and info["metric"] == "output_l2" and info["bits"] == [2, 3, 4, 6, 8]
    assert info["float_top1"] == accuracy(run(g, {"x": x})["logits"], y)
    assert info["float_top5"] >= info["float_top1"]
    rows = table(g)
    assert list(rows) == list(CONV)
    exceptions = []
    for name, row in rows.items():
        for variable in ("weights", "activations"):
            series = row[variable]["uniform"]
            assert list(series) == ["2", "3", "4", "6", "8"]
            l2 = [series[b]["output_l2"] for b in series]
            if any(a < b for a, b in zip(l2, l2[1:])):
                exceptions.append((name, variable, l2))
            assert series["8"]["top1"] >= info["float_top1"] - 0.02  # 8 bits of one variable barely matters
            assert series["2"]["top5"] >= series["2"]["top1"]
            downstream = CONV[CONV.index(name):]
            assert list(series["4"]["layers_l2"]) == list(downstream)
    assert len(exceptions) <= len(rows) * 2 // 5, exceptions  # "most" series are monotone
    assert min(r["weights"]["uniform"]["2"]["top1"] for r in rows.values()) < info["float_top1"] - 0.05


def test_group_mode():
    g, ctx = _example(samples=64)
    _sweep(g, ctx, 'annotate-sensitivity{bits=[2,8],workers=1,layers=["/conv2/Conv"],'
                   'groups=["/conv2/Conv","/conv1/Conv+/conv2/Conv"]}')
    info = g.attrs["sensitivity"]
    assert info["group"] == ["/conv2/Conv", "/conv1/Conv+/conv2/Conv"]
    groups = group_table(g)
    assert groups["/conv2/Conv"] == table(g)["/conv2/Conv"]  # a group of one is that layer
    pair = groups["/conv1/Conv+/conv2/Conv"]["weights"]["uniform"]["2"]
    assert list(pair["layers_l2"]) == list(CONV)
    alone = table(g)["/conv2/Conv"]["weights"]["uniform"]["2"]
    assert pair["output_l2"] != alone["output_l2"]
    assert list(table(g)) == ["/conv2/Conv"]


def test_schemes_per_variable_and_bipolar_is_one_bit():
    g = _two_gemms()
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    _sweep(g, PassContext(config={"calib": {"x": x}}),
           'calibrate,annotate-sensitivity{bits=[3],schemes=[uniform,kmeans-linear,kquantile,bipolar,float],workers=1}')
    row = table(g)["fc1"]
    assert set(row["weights"]) == {"uniform", "kmeans-linear", "kquantile", "bipolar"}
    assert set(row["activations"]) == {"uniform", "kquantile", "bipolar"}
    assert list(row["weights"]["bipolar"]) == ["1"] and list(row["weights"]["uniform"]) == ["3"]


def test_layer_without_constant_weights_has_only_activations():
    g = Graph("mm")
    a = g.add_input("a", TensorType(("N", 2, 3)))
    b = g.add_input("b", TensorType(("N", 3, 2)))
    g.set_outputs(g.add_node("MatMul", [a, b], name="mm").outputs)
    assert layer_variables(g.node("mm")) == ("activations",)


def test_layer_subset_replaces_a_previous_table():
    g, ctx = _example(samples=32)
    p = AnnotateSensitivityPass(bits=(2,), workers=1)
    assert run_pipeline(g, [p], ctx)
    assert not run_pipeline(g, [p], ctx)  # same table again: unchanged
    assert run_pipeline(g, [AnnotateSensitivityPass(bits=(2,), workers=1, layers=("/fc/Gemm",))], ctx)
    assert list(table(g)) == ["/fc/Gemm"]


# ------------------------------------------------------------------------------ text and readers
def test_attrs_print_and_parse():
    g, ctx = _example(samples=32)
    _sweep(g, ctx, 'annotate-sensitivity{bits=[2,4],workers=1,groups=["/conv3/Conv+/conv4/Conv"]}')
    text = print_graph(g)
    parsed = parse_graph(text, {c.name: c.data for c in g.constants})
    assert print_graph(parsed) == text
    assert table(parsed) == table(g) and group_table(parsed) == group_table(g)
    assert parsed.attrs["sensitivity"] == g.attrs["sensitivity"]


def test_sensitivity_of():
    row = {"weights": {"uniform": {"4": {"output_l2": 0.5}}}, "activations": {}}
    assert sensitivity_of(row, "weights", "uniform", 4) == 0.5
    assert sensitivity_of(row, "weights", "float", 4) == 0.0
    assert sensitivity_of(row, "activations", "uniform", 32) == 0.0
    with pytest.raises(QccError, match=r"no sensitivity for weights uniform 3-bit; .* swept uniform 4"):
        sensitivity_of(row, "weights", "uniform", 3)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("options, message", [
    ("bits=[0,8]", "bits must be integers from 1 to 16, got 0"),
    ("bits=[4,4]", "bits lists a bit-width twice"),
    ("schemes=[uniform,ternary]", "unknown scheme 'ternary'; weight schemes: uniform"),
    ("workers=0", "workers must be at least 1"),
    ("batch-size=0", "batch-size must be at least 1"),
])
def test_bad_options(options, message):
    with pytest.raises(QccError, match=message):
        parse_pipeline(f"annotate-sensitivity{{{options}}}")


def test_needs_calibration():
    g = load_model(MODEL)
    x, _ = load_split("calib")
    with pytest.raises(PassError, match=r"pass 'annotate-sensitivity' failed at node '/conv1/Conv': input "
                                        r"'input' has no calibration statistics; run 'calibrate' first"):
        run_pipeline(g, "annotate-sensitivity{workers=1}", PassContext(config={"calib": {"x": x}}))
    assert "sensitivity" not in g.attrs


@pytest.mark.parametrize("options, message", [
    ('layers=["/conv9/Conv"]', r"unknown layer '/conv9/Conv'; did you mean '/conv\d/Conv'"),
    ('layers=["/relu1/Relu"]', r"'/relu1/Relu' is not a layer"),
    ('groups=["/conv1/Conv+"]', r"group '/conv1/Conv\+' has an empty layer name"),
    ('groups=["/conv1/Conv+/nope"]', r"unknown layer '/nope'"),
    ('cluster=nonsense,bits=[2]', r"cannot reach the Dask scheduler at 'nonsense'"),
])
def test_bad_layers(options, message):
    g, ctx = _example(samples=8)
    with pytest.raises(PassError, match=message):
        run_pipeline(g, f"annotate-sensitivity{{workers=1,{options}}}", ctx)


def test_bad_data():
    g, _ = _example(samples=8)
    with pytest.raises(PassError, match="no calibration data"):
        run_pipeline(g, "annotate-sensitivity{workers=1}", PassContext())
    x, _ = load_split("calib")
    g = Graph("t")
    inp = g.add_input("x", TensorType(("N", 1, 8, 8)))
    w = g.add_constant("w", np.ones((2, 1, 3, 3), np.float32))
    g.set_outputs(g.add_node("Conv", [inp, w], attrs={"pads": [1, 1, 1, 1]}, name="conv").outputs)
    ctx = PassContext(config={"calib": {"x": x[:4], "y": np.zeros(4, np.int64)}})
    with pytest.raises(PassError, match=r"labels need the first output .* \[samples, classes\]"):
        run_pipeline(g, "calibrate,annotate-sensitivity{workers=1}", ctx)


# ------------------------------------------------------------------------------ interruption
def test_ctrl_c_leaves_no_partial_attrs(monkeypatch):
    g, ctx = _example(samples=16)
    _sweep(g, ctx, "annotate-sensitivity{bits=[2],workers=1}")
    before = print_graph(g)
    calls = []
    original = Sweep.evaluate

    def interrupted(self, config, naive=False):
        calls.append(config)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, config, naive=naive)

    monkeypatch.setattr(Sweep, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(g, "annotate-sensitivity{bits=[3,5],workers=1}", ctx)
    assert print_graph(g) == before  # the earlier table, untouched

    fresh, ctx = _example(samples=16)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(fresh, "annotate-sensitivity{bits=[3],workers=1}", ctx)
    assert "sensitivity" not in fresh.attrs and not table(fresh)


def test_interrupt_stops_the_process_pool():
    g, _ = _example(samples=16)
    x = load_split("calib")[0][:16]
    sweep = Sweep(g, {"input": x}, [(0, 16)])
    configs = _configs(sweep, {"weights": ("uniform",), "activations": ("uniform",)}, (2, 3, 4))

    def stop(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, configs, workers=2, progress=stop)


# ------------------------------------------------------------------------------ progress bars
def test_progress_bars_show_only_when_asked(capsys):
    assert shown(True) and not shown(False)
    assert not shown(None)  # pytest's captured stderr is no terminal
    assert list(track([1, 2, 3], "quiet")) == [1, 2, 3]
    assert capsys.readouterr().err == ""
    with bar(2, "loud", enabled=True) as b:
        b.update(2)
    assert "loud" in capsys.readouterr().err
    g = _two_gemms()
    x = np.zeros((3, 4), np.float32)
    run_pipeline(g, "calibrate,annotate-sensitivity{bits=[8],workers=1}",
                 PassContext(config={"calib": {"x": x}, "progress": True}))
    err = capsys.readouterr().err
    assert "calibrate: statistics" in err and "sensitivity" in err
