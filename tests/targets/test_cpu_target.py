"""The cpu target end to end: `qcc compile --target cpu` builds the quantized example into one TVM
module (model.so), and `qcc run OUTDIR` / `qcc.targets.cpu.load(OUTDIR)` equal the integer interpreter
on the whole evaluation set bit for bit, with no node left to the host."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tvm")

from qcc.cli import main  # noqa: E402
from qcc.errors import QccError  # noqa: E402
from qcc.examples import CALIB, EVAL, MODEL  # noqa: E402
from qcc.frontend.qir import load  # noqa: E402
from qcc.interp import run  # noqa: E402
from qcc.target import get_target, read_artifacts  # noqa: E402


def qcc(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu") / "out"
    assert qcc("compile", MODEL, "--target", "cpu", "--calib", CALIB, "-q", "-o", out) == 0
    return out


def test_compile_writes_one_module_params_and_plan(compiled):
    meta = json.loads((compiled / "metadata.json").read_text())
    graph = load(compiled / "model.qir")
    macs = [n.name for n in graph.nodes if n.op in ("Conv", "Gemm")]
    assert [k["node"] for k in meta["kernels"]] == macs  # every MAC layer is a bit-serial kernel
    assert meta["host_nodes"] == []
    assert [s["kind"] for s in meta["plan"]] == ["module"]
    for name in ("model.so", "params.npz", "model.qir"):
        assert (compiled / name).is_file()
    assert not (compiled / "kernels").exists()
    assert read_artifacts(compiled).target == "cpu"


def test_run_equals_integer_interpreter_on_the_eval_set(compiled, tmp_path):
    x = np.load(EVAL)["x"]
    graph = load(compiled / "model.qir")
    np.savez(tmp_path / "in.npz", **{graph.inputs[0].name: x})
    assert qcc("run", compiled, tmp_path / "in.npz", "-o", tmp_path / "out.npz") == 0
    got = np.load(tmp_path / "out.npz")
    want = run(graph, {graph.inputs[0].name: x}, mode="int")
    assert set(got.files) == set(want)
    for name, value in want.items():
        assert np.array_equal(got[name], value)


def test_load_returns_a_callable_taking_batches(compiled):
    from qcc.targets.cpu import load as load_cpu

    model = load_cpu(compiled)
    x = np.load(EVAL)["x"][:5]
    graph = load(compiled / "model.qir")
    want = run(graph, {graph.inputs[0].name: x}, mode="int")
    got = model(x)
    assert all(np.array_equal(got[k], v) for k, v in want.items())
    assert get_target("cpu").simulate(read_artifacts(compiled), {"x": x[:1]})["logits"].shape == (1, 10)


def test_cost_reports_accelerated_layers(compiled):
    graph = load(compiled / "model.qir")
    report = get_target("cpu").cost(graph)
    assert report.totals["accelerated_layers"] == 5
    assert all(c.fields["word_ops"] > 0 for c in report.layers)


def test_table_fields_are_cost_fields(compiled):
    graph = load(compiled / "model.qir")
    report = get_target("cpu").cost(graph)
    assert set(get_target("cpu").table_fields) <= set(report.layers[0].fields)


def test_unknown_option_is_a_clear_error():
    with pytest.raises(QccError, match="cpu target takes no option --arch"):
        get_target("cpu", arch="x.toml")
