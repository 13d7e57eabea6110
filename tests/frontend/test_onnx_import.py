"""ONNX import: folding, op conventions, quantizer annotations, and every bad-input path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcc.errors import ModelImportError, QccError, UnsupportedOpError
from qcc.frontend.onnx import import_model, supported_ops
from qcc.interp import run
from qcc.ir.quant import Bipolar, Thresholds, Uniform
from qcc.ir.verify import verify

F = TensorProto.FLOAT
QONNX = "qonnx.custom_op.general"
FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures"


def make(nodes, inputs, outputs, inits=(), opset=17, domains=(), name="g"):
    """A model from nodes; inputs are (name, shape) float tensors, outputs names of float tensors."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def ort_run(proto, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Reference semantics: no fusions (QDQ fusions compute in integers and round differently).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(proto, feeds, mode="float"):
    """Import, verify, interpret; compare with onnxruntime; return the graph."""
    graph = import_model(proto)
    verify(graph)
    got = run(graph, feeds, mode=mode)
    for value, ref in zip(graph.outputs, ort_run(proto, feeds)):
        tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got[value.name], ref, rtol=0, atol=tol)
    return graph


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ops(graph):
    return [n.op for n in graph.nodes]


# ---------------------------------------------------------------------- folding
def test_pytorch_view_chain_with_symbolic_batch_folds_to_copy_dim():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["i0"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Constant", [], ["m1"], value_ints=[-1]),
        helper.make_node("Concat", ["n1", "m1"], ["target"], axis=0),
        helper.make_node("Identity", ["target"], ["target2"]),
        helper.make_node("Reshape", ["x", "target2"], ["y"]),
    ]
    proto = make(nodes, [("x", ["batch", 3, 4])], ["y"], [("ax", np.array([0], np.int64))])
    graph = check(proto, {"x": rand(5, 3, 4)})
    assert ops(graph) == ["Reshape"]
    assert graph.nodes[0].attrs["shape"] == [0, -1]
    assert graph.outputs[0].type.shape[0] == "batch"
    assert not graph.constants  # shape operands leave no dead weights


