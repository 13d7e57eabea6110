"""Shape inference with symbolic dims, MAC counts, and the error paths of every op family."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import ShapeError, UnsupportedOpError, VerifyError
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType
from qcc.ops import all_ops, get_op


def infer(op: str, shapes: list, dtypes: list[str] | None = None, **attrs) -> TensorType:
    """The single output type of `op` on inputs of the given shapes (float32 unless dtypes say)."""
    dtypes = dtypes or ["float32"] * len(shapes)
    in_types = [TensorType(tuple(s), d) if s is not None else None for s, d in zip(shapes, dtypes)]
    opdef = get_op(op)
    (out,) = opdef.infer_types(in_types, opdef.complete_attrs(attrs, in_types), node_name="n")
    return out


def macs(op: str, shapes: list, **attrs) -> int:
    opdef = get_op(op)
    in_types = [TensorType(tuple(s)) if s is not None else None for s in shapes]
    attrs = opdef.complete_attrs(attrs, in_types)
    out_types = opdef.infer_types(in_types, attrs, node_name="n")
    return opdef.macs(in_types, out_types, attrs)


def test_every_op_documents_itself():
    for name, opdef in all_ops().items():
        assert opdef.doc, f"{name} has no doc"


# ----------------------------------------------------------------- symbolic dims
@pytest.mark.parametrize(("op", "shapes", "attrs", "expected"), [
    ("Reshape", [("N", 16, 4, 4)], {"shape": [0, -1]}, ("N", 256)),
    ("Reshape", [("N", 16, 4, 4)], {"shape": [-1, 16]}, ("N_x_16", 16)),
    ("Reshape", [("N", 6)], {"shape": [0, 2, 3]}, ("N", 2, 3)),
    ("Flatten", [("N", 16, 4, 4)], {}, ("N", 256)),
    ("Flatten", [("N", 16, 4, 4)], {"axis": 0}, (1, "N_x_256")),
    ("Flatten", [("N", 16, 4, 4)], {"axis": -1}, ("N_x_64", 4)),
    ("Conv", [("N", 3, 8, 8), (4, 3, 3, 3)], {"pads": [1, 1, 1, 1]}, ("N", 4, 8, 8)),
    ("MatMul", [("B", 2, 5, 3), (3, 7)], {}, ("B", 2, 5, 7)),
    ("MatMul", [(3,), (3,)], {}, ()),
    ("MaxPool", [("N", 2, 7, 7)], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, ("N", 2, 4, 4)),
    ("GlobalAveragePool", [("N", 5, 3, 3)], {}, ("N", 5, 1, 1)),
    ("Concat", [("N", 3), ("N", 2)], {"axis": 1}, ("N", 5)),
    ("Concat", [("N", 3), (2, 3)], {"axis": 0}, ("N_plus_2", 3)),
    ("Squeeze", [("N", 1, 4, 1)], {}, ("N", 4)),
    ("Unsqueeze", [("N", 4)], {"axes": [-1, 1]}, ("N", 1, 4, 1)),
    ("ReduceMean", [("N", 4, 5)], {"axes": [-1]}, ("N", 4, 1)),
    ("Transpose", [("N", 4, 5)], {}, (5, 4, "N")),
    ("Pad", [("N", 4)], {"pads": [1, -1, 1, 2]}, ("N_plus_2", 5)),
    ("Add", [("N", 1, 4), (3, 1)], {}, ("N", 3, 4)),
    ("BatchNormalization", [("N", 3, 2), (3,), (3,), (3,), (3,)], {}, ("N", 3, 2)),
    ("QuantizeLinear", [("N", 3), (3,)], {}, ("N", 3)),
])
def test_symbolic_dims(op, shapes, attrs, expected):
    assert infer(op, shapes, **attrs).shape == expected


def test_quantize_output_dtype_follows_zero_point():
    assert infer("QuantizeLinear", [(2, 3), (), ()], ["float32", "float32", "int8"]).dtype == "int8"
    assert infer("QuantizeLinear", [(2, 3), ()]).dtype == "uint8"
    assert infer("DequantizeLinear", [(2, 3), (3,), (3,)], ["int8", "float32", "int8"]).dtype == "float32"


def test_graph_with_symbolic_batch_runs():
    g = Graph()
    x = g.add_input("x", TensorType(("N", 2, 4, 4)))
    w = g.add_constant("w", np.ones((3, 2, 3, 3), np.float32))
    y = g.add_node("Conv", [x, w], attrs={"pads": [1, 1, 1, 1]}).output
    y = g.add_node("Relu", [y]).output
    y = g.add_node("MaxPool", [y], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}).output
    y = g.add_node("Reshape", [y], attrs={"shape": [0, -1]}).output
    assert y.type.shape == ("N", 12)
    g.set_outputs([y])
    out = run(g, {"x": np.ones((5, 2, 4, 4), np.float32)})[y.name]
    assert out.shape == (5, 12)
    assert out.max() == 18.0  # an interior 3x3 window over two all-ones channels


# ----------------------------------------------------------------- MACs
def test_macs_per_sample():
    # Conv: every output element takes Cin/group * kh * kw multiply-accumulates
    assert macs("Conv", [("N", 4, 8, 8), (6, 2, 3, 3)], group=2, pads=[1, 1, 1, 1]) == 6 * 8 * 8 * 2 * 9
    assert macs("Gemm", [(1, 10), (10, 5)]) == 50
    assert macs("Gemm", [(10, "N"), (5, 10)], transA=1, transB=1) == 50
    assert macs("MatMul", [("B", 4, 10), (10, 5)]) == 4 * 5 * 10
    assert macs("MatMul", [(10,), (10,)]) == 10
    assert macs("BatchNormalization", [("N", 3, 4, 4), (3,), (3,), (3,), (3,)]) == 48
    for op, shapes, attrs in [("Relu", [(2, 3)], {}), ("Add", [(2, 3), (3,)], {}),
                              ("MaxPool", [(1, 1, 4, 4)], {"kernel_shape": [2, 2]}),
                              ("Reshape", [(2, 3)], {"shape": [-1]})]:
        assert macs(op, shapes, **attrs) == 0


# ----------------------------------------------------------------- errors, per family
SHAPE_ERRORS = [
    # layers with weights
    ("Conv", [(1, 3, 8, 8), (4, 2, 3, 3)], {}, "channels"),
    ("Gemm", [(2, 3), (4, 5)], {}, "inner dims"),
    ("MatMul", [(2, 3), (4, 5)], {}, "inner dims"),
    ("MatMul", [(2, 2, 3), (3, 3, 4)], {}, "batch dims"),
    ("MatMul", [(), (3,)], {}, "rank >= 1"),
    ("BatchNormalization", [(1, 3, 4), (3,), (3,), (4,), (3,)], {}, "4 entries"),
    ("BatchNormalization", [(3,), (3,), (3,), (3,), (3,)], {}, "rank >= 2"),
    # activations
    ("Softmax", [(2, 3)], {"axis": 2}, "out of range"),
    ("Clip", [(2, 3)], {"min": float("nan")}, "NaN"),
    # elementwise
    ("Add", [(2, 3), (4,)], {}, "do not broadcast"),
    ("Mul", [(2, 3), (2, 3)], {"dtypes": ["float32", "int32"]}, "mix dtypes"),
    # pooling
    ("MaxPool", [(1, 1, 2, 2)], {"kernel_shape": [3, 3]}, "larger than the padded input"),
    ("AveragePool", [(1, 1, 4, 4)], {"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}, "smaller than kernel"),
    ("MaxPool", [(1, 4)], {"kernel_shape": [2]}, "rank >= 3"),
    ("AveragePool", [(1, 1, 4, 4)], {"kernel_shape": [2]}, "do not fit 2 spatial dims"),
    ("GlobalAveragePool", [(2, 3)], {}, "rank >= 3"),
    # data movement
    ("Concat", [(2, 3), (2, 4)], {"axis": 0}, "differ in dim 1"),
    ("Concat", [(2, 3), (2, 3, 1)], {"axis": 0}, "differ in rank"),
    ("Reshape", [(2, 3)], {"shape": [4, 2]}, "cannot reshape"),
    ("Reshape", [(2, 3)], {"shape": [-1, 4]}, "cannot reshape"),
    ("Reshape", [(2, 3)], {"shape": [-1, -1]}, "more than one -1"),
    ("Reshape", [(2, 3)], {"shape": [0, 0, 0]}, "does not have"),
    ("Flatten", [(2, 3)], {"axis": 3}, "out of range"),
    ("Transpose", [(2, 3, 4)], {"perm": [0, 0, 1]}, "not a permutation"),
    ("Squeeze", [(2, 1)], {"axes": [0]}, "not 1"),
    ("Squeeze", [(1, 1)], {"axes": [0, -2]}, "repeat"),
    ("Unsqueeze", [(2, 3)], {"axes": [5]}, "out of range"),
    ("ReduceMean", [(2, 3)], {"axes": [2]}, "out of range"),
    ("Pad", [(2, 3)], {"pads": [1, 1]}, "2 x rank"),
    ("Pad", [(2, 3)], {"pads": [0, -4, 0, 0]}, "below zero"),
    ("Pad", [(2, 3)], {"pads": [0, 3, 0, 0], "mode": "reflect"}, "smaller than its size"),
    ("Pad", [(2, 3)], {"pads": [0, 1, 0, 0], "mode": "wrap"}, "not supported"),
    # quantization
    ("QuantizeLinear", [(2, 3), (2,)], {"axis": 1}, "per-axis scale has 2 entries"),
    ("QuantizeLinear", [(2, 3), (3,), (2,)], {"dtypes": ["float32", "float32", "uint8"]}, "zero_point shape"),
    ("QuantizeLinear", [(2, 3), (), ()], {"dtypes": ["float32", "float32", "int32"]}, "zero_point dtype"),
    ("DequantizeLinear", [(2, 3), ()], {"dtypes": ["float32", "float32"]}, "input dtype"),
    ("MultiThreshold", [(1, 3, 4), (2, 5)], {}, "2 rows"),
    ("MultiThreshold", [(1, 3, 4), (3, 5)], {"data_layout": "NC"}, "data_layout"),
    ("MultiThreshold", [(1, 3, 4), (3,)], {}, "2-d"),
]


@pytest.mark.parametrize(("op", "shapes", "attrs", "reason"), SHAPE_ERRORS,
                         ids=[f"{e[0]}-{e[3]}" for e in SHAPE_ERRORS])
def test_shape_errors_name_node_and_reason(op, shapes, attrs, reason):
    attrs = dict(attrs)
    dtypes = attrs.pop("dtypes", None)
    with pytest.raises(ShapeError, match=reason) as info:
        infer(op, shapes, dtypes, **attrs)
    message = str(info.value)
    assert message.startswith(f"node 'n' ({op}): ")
    assert "\n" not in message


def test_shape_error_from_graph_building():
    g = Graph()
    a = g.add_input("a", TensorType((2, 3)))
    b = g.add_input("b", TensorType((2, 4)))
    with pytest.raises(ShapeError, match=r"node 'join' \(Concat\): inputs differ in dim 1"):
        g.add_node("Concat", [a, b], attrs={"axis": 0}, name="join")


def test_missing_required_attribute_is_a_verify_error():
    with pytest.raises(VerifyError, match="missing required attribute 'shape'"):
        infer("Reshape", [(2, 3)])


def test_unsupported_op_names_op_and_node():
    with pytest.raises(UnsupportedOpError, match="unsupported op 'Gelu' at node 'act3'") as info:
        get_op("Gelu", node_name="act3")
    assert info.value.op_type == "Gelu"
    assert info.value.node_name == "act3"
    assert "Conv" in str(info.value) and "MultiThreshold" in str(info.value)


def test_unsupported_op_from_graph_building():
    g = Graph()
    x = g.add_input("x", TensorType((2, 3)))
    with pytest.raises(UnsupportedOpError, match="'Erf' at node 'e1'"):
        g.add_node("Erf", [x], name="e1")
