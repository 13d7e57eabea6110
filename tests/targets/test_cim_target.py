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
    assert sum(len(layer["crossbars"]) for layer in mapping["layers"]) == totals["crossbars"]


def test_run_compiled_folder_equals_integer_interpreter(compiled, tmp_path):
    assert qcc("run", compiled, EVAL, "-o", tmp_path / "a.npz") == 0
    assert qcc("run", compiled / "model.qir", EVAL, "-o", tmp_path / "b.npz") == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_energy_budget_is_met(tmp_path):
    out = tmp_path / "out"
    assert qcc("compile", "--target", "cim", "-o", out, "--energy-budget", "400nJ", "-q") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["energy_pj"] <= 400e3


def test_bad_arch_file_is_exit_2_and_writes_nothing(tmp_path, capsys):
    arch = tmp_path / "a.toml"
    arch.write_text("rows = 0\n")
    assert qcc("compile", "--target", "cim", "--arch", arch, "-o", tmp_path / "out") == 2
    assert "rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_chip_too_small_is_exit_2(tmp_path, capsys):
    arch = tmp_path / "a.toml"
    arch.write_text("rows = 8\ncols = 8\ntiles = 1\nimas_per_tile = 1\ncrossbars_per_ima = 2\n")
    assert qcc("compile", "--target", "cim", "--arch", arch, "-o", tmp_path / "out", "-q") == 2
    assert "crossbars but the chip has" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


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