def test_symbolic_product_becomes_minus_one():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i"], ["n"], axis=0),
        helper.make_node("Mul", ["n", "two"], ["n2"]),
        helper.make_node("Unsqueeze", ["n2", "ax"], ["n3"]),
        helper.make_node("Concat", ["n3", "three"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    inits = [("i", np.array(0, np.int64)), ("two", np.array(2, np.int64)), ("ax", np.array([0], np.int64)),
             ("three", np.array([3], np.int64))]
    graph = check(make(nodes, [("x", ["N", 2, 3])], ["y"], inits), {"x": rand(4, 2, 3)})
    assert graph.nodes[0].attrs["shape"] == [-1, 3]


def test_flatten_target_from_a_shape_product():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
        helper.make_node("Slice", ["s", "one", "big"], ["rest"]),
        helper.make_node("ReduceProd", ["rest"], ["p"], keepdims=1),
        helper.make_node("Concat", ["n", "p"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    inits = [("zero", np.array([0], np.int64)), ("one", np.array([1], np.int64)),
             ("big", np.array([2**62], np.int64))]
    graph = check(make(nodes, [("x", ["N", 2, 3])], ["y"], inits, opset=13), {"x": rand(4, 2, 3)})
    assert graph.nodes[0].attrs["shape"] == [0, 6]
    nodes[3] = helper.make_node("ReduceProd", ["s"], ["p"], keepdims=1)  # N*2*3: unknown -> -1
    graph = check(make(nodes[:1] + nodes[3:4] + [helper.make_node("Reshape", ["x", "p"], ["y"])],
                       [("x", ["N", 2, 3])], ["y"], opset=13), {"x": rand(4, 2, 3)})
    assert graph.nodes[0].attrs["shape"] == [-1]


def test_two_runtime_dims_in_a_reshape_target_are_rejected():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "k"], ["t"]),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    proto = make(nodes, [("x", ["N", "M"])], ["y"], [("k", np.array([2, 2], np.int64))])
    with pytest.raises(ModelImportError, match="more than one dim known only at run time"):
        import_model(proto)


def test_static_shape_chain_folds_to_numbers():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1),
        helper.make_node("Cast", ["s"], ["sf"], to=F),
        helper.make_node("Cast", ["sf"], ["si"], to=TensorProto.INT64),
        helper.make_node("ReduceProd", ["si"], ["p"], keepdims=1),
        helper.make_node("Concat", ["m1", "p"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    proto = make(nodes, [("x", [2, 3, 4])], ["y"], [("m1", np.array([-1], np.int64))])
    graph = check(proto, {"x": rand(2, 3, 4)})
    assert graph.nodes[0].attrs["shape"] == [-1, 12]
    nodes[3] = helper.make_node("Slice", ["si", "st", "en"], ["p"])
    proto = make(nodes, [("x", [2, 3, 4])], ["y"], [("m1", np.array([-1], np.int64)),
                                                   ("st", np.array([-1], np.int64)),
                                                   ("en", np.array([100], np.int64))])
    graph = check(proto, {"x": rand(2, 3, 4)})
    assert graph.nodes[0].attrs["shape"] == [-1, 4]


def test_constant_arithmetic_and_expand_fold_like_unoptimized_dynamo_output():
    nodes = [
        helper.make_node("Shape", ["w"], ["ws"], start=0, end=1),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("CastLike", ["zero", "x"], ["zero_f"]),
        helper.make_node("Expand", ["zero_f", "ws"], ["b"]),
        helper.make_node("Conv", ["x", "w", "b"], ["y"]),
    ]
    proto = make(nodes, [("x", [1, 2, 5, 5])], ["y"], [("w", rand(3, 2, 3, 3))])
    graph = check(proto, {"x": rand(1, 2, 5, 5)})
    assert ops(graph) == ["Conv"]
    np.testing.assert_array_equal(graph.nodes[0].inputs[2].data, np.zeros(3, np.float32))


def test_identity_nodes_fold_and_output_names_are_kept():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"]),
             helper.make_node("Identity", ["x"], ["z"])]
    graph = check(make(nodes, [("x", [2, 3])], ["y", "z"]), {"x": rand(2, 3)})
    assert [v.name for v in graph.outputs] == ["y", "z"]
    assert ops(graph) == ["Relu", "Identity"]  # an input passed straight out needs its Identity


# ---------------------------------------------------------------------- naming and types
def test_node_names_kept_or_generated_deterministically():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["y"])]
    graph = import_model(make(nodes, [("x", [1, 2])], ["y"]))
    assert [n.name for n in graph.nodes] == ["first", "Relu_1", "Sigmoid_2"]
    assert [o.name for n in graph.nodes for o in n.outputs] == ["a", "b", "y"]
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="Relu_0"),
             helper.make_node("Relu", ["b"], ["y"], name="Relu_0")]
    graph = import_model(make(nodes, [("x", [1, 2])], ["y"]))
    assert [n.name for n in graph.nodes] == ["Relu_0_1", "Relu_0", "Relu_0_2"]


