"""calibrate: statistics equal numpy's on the concatenated activations, batching changes nothing,
the range methods behave as specified, results round-trip through text and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.calibration import (
    PERCENTILES,
    Histogram,
    Moments,
    ValueStatistics,
    calibration_of,
    expected_error,
    histogram_of,
    kl_divergence,
    kl_range,
    kl_threshold,
    mse_range,
    percentile_key,
    range_quantize,
    select_range,
)
from qcc.errors import PassError, QccError, ShapeError
from qcc.examples import CALIB, MODEL, load_split
from qcc.frontend import load_model
from qcc.frontend.qir import parse_graph, print_graph
from qcc.interp import run
from qcc.ir import Graph, TensorType
from qcc.pass_manager import PassContext, parse_pipeline, run_pipeline
from qcc.passes.calibrate import CalibratePass
from qcc.testing import GraphOptions, graph_inputs, graphs

BINS = 2048


def _stats(x: np.ndarray, bins: int = BINS) -> ValueStatistics:
    m = Moments()
    m.add(x)
    h = Histogram.over(m.min, m.max, bins)
    h.add(x)
    a = Histogram.over(0.0, m.absmax, bins)
    a.add(np.abs(x))
    return ValueStatistics(m, h, a)


def _mse(x: np.ndarray, lo: float, hi: float, bits: int) -> float:
    return float(np.mean((range_quantize(x, lo, hi, bits) - x.astype(np.float64)) ** 2))


def _ctx(x, **config) -> PassContext:
    return PassContext(config={"calib": {"x": x, **config}})


def _small_graph() -> Graph:
    """x -> Mul(w) -> Relu -> y, dynamic batch."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 3, 4)))
    w = g.add_constant("w", np.array([1.0, -2.0, 0.5, 3.0], np.float32))
    m = g.add_node("Mul", [x, w], name="scale").output
    g.set_outputs(g.add_node("Relu", [m], name="relu", output_names=["y"]).outputs)
    return g


def _activations(graph: Graph):
    return list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]


