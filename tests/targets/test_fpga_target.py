"""The fpga target end to end: lower an MLP, simulate it (Icarus), compare with run(mode="int"); errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qcc.cli import main
from qcc.errors import QccError
from qcc.frontend import save_model
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType
from qcc.pass_manager import PassContext, run_pipeline
from qcc.target import get_target
from qcc.targets.fpga import FpgaTarget
from qcc.testing.nets import float_mlp

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs iverilog")


def _mlp(dims=(12, 8, 6, 4), seed=0) -> Graph:
    return float_mlp(dims, seed)


def _calib(n_in: int, seed=1) -> dict:
    return {"x": np.random.default_rng(seed).normal(size=(64, n_in)).astype(np.float32)}


def _quantized(target: FpgaTarget, pipeline: str | None = None) -> Graph:
    g = _mlp()
    run_pipeline(g, pipeline or target.default_pipeline, PassContext(config={"calib": _calib(12)}))
    return g


@pytest.mark.parametrize("options", [{}, {"cycles_per_frame": 12}, {"folding": {"fc0": (2, 3), "fc2": (4, 2)}}])
def test_mlp_simulates_bit_exactly(tmp_path, options):
    target = FpgaTarget(**options)
    g = _quantized(target, "canonicalize,fold-bn,calibrate,quantize{w_bits=4,a_bits=4}")
    artifacts = target.lower(g, tmp_path)
    assert (tmp_path / "rtl" / "qcc_top.v").is_file() and (tmp_path / "model.qir").is_file()
    assert any(p.suffix == ".mem" for p in (tmp_path / "rtl").iterdir())
    x = np.random.default_rng(5).normal(0, 1.5, (40, 12)).astype(np.float32)
    out = target.simulate(artifacts, {"x": x})
    ref = run(g, {"x": x}, mode="int")
    assert out.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])
    if "cycles_per_frame" in options:
        assert target.cost(g).totals["cycles_per_frame"] <= 12


def test_default_pipeline_8_bits(tmp_path):
    target = get_target("fpga")
    g = _quantized(target)
    cost = target.cost(g)
    assert [c.name for c in cost.layers] == ["fc0", "fc1", "fc2"]
    assert cost.totals["cycles_per_frame"] == 12 * 8
    x = np.random.default_rng(6).normal(size=(10, 12)).astype(np.float32)
    out = target.simulate(target.lower(g, tmp_path), {"x": x})
    np.testing.assert_array_equal(out[g.outputs[0].name], run(g, {"x": x}, mode="int")[g.outputs[0].name])


def test_cli_compile_and_run(tmp_path, capsys):
    model, calib, inputs = tmp_path / "mlp.qir", tmp_path / "calib.npz", tmp_path / "in.npz"
    save_model(_mlp(), model)
    np.savez(calib, **_calib(12))
    x = np.random.default_rng(7).normal(size=(16, 12)).astype(np.float32)
    np.savez(inputs, x=x)
    out = tmp_path / "out"
    assert main(["compile", str(model), "--target", "fpga", "-o", str(out), "--calib", str(calib),
                 "--cycles-per-frame", "24"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "luts" in json.dumps(report)
    assert main(["run", str(out), str(inputs), "-o", str(tmp_path / "o.npz")]) == 0
    got = np.load(tmp_path / "o.npz")
    from qcc.frontend import load_model

    g = load_model(out / "model.qir")
    ref = run(g, {"x": x}, mode="int")
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_unsupported_op_is_a_clear_error(tmp_path):
    g = Graph()
    x = g.add_input("x", TensorType(("N", 4), "float32"))
    w = g.add_constant("w", np.ones((3, 4), np.float32))
    h = g.add_node("Gemm", [x, w], attrs={"transB": 1}, name="fc0").outputs[0]
    g.set_outputs([g.add_node("Sigmoid", [h], name="sig").outputs[0]])
    run_pipeline(g, "calibrate,quantize", PassContext(config={"calib": {"x": np.ones((4, 4), np.float32)}}))
    with pytest.raises(QccError, match="node 'sig' \\(Sigmoid\\)"):
        FpgaTarget().lower(g, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_options_and_folding():
    with pytest.raises(QccError, match="arch"):
        FpgaTarget(arch="x.toml")
    with pytest.raises(QccError, match="device 'virtex'"):
        FpgaTarget(device="virtex")
    g = _quantized(FpgaTarget(), "canonicalize,calibrate,quantize")
    with pytest.raises(QccError, match="layer 'fc1': PE=5 does not divide its 6 output channels"):
        FpgaTarget(folding={"fc1": (5, 1)}).cost(g)


def test_missing_simulator_is_a_clear_error(tmp_path, monkeypatch):
    target = FpgaTarget()
    g = _quantized(target)
    artifacts = target.lower(g, tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(QccError, match="'iverilog' was not found"):
        target.simulate(artifacts, {"x": np.zeros((1, 12), np.float32)})


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="needs yosys")
def test_synthesis_report_and_cost_model(tmp_path):
    target = FpgaTarget(synth=True, device="ecp5")
    g = _mlp(dims=(6, 4))
    run_pipeline(g, "canonicalize,calibrate,quantize{w_bits=3,a_bits=3}", PassContext(config={"calib": _calib(6)}))
    artifacts = target.lower(g, tmp_path)
    assert artifacts.files["netlist"].is_file()
    design = json.loads((tmp_path / "design.json").read_text())
    synth, cost = design["synthesis"], design["cost"]
    assert synth["luts"] > 0 and synth["ffs"] > 0
    assert cost["luts"] > 0 and cost["cycles_per_frame"] == 6 * 4  # PE = SIMD = 1
