"""The qcc command line: the interface forms of issue 2, exit codes, and no output on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qcc.cli import main
from qcc.examples import EVAL, MODEL


def qcc(*args: str) -> int:
    return main([str(a) for a in args])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("qcc: error: ")
    return lines[0]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_import_show_run_round_trip(tmp_path, capsys):
    out = tmp_path / "digits.qir"
    assert qcc("import", MODEL, "-o", out) == 0
    assert out.exists() and out.with_suffix(".npz").exists()
    capsys.readouterr()
    assert qcc("show", out) == 0
    text = capsys.readouterr().out
    assert text.startswith("qir") and "Conv" in text

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert qcc("run", MODEL, EVAL, "-o", a) == 0  # EVAL has x and y: y is not an input
    assert "top-1 accuracy against y: 99.44 % (360 samples)" in capsys.readouterr().out
    assert qcc("run", out, EVAL, "-o", b) == 0
    with np.load(a) as za, np.load(b) as zb:
        assert za.files == ["logits"]
        np.testing.assert_array_equal(za["logits"], zb["logits"])


def test_run_accepts_x_for_single_input_and_writes_deterministically(tmp_path):
    with np.load(EVAL) as z:
        np.savez(tmp_path / "in.npz", x=z["x"][:8])
    assert qcc("run", MODEL, tmp_path / "in.npz", "-o", tmp_path / "o1.npz") == 0
    assert qcc("run", MODEL, tmp_path / "in.npz", "-o", tmp_path / "o2.npz") == 0
    assert (tmp_path / "o1.npz").read_bytes() == (tmp_path / "o2.npz").read_bytes()


def test_show_summary_and_json(capsys):
    assert qcc("show", MODEL, "--summary") == 0
    table = capsys.readouterr().out
    assert "/conv1/Conv" in table and "total" in table
    assert qcc("show", MODEL, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "qcc.report/1"
    assert {"name", "op", "macs", "params", "activations", "w_bits", "a_bits", "bops"} <= set(doc["layers"][0])


def test_example_summary_matches_hand_count(capsys):
    """Hand count (batch 1): conv MACs = Cout*H*W*Cin*3*3, BN one per element, Gemm 32*10."""
    conv = 16 * 8 * 8 * 1 * 9 + 2 * (16 * 8 * 8 * 16 * 9) + 32 * 4 * 4 * 16 * 9
    bn = 3 * 16 * 8 * 8 + 32 * 4 * 4
    gemm = 32 * 10
    params = (16 * 9 + 16) + 2 * (16 * 16 * 9 + 16) + (32 * 16 * 9 + 32) + 4 * (16 + 16 + 16 + 32) + (320 + 10)
    assert qcc("show", MODEL, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["macs"] == conv + bn + gemm == 381_760
    assert doc["totals"]["params"] == params == 10_090
    by_name = {r["name"]: r for r in doc["layers"]}
    assert by_name["/conv2/Conv"]["macs"] == 147_456
    assert by_name["/fc/Gemm"]["params"] == 330


def test_opt_writes_qir_and_onnx(tmp_path, capsys):
    assert qcc("opt", MODEL, "-p", "canonicalize", "-o", tmp_path / "o.qir", "--time-passes") == 0
    assert "canonicalize" in capsys.readouterr().err
    assert qcc("opt", MODEL, "-p", "canonicalize", "-o", tmp_path / "o.onnx") == 0
    onnx.checker.check_model(onnx.load(tmp_path / "o.onnx"))


def test_opt_dump_dir_numbers_passes(tmp_path):
    assert qcc("opt", MODEL, "-p", "canonicalize,canonicalize", "-o", tmp_path / "o.qir",
               "--dump-dir", tmp_path / "dump") == 0
    assert _listing(tmp_path / "dump") == ["001_canonicalize.npz", "001_canonicalize.qir",
                                           "002_canonicalize.npz", "002_canonicalize.qir"]


def test_compile_without_targets_is_a_clear_user_error(tmp_path, capsys):
    assert qcc("compile", "--target", "tpu", "-o", tmp_path / "out") == 2
    assert "target 'tpu'" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ bad input

def _bad_model(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / "bad.onnx"
    if kind == "truncated":
        p.write_bytes(MODEL.read_bytes()[:1000])
    elif kind == "garbage":
        p.write_bytes(b"\x00\xffnot a model at all" * 10)
    elif kind == "unsupported":
        node = helper.make_node("Hardmax", ["x"], ["y"], name="my_hardmax")
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    elif kind == "qir":
        p = tmp_path / "bad.qir"
        p.write_text('qir 1\ngraph "g" (%x: f32[1,4]) -> (%y) {\n  %y: f32[1,4] = Relu "r" (%x\n}\n')
    return p


@pytest.mark.parametrize("kind, message", [
    ("truncated", "bad.onnx"),
    ("garbage", "bad.onnx"),
    ("unsupported", "unsupported op 'Hardmax' at node 'my_hardmax'; supported ops: "),
    ("qir", "bad.qir:4:1: expected ')'"),
])
@pytest.mark.parametrize("command", ["show", "run", "opt", "import"])
def test_bad_models_exit_2_without_output(tmp_path, capsys, kind, message, command):
    model = _bad_model(tmp_path, kind)
    if command == "import" and kind == "qir":
        message = "must be an .onnx model"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 4), np.float32))
    args = {
        "show": ["show", model],
        "run": ["run", model, tmp_path / "in.npz", "-o", out_dir / "o.npz"],
        "opt": ["opt", model, "-p", "canonicalize", "-o", out_dir / "o.qir"],
        "import": ["import", model, "-o", out_dir / "o.qir"],
    }[command]
    assert qcc(*args) == 2
    assert message in _one_line_error(capsys)
    assert _listing(out_dir) == []


def test_wrong_input_shape_for_run(tmp_path, capsys):
    np.savez(tmp_path / "in.npz", input=np.zeros((2, 1, 7, 8), np.float32))
    assert qcc("run", MODEL, tmp_path / "in.npz", "-o", tmp_path / "o.npz") == 2
    assert "input 'input' has shape [2, 1, 7, 8], expected ['N', 1, 8, 8]" in _one_line_error(capsys)
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["show", "missing.onnx"], "does not exist"),
    (["show", "model.txt"], "unknown model format"),
    (["opt", "MODEL", "-p", "no-such-pass", "-o", "o.qir"], "unknown pass 'no-such-pass'"),
    (["frobnicate"], "invalid choice"),
    ([], "no command given"),
])
def test_usage_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    args = [str(MODEL) if a == "MODEL" else a for a in args]
    assert qcc(*args) == 2
    assert message in _one_line_error(capsys)


def test_internal_errors_exit_1(monkeypatch, capsys):
    import qcc.cli as cli

    def boom(args):
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli, "cmd_show", boom)
    assert qcc("show", MODEL) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: kaput" in err and "Traceback" not in err


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "qcc.cli", "show", str(MODEL), "--summary"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "/fc/Gemm" in proc.stdout


@pytest.mark.parametrize("location, message", [
    ("../outside.data", "escapes the model's folder"),
    ("missing.data", "not found"),
])
def test_external_data_errors_exit_2(tmp_path, capsys, location, message):
    fixture = Path(__file__).parents[1] / "fixtures" / "external_ts.onnx"
    model = onnx.load(fixture, load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    (tmp_path / "m").mkdir()
    onnx.save_model(model, tmp_path / "m" / "model.onnx")
    (tmp_path / "outside.data").write_bytes(b"\x00" * 4096)
    assert qcc("import", tmp_path / "m" / "model.onnx", "-o", tmp_path / "m" / "out.qir") == 2
    assert message in _one_line_error(capsys)
    assert _listing(tmp_path / "m") == ["model.onnx"]


def test_opt_quantizes_with_config_and_runs_integer(tmp_path, capsys):
    from qcc.examples import CALIB

    cfg = tmp_path / "layers.toml"
    cfg.write_text('[default]\nw_bits = 4\na_bits = 8\n[layers."/fc/Gemm"]\nw_bits = 8\n')
    out = tmp_path / "q.qir"
    assert qcc("opt", MODEL, "-p", "fold-bn,calibrate,quantize", "--calib", CALIB, "--config", cfg, "-o", out) == 0
    text = out.read_text()
    assert "quant uniform{bits = 4" in text and "quant uniform{bits = 8" in text
    capsys.readouterr()
    assert qcc("run", out, EVAL, "-o", tmp_path / "o.npz") == 0
    printed = capsys.readouterr().out
    assert "int semantics" in printed and "top-1 accuracy against y" in printed
    assert qcc("opt", MODEL, "-p", "fold-bn,calibrate,quantize", "--calib", CALIB, "--config", cfg,
               "-o", tmp_path / "q.onnx", "--onnx-format", "qdq") == 0
    onnx.checker.check_model(onnx.load(tmp_path / "q.onnx"))


def test_budgets_on_opt_assign_mixed_precision(tmp_path, capsys):
    from qcc.examples import CALIB

    pipeline = "fold-bn,calibrate,annotate-sensitivity{workers=1,bits=[2,4,8]},assign-bits,quantize"
    assert qcc("opt", MODEL, "-p", pipeline, "--calib", CALIB, "--weight-budget", "5kB", "-o", tmp_path / "q.qir",
               "--report", tmp_path / "r.json", "-q") == 0
    import json

    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["totals"]["weight_bits_total"] <= 5000 * 8
    assert doc["baselines"]["fp32"]["weight_bits_total"] > doc["baselines"]["uniform8"]["weight_bits_total"]
    assert {"predicted_l2", "measured_l2", "measured_top1"} <= set(doc["accuracy"])
    w_bits = {r["w_bits"] for r in doc["layers"] if r["op"] in ("Conv", "Gemm")}
    assert len(w_bits) > 1  # not uniform
    assert qcc("opt", MODEL, "-p", pipeline, "--calib", CALIB, "--weight-budget", "1kB", "-o", tmp_path / "x.qir") == 2
    assert "weight_budget 1kB (8000 bits) is too small: needs at least" in _one_line_error(capsys)
    assert not (tmp_path / "x.qir").exists()
    assert qcc("opt", MODEL, "-p", "canonicalize", "--weight-budget", "5kB", "-o", tmp_path / "y.qir") == 2
    assert "add it to the pipeline" in _one_line_error(capsys)


def test_analyze_writes_report_and_plots(tmp_path, capsys):
    from qcc.examples import CALIB

    out = tmp_path / "analysis"
    assert qcc("analyze", MODEL, "--calib", CALIB, "--eval", EVAL, "-o", out, "--bits", "2,4,8", "--workers", "1",
               "-q") == 0
    assert _listing(out) == ["layers.png", "pareto.png", "report.json", "sensitivity.png"]
    printed = capsys.readouterr().out
    assert "/conv2/Conv  weights" in printed and "pareto 1" in printed
    import json

    doc = json.loads((out / "report.json").read_text())
    assert doc["schema"] == "qcc.report/1" and doc["analysis"]["pareto"]
    assert all(p["measured_top1"] is not None for p in doc["analysis"]["pareto"])
    assert doc["layers"][0]["sensitivity"] is not None


@pytest.mark.parametrize("args, message", [
    (["analyze", "MODEL", "--calib", "CALIB", "-o", "OUT", "--bits", "2,four"], "--bits must be comma-separated"),
    (["compile", "--target", "cim", "-o", "FULL"], "exists and is not empty"),
])
def test_output_and_option_errors_come_before_any_work(tmp_path, capsys, args, message):
    from qcc.examples import CALIB

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    subst = {"MODEL": MODEL, "CALIB": CALIB, "OUT": tmp_path / "out", "FULL": tmp_path / "full"}
    assert qcc(*[subst.get(a, a) for a in args]) == 2
    assert message in _one_line_error(capsys)
    assert _listing(tmp_path) == ["full"] and _listing(tmp_path / "full") == ["keep.txt"]
