"""Bipolar layers on crossbars: w = 2b - 1 and x = 2a - 1 as 1-bit cells and DAC codes plus digital corrections."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcc.errors import QccError
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.ir.quant import Bipolar, Region, Uniform
from qcc.ir.types import TensorType
from qcc.targets.cim import CimTarget
from qcc.targets.cim.arch import Arch
from qcc.targets.cim.cost import layer_cost
from qcc.targets.cim.mapping import map_graph, mapping_to_json
from qcc.targets.cim.simulate import simulate


def _sign_weights(rng, shape, cout_axis):
    alphas = rng.uniform(0.02, 0.2, size=shape[cout_axis])
    signs = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    scale = alphas.reshape([-1 if i == cout_axis else 1 for i in range(len(shape))])
    return (signs * scale).astype(np.float32), Bipolar(scale=tuple(float(a) for a in alphas), axis=cout_axis)


def _uniform_weights(draw, rng, shape, cout_axis):
    w_bits, signed = draw(st.integers(1, 6)), draw(st.booleans())
    probe = Uniform(bits=w_bits, signed=signed)
    cout = shape[cout_axis]
    zps = tuple(int(z) for z in rng.integers(probe.qmin, probe.qmax + 1, size=cout)) \
        if draw(st.booleans()) else (0,) * cout
    spec = Uniform(bits=w_bits, signed=signed, scale=tuple(float(s) for s in rng.uniform(0.01, 0.1, size=cout)),
                   zero_point=zps, axis=cout_axis)
    q = rng.integers(spec.qmin, spec.qmax + 1, size=shape)
    bshape = [-1 if i == cout_axis else 1 for i in range(len(shape))]
    sc, zp = np.array(spec.scale).reshape(bshape), np.array(spec.zero_point).reshape(bshape)
    return ((q - zp) * sc).astype(np.float32), spec


def _input(draw, g: Graph, rng, shape, bipolar: bool, conv: bool):
    """The layer's input value: bipolar (on the graph input, or on an Identity with an optional crop) or uniform."""
    if not bipolar:
        bits = draw(st.integers(1, 6))
        signed = draw(st.booleans()) and bits > 1
        probe = Uniform(bits=bits, signed=signed)
        spec = Uniform(bits=bits, signed=signed, scale=0.1,
                       zero_point=int(rng.integers(probe.qmin, probe.qmax + 1)) if draw(st.booleans()) else 0)
        return g.add_input("x", TensorType(shape, "float32"), quant=spec)
    spec = Bipolar(scale=float(rng.uniform(0.2, 2.0)))
    if not draw(st.booleans()):
        return g.add_input("x", TensorType(shape, "float32"), quant=spec)
    x = g.add_input("x", TensorType(shape, "float32"))
    h = g.add_node("Identity", [x], name="sign").outputs[0]
    h.quant = spec
    if conv and draw(st.booleans()):  # a cropped edge: codes 0 (real value zero) inside the map
        h.region = Region(top=1, bottom=0, left=draw(st.integers(0, 1)), right=0)
    if draw(st.booleans()):  # a code-preserving op between the annotation and the layer
        if conv:
            h = g.add_node("MaxPool", [h], name="pool", attrs={"kernel_shape": [2, 2], "pads": [0, 0, 1, 1],
                                                                  "strides": [1, 1]}).outputs[0]
        else:
            h = g.add_node("Identity", [h], name="copy").outputs[0]
    return h


