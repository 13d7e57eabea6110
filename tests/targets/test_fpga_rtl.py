"""RTL of dense layers simulates (Icarus) to exactly the integer reference, for random layers and foldings."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcc.errors import QccError
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.ir.quant import Bipolar, Thresholds, Uniform
from qcc.ir.types import TensorType
from qcc.numerics import quantize
from qcc.targets.fpga.plan import DenseLayer, plan_graph, signed_bits
from qcc.targets.fpga.rtl import emit_design
from qcc.targets.fpga.sim import emit_testbench, simulate_codes

pytestmark = pytest.mark.skipif(__import__("shutil").which("iverilog") is None, reason="needs iverilog")


def _divisor(draw, n: int) -> int:
    return draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))


@st.composite
def dense_layers(draw):
    """A quantized Gemm (random bits, zero points, per-channel scales) with a random post-op chain."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n_in, n_out = draw(st.integers(1, 9)), draw(st.integers(1, 6))
    a_bits = draw(st.integers(1, 8))
    x_spec = Uniform(bits=max(a_bits, 2), signed=draw(st.booleans()), scale=draw(st.sampled_from([0.05, 0.1, 0.37])),
                     zero_point=0)
    if draw(st.booleans()):
        x_spec = Uniform(bits=x_spec.bits, signed=x_spec.signed, scale=x_spec.scale,
                         zero_point=int(rng.integers(x_spec.qmin, x_spec.qmax + 1)))
    g = Graph()
    x = g.add_input("x", TensorType(("N", n_in), "float32"))
    x.quant = x_spec
    w_bits = draw(st.integers(1, 8))
    if w_bits == 1:
        w_spec = Bipolar(scale=tuple(float(s) for s in rng.uniform(0.01, 0.5, n_out)), axis=0)
        data = np.where(rng.random((n_out, n_in)) < 0.5, -1.0, 1.0) * np.asarray(w_spec.scale)[:, None]
    else:
        scales = tuple(float(np.float32(s)) for s in rng.uniform(0.01, 0.5, n_out))
        w_spec = Uniform(bits=w_bits, scale=scales, zero_point=tuple([0] * n_out), axis=0)
        codes = rng.integers(w_spec.qmin, w_spec.qmax + 1, (n_out, n_in))
        data = codes * np.asarray(scales)[:, None]
    w = g.add_constant("w", data.astype(np.float32), quant=w_spec)
    b = g.add_constant("b", rng.normal(0, 1, n_out).astype(np.float32))
    h = g.add_node("Gemm", [x, w, b], attrs={"transB": 1}).outputs[0]
    post = draw(st.sampled_from(["raw", "requant", "relu-requant", "thresholds", "bipolar"]))
    if post == "relu-requant":
        h = g.add_node("Relu", [h]).outputs[0]
    if post in ("requant", "relu-requant"):
        o_bits = draw(st.integers(2, 8))
        h.quant = Uniform(bits=o_bits, signed=post == "requant", scale=float(draw(st.sampled_from([0.1, 0.3, 1.7]))))
    elif post == "thresholds":
        t_bits = draw(st.integers(1, 3))
        rows = np.sort(rng.normal(0, 2, (n_out, 2**t_bits - 1)), axis=1)
        h.quant = Thresholds(bits=t_bits, thresholds=tuple(map(tuple, rows.tolist())), out_scale=0.5, out_bias=-1.0)
    elif post == "bipolar":
        h.quant = Bipolar(scale=0.25)
    g.set_outputs([h])
    x_data = rng.normal(0, 1.5, (draw(st.integers(1, 6)), n_in)).astype(np.float32)
    return g, x_data, _divisor(draw, n_out), _divisor(draw, n_in)


def _simulate(g, x, tmp_path, pe=1, simd=1):
    plan = plan_graph(g)
    plan.layers[0].pe, plan.layers[0].simd = pe, simd
    rtl = emit_design(plan, tmp_path / "rtl")
    tb = emit_testbench(plan, tmp_path / "tb.v")
    codes, _ = simulate_codes(plan, list(rtl.verilog), tb, quantize(x, plan.input_spec))
    return plan, ((codes - plan.out_zp).astype(np.float64) * plan.out_scale).astype(np.float32)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer=dense_layers())
def test_dense_layer_matches_integer_reference(layer, tmp_path_factory):
    g, x, pe, simd = layer
    plan, out = _simulate(g, x, tmp_path_factory.mktemp("rtl"), pe, simd)
    ref = run(g, {"x": x}, mode="int")[plan.output_name]
    np.testing.assert_array_equal(out, ref)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer=dense_layers())
def test_dense_layer_matches_integer_reference_more(layer, tmp_path_factory):
    test_dense_layer_matches_integer_reference.hypothesis.inner_test(layer, tmp_path_factory)