def test_symbolic_dims_are_sanitized_and_unnamed_dims_get_names():
    x = helper.make_tensor_value_info("in.0", F, ["batch size", 3, None])
    graph = helper.make_graph([helper.make_node("Relu", ["in.0"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", F, None)])
    g = import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    shape = g.inputs[0].type.shape
    assert shape[0] == "batch_size" and shape[1] == 3
    assert isinstance(shape[2], str) and shape[2].isidentifier()


def test_model_proto_without_folder_rejects_external_data(tmp_path):
    proto = make([helper.make_node("Add", ["x", "w"], ["y"])], [("x", [4])], ["y"], [("w", rand(4))])
    onnx.save_model(proto, tmp_path / "m.onnx", save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    loaded = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    with pytest.raises(ModelImportError, match="without its folder"):
        import_model(loaded)
    graph = import_model(loaded, base_dir=tmp_path)
    np.testing.assert_array_equal(run(graph, {"x": np.zeros(4, np.float32)})["y"], rand(4))


# ---------------------------------------------------------------------- op conventions
@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
def test_auto_pad_becomes_explicit_pads(mode, op):
    if op == "Conv":
        node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=mode, strides=[2, 2])
        inits = [("w", rand(2, 3, 3, 2))]
    else:
        node = helper.make_node(op, ["x"], ["y"], auto_pad=mode, kernel_shape=[3, 2], strides=[2, 2])
        inits = []
    graph = check(make([node], [("x", [1, 3, 6, 7])], ["y"], inits), {"x": rand(1, 3, 6, 7)})
    assert graph.nodes[0].attrs["auto_pad"] == "NOTSET"


def test_auto_pad_needs_static_spatial_dims():
    node = helper.make_node("MaxPool", ["x"], ["y"], auto_pad="SAME_UPPER", kernel_shape=[3, 3])
    with pytest.raises(ModelImportError, match="static spatial size"):
        import_model(make([node], [("x", [1, 3, "H", 7])], ["y"]))


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_spatial_reduce_mean_is_global_average_pool(opset, keepdims):
    if opset >= 18:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)
        inits = [("axes", np.array([-1, -2], np.int64))]
    else:
        node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1, -2], keepdims=keepdims)
        inits = []
    graph = check(make([node], [("x", ["N", 3, 4, 5])], ["y"], inits, opset=opset), {"x": rand(2, 3, 4, 5)})
    assert ops(graph) == (["GlobalAveragePool"] if keepdims else ["GlobalAveragePool", "Flatten"])
    assert graph.outputs[0].name == "y"


def test_other_reduce_mean_stays():
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)
    graph = check(make([node], [("x", [2, 3, 4])], ["y"], opset=13), {"x": rand(2, 3, 4)})
    assert ops(graph) == ["ReduceMean"] and graph.nodes[0].attrs["axes"] == [1]


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax_before_opset_13_keeps_its_semantics(axis):
    node = helper.make_node("Softmax", ["x"], ["y"], axis=axis)
    check(make([node], [("x", ["N", 3, 4])], ["y"], opset=11), {"x": rand(2, 3, 4)})


def test_clip_squeeze_unsqueeze_pad_transpose_operands_become_attributes():
    nodes = [
        helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
        helper.make_node("Unsqueeze", ["c", "ax0"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax0"], ["s"]),
        helper.make_node("Pad", ["s", "pads", "pv"], ["p"], mode="constant"),
        helper.make_node("Transpose", ["p"], ["y"]),
    ]
    inits = [("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.7, np.float32)),
             ("ax0", np.array([0], np.int64)), ("pads", np.array([0, 1, 0, 2], np.int64)),
             ("pv", np.array(0.25, np.float32))]
    graph = check(make(nodes, [("x", [2, 3])], ["y"], inits), {"x": rand(2, 3)})
    assert ops(graph) == ["Clip", "Unsqueeze", "Squeeze", "Pad", "Transpose"]
    attrs = [n.attrs for n in graph.nodes]
    assert attrs[0]["min"] == -0.5 and attrs[1]["axes"] == [0] and attrs[3]["pads"] == [0, 1, 0, 2]
    assert attrs[4]["perm"] == [1, 0]
    assert not graph.constants


def test_opset_11_squeeze_unsqueeze_use_attributes():
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[-1]), helper.make_node("Squeeze", ["u"], ["y"])]
    graph = check(make(nodes, [("x", [2, 3])], ["y"], opset=11), {"x": rand(2, 3)})
    assert graph.nodes[0].attrs["axes"] == [2] and graph.nodes[1].attrs["axes"] == [2]


def test_batchnorm_training_outputs_are_rejected():
    inits = [(n, np.ones(3, np.float32)) for n in ("s", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                            training_mode=1)
    with pytest.raises(ModelImportError, match="training_mode=1"):
        import_model(make([node], [("x", [1, 3, 2, 2])], ["y"], inits), check=False)
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], momentum=0.8, epsilon=1e-3)
    graph = check(make([node], [("x", [1, 3, 2, 2])], ["y"], inits), {"x": rand(1, 3, 2, 2)})
    assert graph.nodes[0].attrs == {"epsilon": pytest.approx(1e-3)}