def _check_against_numpy(graph: Graph, x: dict[str, np.ndarray], bins: int) -> None:
    every = run(graph, x, mode="float", keep_all=True)
    for v in _activations(graph):
        rec = calibration_of(graph, v)
        a = every[v.name].astype(np.float64)
        assert rec["min"] == a.min() and rec["max"] == a.max() and rec["absmax"] == np.abs(a).max()
        assert math.isclose(rec["mean"], a.mean(), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(rec["std"], a.std(), rel_tol=1e-9, abs_tol=1e-12)
        width = (a.max() - a.min()) / bins
        for q in PERCENTILES:
            assert abs(rec["percentiles"][percentile_key(q)] - np.percentile(a, q)) <= width * (1 + 1e-9)
        counts, edges = np.histogram(every[v.name], bins=bins, range=(a.min(), a.max()))
        hist = histogram_of(graph, v)
        np.testing.assert_array_equal(hist.counts, counts)
        np.testing.assert_array_equal(hist.edges, edges)
        abs_counts, _ = np.histogram(np.abs(every[v.name]), bins=bins, range=(0.0, np.abs(a).max()))
        np.testing.assert_array_equal(histogram_of(graph, v, absolute=True).counts, abs_counts)


# ------------------------------------------------------------------------------- statistics
def test_stats_equal_numpy_on_concatenated_activations():
    g = _small_graph()
    x = np.random.default_rng(0).normal(size=(37, 3, 4)).astype(np.float32)
    assert CalibratePass(batch_size=5)(g, _ctx(x)).changed
    _check_against_numpy(g, {"x": x}, BINS)


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_property_random_graphs_stats_and_batching(data):
    """On random graphs: numpy's statistics; batch size 1 agrees with one batch up to the float32
    rounding of the interpreter itself (a Conv may round differently at another batch size)."""
    g = data.draw(graphs(GraphOptions(symbolic_batch=True, max_layers=4)))
    samples = data.draw(st.integers(1, 6))
    x = data.draw(graph_inputs(g, batch=samples))
    method = data.draw(st.sampled_from(["minmax", "percentile"]))
    one = g.clone()
    CalibratePass(method=method, bins=64, batch_size=samples)(one, PassContext(config={"calib": x}))
    _check_against_numpy(one, x, 64)
    many = g.clone()
    CalibratePass(method=method, bins=64, batch_size=1)(many, PassContext(config={"calib": x}))
    for va, vb in zip(_activations(one), _activations(many)):
        ra, rb = calibration_of(one, va), calibration_of(many, vb)
        tol = 1e-5 * max(ra["absmax"], 1.0)
        for key in ("min", "max", "mean", "std", "absmax"):
            assert abs(ra[key] - rb[key]) <= tol
        width = (ra["max"] - ra["min"]) / 64
        for key, value in ra["percentiles"].items():
            assert abs(value - rb["percentiles"][key]) <= 2 * width + tol
        assert np.allclose(ra["range"], rb["range"], rtol=0, atol=2 * width + tol)


def _assert_same_calibration(a: Graph, b: Graph) -> None:
    """Equal records (mean and std up to float64 rounding) and equal histograms."""
    for va, vb in zip(_activations(a), _activations(b)):
        ra, rb = calibration_of(a, va), calibration_of(b, vb)
        for key in ("mean", "std"):
            assert math.isclose(ra[key], rb[key], rel_tol=1e-9, abs_tol=1e-12)
        same = {k: v for k, v in ra.items() if k not in ("mean", "std")}
        assert same == {k: v for k, v in rb.items() if k not in ("mean", "std")}
        np.testing.assert_array_equal(histogram_of(a, va).counts, histogram_of(b, vb).counts)


def test_batch_size_one_equals_one_batch():
    """Elementwise ops compute the same at any batch size, so the records are equal."""
    x = np.random.default_rng(1).laplace(size=(20, 3, 4)).astype(np.float32)
    for method in ("percentile", "mse", "kl"):
        one, many = _small_graph(), _small_graph()
        CalibratePass(method=method, batch_size=20)(one, _ctx(x))
        CalibratePass(method=method, batch_size=1)(many, _ctx(x))
        _assert_same_calibration(one, many)


def test_moments_merge_matches_numpy():
    rng = np.random.default_rng(2)
    parts = [rng.normal(5.0, 3.0, size=n).astype(np.float32) for n in (1, 7, 100, 3)]
    m = Moments()
    for p in parts:
        m.add(p)
    m.add(np.empty(0, np.float32))
    whole = np.concatenate(parts).astype(np.float64)
    assert m.count == whole.size
    assert math.isclose(m.mean, whole.mean(), rel_tol=1e-12)
    assert math.isclose(m.std, whole.std(), rel_tol=1e-12)


def test_constant_activation_has_degenerate_but_finite_stats():
    s = _stats(np.full(10, 2.5, np.float32))
    assert s.percentile(99.9) == 2.5
    assert select_range(s, "minmax") == (0.0, 2.5)
    assert select_range(s, "mse", 8) == (0.0, 2.5)
    zeros = _stats(np.zeros(10, np.float32))
    for method in ("minmax", "percentile", "mse", "kl"):
        assert select_range(zeros, method, 8) == (0.0, 0.0)


# ---------------------------------------------------------------------------- range methods
def test_kl_clips_heavy_tails_and_keeps_uniform_range():
    rng = np.random.default_rng(3)
    heavy = np.abs(rng.standard_cauchy(50_000)).astype(np.float32)
    lo, hi = kl_range(_stats(heavy), 8)
    assert lo == 0.0 and hi < 0.25 * heavy.max()
    uniform = rng.uniform(0.0, 1.0, 50_000).astype(np.float32)
    lo, hi = kl_range(_stats(uniform), 8)
    assert lo == 0.0 and hi >= 0.98 * uniform.max()


def test_kl_on_signed_data_is_symmetric_from_the_abs_histogram():
    x = np.random.default_rng(4).laplace(size=50_000).astype(np.float32)
    s = _stats(x)
    lo, hi = kl_range(s, 8)
    assert lo == -hi and 0 < hi < s.moments.absmax
    assert hi == kl_threshold(s.abs_histogram, 128)


def _reference_divergences(counts: np.ndarray, levels: int) -> np.ndarray:
    """TensorRT's loop written plainly: fold outliers, merge into levels, expand, compare."""
    out = []
    for i in range(levels, len(counts) + 1):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        q = np.zeros(i)
        bounds = [(k * i) // levels for k in range(levels)] + [i]
        for a, b in zip(bounds[:-1], bounds[1:]):
            nz = p[a:b] > 0
            if nz.any():
                q[a:b][nz] = counts[a:b].sum() / nz.sum()
        mask = p > 0
        if np.any(q[mask] == 0):
            out.append(math.inf)
            continue
        pn, qn = p[mask] / p.sum(), q[mask] / q.sum()
        out.append(float(np.sum(pn * np.log(pn / qn))))
    return np.array(out)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bins=st.integers(2, 120), levels=st.integers(1, 16),
       zeros=st.booleans())
def test_property_kl_threshold_minimises_the_reference_divergence(seed, bins, levels, zeros):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_cauchy(rng.integers(1, 500)))
    if zeros:
        x[: len(x) // 2] = 0.0
    h = Histogram.over(0.0, float(x.max()), bins)
    h.add(x)
    counts = h.counts.astype(np.float64)
    t = kl_threshold(h, levels)
    if levels >= bins:
        assert t == h.edges[-1]
        return
    ref = _reference_divergences(counts, levels)
    chosen = int(np.flatnonzero(h.edges == t)[0])
    assert math.isclose(ref[chosen - levels], ref.min(), rel_tol=1e-9, abs_tol=1e-15)
    assert math.isclose(kl_divergence(counts[:chosen], counts[chosen:].sum(), levels), ref[chosen - levels],
                        rel_tol=1e-9, abs_tol=1e-15)


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_range_beats_minmax_on_laplace(bits):
    x = np.random.default_rng(5).laplace(size=100_000).astype(np.float32)
    s = _stats(x)
    lo, hi = mse_range(s, bits)
    mlo, mhi = select_range(s, "minmax")
    assert hi < mhi and lo > mlo
    assert _mse(x, lo, hi, bits) < _mse(x, mlo, mhi, bits)


def test_expected_error_estimates_the_empirical_error():
    x = np.random.default_rng(6).normal(size=100_000).astype(np.float32)
    s = _stats(x)
    for bits, (lo, hi) in [(4, (-2.0, 2.5)), (8, (-4.0, 4.0)), (2, (-1.0, 1.0)), (8, (-0.5, 0.3))]:
        est = float(expected_error(s.histogram, lo, hi, bits))
        assert math.isclose(est, _mse(x, lo, hi, bits), rel_tol=0.02)


def test_percentile_option_sets_the_range():
    x = np.random.default_rng(7).laplace(size=(50, 3, 4)).astype(np.float32)
    for p in (99.0, 99.9, 99.99):
        g = _small_graph()
        CalibratePass(method="percentile", percentile=p)(g, _ctx(x))
        rec = calibration_of(g, g.inputs[0])
        assert rec["range"] == [rec["percentiles"][percentile_key(100 - p)], rec["percentiles"][percentile_key(p)]]
        relu = calibration_of(g, g.outputs[0])
        assert relu["range"] == [0.0, relu["percentiles"][percentile_key(p)]]
    g = _small_graph()
    CalibratePass(method="percentile", percentile=99.5)(g, _ctx(x))
    rec = calibration_of(g, g.inputs[0])
    assert rec["percentiles"]["99"] < rec["range"][1] < rec["percentiles"]["99.9"]
    assert abs(rec["range"][1] - np.percentile(x, 99.5)) <= (x.max() - x.min()) / BINS


def test_minmax_range_contains_zero_and_records_the_options():
    x = np.random.default_rng(8).uniform(1.0, 2.0, size=(10, 3, 4)).astype(np.float32)
    g = _small_graph()
    CalibratePass(bits=4)(g, _ctx(x))
    rec = calibration_of(g, g.inputs[0])
    assert rec["range"] == [0.0, rec["max"]]
    assert (rec["method"], rec["bits"], rec["samples"]) == ("minmax", 4, 10)


# ------------------------------------------------------------------------------- the pass
def test_changed_only_when_the_attributes_change():
    x = np.random.default_rng(9).normal(size=(12, 3, 4)).astype(np.float32)
    g = _small_graph()
    assert CalibratePass()(g, _ctx(x)).changed
    assert not CalibratePass()(g, _ctx(x)).changed
    assert not CalibratePass(batch_size=12)(g, _ctx(x)).changed  # batching: same attributes
    assert CalibratePass(method="kl")(g, _ctx(x)).changed
    assert CalibratePass(method="kl", samples=11)(g, _ctx(x)).changed
    assert not CalibratePass(method="kl", samples=11)(g, _ctx(x)).changed


def test_samples_option_takes_the_first_samples():
    x = np.random.default_rng(10).normal(size=(30, 3, 4)).astype(np.float32)
    g1, g2 = _small_graph(), _small_graph()
    CalibratePass(samples=8, batch_size=3)(g1, _ctx(x))
    CalibratePass(batch_size=8)(g2, _ctx(x[:8]))
    assert print_graph(g1) == print_graph(g2)
    assert calibration_of(g1, g1.outputs[0])["samples"] == 8
    CalibratePass(samples=1000)(g1, _ctx(x))  # more than there are: all of them
    assert calibration_of(g1, g1.outputs[0])["samples"] == 30


def test_the_graph_computes_the_same_after_calibration():
    g = _small_graph()
    x = np.random.default_rng(11).normal(size=(4, 3, 4)).astype(np.float32)
    before = run(g, {"x": x})["y"]
    run_pipeline(g, "calibrate{method=mse}", _ctx(x))
    np.testing.assert_array_equal(run(g, {"x": x})["y"], before)


def test_multi_input_graph_takes_arrays_by_name_and_ignores_labels():
    g = Graph("two")
    a = g.add_input("a", TensorType(("N", 2)))
    b = g.add_input("b", TensorType(("N", 2)))
    g.set_outputs(g.add_node("Add", [a, b], name="add").outputs)
    rng = np.random.default_rng(12)
    calib = {"a": rng.normal(size=(5, 2)), "b": rng.normal(size=(5, 2)).astype(np.float32), "y": np.arange(5)}
    CalibratePass(batch_size=2)(g, PassContext(config={"calib": calib}))
    assert set(g.attrs["calibration"]) == {"a", "b"}
    total = calib["a"].astype(np.float32) + calib["b"]
    assert calibration_of(g, g.outputs[0])["max"] == float(total.max())


def test_fixed_batch_dimension_runs_in_batches_of_that_size():
    g = Graph("fixed")
    x = g.add_input("x", TensorType((2, 3)))
    g.set_outputs(g.add_node("Relu", [x], name="relu").outputs)
    data = np.arange(12, dtype=np.float32).reshape(4, 3) - 5
    CalibratePass(batch_size=64)(g, _ctx(data))
    assert calibration_of(g, g.outputs[0])["max"] == 6.0
    assert calibration_of(g, g.outputs[0])["samples"] == 4
    with pytest.raises(ShapeError, match="fixed at 2"):
        CalibratePass().run(g, _ctx(data[:3]))


def test_progress_is_reported_per_batch():
    messages = []
    ctx = PassContext(config={"calib": {"x": np.zeros((5, 3, 4), np.float32)}}, progress=messages.append)
    CalibratePass(batch_size=2)(_small_graph(), ctx)
    batches = [m for m in messages if m.startswith("calibrate:")]
    assert len(batches) == 3  # the model runs once per batch; the histograms reuse the kept activations
    assert "batch 3/3" in batches[-1]


def test_histograms_are_the_same_whether_activations_are_kept_or_recomputed(monkeypatch):
    import qcc.passes.calibrate as calibrate

    data = np.random.default_rng(0).normal(size=(7, 3, 4)).astype(np.float32)
    kept, recomputed = _small_graph(), _small_graph()
    CalibratePass(batch_size=2)(kept, _ctx(data))
    monkeypatch.setattr(calibrate, "KEEP_BYTES", 0)
    CalibratePass(batch_size=2)(recomputed, _ctx(data))
    for a, b in zip(kept.nodes, recomputed.nodes):
        assert a.meta["histogram"][0].counts.tolist() == b.meta["histogram"][0].counts.tolist()
        assert a.attrs["calibration"] == b.attrs["calibration"]


def test_calibration_of_reads_inputs_outputs_and_not_constants():
    g = _small_graph()
    assert calibration_of(g, g.outputs[0]) is None and histogram_of(g, g.inputs[0]) is None
    CalibratePass()(g, _ctx(np.ones((2, 3, 4), np.float32)))
    assert calibration_of(g, g.inputs[0]) is g.attrs["calibration"]["x"]
    assert calibration_of(g, g.outputs[0]) is g.nodes[-1].attrs["calibration"][0]
    assert calibration_of(g, g.constants[0]) is None and histogram_of(g, g.constants[0]) is None
    assert isinstance(histogram_of(g, g.outputs[0]), Histogram)


def test_records_round_trip_through_text():
    g = _small_graph()
    CalibratePass(method="kl")(g, _ctx(np.random.default_rng(13).normal(size=(6, 3, 4)).astype(np.float32)))
    text = print_graph(g)
    back = parse_graph(text, {"w": g.constants[0].data})
    assert print_graph(back) == text
    for v, w in zip(_activations(g), _activations(back)):
        assert calibration_of(back, w) == calibration_of(g, v)


# ------------------------------------------------------------------------------- negatives
def test_missing_calibration_data_says_to_pass_calib():
    with pytest.raises(PassError, match=r"pass 'calibrate' failed: no calibration data: pass --calib"):
        run_pipeline(_small_graph(), "calibrate", PassContext())


@pytest.mark.parametrize("calib, message", [
    ({"x": np.zeros((0, 3, 4), np.float32)}, "empty"),
    ({"x": np.zeros((4, 3, 5), np.float32)}, r"has shape \[4, 3, 5\], expected \[samples, 3, 4\]"),
    ({"x": np.zeros((3, 4), np.float32)}, r"has shape \[3, 4\]"),
    ({"z": np.zeros((4, 3, 4), np.float32)}, "no array for input"),
    ("data.npz", "must be a dict"),
])
def test_bad_calibration_data(calib, message):
    with pytest.raises(PassError, match=message):
        run_pipeline(_small_graph(), "calibrate", PassContext(config={"calib": calib}))


def test_wrong_shape_is_a_shape_error():
    with pytest.raises(ShapeError, match="calibration data for input 'x'"):
        CalibratePass().run(_small_graph(), _ctx(np.zeros((2, 4, 3), np.float32)))


def test_unequal_sample_counts_and_unknown_arrays():
    g = Graph("two")
    a = g.add_input("a", TensorType(("N", 2)))
    b = g.add_input("b", TensorType(("N", 2)))
    g.set_outputs(g.add_node("Add", [a, b], name="add").outputs)
    with pytest.raises(ShapeError, match="different numbers of samples"):
        CalibratePass().run(g, PassContext(config={"calib": {"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}}))
    with pytest.raises(QccError, match="not graph inputs"):
        CalibratePass().run(g, PassContext(config={"calib": {"a": np.zeros((3, 2)), "b": np.zeros((3, 2)),
                                                             "c": np.zeros((3, 2))}}))


def test_non_finite_activation_names_the_node():
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 2)))
    zero = g.add_constant("zero", np.zeros(2, np.float32))
    d = g.add_node("Div", [x, zero], name="divide").output
    g.set_outputs(g.add_node("Relu", [d], name="relu").outputs)
    with pytest.raises(PassError, match=r"at node 'divide'.*'divide:out' \(Div\) is (inf|nan)") as info:
        run_pipeline(g, "calibrate", _ctx(np.ones((3, 2), np.float32)))
    assert info.value.node == "divide"


def test_non_finite_input_names_the_input():
    x = np.ones((3, 3, 4), np.float32)
    x[1, 0, 0] = np.nan
    with pytest.raises(PassError, match="calibration input 'x' contains nan"):
        run_pipeline(_small_graph(), "calibrate", _ctx(x))


@pytest.mark.parametrize("spec, message", [
    ("calibrate{bits=0}", "bits must be between 1 and 16"),
    ("calibrate{bits=17}", "bits must be between 1 and 16"),
    ("calibrate{method=entropy}", "'entropy' is not one of 'minmax', 'percentile', 'mse', 'kl'"),
    ("calibrate{percentile=40}", r"percentile must be in \(50, 100\]"),
    ("calibrate{samples=0}", "samples must be at least 1"),
    ("calibrate{batch-size=0}", "batch-size must be at least 1"),
    ("calibrate{bins=0}", "bins must be at least 1"),
])
def test_bad_options(spec, message):
    with pytest.raises(QccError, match=rf"calibrate.*{message}"):
        parse_pipeline(spec)


# ------------------------------------------------------------------------- example and CLI
def test_bundled_example_gets_stats_for_every_activation():
    g = load_model(MODEL)
    x, y = load_split("calib")
    assert run_pipeline(g, "calibrate{method=percentile}", _ctx(x, y=y))
    for v in _activations(g):
        rec = calibration_of(g, v)
        assert rec is not None and rec["samples"] == len(x), v.name
        lo, hi = rec["range"]
        assert lo <= 0.0 <= hi and rec["min"] <= rec["mean"] <= rec["max"]
        if v.producer is not None and v.producer.op == "Relu":
            assert lo == 0.0 and rec["min"] == 0.0


def test_cli_calibrates_with_kl_and_the_result_reparses(tmp_path, capsys):
    from qcc.cli import main

    out = tmp_path / "out.qir"
    code = main(["opt", str(MODEL), "-p", "calibrate{method=kl}", "--calib", str(CALIB), "-o", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    g = load_model(out)
    records = [calibration_of(g, v) for v in _activations(g)]
    assert all(r is not None and r["method"] == "kl" and r["samples"] == 288 for r in records)
    assert print_graph(load_model(out)) == out.read_text()


def test_cli_without_calib_is_a_user_error(tmp_path, capsys):
    from qcc.cli import main

    code = main(["opt", str(MODEL), "-p", "calibrate", "-o", str(tmp_path / "out.qir")])
    assert code == 2
    assert "pass --calib" in capsys.readouterr().err
    assert not (tmp_path / "out.qir").exists()