@st.composite
def bipolar_mlps(draw):
    """A uniform Gemm with a bipolar annotation, then a bipolar-weight Gemm on that +-1 vector (XNOR path)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n_in, n_hid, n_out = draw(st.integers(1, 8)), draw(st.integers(1, 12)), draw(st.integers(1, 6))
    g = Graph()
    x = g.add_input("x", TensorType(("N", n_in), "float32"))
    x.quant = Uniform(bits=4, signed=True, scale=0.2)
    w0 = g.add_constant("w0", (rng.integers(-7, 8, (n_hid, n_in)) * 0.1).astype(np.float32),
                        quant=Uniform(bits=4, scale=0.1))
    h = g.add_node("Gemm", [x, w0], attrs={"transB": 1}, name="fc0").outputs[0]
    h.quant = Bipolar(scale=1.0)
    spec = Bipolar(scale=tuple(float(v) for v in rng.uniform(0.01, 0.5, n_out)), axis=0)
    w1 = g.add_constant("w1", (np.where(rng.random((n_out, n_hid)) < 0.5, -1, 1)
                               * np.asarray(spec.scale)[:, None]).astype(np.float32), quant=spec)
    b = g.add_constant("b", rng.normal(0, 1, n_out).astype(np.float32))
    g.set_outputs([g.add_node("Gemm", [h, w1, b], attrs={"transB": 1}, name="fc1").outputs[0]])
    x_data = rng.normal(0, 1.5, (draw(st.integers(1, 6)), n_in)).astype(np.float32)
    return g, x_data, _divisor(draw, n_out), _divisor(draw, n_hid)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=bipolar_mlps())
def test_bipolar_dense_layer_matches_integer_reference(case, tmp_path_factory):
    g, x, pe, simd = case
    tmp = tmp_path_factory.mktemp("bdense")
    plan = plan_graph(g)
    plan.layers[1].pe, plan.layers[1].simd = pe, simd
    assert plan.layers[1].bipolar
    rtl = emit_design(plan, tmp / "rtl")
    tb = emit_testbench(plan, tmp / "tb.v")
    codes, _ = simulate_codes(plan, list(rtl.verilog), tb, quantize(x, plan.input_spec))
    out = ((codes - plan.out_zp).astype(np.float64) * plan.out_scale).astype(np.float32)
    np.testing.assert_array_equal(out, run(g, {"x": x}, mode="int")[plan.output_name])


def test_accumulator_width_covers_the_worst_case():
    g = Graph()
    x = g.add_input("x", TensorType(("N", 64), "float32"))
    x.quant = Uniform(bits=8, signed=False, scale=1.0)
    w = g.add_constant("w", np.full((2, 64), -128.0, np.float32), quant=Uniform(bits=8, scale=1.0))
    g.set_outputs([g.add_node("Gemm", [x, w], attrs={"transB": 1}).outputs[0]])
    layer = plan_graph(g).layers[0]
    assert layer.acc_lo == -128 * 255 * 64 and layer.acc_width == signed_bits(-128 * 255 * 64, 0)


def test_extreme_inputs_do_not_overflow(tmp_path):
    g = Graph()
    x = g.add_input("x", TensorType(("N", 16), "float32"))
    x.quant = Uniform(bits=8, signed=True, scale=1.0)
    w = g.add_constant("w", np.full((2, 16), -128.0, np.float32), quant=Uniform(bits=8, scale=1.0))
    g.set_outputs([g.add_node("Gemm", [x, w], attrs={"transB": 1}).outputs[0]])
    xs = np.array([[-128.0] * 16, [127.0] * 16], np.float32)
    plan, out = _simulate(g, xs, tmp_path, pe=2, simd=4)
    np.testing.assert_array_equal(out, run(g, {"x": xs}, mode="int")[plan.output_name])


def test_folding_must_divide(tmp_path):
    g = Graph()
    x = g.add_input("x", TensorType(("N", 6), "float32"))
    x.quant = Uniform(bits=4, scale=0.1)
    w = g.add_constant("w", np.zeros((4, 6), np.float32), quant=Uniform(bits=4, scale=0.1))
    g.set_outputs([g.add_node("Gemm", [x, w], attrs={"transB": 1}, name="fc").outputs[0]])
    plan = plan_graph(g)
    plan.layers[0].simd = 4
    with pytest.raises(QccError, match="layer 'fc': SIMD=4 does not divide its 6 inputs"):
        emit_design(plan, tmp_path / "rtl")
    assert not (tmp_path / "rtl" / "qcc_top.v").exists()


# ----------------------------------------------------------------------------------- accumulators = qcc.ranges

def _acc_regs(rtl_dir, stage, index: int) -> set[int]:
    """Widths of the accumulator registers declared in the MVU module of plan stage `index`."""
    text = (rtl_dir / f"qcc_{stage.kind}{index}.v").read_text()
    return {int(m) + 1 for m in re.findall(r"reg signed \[(\d+):0\] acc_0", text)}


def _net_folding(draw, plan) -> dict[str, tuple[int, int]]:
    return {layer.name: (_divisor(draw, layer.n_out), _divisor(draw, layer.n_in)) for layer in plan.layers}


@pytest.mark.parametrize("scheme", ["uniform", "residual", "bipolar", "codebook"])
def test_accumulator_widths_are_qcc_ranges_and_simulation_stays_exact(scheme, tmp_path_factory):
    """acc_width = max over channels of required_bits(lo, hi) from the range analysis, the RTL declares
    exactly that register width, and the design (random folding) simulates bit-exactly."""
    from qcc.ranges import analyze, required_bits
    from qcc.testing.nets import quantized_nets

    @settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(net=quantized_nets(scheme, max_layers=2, max_channels=4), data=st.data())
    def check(net, data):
        g = net.graph
        ranges = analyze(g)
        plan = plan_graph(g)
        folding = _net_folding(data.draw, plan)
        for layer in plan.layers:
            rec = ranges[layer.name]
            assert layer.acc_width == required_bits(rec.lo, rec.hi), layer.name
            assert (layer.acc_lo, layer.acc_hi) == (int(rec.lo.min()), int(rec.hi.max()))
            layer.pe, layer.simd = folding[layer.name]
        tmp = tmp_path_factory.mktemp("accnet")
        rtl = emit_design(plan, tmp / "rtl")
        for i, st_ in enumerate(plan.stages):
            if isinstance(st_, DenseLayer):
                assert _acc_regs(tmp / "rtl", st_, i) == {st_.acc_width}, st_.name
        name = g.inputs[0].name
        x = np.concatenate([net.calibration[name][:2],
                            np.random.default_rng(0).uniform(-1.5, 1.5, (2, *net.calibration[name].shape[1:]))])
        x = x.astype(np.float32)
        tb = emit_testbench(plan, tmp / "tb.v")
        codes, _ = simulate_codes(plan, list(rtl.verilog), tb, quantize(x, plan.input_spec).reshape(len(x), -1))
        out = ((codes - plan.out_zp).astype(np.float64) * plan.out_scale).astype(np.float32)
        np.testing.assert_array_equal(out, run(g, {name: x}, mode="int")[plan.output_name].reshape(len(x), -1))

    check()


def _offset_thresholds_mlp(bias_codes: int, n_hid: int = 8) -> Graph:
    """fc0 -> 1-bit thresholds whose zero point (4) lies above both codes {0, 1}, so every x - z of fc1
    is in [-4, -3]; fc1 has positive weights (7) and a large positive bias: the bias alone lies far
    outside fc1's final range, which is all the accumulator is sized for."""
    rng = np.random.default_rng(11)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 5), "float32"))
    x.quant = Uniform(bits=6, signed=True, scale=0.1)
    w0 = g.add_constant("w0", (rng.integers(-7, 8, (n_hid, 5)) * 0.1).astype(np.float32),
                        quant=Uniform(bits=4, scale=0.1))
    h = g.add_node("Gemm", [x, w0], attrs={"transB": 1}, name="fc0").outputs[0]
    rows = np.sort(rng.normal(0, 1, (n_hid, 1)), axis=1)
    h.quant = Thresholds(bits=1, thresholds=tuple(map(tuple, rows.tolist())), out_scale=0.5, out_bias=-2.0)
    w1 = g.add_constant("w1", np.full((2, n_hid), 0.7, np.float32), quant=Uniform(bits=4, scale=0.1))
    b1 = g.add_constant("b1", np.full(2, bias_codes * 0.05, np.float32))
    g.set_outputs([g.add_node("Gemm", [h, w1, b1], attrs={"transB": 1}, name="fc1").outputs[0]])
    return g