@st.composite
def bipolar_layers(draw):
    """A Conv (groups, strides, dilations, asymmetric pads) or Gemm / MatMul with bipolar weights and/or inputs."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["weights", "inputs", "both"]))
    w_bipolar, x_bipolar = kind in ("weights", "both"), kind in ("inputs", "both")
    g = Graph("t")
    op = draw(st.sampled_from(["Conv", "Conv", "Gemm", "MatMul"]))
    if op == "Conv":
        groups = draw(st.sampled_from([1, 2]))
        cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
        k, hw = draw(st.integers(1, 3)), draw(st.integers(3, 6))
        s, d = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        pads = [draw(st.integers(0, 2)) for _ in range(4)]
        if d * (k - 1) + 1 > hw + min(pads[0] + pads[2], pads[1] + pads[3]):
            d = 1
        x = _input(draw, g, rng, ("N", cin, hw, hw), x_bipolar, conv=True)
        wshape, axis = (cout, cin // groups, k, k), 0
        attrs = {"group": groups, "kernel_shape": [k, k], "strides": [s, s], "dilations": [d, d], "pads": pads}
        xshape = (3, cin, hw, hw)
    elif op == "Gemm":
        kdim, cout = draw(st.integers(1, 40)), draw(st.integers(1, 6))
        trans = draw(st.booleans())
        x = _input(draw, g, rng, ("N", kdim), x_bipolar, conv=False)
        wshape, axis = ((cout, kdim), 0) if trans else ((kdim, cout), 1)
        attrs, xshape = {"transB": int(trans)}, (3, kdim)
    else:  # MatMul on [N, T, K]: T positions per sample
        kdim, cout, t = draw(st.integers(1, 20)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
        x = _input(draw, g, rng, ("N", t, kdim), x_bipolar, conv=False)
        wshape, axis, attrs, xshape = (kdim, cout), 1, {}, (3, t, kdim)
    wd, ws = _sign_weights(rng, wshape, axis) if w_bipolar else _uniform_weights(draw, rng, wshape, axis)
    ins = [x, g.add_constant("w", wd, quant=ws)]
    if op != "MatMul" and draw(st.booleans()):
        ins.append(g.add_constant("b", rng.normal(size=cout).astype(np.float32)))
    out = g.add_node(op, ins, name="layer", attrs=attrs).outputs[0]
    out.quant = draw(st.sampled_from([None, Uniform(bits=4, signed=True, scale=float(rng.uniform(0.05, 1.0))),
                                      Bipolar(scale=0.5)]))
    g.set_outputs([out])
    xs = rng.uniform(-1.5, 1.5, size=xshape).astype(np.float32)
    arch = Arch(rows=draw(st.sampled_from([2, 3, 8, 128])), cols=draw(st.sampled_from([2, 8, 128])),
                bits_per_cell=draw(st.integers(1, 3)), dac_bits=draw(st.integers(1, 2)), adc_bits=16,
                tiles=10**6, flip_encoding=draw(st.booleans()))
    return g, xs, arch, draw(st.sampled_from(["offset", "differential"])), w_bipolar, x_bipolar


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bipolar_layers())
def test_bipolar_layers_equal_the_integer_interpreter(case):
    g, xs, arch, enc, w_bipolar, x_bipolar = case
    m = map_graph(g, arch, encoding=enc).layers["layer"]
    assert m.x_scheme == ("bipolar" if x_bipolar else "uniform")
    if x_bipolar:
        assert (m.a_bits, m.x_min, m.x_step) == (1, -1, 2)  # one 1-bit read per position
    if w_bipolar:
        assert m.scheme == "bipolar" and m.w_bits == 1 and m.cells_per_weight == 1
        assert m.levels.max() <= 1
        assert set(np.unique(m.weight_matrix())) <= {-1, 1}
    got = simulate(g, map_graph(g, arch, encoding=enc), {"x": xs})
    want = run(g, {"x": xs}, mode="int")
    for k in want:
        assert np.array_equal(got[k], want[k])


def _gemm(x_spec, w_codes, w_spec, w_scale=1.0):
    w_codes = np.asarray(w_codes, np.float32)
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", w_codes.shape[0]), "float32"), quant=x_spec)
    w = g.add_constant("w", w_codes * w_scale, quant=w_spec)
    g.set_outputs(g.add_node("Gemm", [x, w], name="layer").outputs)
    return g


def test_bipolar_gemm_by_hand():
    # W column [+1, +1, +1, -1] as 1-bit cells b = (w + 1) / 2 = [1, 1, 1, 0], w_offset -1, w_step 2
    g = _gemm(Bipolar(), [[1], [1], [1], [-1]], Bipolar())
    arch = Arch(rows=4, cols=4, flip_encoding=False)
    m = map_graph(g, arch).layers["layer"]
    assert m.levels[0].ravel().tolist() == [1, 1, 1, 0] and m.w_offset.tolist() == [[-1]] and m.w_step == 2
    x = np.array([[1, -1, 1, -1], [1, 1, 1, 1], [-1, -1, -1, -1]], np.float32)
    # sum x w = 2 sum a w - sum w with a = (x + 1) / 2: 1 - 1 + 1 + 1 = 2, 1 + 1 + 1 - 1 = 2, -2
    (out,) = g.outputs
    assert simulate(g, map_graph(g, arch), {"x": x})[out.name].ravel().tolist() == [2, 2, -2]
    differential = map_graph(g, arch, encoding="differential").layers["layer"]
    assert differential.levels[0].tolist() == [[1, 0], [1, 0], [1, 0], [0, 1]] and differential.w_step == 1
    assert simulate(g, map_graph(g, arch, encoding="differential"), {"x": x})[out.name].ravel().tolist() == [2, 2, -2]


def test_padding_contributes_zero_for_bipolar_inputs():
    # a 2x2 map of -1 under a 3x3 kernel of +1 with pads 1: every window covers the 4 real inputs and
    # 5 padded positions worth 0 (qcc.integer), so every output is -4 (not -9, as padding with -1 would give)
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 1, 2, 2), "float32"), quant=Bipolar())
    w = g.add_constant("w", np.ones((1, 1, 3, 3), np.float32), quant=Bipolar())
    g.set_outputs(g.add_node("Conv", [x, w], name="layer", attrs={"kernel_shape": [3, 3], "pads": [1] * 4}).outputs)
    (out,) = g.outputs
    xs = -np.ones((1, 1, 2, 2), np.float32)
    got = simulate(g, map_graph(g, Arch(rows=9, cols=4)), {"x": xs})[out.name]
    assert got.ravel().tolist() == [-4, -4, -4, -4]
    assert np.array_equal(got, run(g, {"x": xs}, mode="int")[out.name])


def test_bipolar_layer_costs_what_a_1_bit_layer_costs():
    rng = np.random.default_rng(0)
    signs = np.where(rng.random((300, 40)) < 0.5, -1, 1)
    bipolar = _gemm(Bipolar(), signs, Bipolar())
    binary = _gemm(Uniform(bits=1, signed=False), (signs + 1) // 2, Uniform(bits=1, signed=False))
    arch = Arch()
    a, b = map_graph(bipolar, arch).layers["layer"], map_graph(binary, arch).layers["layer"]
    assert (a.a_bits, a.w_bits, a.cells_per_weight) == (b.a_bits, b.w_bits, b.cells_per_weight) == (1, 1, 1)
    ca, cb = layer_cost(a, arch), layer_cost(b, arch)
    for key in ("crossbars", "crossbar_reads", "adc_conversions", "adc_bits", "cycles", "energy_pj", "area_mm2"):
        assert ca[key] == cb[key], key
    assert ca["crossbars"] == 3 and ca["cycles"] == 1  # 300 rows on 128-row crossbars, one 1-bit read


def test_bipolar_input_through_relu_is_refused_with_the_reason(tmp_path):
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 4), "float32"))
    h = g.add_node("Identity", [x], name="sign").outputs[0]
    h.quant = Bipolar()
    h = g.add_node("Relu", [h], name="relu").outputs[0]
    w = g.add_constant("w", np.ones((4, 2), np.float32), quant=Bipolar())
    g.set_outputs(g.add_node("Gemm", [h, w], name="layer").outputs)
    assert "layer" not in map_graph(g, Arch()).layers
    with pytest.raises(QccError, match="bipolar input passes a Relu or Pad, which makes codes 0") as e:
        CimTarget().lower(g, tmp_path / "out")
    assert "--target cpu" in str(e.value)
    assert "Relu or Pad" in CimTarget().explain(g)["layer"][1]


def test_explain_and_mapping_json_describe_bipolar_layers():
    g = _gemm(Bipolar(), np.ones((6, 3)), Bipolar())
    what, why = CimTarget().explain(g)["layer"]
    assert "1 crossbar(s): 6x3 matrix, 1 cell(s)/weight" in what
    assert "bipolar weights w = 2b - 1 as 1-bit cells b" in why and "bipolar inputs x = 2a - 1" in why
    assert "accumulator needs 4 of 32 bits" in why  # |sum| <= 6
    doc = json.loads(mapping_to_json(map_graph(g, Arch())))
    layer = doc["layers"][0]
    assert (layer["x_scheme"], layer["x_step"], layer["w_step"], layer["x_min"]) == ("bipolar", 2, 2, -1)
    assert doc["acc_bits"] == 32


@settings(max_examples=4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_binarized_nets_compile_and_run_bit_exact(data):
    """The equivalence matrix's bipolar cell (qcc.testing.nets, binarize): every net maps, equals the interpreter."""
    from qcc.target import get_target
    from qcc.testing.nets import quantized_nets
    from qcc.verification import compile_to

    net = data.draw(quantized_nets("bipolar", max_layers=3, max_channels=5))
    (name, calib), = net.calibration.items()
    inputs = {name: calib[:4]}
    target = get_target("cim")
    with tempfile.TemporaryDirectory(prefix="qcc-cim-") as tmp:
        artifacts = compile_to(target, net.graph, Path(tmp))
        got = target.simulate(artifacts, inputs)
        mapped = set(target._loaded(artifacts)[1].layers)
    assert mapped == {n.name for n in net.graph.nodes if n.op in ("Conv", "Gemm", "MatMul")}  # bipolar ones too
    want = run(net.graph, inputs, mode="int")
    for k in want:
        assert np.array_equal(got[k], want[k])


