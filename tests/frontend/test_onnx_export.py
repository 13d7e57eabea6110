"""ONNX export: float graphs run in onnxruntime, annotations round-trip as QDQ and QONNX, QDQ runs
bit for bit like the fake-quant interpreter, bytes are deterministic, errors are clear."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.errors import ModelExportError, QccError
from qcc.frontend.onnx import export_model, import_model, save_model
from qcc.interp import run
from qcc.ir import Graph, TensorType
from qcc.ir.quant import Bipolar, Codebook, Region, Thresholds, Uniform
from qcc.ir.verify import verify
from qcc.numerics import fake_quant


def ort_run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Reference semantics: no fusions (QDQ fusions compute in integers and round differently).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def signature(g: Graph) -> list:
    """Everything that makes two graphs equivalent: names, ops, attrs, types, annotations, data."""
    def q(v):
        return (v.quant, v.region)

    sig: list = [("in", v.name, v.type, q(v)) for v in g.inputs]
    sig += sorted(("const", c.name, c.type, q(c), c.data.tobytes()) for c in g.constants)
    sig += [("node", n.name, n.op, sorted(n.attrs.items()), [i.name if i else None for i in n.inputs],
             [(o.name, o.type, q(o)) for o in n.outputs]) for n in g.nodes]
    sig += [("out", v.name) for v in g.outputs]
    return sig


def f32(x: float) -> float:
    return float(np.float32(x))


def rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------- float graphs
def _float_graph() -> Graph:
    g = Graph("float_ops")
    x = g.add_input("x", TensorType(("N", 3, 8, 8)))
    w = g.add_constant("w", rand(4, 3, 3, 3, seed=1, scale=0.3))
    b = g.add_constant("b", rand(4, seed=2))
    conv = g.add_node("Conv", [x, w, b], attrs={"pads": [1, 1, 1, 1]}, name="conv")
    bn = g.add_node("BatchNormalization", [conv.output] + [g.add_constant(n, np.abs(rand(4, seed=i)) + 0.5)
                                                           for i, n in enumerate(("s", "bb", "m", "v"))],
                    name="bn")
    lrelu = g.add_node("LeakyRelu", [bn.output], attrs={"alpha": 0.1}, name="lrelu")
    clip = g.add_node("Clip", [lrelu.output], attrs={"min": -0.5, "max": 2.0}, name="clip")
    mp = g.add_node("MaxPool", [clip.output], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, name="mp")
    ap = g.add_node("AveragePool", [mp.output], attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
                    name="ap")
    pad = g.add_node("Pad", [ap.output], attrs={"pads": [0, 0, 1, 0, 0, 0, 0, 1], "value": 0.5}, name="pad")
    gap = g.add_node("GlobalAveragePool", [pad.output], name="gap")
    sq = g.add_node("Squeeze", [gap.output], attrs={"axes": [2, 3]}, name="sq")
    us = g.add_node("Unsqueeze", [sq.output], attrs={"axes": [2]}, name="us")
    rm = g.add_node("ReduceMean", [pad.output], attrs={"axes": [2], "keepdims": 1}, name="rm")
    tr = g.add_node("Transpose", [rm.output], attrs={"perm": [0, 1, 3, 2]}, name="tr")
    fl = g.add_node("Flatten", [tr.output], name="fl")
    rs = g.add_node("Reshape", [us.output], attrs={"shape": [0, -1]}, name="rs")
    cat = g.add_node("Concat", [fl.output, rs.output], attrs={"axis": 1}, name="cat")
    gw = g.add_constant("gw", rand(24, 5, seed=3, scale=0.2))
    gb = g.add_constant("gb", rand(5, seed=4))
    gemm = g.add_node("Gemm", [cat.output, gw, gb], attrs={"alpha": 0.5}, name="gemm")
    mm = g.add_node("MatMul", [gemm.output, g.add_constant("mw", rand(5, 5, seed=5))], name="mm")
    sig = g.add_node("Sigmoid", [mm.output], name="sig")
    add = g.add_node("Add", [sig.output, gemm.output], name="add")
    sub = g.add_node("Sub", [add.output, g.add_constant("k", np.float32(0.25))], name="sub")
    mul = g.add_node("Mul", [sub.output, sub.output], name="mul")
    div = g.add_node("Div", [mul.output, g.add_constant("d", np.full(5, 2.0, np.float32))], name="div")
    relu = g.add_node("Relu", [div.output], name="relu")
    sm = g.add_node("Softmax", [relu.output], attrs={"axis": -1}, name="softmax")
    g.set_outputs([sm.output, fl.output])
    verify(g)
    return g


@pytest.mark.parametrize("opset", [11, 13, 17, 18, 21])
def test_float_graph_runs_in_onnxruntime_at_every_opset(opset):
    g = _float_graph()
    proto = export_model(g, opset)
    onnx.checker.check_model(proto, full_check=True)
    x = rand(2, 3, 8, 8, seed=9)
    want = run(g, {"x": x})
    for value, got in zip(g.outputs, ort_run(proto, {"x": x})):
        np.testing.assert_allclose(got, want[value.name], rtol=1e-5, atol=1e-5)
    assert signature(import_model(proto)) == signature(g)


def test_export_bytes_are_deterministic():
    a = export_model(_float_graph()).SerializeToString()
    b = export_model(_float_graph().clone()).SerializeToString()
    assert a == b


def test_exported_names_and_operands():
    proto = export_model(_float_graph(), 17)
    nodes = {n.name: n for n in proto.graph.node}
    assert [i.name for i in proto.graph.input] == ["x"]
    assert nodes["rs"].input[1] == "rs_shape" and len(nodes["clip"].input) == 3
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 3
    old = {n.name: n for n in export_model(_float_graph(), 11).graph.node}
    assert [a.name for a in old["sq"].attribute] == ["axes"] and len(old["sq"].input) == 1


def test_save_model_writes_atomically(tmp_path):
    path = tmp_path / "m.onnx"
    save_model(_float_graph(), path)
    assert onnx.load(path).graph.name == "float_ops"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    before = path.read_bytes()
    with pytest.raises(ModelExportError):
        save_model(_float_graph(), path, format="tflite")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_bad_opset_and_format_are_user_errors():
    with pytest.raises(ModelExportError, match="opset 9"):
        export_model(_float_graph(), 9)
    with pytest.raises(QccError, match="unknown export format 'x'"):
        export_model(_float_graph(), format="x")


def test_softmax_on_a_middle_axis_needs_opset_13():
    g = Graph()
    x = g.add_input("x", TensorType((2, 3, 4)))
    g.set_outputs([g.add_node("Softmax", [x], attrs={"axis": 1}, name="sm").output])
    with pytest.raises(ModelExportError, match="opset >= 13"):
        export_model(g, 11)
    x_ = rand(2, 3, 4)
    np.testing.assert_allclose(ort_run(export_model(g, 13), {"x": x_})[0], run(g, {"x": x_})["sm:out"],
                               rtol=1e-6, atol=1e-6)


def test_quantize_ops_and_multithreshold_ops_export():
    g = Graph()
    x = g.add_input("x", TensorType((1, 2, 3, 3)))
    s = g.add_constant("s", np.float32(0.1))
    z = g.add_constant("z", np.int8(2))
    q = g.add_node("QuantizeLinear", [x, s, z], name="q")
    d = g.add_node("DequantizeLinear", [q.output, s, z], name="d")
    g.set_outputs([d.output, q.output])
    proto = export_model(g)
    x_ = rand(1, 2, 3, 3)
    for value, got in zip(g.outputs, ort_run(proto, {"x": x_})):
        np.testing.assert_array_equal(got, run(g, {"x": x_})[value.name])
    t = Graph()
    x = t.add_input("x", TensorType((1, 2, 3, 3)))
    thr = t.add_input("t", TensorType((2, 3)))
    t.set_outputs([t.add_node("MultiThreshold", [x, thr], name="mt").output])
    node = export_model(t).graph.node[0]
    assert node.domain == "qonnx.custom_op.general" and node.op_type == "MultiThreshold"
    assert signature(import_model(export_model(t))) == signature(t)


# ---------------------------------------------------------------------- annotations
def _quant_graph(act: Uniform, weight: Uniform, out: Uniform | None = None, inp: Uniform | None = None) -> Graph:
    """x -> Conv(w) -> Relu -> Add(relu, conv) with the given annotations; relu output shared."""
    g = Graph("q")
    x = g.add_input("x", TensorType(("N", 3, 5, 5)), quant=inp)
    w = g.add_constant("w", fake_quant(rand(4, 3, 3, 3, seed=1, scale=0.2), weight), quant=weight)
    conv = g.add_node("Conv", [x, w], attrs={"pads": [1, 1, 1, 1]}, name="conv")
    conv.output.quant = act
    relu = g.add_node("Relu", [conv.output], name="relu")
    add = g.add_node("Add", [relu.output, conv.output], name="add")
    add.output.quant = out
    g.set_outputs([add.output, relu.output])
    verify(g)
    return g


W8 = Uniform(bits=8, signed=True, scale=(f32(0.01), f32(0.02), f32(0.015), f32(0.03)), axis=0)
A8 = Uniform(bits=8, signed=False, scale=f32(0.05), zero_point=100)


@pytest.mark.parametrize("fmt", ["qdq", "qonnx"])
@pytest.mark.parametrize("case", [
    (A8, W8, None, None),
    (A8, W8, Uniform(bits=8, signed=True, scale=f32(0.1), zero_point=-3),
     Uniform(bits=8, signed=True, scale=0.125)),
    (Uniform(bits=8, signed=True, scale=(0.25, 0.5, 0.125, 0.25), zero_point=(1, -2, 0, 3), axis=1), W8,
     None, None),
    (Uniform(bits=4, signed=False, scale=f32(0.2)), Uniform(bits=3, signed=True, scale=0.125, narrow=True),
     Uniform(bits=5, signed=True, scale=f32(0.07), narrow=True), Uniform(bits=2, signed=True, scale=0.5)),
])
def test_uniform_annotations_round_trip(fmt, case):
    g = _quant_graph(*case)
    proto = export_model(g, format=fmt)
    onnx.checker.check_model(proto)
    back = import_model(proto)
    verify(back)
    assert signature(back) == signature(g)
    assert export_model(back, format=fmt).SerializeToString() == proto.SerializeToString()
    if fmt == "qdq":
        x = rand(2, 3, 5, 5, seed=4)
        want = run(g, {"x": x}, mode="fake")
        for value, got in zip(g.outputs, ort_run(proto, {"x": x})):
            np.testing.assert_allclose(got, want[value.name], rtol=0, atol=1e-6)


def test_qonnx_only_annotations_round_trip():
    g = Graph("qonnx")
    x = g.add_input("x", TensorType((1, 4, 3, 3)), quant=Bipolar(scale=(0.5, 1.0, 0.25, 2.0), axis=1))
    wspec = Uniform(bits=12, signed=True, scale=(f32(0.001), f32(0.002), f32(0.003), f32(0.004)), axis=0)
    w = g.add_constant("w", fake_quant(rand(4, 4, 1, 1, seed=3), wspec), quant=wspec)
    bw = g.add_constant("bw", np.where(rand(4, 4, 1, 1, seed=4) >= 0, 0.5, -0.5).astype(np.float32),
                        quant=Bipolar(scale=0.5))
    conv = g.add_node("Conv", [x, w], name="conv")
    conv.output.quant = Thresholds(bits=2, thresholds=((-1.0, 0.0, 1.0),) * 4, out_scale=0.5, out_bias=-0.5)
    conv2 = g.add_node("Conv", [conv.output, bw], name="conv2")
    conv2.output.quant = Thresholds(bits=2, thresholds=((0.0, 1.0, 2.0),))
    ident = g.add_node("Identity", [conv2.output], name="q16")
    ident.output.quant = Uniform(bits=16, signed=True, scale=f32(0.001), zero_point=5)
    g.set_outputs([ident.output, conv2.output])
    verify(g)
    proto = export_model(g, format="qonnx")
    ops = [n.op_type for n in proto.graph.node]
    assert {"Quant", "BipolarQuant", "MultiThreshold"} <= set(ops)
    back = import_model(proto)
    verify(back)
    assert signature(back) == signature(g)
    x_ = rand(1, 4, 3, 3, seed=5)
    for name, want in run(g, {"x": x_}, mode="fake").items():
        np.testing.assert_array_equal(run(back, {"x": x_}, mode="fake")[name], want)
    with pytest.raises(ModelExportError, match="format='qonnx'"):
        export_model(g, format="qdq")


def test_identity_carrying_a_quantizer_round_trips():
    g = Graph()
    x = g.add_input("x", TensorType((2, 8)))
    r = g.add_node("Relu", [x], name="relu")
    ident = g.add_node("Identity", [r.output], name="qid")
    ident.output.quant = Uniform(bits=8, signed=False, scale=0.125)
    add = g.add_node("Add", [ident.output, r.output], name="add")
    g.set_outputs([add.output])
    for fmt in ("qdq", "qonnx"):
        assert signature(import_model(export_model(g, format=fmt))) == signature(g)


def test_regions_and_codebooks():
    g = _quant_graph(A8, W8)
    g.nodes[0].output.region = Region(top=1)
    with pytest.raises(ModelExportError, match="crop region"):
        export_model(g)
    g = Graph()
    x = g.add_input("x", TensorType((1, 4)))
    w = g.add_constant("w", np.array([[0.5, -0.5], [1.0, 0.5], [0.0, 1.0], [-0.5, -0.5]], np.float32),
                       quant=Codebook(bits=2, centroids=(-1, 0, 1, 2), centroid_scale=0.5))
    g.set_outputs([g.add_node("MatMul", [x, w], name="mm").output])
    verify(g)
    back = import_model(export_model(g))  # the values are exact; the table is not kept
    np.testing.assert_array_equal(back.constants[0].data, w.data)
    assert back.constants[0].quant is None


def test_per_axis_qdq_needs_opset_13():
    with pytest.raises(ModelExportError, match="opset >= 13"):
        export_model(_quant_graph(A8, W8), 11)
    export_model(_quant_graph(A8, Uniform(bits=8, scale=0.25)), 11)


# ---------------------------------------------------------------------- property tests
def _uniform(draw, bits_max: int, axis_ok: bool, channels: int) -> Uniform:
    bits = draw(st.integers(2, bits_max))
    signed = draw(st.booleans())
    narrow = signed and draw(st.booleans())
    per_axis = axis_ok and draw(st.booleans())
    n = channels if per_axis else 1
    scales = tuple(f32(2.0 ** draw(st.integers(-8, 0)) * draw(st.sampled_from([1.0, 0.75, 0.3])))
                   for _ in range(n))
    lo, hi = (-(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    zp = draw(st.integers(lo, hi)) if not signed else draw(st.integers(max(lo, -4), min(hi, 4)))
    return Uniform(bits=bits, signed=signed, narrow=narrow, scale=scales if per_axis else scales[0],
                   zero_point=zp, axis=0 if per_axis else None)


@st.composite
def quant_cases(draw, fmt: str):
    if fmt == "qdq":
        act = _uniform(draw, 8, False, 4)
        weight = _uniform(draw, 8, True, 4)
        if weight.axis is not None and (weight.bits < 8 or weight.narrow):
            weight = Uniform(bits=8, signed=True, scale=weight.scale, axis=0)
        return act, weight, _uniform(draw, 8, False, 4)
    return _uniform(draw, 16, True, 4), _uniform(draw, 16, True, 4), _uniform(draw, 16, False, 4)


@settings(max_examples=25, deadline=None)
@given(case=quant_cases("qdq"))
def test_random_qdq_annotations_round_trip(case):
    act, weight, out = case
    act = Uniform(bits=act.bits, signed=act.signed, narrow=act.narrow, scale=act.scale, zero_point=act.zero_point,
                  axis=None)
    g = _quant_graph(act, weight, out)
    assert signature(import_model(export_model(g, format="qdq"))) == signature(g)


@settings(max_examples=25, deadline=None)
@given(case=quant_cases("qonnx"))
def test_random_qonnx_annotations_round_trip(case):
    act, weight, out = case
    act = Uniform(bits=act.bits, signed=act.signed, narrow=act.narrow, scale=act.scale,
                  zero_point=act.zero_point, axis=1 if act.axis is not None else None)
    g = _quant_graph(act, weight, out)
    assert signature(import_model(export_model(g, format="qonnx"))) == signature(g)


@st.composite
def exact_graphs(draw):
    """8-bit uniform graphs whose float arithmetic is exact (power-of-two scales, small sums), so the
    only rounding is the quantizers'."""
    def spec(signed=None, per_axis=False):
        signed = draw(st.booleans()) if signed is None else signed
        zp = draw(st.integers(-5, 5)) if signed else draw(st.integers(0, 20))
        if per_axis:
            return Uniform(bits=8, signed=True, axis=0,
                           scale=tuple(2.0 ** draw(st.integers(-7, -4)) for _ in range(4)))
        return Uniform(bits=8, signed=signed, scale=2.0 ** draw(st.integers(-6, -2)), zero_point=zp)

    g = Graph("exact")
    x = g.add_input("x", TensorType(("N", 2, 5, 5)), quant=spec())
    ws = spec(per_axis=draw(st.booleans()))
    if ws.axis is None:
        ws = Uniform(bits=8, signed=True, scale=ws.scale)
    w = g.add_constant("w", fake_quant(rand(4, 2, 3, 3, seed=draw(st.integers(0, 9)), scale=0.1), ws), quant=ws)
    conv = g.add_node("Conv", [x, w], attrs={"pads": [1, 1, 1, 1], "strides": [draw(st.integers(1, 2))] * 2},
                      name="conv")
    conv.output.quant = spec()
    relu = g.add_node("Relu", [conv.output], name="relu")
    relu.output.quant = spec(signed=False)
    pool = g.add_node("MaxPool", [relu.output], attrs={"kernel_shape": [2, 2]}, name="pool")
    add = g.add_node("Add", [pool.output, g.add_node("MaxPool", [conv.output], attrs={"kernel_shape": [2, 2]},
                                                     name="pool2").output], name="add")
    add.output.quant = spec()
    g.set_outputs([add.output, relu.output])
    verify(g)
    return g