@pytest.mark.parametrize("simd", [1, 2, 8])
def test_partial_sums_outside_the_final_range_wrap_harmlessly(tmp_path, simd):
    from qcc.ranges import analyze, required_bits

    g = _offset_thresholds_mlp(bias_codes=224)
    plan = plan_graph(g)
    fc1 = plan.layers[1]
    rec = analyze(g)["fc1"]
    assert fc1.in_lo - fc1.in_zp == -4 and fc1.in_hi - fc1.in_zp == -3
    assert fc1.acc_width == required_bits(rec.lo, rec.hi) == 7  # final sums in [0, 56]
    assert int(fc1.bias.max()) == 224 and signed_bits(0, 224) > fc1.acc_width  # the preloaded bias wraps
    fc1.pe, fc1.simd = 2, simd
    rtl = emit_design(plan, tmp_path / "rtl")
    tb = emit_testbench(plan, tmp_path / "tb.v")
    x = np.random.default_rng(2).normal(0, 2, (24, 5)).astype(np.float32)
    codes, _ = simulate_codes(plan, list(rtl.verilog), tb, quantize(x, plan.input_spec))
    out = ((codes - plan.out_zp).astype(np.float64) * plan.out_scale).astype(np.float32)
    np.testing.assert_array_equal(out, run(g, {"x": x}, mode="int")[plan.output_name])