def test_inference_dropout_disappears():
    node = helper.make_node("Dropout", ["x"], ["y"])
    graph = import_model(make([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Dropout", ["r"], ["y"])],
                              [("x", [2])], ["y"]))
    assert ops(graph) == ["Relu"] and node.op_type == "Dropout"


def test_maxpool_indices_output_is_rejected():
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])
    with pytest.raises(ModelImportError, match="Indices"):
        import_model(make([node], [("x", [1, 1, 4, 4])], ["y"]))


# ---------------------------------------------------------------------- bad input
def test_truncated_file(tmp_path):
    data = make([helper.make_node("Relu", ["x"], ["y"])], [("x", [2])], ["y"], [("w", rand(64))]).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelImportError, match="not a valid ONNX model") as e:
        import_model(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("payload", [b"\x00" * 7, b"hello, this is not a model at all \xff\xfe",
                                     np.random.default_rng(3).bytes(257), b""])
def test_garbage_bytes(tmp_path, payload):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(payload)
    with pytest.raises(ModelImportError, match="not a valid ONNX model") as e:
        import_model(path)
    assert "\n" not in str(e.value)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelImportError, match="not found"):
        import_model(tmp_path / "nope.onnx")


def test_unsupported_op_names_op_node_and_supported_ops():
    node = helper.make_node("Hardmax", ["x"], ["y"], name="my_hardmax")
    with pytest.raises(UnsupportedOpError) as e:
        import_model(make([node], [("x", [2, 3])], ["y"]))
    msg = str(e.value)
    assert "'Hardmax'" in msg and "'my_hardmax'" in msg and "Conv" in msg and "Reshape" in msg
    assert e.value.op_type == "Hardmax" and e.value.node_name == "my_hardmax"
    assert "Hardmax" not in supported_ops() and "Conv" in supported_ops()


def test_unsupported_custom_domain_op_names_its_domain():
    node = helper.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft")
    with pytest.raises(UnsupportedOpError, match="com.microsoft.FusedConv"):
        import_model(make([node], [("x", [2])], ["y"], domains=["com.microsoft"]))


@pytest.mark.parametrize("opset", [7, 10, 22, 30])
def test_opset_outside_11_to_21_is_rejected(opset):
    proto = make([helper.make_node("Relu", ["x"], ["y"])], [("x", [2])], ["y"], opset=opset)
    with pytest.raises(ModelImportError, match=f"opset {opset}; qcc imports opsets 11 to 21"):
        import_model(proto)


def test_runtime_gather_is_rejected_clearly():
    node = helper.make_node("Gather", ["x", "i"], ["y"], axis=0, name="lookup")
    with pytest.raises(ModelImportError, match="'lookup'.*computed at run time"):
        import_model(make([node], [("x", [4, 2])], ["y"], [("i", np.array([1, 0], np.int64))]))


def test_constant_gather_out_of_range_is_a_clear_error():
    node = helper.make_node("Gather", ["c", "i"], ["y"], axis=0, name="g")
    proto = make([node], [], ["y"], [("c", np.arange(3, dtype=np.float32)), ("i", np.array([5], np.int64))])
    with pytest.raises(ModelImportError, match="'g'.*cannot be evaluated at import: index out of range"):
        import_model(proto, check=False)


def test_folding_refuses_huge_tensors():
    node = helper.make_node("ConstantOfShape", ["s"], ["y"], name="big")
    proto = make([node], [], ["y"], [("s", np.array([1 << 20, 1 << 20], np.int64))])
    with pytest.raises(ModelImportError, match="'big'.*too large"):
        import_model(proto, check=False)