@settings(max_examples=20, deadline=None)
@given(g=exact_graphs(), seed=st.integers(0, 2**16))
def test_qdq_in_onnxruntime_equals_fake_quant_bit_for_bit(g, seed):
    x = rand(2, 2, 5, 5, seed=seed, scale=3.0)
    want = run(g, {"x": x}, mode="fake")
    got = ort_run(export_model(g, format="qdq"), {"x": x})
    for value, arr in zip(g.outputs, got):
        np.testing.assert_array_equal(arr, want[value.name])


def test_qdq_bit_for_bit_with_float32_scales():
    g = _quant_graph(Uniform(bits=8, signed=False, scale=f32(0.1), zero_point=128), Uniform(bits=8, scale=2.0**-6),
                     Uniform(bits=8, signed=True, scale=f32(0.07), zero_point=3),
                     Uniform(bits=8, signed=True, scale=2.0**-4))
    x = rand(3, 3, 5, 5, seed=11, scale=2.0)
    want = run(g, {"x": x}, mode="fake")
    for value, arr in zip(g.outputs, ort_run(export_model(g), {"x": x})):
        np.testing.assert_array_equal(arr, want[value.name])


def test_thresholds_bits_survive_via_out_dtype():
    g = Graph()
    x = g.add_input("x", TensorType((1, 2)))
    r = g.add_node("Relu", [x], name="r")
    r.output.quant = Thresholds(bits=4, thresholds=((0.0, 1.0, 2.0),), axis=1)
    g.set_outputs([r.output])
    back = import_model(export_model(g, format="qonnx"))
    assert back.outputs[0].quant.bits == 4 and math.isclose(back.outputs[0].quant.out_scale, 1.0)
