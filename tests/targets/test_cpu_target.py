"""The cpu target end to end: `qcc compile --target cpu` then `qcc run OUTDIR` equals the integer
interpreter on the quantized example bit for bit, with every Conv / Gemm run by a TVM kernel."""

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


def test_compile_writes_kernels_params_and_graph(compiled):
    layers = json.loads((compiled / "layers.json").read_text())["layers"]
    graph = load(compiled / "model.qir")
    macs = [n.name for n in graph.nodes if n.op in ("Conv", "Gemm")]
    assert [e["node"] for e in layers] == macs  # every MAC layer of the quantized example is a kernel
    for entry in layers:
        assert (compiled / entry["library"]).is_file()
    assert (compiled / "params.npz").is_file()
    assert read_artifacts(compiled).target == "cpu"


def test_run_equals_integer_interpreter(compiled, tmp_path, monkeypatch):
    import qcc.targets.cpu.layers as layers

    calls = []
    original = layers.LayerKernel.accumulate
    monkeypatch.setattr(layers.LayerKernel, "accumulate", lambda self, x: calls.append(1) or original(self, x))
    x = np.load(EVAL)["x"][:16]
    graph = load(compiled / "model.qir")
    np.savez(tmp_path / "in.npz", **{graph.inputs[0].name: x})
    assert qcc("run", compiled, tmp_path / "in.npz", "-o", tmp_path / "out.npz") == 0
    got = np.load(tmp_path / "out.npz")
    want = run(graph, {graph.inputs[0].name: x}, mode="int")
    assert set(got.files) == set(want)
    for name, value in want.items():
        assert np.array_equal(got[name], value)
    assert len(calls) == 5  # the four Convs and the Gemm went through TVM


def test_cost_reports_accelerated_layers(compiled):
    graph = load(compiled / "model.qir")
    report = get_target("cpu").cost(graph)
    assert report.totals["accelerated_layers"] == 5
    assert all(c.fields["word_ops"] > 0 for c in report.layers)


def test_unknown_option_is_a_clear_error():
    with pytest.raises(QccError, match="cpu target takes no option --arch"):
        get_target("cpu", arch="x.toml")
