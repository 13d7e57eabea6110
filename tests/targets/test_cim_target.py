"""`qcc compile --target cim` and `qcc run OUTDIR`: artifacts, bit-exact simulation, budgets, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcc.cli import main
from qcc.errors import QccError
from qcc.examples import EVAL
from qcc.target import get_target
from qcc.targets.cim import CimTarget, parse_energy


def qcc(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cim") / "out"
    assert qcc("compile", "--target", "cim", "-o", out, "-q") == 0  # bundled example: its calib by default
    return out


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory):
    data = np.load(EVAL)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x=data["x"][:24], y=data["y"][:24])
    return path


def test_compile_writes_artifacts(compiled):
    for name in ("model.qir", "model.npz", "mapping.json", "arch.toml", "report.json", "artifacts.json",
                 "crossbar_utilisation.png", "energy_breakdown.png"):
        assert (compiled / name).is_file(), name
    report = json.loads((compiled / "report.json").read_text())
    totals = report["totals"]
    for key in ("crossbars", "utilisation", "adc_conversions", "cycles", "energy_pj", "latency_ns", "area_mm2",
                "adc_share", "tops_per_w"):
        assert totals[key] > 0, key
    mapping = json.loads((compiled / "mapping.json").read_text())
    assert sum(len(x["ids"]) for layer in mapping["layers"] for x in layer["crossbars"]) == totals["crossbars"]


def test_example_fits_the_default_accumulator(compiled):
    from qcc.frontend.qir import load
    from qcc.ranges import analyze, prove_no_overflow

    # the fixture's compile ran the overflow proof (no --allow-overflow) against the 32-bit register
    assert "acc_bits = 32" in (compiled / "arch.toml").read_text()
    graph = load(compiled / "model.qir")
    assert prove_no_overflow(graph, 32) == []
    assert max(layer.bits for layer in analyze(graph).values()) <= 25


def test_report_carries_the_cim_fields_per_layer_and_in_total(compiled):
    report = json.loads((compiled / "report.json").read_text())
    keys = ("crossbars", "utilisation", "adc_conversions", "cycles", "energy_pj", "latency_ns", "area_mm2",
            "energy_adc_pj", "energy_dac_pj", "energy_edram_pj", "adc_bits", "replicas")
    mapped = [layer for layer in report["layers"] if layer["cost"]]
    assert len(mapped) == 5
    for layer in mapped:
        assert all(k in layer["cost"] for k in keys), layer["name"]
        parts = sum(v for k, v in layer["cost"].items() if k.startswith("energy_") and k != "energy_pj")
        assert parts == pytest.approx(layer["cost"]["energy_pj"])
    totals = report["totals"]
    for k in ("crossbars", "adc_conversions", "cycles", "energy_pj", "latency_ns"):
        assert totals[k] == pytest.approx(sum(layer["cost"][k] for layer in mapped))
    assert totals["area_mm2"] > 0 and 0 < totals["utilisation"] <= 1 and totals["latency_pipelined_ns"] > 0
    assert set(CimTarget.table_fields) <= set(mapped[0]["cost"]) and len(CimTarget.table_fields) <= 5


def test_run_compiled_folder_equals_integer_interpreter(compiled, tmp_path):
    assert qcc("run", compiled, EVAL, "-o", tmp_path / "a.npz") == 0
    assert qcc("run", compiled / "model.qir", EVAL, "-o", tmp_path / "b.npz") == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_energy_budget_is_met(tmp_path, compiled, capsys):
    out = tmp_path / "out"
    unconstrained = json.loads((compiled / "report.json").read_text())["totals"]["energy_pj"]
    assert unconstrained > 400e3  # the budget binds
    assert qcc("compile", "--target", "cim", "-o", out, "--energy-budget", "400nJ", "-q") == 0
    table = capsys.readouterr().out
    assert "/conv1/Conv" in table and "total" in table  # the report is printed
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["energy_pj"] <= 400e3
    assignment = report["config"]["bit_assignment"]  # chosen by assign-bits with the CIM cost model
    assert assignment["totals"]["target_energy_pj"] <= 400e3


def test_unmappable_layer_is_exit_2_naming_the_node(tmp_path, capsys):
    from qcc.frontend.qir import save
    from qcc.ir.graph import Graph
    from qcc.ir.types import TensorType

    rng = np.random.default_rng(0)
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 2, 6), "float32"))
    w = g.add_constant("w", rng.normal(size=(3, 2, 3)).astype(np.float32))
    y = g.add_node("Conv", [x, w], name="conv1d", attrs={"group": 1, "kernel_shape": [3], "strides": [1],
                                                           "dilations": [1], "pads": [1, 1]}).outputs[0]
    g.set_outputs([y])
    save(g, tmp_path / "m.qir")
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(4, 2, 6)).astype(np.float32))
    assert qcc("compile", tmp_path / "m.qir", "--target", "cim", "-o", tmp_path / "out", "--calib",
               tmp_path / "calib.npz", "-q") == 2
    err = capsys.readouterr().err
    assert "cannot map Conv 'conv1d'" in err and "only 2-D convolutions" in err and err.count("\n") == 1
    assert "compile for --target cpu" in err  # what would make it work
    assert not (tmp_path / "out").exists()


def test_bad_arch_file_is_exit_2_and_writes_nothing(tmp_path, capsys):
    arch = tmp_path / "a.toml"
    arch.write_text("rows = 0\n")
    assert qcc("compile", "--target", "cim", "--arch", arch, "-o", tmp_path / "out") == 2
    assert "rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch_text, message", [
    ("rows = 8\ncols = 8\ntiles = 1\nimas_per_tile = 1\ncrossbars_per_ima = 2\nadc_bits = 5\n",
     "wider than the whole chip"),  # 144-row layers need 18 crossbars of 8 rows
    ("tiles = 1\nimas_per_tile = 1\ncrossbars_per_ima = 4\n", "the model needs 8 crossbars but the chip has 4"),
])
def test_chip_too_small_is_exit_2(tmp_path, capsys, arch_text, message):
    arch = tmp_path / "a.toml"
    arch.write_text(arch_text)
    assert qcc("compile", "--target", "cim", "--arch", arch, "-o", tmp_path / "out", "-q") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_replicated_compile_lists_replicas_and_runs_bit_exact(compiled, tmp_path, small_eval):
    arch = tmp_path / "a.toml"
    arch.write_text("[mapping]\nreplication = \"balance\"\nmax_crossbars = 120\n")
    out = tmp_path / "out"
    assert qcc("compile", "--target", "cim", "--arch", arch, "-o", out, "-q") == 0
    report = json.loads((out / "report.json").read_text())
    plain = json.loads((compiled / "report.json").read_text())
    assert plain["totals"]["crossbars"] < report["totals"]["crossbars"] <= 120
    assert report["totals"]["latency_pipelined_ns"] < plain["totals"]["latency_pipelined_ns"]
    mapping = json.loads((out / "mapping.json").read_text())
    ids = [i for layer in mapping["layers"] for x in layer["crossbars"] for i in x["ids"]]
    assert sorted(ids) == list(range(report["totals"]["crossbars"]))
    assert max(layer["replicas"] for layer in mapping["layers"]) > 1
    assert qcc("run", out, small_eval, "-o", tmp_path / "a.npz") == 0
    assert qcc("run", compiled, small_eval, "-o", tmp_path / "b.npz") == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_options_and_energy_units():
    assert parse_energy("5uJ") == pytest.approx(5e6)
    assert parse_energy("2.5 nJ") == pytest.approx(2500)
    assert parse_energy("100") == 100
    for bad in ("5 parsecs", "-1uJ", "0pJ", "lots"):
        with pytest.raises(QccError, match="energy budget"):
            parse_energy(bad)
    with pytest.raises(QccError, match="device"):
        get_target("cim", device="ice40")
    t = CimTarget(energy_budget="1uJ")
    assert "assign-bits{target-budget=1000000.0,target-metric=energy_pj}" in t.default_pipeline
    assert CimTarget().default_pipeline == "canonicalize,fold-bn,calibrate,quantize"


def test_compiled_folder_remembers_nonidealities(compiled, tmp_path, small_eval):
    arch = tmp_path / "a.toml"
    arch.write_text("[nonideal]\nconductance_sigma = 0.3\nstuck_at_zero = 0.001\nseed = 3\n")
    out = tmp_path / "out"
    assert qcc("compile", "--target", "cim", "--arch", arch, "-o", out, "-q") == 0
    assert "conductance_sigma = 0.3" in (out / "arch.toml").read_text()
    for name in ("a", "b"):
        assert qcc("run", out, small_eval, "-o", tmp_path / f"{name}.npz") == 0
    assert qcc("run", compiled, small_eval, "-o", tmp_path / "ideal.npz") == 0
    a, b, ideal = (np.load(tmp_path / f"{n}.npz") for n in ("a", "b", "ideal"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], ideal[k]) for k in a)
