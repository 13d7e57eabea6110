"""Real exporter output: models exported by PyTorch's two exporters (committed fixtures, made by
tests/fixtures/make_torch_fixtures.py) import, verify, interpret like onnxruntime, and survive
ONNX -> IR -> ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcc.frontend.onnx import export_model, import_model
from qcc.interp import run
from qcc.ir.verify import verify

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODELS = sorted(p.name for p in FIXTURES.glob("*.onnx"))
NETS = ("residual", "grouped", "batchnorm", "pooling", "gemm", "external")


def _input(model: str) -> np.ndarray:
    net = model.rsplit("_", 1)[0]
    with np.load(FIXTURES / f"{net}.npz") as data:
        assert list(data.keys()) == ["x"]
        return data["x"]


def _session(model: str | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(FIXTURES / model) if isinstance(model, str) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(got - ref).max()) <= tol


def test_every_net_was_exported_by_both_exporters():
    for net in NETS:
        assert f"{net}_ts.onnx" in MODELS and f"{net}_dynamo.onnx" in MODELS
    total = sum(p.stat().st_size for p in FIXTURES.iterdir() if p.suffix in (".onnx", ".data", ".npz"))
    assert total < 2_000_000


@pytest.mark.parametrize("model", MODELS)
def test_fixture_matches_onnxruntime(model):
    graph = import_model(FIXTURES / model)
    verify(graph)
    x = _input(model)
    ref = _session(model).run(None, {"x": x})[0]
    got = run(graph, {"x": x})[graph.outputs[0].name]
    _close(got, ref)


@pytest.mark.parametrize("model", MODELS)
def test_fixture_round_trips_through_onnx(model):
    graph = import_model(FIXTURES / model)
    x = _input(model)
    ref = _session(model).run(None, {"x": x})[0]
    exported = export_model(graph)
    onnx.checker.check_model(exported)
    again = _session(exported.SerializeToString()).run(None, {"x": x})[0]
    _close(again, ref)
    reimported = import_model(exported)
    assert [n.op for n in reimported.nodes] == [n.op for n in graph.nodes]


@pytest.mark.parametrize("model", [m for m in MODELS if not m.startswith(("batchnorm", "external"))])
def test_dynamic_batch_runs_at_another_batch_size(model):
    graph = import_model(FIXTURES / model)
    assert isinstance(graph.inputs[0].type.shape[0], str)
    x = np.concatenate([_input(model)] * 2 + [_input(model)[:1]])
    ref = _session(model).run(None, {"x": x})[0]
    _close(run(graph, {"x": x})[graph.outputs[0].name], ref)


@pytest.mark.parametrize("model", ["batchnorm_ts.onnx", "batchnorm_dynamo.onnx"])
def test_batchnorm_is_kept(model):
    ops = [n.op for n in import_model(FIXTURES / model).nodes]
    assert ops.count("BatchNormalization") == 2


@pytest.mark.parametrize("model", ["external_ts.onnx", "external_dynamo.onnx"])
def test_external_data_is_read_from_the_side_file(model):
    proto = onnx.load(FIXTURES / model, load_external_data=False)
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and (FIXTURES / f"{model}.data").is_file()
    graph = import_model(FIXTURES / model)
    names = {c.name for c in graph.constants}
    assert set(external) <= names


def test_pytorch_shape_chain_folds_to_a_reshape_attribute():
    graph = import_model(FIXTURES / "residual_ts.onnx")
    ops = [n.op for n in graph.nodes]
    assert not {"Shape", "Gather", "Unsqueeze", "Concat", "Constant"} & set(ops)
    reshape = next(n for n in graph.nodes if n.op == "Reshape")
    assert reshape.attrs["shape"] == [0, -1]


def test_adaptive_pooling_becomes_global_average_pool():
    for model in ("pooling_ts.onnx", "pooling_dynamo.onnx", "grouped_dynamo.onnx"):
        ops = [n.op for n in import_model(FIXTURES / model).nodes]
        assert "GlobalAveragePool" in ops and "ReduceMean" not in ops


def test_old_style_initializer_inputs_are_not_graph_inputs():
    proto = onnx.load(FIXTURES / "gemm_ts.onnx")
    assert len(proto.graph.input) > 1  # exported with keep_initializers_as_inputs=True
    graph = import_model(proto)
    assert [v.name for v in graph.inputs] == ["x"]