def _external_model(tmp_path, location: str):
    proto = make([helper.make_node("Add", ["x", "w"], ["y"])], [("x", [4])], ["y"], [("w", rand(4))])
    onnx.save_model(proto, tmp_path / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    loaded = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    for entry in loaded.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save_model(loaded, path)
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _external_model(tmp_path, "w.bin")
    (tmp_path / "w.bin").rename(path.parent / "w.bin")
    graph = import_model(path)
    np.testing.assert_array_equal(graph.constants[0].data, rand(4))


def test_external_data_missing_file(tmp_path):
    path = _external_model(tmp_path, "weights/none.bin")
    with pytest.raises(ModelImportError, match="'weights/none.bin'.*not found"):
        import_model(path)


def test_external_data_escaping_with_dotdot(tmp_path):
    path = _external_model(tmp_path, "../w.bin")
    with pytest.raises(ModelImportError, match=r"'\.\./w\.bin'.*escapes the model's folder"):
        import_model(path)


def test_external_data_absolute_path(tmp_path):
    path = _external_model(tmp_path, str(tmp_path / "w.bin"))
    with pytest.raises(ModelImportError, match="absolute path"):
        import_model(path)


def test_external_data_symlink_escaping(tmp_path):
    path = _external_model(tmp_path, "link.bin")
    os.symlink(tmp_path / "w.bin", path.parent / "link.bin")
    with pytest.raises(ModelImportError, match="'link.bin'.*outside the model's folder"):
        import_model(path)


def test_external_data_too_short(tmp_path):
    path = _external_model(tmp_path, "w.bin")
    (path.parent / "w.bin").write_bytes(b"\x00" * 8)
    with pytest.raises(ModelImportError, match="too short"):
        import_model(path)


def test_error_messages_are_one_line_qcc_errors(tmp_path):
    path = _external_model(tmp_path, "../w.bin")
    with pytest.raises(QccError) as e:
        import_model(path)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


# ---------------------------------------------------------------------- QDQ
def _qdq_model(zp_dtype=np.int8, axis_scale=None):
    scale = np.array(0.05, np.float32) if axis_scale is None else np.asarray(axis_scale, np.float32)
    zp = np.zeros(scale.shape, zp_dtype) + (3 if zp_dtype == np.int8 else 128)
    wq = np.random.default_rng(1).integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    wscale = np.array([0.01, 0.02, 0.015, 0.03], np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], axis=1),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], axis=1),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [("s", scale), ("z", zp), ("wq", wq), ("ws", wscale), ("wz", np.zeros(4, np.int8))]
    return make(nodes, [("x", ["N", 3, 5, 5])], ["y"], inits, opset=13)


@pytest.mark.parametrize("zp_dtype", [np.int8, np.uint8])
def test_qdq_pair_and_int8_weights_become_annotations(zp_dtype):
    proto = _qdq_model(zp_dtype)
    graph = check(proto, {"x": rand(2, 3, 5, 5)}, mode="fake")
    assert ops(graph) == ["Conv"]
    x, w = graph.nodes[0].inputs[:2]
    assert x.name == "x" and x.quant == Uniform(bits=8, signed=zp_dtype == np.int8, scale=float(np.float32(0.05)),
                                                zero_point=3 if zp_dtype == np.int8 else 128)
    assert w.name == "w" and w.type.dtype == "float32"
    assert isinstance(w.quant, Uniform) and w.quant.axis == 0 and w.quant.zero_point == 0
    assert len(w.quant.scale) == 4


def test_per_axis_activation_quantizer():
    proto = _qdq_model(axis_scale=[0.05, 0.1, 0.02])
    graph = check(proto, {"x": rand(2, 3, 5, 5)}, mode="fake")
    assert graph.inputs[0].quant.axis == 1 and len(graph.inputs[0].quant.scale) == 3


def test_one_quantizer_read_by_several_dequantizers_is_one_annotation():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s"], ["d1"]),
        helper.make_node("DequantizeLinear", ["rq", "s"], ["d2"]),
        helper.make_node("Add", ["d1", "d2"], ["y"]),
    ]
    graph = check(make(nodes, [("x", [2, 8])], ["y"], [("s", np.array(0.1, np.float32))]), {"x": rand(2, 8)},
                  mode="fake")
    assert ops(graph) == ["Relu", "Add"] and graph.nodes[0].output.quant.bits == 8


