"""`qcc compile --eval` and the target's table columns, through a small target defined here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qcc.cli import main
from qcc.examples import EVAL
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.target import _TARGETS, Artifacts, CostReport, LayerCost, LegalBits, Target, register_target


class _InterpreterTarget(Target):
    """Runs the saved graph with the integer interpreter; `skew` adds an error to the logits."""

    name = "interp-test"
    table_fields = ("widgets",)
    skew = 0.0

    def __init__(self, **options):
        pass

    def legal_bits(self, node):
        return LegalBits(weight_bits=(8,), activation_bits=(8,))

    @property
    def default_pipeline(self) -> str:
        return "fold-bn,calibrate,quantize{w_bits=8,a_bits=8}"

    def cost(self, graph: Graph) -> CostReport:
        layers = tuple(LayerCost(n.name, n.op, {"widgets": 1000 + i}) for i, n in enumerate(graph.nodes))
        return CostReport(layers=layers, totals={"widgets": sum(c.fields["widgets"] for c in layers)})

    def explain(self, graph: Graph):
        return {n.name: ("widget unit", f"a {n.op} with a weight") for n in graph.nodes if n.op in ("Conv", "Gemm")}

    def lower(self, graph: Graph, out_dir: Path) -> Artifacts:
        from qcc.frontend.qir import save

        save(graph, out_dir / "model.qir")
        return Artifacts(out_dir, {"model": out_dir / "model.qir"}, self.name)

    def simulate(self, artifacts, inputs):
        from qcc.frontend.qir import load

        out = run(load(artifacts.files["model"]), inputs, mode="int")
        return {k: v + self.skew for k, v in out.items()}


class _SkewedTarget(_InterpreterTarget):
    name = "skewed-test"
    skew = 1e-3


@pytest.fixture(autouse=True)
def _registered():
    register_target("interp-test", _InterpreterTarget)
    register_target("skewed-test", _SkewedTarget)
    yield
    _TARGETS.pop("interp-test", None)
    _TARGETS.pop("skewed-test", None)


def _eval_file(tmp_path: Path, n: int = 40, **override) -> Path:
    with np.load(EVAL) as z:
        data = {"x": z["x"][:n], "y": z["y"][:n]}
    data.update(override)
    path = tmp_path / "eval.npz"
    np.savez(path, **data)
    return path


def test_eval_reports_target_and_interpreter_top1(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", "--target", "interp-test", "-o", str(out), "-q", "--eval", str(_eval_file(tmp_path))]) == 0
    accuracy = json.loads((out / "report.json").read_text())["accuracy"]
    assert accuracy["eval_samples"] == 40
    assert accuracy["target_equals_int"] is True
    assert accuracy["target_top1"] == accuracy["int_top1"] > 0.9
    stdout = capsys.readouterr().out
    assert "outputs bit-identical to the interpreter's" in stdout


def test_eval_notices_a_target_that_differs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", "--target", "skewed-test", "-o", str(out), "-q", "--eval", str(_eval_file(tmp_path))]) == 0
    assert json.loads((out / "report.json").read_text())["accuracy"]["target_equals_int"] is False
    assert "DIFFERENT from the interpreter's" in capsys.readouterr().out


def test_table_shows_the_targets_cost_columns_with_totals(tmp_path, capsys):
    assert main(["compile", "--target", "interp-test", "-o", str(tmp_path / "out"), "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "widgets"
    layer_rows = [line for line in lines[2:] if line and not line.startswith(("-", "total"))]
    assert [row.split()[-1] for row in layer_rows] == [f"{1000 + i:,}" for i in range(len(layer_rows))]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[-1] == f"{sum(1000 + i for i in range(len(layer_rows))):,}"


@pytest.mark.parametrize("override, message", [
    ({"y": np.zeros(3, np.int64)}, "one integer label per sample"),
    ({"y": np.zeros(40, np.float32)}, "one integer label per sample"),
])
def test_bad_eval_files_are_user_errors_before_any_work(tmp_path, capsys, override, message):
    out = tmp_path / "out"
    assert main(["compile", "--target", "interp-test", "-o", str(out), "-q",
                 "--eval", str(_eval_file(tmp_path, **override))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qcc: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_eval_file_without_labels_is_a_user_error(tmp_path, capsys):
    path = tmp_path / "x.npz"
    np.savez(path, x=np.zeros((2, 1, 8, 8), np.float32))
    assert main(["compile", "--target", "interp-test", "-o", str(tmp_path / "out"), "-q", "--eval", str(path)]) == 2
    assert "must hold arrays 'x' (inputs) and 'y' (labels)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_explain_prints_every_node_with_the_targets_reason(tmp_path, capsys):
    assert main(["compile", "--target", "interp-test", "-o", str(tmp_path / "out"), "-q", "--explain"]) == 0
    out = capsys.readouterr().out
    explained = out[out.index("interp-test lowering"):].splitlines()[2:]
    rows = {line.split()[0]: line for line in explained if line.strip()}
    assert "widget unit" in rows["/conv1/Conv"] and "a Conv with a weight" in rows["/conv1/Conv"]
    assert "no target code" in rows["/relu1/Relu"]
    assert len(rows) == 13  # every node of the example


class _NarrowTarget(_InterpreterTarget):
    name = "narrow-test"
    accumulator_bits = 16


def test_compile_refuses_accumulators_that_can_overflow_unless_allowed(tmp_path, capsys):
    register_target("narrow-test", _NarrowTarget)
    try:
        out = tmp_path / "out"
        assert main(["compile", "--target", "narrow-test", "-o", str(out), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert "needs an accumulator of" in err and "more than acc-bits=16" in err and "--allow-overflow" in err
        assert "\n" not in err and not out.exists()
        assert main(["compile", "--target", "narrow-test", "-o", str(out), "-q", "--allow-overflow"]) == 0
        assert main(["compile", "--target", "interp-test", "-o", str(tmp_path / "wide"), "-q"]) == 0  # no width
    finally:
        _TARGETS.pop("narrow-test", None)


def test_empty_eval_file_is_a_user_error(tmp_path, capsys):
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    assert main(["compile", "--target", "interp-test", "-o", str(tmp_path / "out"), "-q", "--eval", str(path)]) == 2
    assert "holds no samples" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
