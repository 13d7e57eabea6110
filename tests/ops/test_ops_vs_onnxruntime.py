"""Every op's shape inference and float reference against onnxruntime, on hypothesis-drawn cases.

Each case becomes a single-node ONNX model (opset 21). Operands the IR keeps as attributes (Reshape's
shape, Clip's bounds, Squeeze/Unsqueeze/ReduceMean axes, Pad's pads and value) go back to ONNX
initializers. MultiThreshold is not an ONNX op: it is checked against a direct numpy definition and
a hand-computed example instead.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import ModelProto, helper, numpy_helper

from qcc.ir.types import TensorType
from qcc.ops import all_ops, get_op
from qcc.testing.ops import OP_CASES, OpCase, multi_threshold_cases

OPSET = 21
NOT_ONNX = {"MultiThreshold"}
ORT_OPS = sorted(set(OP_CASES) - NOT_ONNX)

_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------- IR -> ONNX
def _const(name: str, value, dtype) -> object:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _operand_inputs(op: str, attrs: dict, x_dtype: np.dtype) -> tuple[dict, list, list[str]]:
    """Split IR attributes into ONNX attributes and extra constant inputs (initializers)."""
    attrs = dict(attrs)
    inits: list = []
    names: list[str] = []

    def add(name: str, value, dtype) -> None:
        inits.append(_const(name, value, dtype))
        names.append(name)

    if op == "Reshape":
        add("shape", attrs.pop("shape"), np.int64)
    elif op == "Clip":
        add("min", attrs.pop("min"), x_dtype)
        add("max", attrs.pop("max"), x_dtype)
    elif op in ("Squeeze", "ReduceMean"):
        axes = attrs.pop("axes")
        if axes:
            add("axes", axes, np.int64)
    elif op == "Unsqueeze":
        add("axes", attrs.pop("axes"), np.int64)
    elif op == "Pad":
        add("pads", attrs.pop("pads"), np.int64)
        value = attrs.pop("value")
        if attrs["mode"] == "constant":
            add("value", value, x_dtype)
    return attrs, inits, names


def to_onnx(op: str, inputs: list[np.ndarray | None], attrs: dict, out_dtype: str) -> ModelProto:
    """A single-node model: array inputs become graph inputs, attribute operands initializers."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and names[-1] == "":
        names.pop()
    onnx_attrs, inits, extra = _operand_inputs(op, attrs, inputs[0].dtype)
    node = helper.make_node(op, names + extra, ["y"], **onnx_attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                    for n, a in zip(names, inputs) if a is not None]
    out = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)), None)
    graph = helper.make_graph([node], op, graph_inputs, [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def run_onnxruntime(model: ModelProto, inputs: list[np.ndarray | None]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {f"in{i}": a for i, a in enumerate(inputs) if a is not None}
    return session.run(None, feeds)[0]


# ----------------------------------------------------------------- comparison
def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    """Exact for integer results; max abs error <= 1e-5 * max(1, max|ref|) for floats."""
    assert got.shape == ref.shape, f"shape {got.shape} != onnxruntime {ref.shape}"
    assert got.dtype == ref.dtype, f"dtype {got.dtype} != onnxruntime {ref.dtype}"
    if np.issubdtype(ref.dtype, np.integer):
        np.testing.assert_array_equal(got, ref)
        return
    if ref.size == 0:
        return
    tol = 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


def _check_case(case) -> None:
    opdef = get_op(case.op)
    in_types = [TensorType.of(a) if a is not None else None for a in case.inputs]
    attrs = opdef.complete_attrs(case.attrs, in_types)
    (out_type,) = opdef.infer_types(in_types, attrs, node_name="n")
    (got,) = opdef.evaluate(list(case.inputs), attrs)
    ref = run_onnxruntime(to_onnx(case.op, case.inputs, attrs, out_type.dtype), case.inputs)
    assert tuple(ref.shape) == out_type.shape, f"inferred {out_type.shape}, onnxruntime gives {ref.shape}"
    assert str(ref.dtype) == out_type.dtype
    assert_close(np.asarray(got), ref)


def test_every_registered_op_has_cases():
    assert set(OP_CASES) == set(all_ops())


@pytest.mark.parametrize("op", ORT_OPS)
@_SETTINGS
@given(data=st.data())
def test_op_matches_onnxruntime(op, data):
    _check_case(data.draw(OP_CASES[op], label="case"))


def test_quantize_linear_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 300.0, -300.0], np.float32)
    scale, zp = np.array(1.0, np.float32), np.array(0, np.int8)
    (got,) = get_op("QuantizeLinear").evaluate([x, scale, zp], {"axis": 1})
    np.testing.assert_array_equal(got, np.array([0, 2, 2, 0, -2, -2, 127, -128], np.int8))
    ref = run_onnxruntime(to_onnx("QuantizeLinear", [x, scale, zp], {"axis": 1}, "int8"), [x, scale, zp])
    np.testing.assert_array_equal(got, ref)


def test_average_pool_ceil_mode_divisors_match_onnxruntime():
    x = np.ones((1, 1, 5), np.float32)
    for include in (0, 1):
        attrs = {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "ceil_mode": 1, "count_include_pad": include}
        _check_case(OpCase("AveragePool", [x], attrs))


# ----------------------------------------------------------------- MultiThreshold (QONNX)
def _multithreshold_reference(x, thresholds, out_scale, out_bias, layout):
    """Straight from the definition: add one level per threshold column that x reaches."""
    xc = x if layout == "NCHW" else np.moveaxis(x, -1, 1)
    shape = (1, thresholds.shape[0]) + (1,) * (x.ndim - 2)
    level = np.zeros(xc.shape)
    for j in range(thresholds.shape[1]):
        level += xc >= thresholds[:, j].reshape(shape)
    y = out_scale * level + out_bias
    y = y if layout == "NCHW" else np.moveaxis(y, 1, -1)
    return y.astype(x.dtype)


@_SETTINGS
@given(case=multi_threshold_cases())
def test_multithreshold_matches_definition(case):
    opdef = get_op("MultiThreshold")
    in_types = [TensorType.of(a) for a in case.inputs]
    attrs = opdef.complete_attrs(case.attrs, in_types)
    (out_type,) = opdef.infer_types(in_types, attrs, node_name="mt")
    (got,) = opdef.evaluate(case.inputs, attrs)
    want = _multithreshold_reference(*case.inputs, attrs["out_scale"], attrs["out_bias"], attrs["data_layout"])
    assert out_type == TensorType.of(want)
    np.testing.assert_array_equal(got, want)


def test_multithreshold_hand_checked_example():
    x = np.array([[[-0.5, 1.0, 2.5], [-1.0, 0.0, 6.0]]], np.float32)  # N=1, C=2, W=3
    thresholds = np.array([[0.0, 1.0, 2.0], [-1.0, -1.0, 5.0]], np.float32)
    attrs = {"out_scale": 2.0, "out_bias": -1.0, "out_dtype": "UINT2", "data_layout": "NCHW"}
    (got,) = get_op("MultiThreshold").evaluate([x, thresholds], attrs)
    # levels: channel 0 -> [0, 2, 3]; channel 1 -> [2, 2, 3]; then 2 * level - 1
    np.testing.assert_array_equal(got, np.array([[[-1.0, 3.0, 5.0], [3.0, 3.0, 5.0]]], np.float32))
    shared = np.array([[0.0, 1.0, 2.0]], np.float32)
    nhwc = np.transpose(x, (0, 2, 1))  # N, W, C
    (got,) = get_op("MultiThreshold").evaluate([nhwc, shared], {**attrs, "data_layout": "NHWC"})
    # shared thresholds: channel 0 -> [0, 2, 3]; channel 1 -> [0, 1, 3]
    np.testing.assert_array_equal(got, np.array([[[-1.0, -1.0], [3.0, 1.0], [5.0, 5.0]]], np.float32))