def test_annotated_value_with_other_readers_gets_an_identity():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"], name="dq"),
        helper.make_node("Add", ["rd", "r"], ["y"]),
    ]
    inits = [("s", np.array(0.1, np.float32)), ("z", np.array(0, np.uint8))]
    graph = check(make(nodes, [("x", [2, 8])], ["y"], inits), {"x": rand(2, 8)}, mode="fake")
    assert ops(graph) == ["Relu", "Identity", "Add"]
    ident = graph.nodes[1]
    assert ident.name == "dq" and ident.output.name == "rd" and ident.output.quant.bits == 8
    assert graph.nodes[0].output.quant is None


def test_quantized_graph_output_keeps_its_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("QuantizeLinear", ["r", "s"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]
    graph = check(make(nodes, [("x", [2, 8])], ["y"], [("s", np.array(0.1, np.float32))]), {"x": rand(2, 8)},
                  mode="fake")
    assert ops(graph) == ["Relu"] and graph.outputs[0].name == "y"
    assert graph.outputs[0].quant == Uniform(bits=8, signed=False, scale=float(np.float32(0.1)))


def test_float_constant_through_qdq_is_quantized_and_annotated():
    w = rand(3, 4)
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    inits = [("w", w), ("s", np.array(0.02, np.float32)), ("z", np.array(0, np.int8))]
    graph = check(make(nodes, [("x", [2, 3])], ["y"], inits), {"x": rand(2, 3)})
    const = graph.nodes[0].inputs[1]
    assert const.name == "wd" and const.quant.bits == 8 and not np.array_equal(const.data, w)


def test_clip_before_quantizer_narrows_the_grid():
    spec = Uniform(bits=4, signed=True, scale=float(np.float32(0.1)), narrow=True)
    lo, hi = np.float32(-7 * spec.scale), np.float32(7 * spec.scale)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Clip", ["r", "lo", "hi"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [("lo", np.array(lo)), ("hi", np.array(hi)), ("s", np.array(0.1, np.float32)),
             ("z", np.array(0, np.int8))]
    graph = check(make(nodes, [("x", [64])], ["y"], inits), {"x": rand(64) * 2}, mode="fake")
    assert graph.outputs[0].quant == spec and ops(graph) == ["Relu"]


def test_clip_not_on_the_grid_stays_a_clip():
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [("lo", np.array(-0.33, np.float32)), ("hi", np.array(0.5, np.float32)),
             ("s", np.array(0.1, np.float32)), ("z", np.array(0, np.int8))]
    graph = check(make(nodes, [("x", [64])], ["y"], inits), {"x": rand(64)}, mode="fake")
    assert ops(graph) == ["Clip"] and graph.outputs[0].quant.bits == 8


def test_lone_quantize_linear_stays_an_op():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])]
    inits = [("s", np.array(0.1, np.float32)), ("z", np.array(0, np.int8))]
    proto = make(nodes, [("x", [8])], [], inits)
    proto.graph.output.append(helper.make_tensor_value_info("y", TensorProto.INT8, None))
    graph = import_model(proto)
    verify(graph)
    assert ops(graph) == ["QuantizeLinear"]
    x = rand(8)
    np.testing.assert_array_equal(run(graph, {"x": x})["y"], ort_run(proto, {"x": x})[0])


def test_requantizing_pair_with_different_params_stays_ops():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s2", "z"], ["y"])]
    inits = [("s", np.array(0.1, np.float32)), ("s2", np.array(0.2, np.float32)), ("z", np.array(1, np.int8))]
    graph = check(make(nodes, [("x", [16])], ["y"], inits), {"x": rand(16)})
    assert ops(graph) == ["QuantizeLinear", "DequantizeLinear"]