def test_compile_with_bipolar_layers_runs_bit_exact_and_explains(tmp_path, capsys):
    from qcc.cli import main
    from qcc.examples import EVAL

    config = tmp_path / "layers.toml"
    config.write_text('[layers."/conv2/Conv"]\nw_scheme = "bipolar"\na_scheme = "bipolar"\nw_bits = 1\na_bits = 1\n'
                      '[layers."/conv3/Conv"]\nw_scheme = "bipolar"\nw_bits = 1\n')
    out = tmp_path / "out"
    assert main(["compile", "--target", "cim", "-o", str(out), "-q", "--config", str(config), "--explain"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line for line in text[text.index("cim lowering"):].splitlines()[2:] if line.strip()}
    assert "1 cell(s)/weight" in rows["/conv2/Conv"] and "bipolar inputs x = 2a - 1" in rows["/conv2/Conv"]
    assert "bipolar weights w = 2b - 1" in rows["/conv3/Conv"] and "8-bit inputs bit-serial" in rows["/conv3/Conv"]
    layers = {m["name"]: m for m in json.loads((out / "mapping.json").read_text())["layers"]}
    assert (layers["/conv2/Conv"]["a_bits"], layers["/conv2/Conv"]["w_bits"]) == (1, 1)
    assert main(["run", str(out), str(EVAL), "-o", str(tmp_path / "cim.npz")]) == 0
    assert main(["run", str(out / "model.qir"), str(EVAL), "-o", str(tmp_path / "int.npz")]) == 0
    a, b = np.load(tmp_path / "cim.npz"), np.load(tmp_path / "int.npz")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
