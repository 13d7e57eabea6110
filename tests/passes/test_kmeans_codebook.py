"""kmeans-codebook: per-layer codebook extraction, seed 002's memory accounting, integer execution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.calibration import calibration_of
from qcc.errors import PassError, QccError
from qcc.examples import MODEL, load_split
from qcc.frontend import load_model
from qcc.frontend.qir import parse_graph, print_graph
from qcc.integer import QTensor
from qcc.interp import run
from qcc.ir import Codebook, Graph, TensorType, Uniform
from qcc.ir.verify import verify
from qcc.numerics import fake_quant
from qcc.ops import get_op
from qcc.pass_manager import PassContext, run_pipeline
from qcc.passes.kmeans_codebook import ExtractCodebooksPass, codebook_indices, decode_codebook, fit_layer_codebook
from qcc.quantizers import activation_spec
from qcc.report import summarize
from qcc.testing import GraphOptions, graph_inputs, graphs

LAYERS = ("Conv", "Gemm", "MatMul")


@pytest.fixture(scope="module")
def data():
    return load_split("calib")[0], *load_split("eval")


def _example(pipeline: str, calib: np.ndarray):
    g = load_model(MODEL)
    run_pipeline(g, pipeline, PassContext(config={"calib": {"x": calib}}))
    return g


def _accuracy(g, x, y, mode="int") -> float:
    return float((run(g, {"input": x}, mode=mode)["logits"].argmax(1) == y).mean())


def _layers(g: Graph):
    return [n for n in g.nodes if n.op in LAYERS and n.inputs[1] is not None and n.inputs[1].is_constant]


# ------------------------------------------------------------------------------ the example
def test_example_keeps_accuracy_and_report_agrees(data):
    calib, x, y = data
    g = _example("fold-bn,calibrate,kmeans-codebook{bits=4}", calib)
    assert _accuracy(g, x, y) >= 0.98  # float: 0.9944; Lloyd 4-bit: 0.9889
    layers = _layers(g)
    assert all(isinstance(n.inputs[1].quant, Codebook) and n.inputs[1].quant.bits == 4 for n in layers)
    # seed 002 eq. 5 in the node attrs agrees with the report's weight storage (which adds the float bias)
    rows = {r.name: r for r in summarize(g).layers}
    for n in layers:
        rec, spec, w = n.attrs["codebook"], n.inputs[1].quant, n.inputs[1]
        table = sum(len(t) for t in spec.tables())
        assert rec["memory_bits"] == w.type.numel() * 4 + table * 8 == rec["index_bits"] + rec["table_size"] * 8
        bias_bits = sum(v.type.numel() * 32 for v in n.inputs[2:] if v is not None)
        assert rows[n.name].weight_bits_total == rec["memory_bits"] + bias_bits
    totals = g.attrs["codebook"]
    assert totals["layers"] == len(layers)
    assert totals["memory_bits"] == sum(n.attrs["codebook"]["memory_bits"] for n in layers)
    assert totals["float_bits"] == 32 * sum(n.inputs[1].type.numel() for n in layers)
    assert not run_pipeline(g, "kmeans-codebook{bits=4}")  # idempotent: nothing left to change


def test_example_through_the_integer_centroid_table(data):
    """With 8-bit activations every layer runs integer-only: activations times integer centroids."""
    calib, x, y = data
    g = _example("fold-bn,calibrate,kmeans-codebook{bits=4,per_channel=true},quantize{w_scheme=float}", calib)
    assert all(isinstance(n.inputs[0].quant, Uniform) for n in _layers(g))
    assert _accuracy(g, x, y, mode="int") >= 0.98


def test_config_chooses_method_and_bits_per_layer(tmp_path, data):
    cfg = tmp_path / "cb.toml"
    cfg.write_text('[default]\nw_scheme = "kmeans-linear"\nw_bits = 3\n'
                   '[layers."/fc/Gemm"]\nw_scheme = "kmeans-gaussian"\nw_bits = 6\nper_channel = true\n'
                   '[layers."/conv2/Conv"]\nw_scheme = "uniform"\n')
    g = _example(f'fold-bn,kmeans-codebook{{config="{cfg}",min-params=200}}', data[0])
    conv1, conv2, conv3, fc = (g.node(f"/{n}") for n in ("conv1/Conv", "conv2/Conv", "conv3/Conv", "fc/Gemm"))
    assert conv1.inputs[1].quant is None  # 144 weights < min-params
    assert conv2.inputs[1].quant is None  # configured for another scheme: left to `quantize`
    assert conv3.attrs["codebook"]["method"] == "linear" and conv3.inputs[1].quant.bits == 3
    assert fc.attrs["codebook"]["method"] == "gaussian" and fc.inputs[1].quant.bits == 6
    assert fc.inputs[1].quant.axis == 0 and fc.attrs["codebook"]["per_channel"]
    assert g.attrs["codebook"]["layers"] == 3  # conv3, conv4, fc


def test_per_channel_tables_along_matmul_output_axis():
    g = Graph("mm")
    x = g.add_input("x", TensorType((2, 6)))
    w = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    g.set_outputs(g.add_node("MatMul", [x, g.add_constant("w", w)], name="mm").outputs)
    assert run_pipeline(g, "kmeans-codebook{method=lloyd,bits=2,per_channel=true}")
    wq = g.node("mm").inputs[1]
    assert wq.quant.axis == 1 and len(wq.quant.tables()) == 3
    fit = fit_layer_codebook(w, "lloyd", 2, axis=1, centroid_bits=8)
    np.testing.assert_array_equal(decode_codebook(fit.indices, wq.quant), wq.data)
    verify(g)


# ------------------------------------------------------------------------------ properties
def _decode_by_hand(spec: Codebook, idx: np.ndarray, data: np.ndarray) -> None:
    """table[idx] * centroid_scale == data exactly, one channel (or the one table) at a time."""
    tables = spec.tables()
    channels = [(tables[0], idx, data)] if spec.axis is None else \
        [(tables[c], np.take(idx, c, spec.axis), np.take(data, c, spec.axis)) for c in range(len(tables))]
    for table, i, d in channels:
        assert i.min() >= 0 and i.max() < len(table) <= 2**spec.bits
        np.testing.assert_array_equal((np.asarray(table, np.float64)[i] * spec.centroid_scale).astype(d.dtype), d)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(["linear", "gaussian", "lloyd"]), st.integers(1, 6), st.booleans())
def test_decoding_gives_exactly_the_stored_weights(data, method, bits, per_channel):
    g = data.draw(graphs(GraphOptions(annotate=False)))
    originals = {n.name: n.inputs[1].data for n in _layers(g)}
    options = f"method={method},bits={bits},per_channel={str(per_channel).lower()},seed=3"
    run_pipeline(g, f"kmeans-codebook{{{options}}}")
    verify(g)
    for n in _layers(g):
        w, spec = n.inputs[1], n.inputs[1].quant
        assert isinstance(spec, Codebook) and spec.bits == bits and (spec.axis is not None) == per_channel
        fit = fit_layer_codebook(originals[n.name], method, bits, axis=spec.axis, centroid_bits=8, seed=3)
        _decode_by_hand(spec, fit.indices, w.data)
        np.testing.assert_array_equal(codebook_indices(w.data, spec), fit.indices)
        np.testing.assert_array_equal(fake_quant(w.data, spec), w.data)  # on the grid
        rec = n.attrs["codebook"]
        assert rec["memory_bits"] == w.type.numel() * bits + rec["table_size"] * 8 == fit.memory_bits
    text = print_graph(g)  # attrs print and parse back
    assert print_graph(parse_graph(text, {c.name: c.data for c in g.constants})) == text


def _local_fake(node, args, attrs) -> np.ndarray:
    """The fake-quant result of one layer on given (dequantized) inputs: float32 op, then its quantizer."""
    y = get_op(node.op).evaluate(args, attrs)[0]
    return fake_quant(y, node.output.quant) if node.output.quant is not None else y


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(["linear", "gaussian", "lloyd"]), st.integers(2, 5), st.booleans())
def test_integer_layers_match_fake_quant(data, method, bits, per_channel):
    """Each codebook layer, run on the integer path's own inputs, agrees with fake-quant on them.

    A quantized output: within 1 LSB of its quantizer (the integer accumulator is exact and its
    requantization rounds once; float32 fake-quant rounds the sum and may land on the other side of a
    rounding boundary). An unquantized output (the accumulator dequantized, acc * sx * centroid_scale):
    every product sx (q - z) * centroid_scale c is exact in float64, and so is their sum (< 2^29 steps
    of sx * centroid_scale), so the float64 layer on the same inputs gives the identical number; only
    the bias, rounded to the accumulator scale (DESIGN.md §3), may move it by half an accumulator step.
    The float32 fake-quant sum differs from both by float32 rounding only. Compared layer by layer,
    because differences of one step compound through later layers.
    """
    g = data.draw(graphs(GraphOptions(annotate=False)))
    x = data.draw(graph_inputs(g, batch=3))
    codebook = f"kmeans-codebook{{method={method},bits={bits},per_channel={str(per_channel).lower()}}}"
    run_pipeline(g, f"calibrate,quantize{{w_scheme=float,a_bits=8}},{codebook}", PassContext(config={"calib": x}))
    for n in _layers(g):  # output quantizers on about half of the layers
        if data.draw(st.booleans(), label=f"quantize {n.name} output"):
            n.output.quant = activation_spec(calibration_of(g, n.output), "uniform", 8)
    verify(g)
    env = run(g, x, mode="int", keep_all=True, dequantize=False)
    for n in _layers(g):
        xq, out = env[n.inputs[0].name], env[n.output.name]
        assert isinstance(xq, QTensor) and isinstance(out, QTensor)
        w, bias = n.inputs[1].data, [v.data for v in n.inputs[2:] if v is not None]
        if n.output.quant is not None:
            fake = _local_fake(n, [xq.real(np.float32), w, *bias], n.attrs)
            assert np.max(np.abs(out.real(np.float64) - fake)) <= float(n.output.quant.scale) * 1.001
            continue
        exact = get_op(n.op).evaluate([xq.real(np.float64), w.astype(np.float64)], n.attrs)[0]
        got = out.q * np.asarray(out.scale, np.float64)
        if not bias:
            np.testing.assert_array_equal(got, exact)
            continue
        channels = exact.shape[1]
        b = bias[0].astype(np.float64).reshape((1, channels) + (1,) * (exact.ndim - 2))
        step = np.broadcast_to(np.asarray(out.scale, np.float64), got.shape)
        assert np.all(np.abs(got - (exact + b)) <= 0.5 * step * (1 + 1e-9) + 1e-12 * np.abs(b))
        fake = _local_fake(n, [xq.real(np.float32), w, *bias], n.attrs)
        assert np.allclose(out.real(np.float64), fake, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(fake).max())))


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("pipeline, message", [
    ("kmeans-codebook{bits=0}", r"pass 'kmeans-codebook': bits must be an integer from 1 to 16, got 0"),
    ("kmeans-codebook{bits=17}", r"bits must be an integer from 1 to 16, got 17"),
    ("kmeans-codebook{method=magic}", r"kmeans-codebook\{method\}: 'magic' is not one of 'linear', 'gaussian', "
                                      r"'lloyd'"),
    ("kmeans-codebook{centroid-bits=1}", r"centroid-bits must be an integer from 2 to 24, got 1"),
    ('kmeans-codebook{layers=["/conv9/Conv"]}', r"pass 'kmeans-codebook' failed: option 'layers': unknown layer "
                                                r"'/conv9/Conv'; did you mean '/conv\d/Conv'"),
    ('kmeans-codebook{layers=["/relu1/Relu"]}', r"pass 'kmeans-codebook' failed at node '/relu1/Relu': a Relu "
                                                r"node is not a layer with a constant weight"),
    ("quantize{w_bits=8,a_scheme=float},kmeans-codebook",
     r"pass 'kmeans-codebook' failed at node '/conv1/Conv': weight 'conv1.weight' is already quantized "
     r"\(uniform, 8 bits\); pass replace=true"),
    ("kmeans-codebook{bits=4},kmeans-codebook{bits=3}",
     r"at node '/conv1/Conv': weight 'conv1.weight' is already quantized \(codebook, 4 bits\)"),
])
def test_bad_input_is_a_clear_error(pipeline, message):
    with pytest.raises(QccError, match=message):
        run_pipeline(load_model(MODEL), pipeline)


def test_bad_method_from_python_and_config(tmp_path):
    with pytest.raises(QccError, match="method 'magic' is not one of linear, gaussian, lloyd"):
        ExtractCodebooksPass(method="magic")  # type: ignore[arg-type]
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[layers."/conv7/Conv"]\nw_scheme = "kmeans-lloyd"\n')
    with pytest.raises(PassError, match=r"configuration .*bad.toml: unknown layer '/conv7/Conv'"):
        run_pipeline(load_model(MODEL), f'kmeans-codebook{{config="{cfg}"}}')


def test_replace_refits_an_already_quantized_layer():
    g = load_model(MODEL)
    run_pipeline(g, 'quantize{w_bits=8,a_scheme=float},kmeans-codebook{bits=3,replace=true,layers=["/fc/Gemm"]}')
    assert isinstance(g.node("/fc/Gemm").inputs[1].quant, Codebook)
    assert isinstance(g.node("/conv1/Conv").inputs[1].quant, Uniform)  # not selected: untouched
    assert g.attrs["codebook"]["layers"] == 1
    verify(g)