def test_dequantized_int32_bias():
    nodes = [helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"]), helper.make_node("Add", ["x", "b"], ["y"])]
    inits = [("bq", np.array([-1000, 5, 70000], np.int32)), ("bs", np.array(0.001, np.float32))]
    graph = check(make(nodes, [("x", [2, 3])], ["y"], inits), {"x": rand(2, 3)})
    assert graph.nodes[0].inputs[1].quant.bits == 32


# ---------------------------------------------------------------------- QONNX
def _quant_node(inp, out, domain=QONNX, **attrs):
    return helper.make_node("Quant", [inp, "qs", "qz", "qb"], [out], domain=domain, **attrs)


@pytest.mark.parametrize("domain", [QONNX, "finn.custom_op.general"])
def test_qonnx_quant_on_activation(domain):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), _quant_node("r", "y", domain, signed=0, narrow=0,
                                                                 rounding_mode="ROUND")]
    inits = [("qs", np.array(0.125, np.float32)), ("qz", np.array(0.0, np.float32)),
             ("qb", np.array(3.0, np.float32))]
    graph = import_model(make(nodes, [("x", [2, 4])], ["y"], inits, domains=[domain]))
    verify(graph)
    assert ops(graph) == ["Relu"]
    assert graph.outputs[0].name == "y"
    assert graph.outputs[0].quant == Uniform(bits=3, signed=False, scale=0.125)
    x = rand(2, 4)
    want = np.clip(np.rint(np.maximum(x, 0) / 0.125), 0, 7) * 0.125
    np.testing.assert_array_equal(run(graph, {"x": x}, mode="fake")["y"], want.astype(np.float32))


def test_qonnx_quant_on_weights_quantizes_data():
    scale = np.array([0.5, 0.25], np.float32).reshape(2, 1)
    nodes = [_quant_node("w", "wq", signed=1, narrow=1), helper.make_node("MatMul", ["x", "wq"], ["y"])]
    inits = [("w", rand(2, 3)), ("qs", scale), ("qz", np.zeros((2, 1), np.float32)),
             ("qb", np.array(4.0, np.float32))]
    graph = import_model(make(nodes, [("x", [1, 2])], ["y"], inits, domains=[QONNX]))
    verify(graph)
    w = graph.nodes[0].inputs[1]
    assert w.quant == Uniform(bits=4, signed=True, narrow=True, scale=(0.5, 0.25), axis=0)
    q = w.data / np.array([[0.5], [0.25]])
    assert np.all(q == np.rint(q)) and np.all(np.abs(q) <= 7)


def test_qonnx_quant_rejects_other_rounding():
    nodes = [_quant_node("x", "y", rounding_mode="FLOOR")]
    inits = [("qs", np.array(1.0, np.float32)), ("qz", np.array(0.0, np.float32)), ("qb", np.array(4.0, np.float32))]
    with pytest.raises(ModelImportError, match="rounding_mode FLOOR"):
        import_model(make(nodes, [("x", [2])], ["y"], inits, domains=[QONNX]))


def test_bipolar_quant():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BipolarQuant", ["x", "bs"], ["b"], domain=QONNX),
             helper.make_node("Add", ["b", "r"], ["y"])]
    graph = import_model(make(nodes, [("x", [2, 4])], ["y"], [("bs", np.array(0.5, np.float32))], domains=[QONNX]))
    verify(graph)
    # x has another reader (Relu), so the annotation sits on an Identity.
    assert ops(graph) == ["Relu", "Identity", "Add"]
    assert graph.nodes[1].output.quant == Bipolar(scale=0.5)


def test_multithreshold_with_constant_thresholds():
    thr = np.array([[-1.0, 0.0, 1.0], [-0.5, 0.5, 2.0]], np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("MultiThreshold", ["r", "t"], ["y"], domain=QONNX, out_scale=0.5, out_bias=-1.0,
                              out_dtype="FLOAT32", data_layout="NCHW")]
    graph = import_model(make(nodes, [("x", [1, 2, 3, 3])], ["y"], [("t", thr)], domains=[QONNX]))
    verify(graph)
    spec = graph.outputs[0].quant
    assert isinstance(spec, Thresholds) and spec.bits == 2 and spec.axis == 1
    assert spec.out_scale == 0.5 and spec.out_bias == -1.0
    x = rand(1, 2, 3, 3)
    r = np.maximum(x, 0)
    levels = (r[:, :, :, :, None] >= thr[None, :, None, None, :]).sum(-1)
    np.testing.assert_allclose(run(graph, {"x": x})["y"], 0.5 * levels - 1.0)


