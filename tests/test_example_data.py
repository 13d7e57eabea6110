"""The bundled example (qcc.examples): files, data format, BatchNormalization kept, float accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcc.examples as ex
from qcc.errors import QccError, ShapeError

_SPLIT_SIZES = {"calib": (250, 320), "eval": (340, 380)}


@pytest.fixture(scope="module")
def proto() -> onnx.ModelProto:
    return onnx.load(str(ex.MODEL))


def test_files_exist_beside_the_package():
    here = Path(ex.__file__).resolve().parent
    for path in (ex.MODEL, ex.CALIB, ex.EVAL):
        assert path.is_file(), path
        assert path.parent == here


def test_model_is_under_one_megabyte():
    assert ex.MODEL.stat().st_size < 1 << 20


@pytest.mark.parametrize("name", ["calib", "eval"])
def test_split_format(name):
    x, y = ex.load_split(name)
    low, high = _SPLIT_SIZES[name]
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.ndim == 4 and x.shape[1:] == (1, 8, 8)
    assert low <= x.shape[0] <= high
    assert y.shape == (x.shape[0],)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y).tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["calib", "eval"])
def test_npz_has_exactly_x_and_y(name):
    with np.load(ex.SPLITS[name]) as data:
        assert sorted(data.files) == ["x", "y"]


def test_model_interface(proto):
    onnx.checker.check_model(proto)
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == "input" and out.name == "logits"
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["N", 1, 8, 8]
    assert out_dims == ["N", 10]


def test_model_keeps_batchnorm_and_residual(proto):
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 4
    assert ops.count("Conv") == 4
    assert ops.count("Add") == 1
    assert all(n.name for n in proto.graph.node)


def test_onnxruntime_eval_accuracy():
    x, y = ex.load_split("eval")
    session = ort.InferenceSession(str(ex.MODEL), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x})
    assert logits.shape == (x.shape[0], 10)
    assert ex.accuracy(logits, y) >= 0.95


def test_accuracy_counts_top1():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    assert ex.accuracy(logits, np.array([1, 0, 0, 1])) == pytest.approx(0.5)


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ShapeError, match="logits"):
        ex.accuracy(np.zeros((3, 10)), np.zeros(4, dtype=np.int64))


def test_load_split_rejects_unknown_name():
    with pytest.raises(QccError, match="unknown example split 'train'"):
        ex.load_split("train")