def test_multithreshold_out_dtype_sets_bits():
    thr = np.array([[0.0, 1.0, 2.0]], np.float32)
    node = helper.make_node("MultiThreshold", ["x", "t"], ["y"], domain=QONNX, out_dtype="UINT4")
    graph = import_model(make([helper.make_node("Relu", ["x0"], ["x"]), node], [("x0", [1, 4])], ["y"],
                              [("t", thr)], domains=[QONNX]))
    assert graph.outputs[0].quant.bits == 4


def test_qonnx_model_without_domain_opset_import_still_imports():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("BipolarQuant", ["r", "bs"], ["y"], domain=QONNX)]
    proto = make(nodes, [("x", [2])], ["y"], [("bs", np.array(1.0, np.float32))])
    assert import_model(proto).outputs[0].quant == Bipolar(scale=1.0)


def test_unknown_qonnx_op_is_unsupported():
    node = helper.make_node("Trunc", ["x"], ["y"], domain=QONNX)
    with pytest.raises(UnsupportedOpError, match="Trunc"):
        import_model(make([node], [("x", [2])], ["y"], domains=[QONNX]))


# ---------------------------------------------------------------------- folding agrees with onnxruntime
def _i64(*v):
    return np.array(v, np.int64)


FOLD_CASES = {
    "Range": ([_i64(1).reshape(()), _i64(9).reshape(()), _i64(3).reshape(())], {}),
    "ConstantOfShape": ([_i64(2, 3)], {"value": numpy_helper.from_array(np.array([1.5], np.float32))}),
    "Where": ([np.array([True, False, True]), _i64(1, 2, 3), _i64(7, 8, 9)], {}),
    "Equal": ([_i64(1, 2, 3), _i64(1, 0, 3)], {}),
    "Div": ([_i64(7, -7, 9), _i64(2, 2, -4)], {}),
    "Sub": ([_i64(7, -7, 9), _i64(2, 2, -4)], {}),
    "Neg": ([_i64(7, -7, 9)], {}),
    "Slice": ([_i64(0, 1, 2, 3, 4, 5), _i64(-1), _i64(-100), _i64(0), _i64(-2)], {}),
    "Transpose": ([np.arange(6, dtype=np.int64).reshape(2, 3)], {"perm": [1, 0]}),
    "Expand": ([_i64(1, 2, 3), _i64(2, 1)], {}),
    "Size": ([np.zeros((2, 5), np.float32)], {}),
    "ReduceProd": ([_i64(2, 3, 4)], {"keepdims": 0}),
    "Squeeze": ([np.zeros((1, 3, 1), np.int64)], {}),
}


@pytest.mark.parametrize("op", sorted(FOLD_CASES))
def test_folded_constants_match_onnxruntime(op):
    arrays, attrs = FOLD_CASES[op]
    names = [f"c{i}" for i in range(len(arrays))]
    nodes = [helper.make_node(op, names, ["f"], **attrs), helper.make_node("Cast", ["f"], ["ff"], to=F),
             helper.make_node("Add", ["x", "ff"], ["y"])]
    probe = make(nodes[:1], [], [], list(zip(names, arrays)), opset=17)
    probe.graph.output.append(helper.make_empty_tensor_value_info("f"))
    shape = ort_run(probe, {})[0].shape
    proto = make(nodes, [("x", list(shape))], ["y"], list(zip(names, arrays)))
    graph = check(proto, {"x": np.zeros(shape, np.float32)})
    assert ops(graph) == ["Add"]


def test_corrupted_fixture_bytes_never_escape_as_tracebacks():
    data = (FIXTURE_DIR / "residual_ts.onnx").read_bytes()
    rng = np.random.default_rng(1)
    for cut in np.linspace(1, len(data) - 1, 12).astype(int):
        with pytest.raises(QccError):
            import_model(data[:cut])
    for _ in range(30):
        b = bytearray(data)
        b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        try:
            verify(import_model(bytes(b)))
        except QccError as e:
            assert "\n" not in str(e)
