"""quantize: per-layer configuration of weights and activations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.errors import PassError, QccError
from qcc.examples import MODEL, load_split
from qcc.frontend import load_model
from qcc.interp import run
from qcc.ir import Bipolar, Codebook, Thresholds, Uniform
from qcc.ir.verify import verify
from qcc.pass_manager import PassContext, run_pipeline
from qcc.testing import GraphOptions, graph_inputs, graphs


@pytest.fixture(scope="module")
def data():
    return load_split("calib")[0], *load_split("eval")


def _example(pipeline: str, calib, **config):
    g = load_model(MODEL)
    ctx = PassContext(config={"calib": {"x": calib}, **config})
    run_pipeline(g, pipeline, ctx)
    return g


def _accuracy(g, x, y, mode="int") -> float:
    return float((run(g, {"x": x}, mode=mode)["logits"].argmax(1) == y).mean())


def test_8bit_example_keeps_accuracy(data):
    calib, x, y = data
    g = _example("fold-bn,calibrate,quantize", calib)
    assert _accuracy(g, x, y) >= 0.985  # float: 0.9944
    layers = [n for n in g.nodes if n.op in ("Conv", "Gemm")]
    assert all(isinstance(n.inputs[1].quant, Uniform) and n.inputs[1].quant.bits == 8 for n in layers)
    assert all(isinstance(n.inputs[0].quant, Uniform) for n in layers)
    assert not run_pipeline(g, "quantize", PassContext())  # idempotent: nothing left to change


def test_toml_configuration_per_layer(tmp_path, data):
    calib, _, _ = data
    cfg = tmp_path / "q.toml"
    cfg.write_text('[default]\nw_bits = 6\na_bits = 6\n'
                   '[layers."/conv2/Conv"]\nw_bits = 3\nw_scheme = "kmeans-lloyd"\n'
                   '[layers."/fc/Gemm"]\na_scheme = "float"\nw_scheme = "bipolar"\n'
                   '[layers."/conv4/Conv"]\ncrop = [1, 0, 0, 1]\n')
    g = _example(f'fold-bn,calibrate,quantize{{config="{cfg}"}}', calib)
    conv1, conv2, fc = g.node("/conv1/Conv"), g.node("/conv2/Conv"), g.node("/fc/Gemm")
    assert conv1.inputs[1].quant.bits == 6
    assert isinstance(conv2.inputs[1].quant, Codebook) and conv2.inputs[1].quant.bits == 3
    assert isinstance(fc.inputs[1].quant, Bipolar) and fc.inputs[0].quant is None
    assert g.node("/conv4/Conv").output.region.as_tuple() == (1, 0, 0, 1)
    verify(g)


def test_kquantile_activations_are_thresholds(data):
    calib, x, y = data
    g = _example("fold-bn,calibrate,quantize{a_scheme=kquantile,a_bits=3,w_bits=8}", calib)
    assert isinstance(g.node("/conv2/Conv").inputs[0].quant, Thresholds)
    assert _accuracy(g, x, y, mode="fake") > 0.5


@pytest.mark.parametrize("pipeline, message", [
    ("quantize", "has no calibration statistics; run 'calibrate' first"),
    ("quantize{w_bits=0}", "w_bits must be an integer from 1 to 16"),
    ("quantize{w_scheme=magic}", "w_scheme 'magic' is not one of"),
])
def test_bad_input_is_a_clear_error(pipeline, message):
    with pytest.raises(QccError, match=message):
        run_pipeline(load_model(MODEL), pipeline)


def test_unknown_layer_in_config_names_close_matches(tmp_path, data):
    cfg = tmp_path / "q.toml"
    cfg.write_text('[layers."/conv9/Conv"]\nw_bits = 4\n')
    with pytest.raises(QccError, match=r"unknown layer '/conv9/Conv'; did you mean '/conv\d/Conv'"):
        _example(f'calibrate,quantize{{config="{cfg}"}}', data[0])


def test_crop_larger_than_the_map(tmp_path, data):
    cfg = tmp_path / "q.toml"
    cfg.write_text('[layers."/conv4/Conv"]\ncrop = [2, 2, 0, 0]\n')
    with pytest.raises(PassError, match=r"at node '/conv4/Conv'.*crop \[2, 2, 0, 0\] is larger than the 4x4"):
        _example(f'calibrate,quantize{{config="{cfg}"}}', data[0])


@settings(max_examples=25, deadline=None)
@given(st.data(), st.sampled_from(["uniform", "dynamic-fixed", "kmeans-linear", "bipolar"]))
def test_random_graphs_quantize_verify_and_stay_close(data, w_scheme):
    g = data.draw(graphs(GraphOptions(annotate=False)))
    x = data.draw(graph_inputs(g, batch=4))
    ref = run(g, x)
    run_pipeline(g, f"calibrate,quantize{{w_scheme={w_scheme},w_bits=8,a_bits=8}}",
                 PassContext(config={"calib": x}))
    verify(g)
    fake, exact = run(g, x, mode="fake"), run(g, x, mode="int")
    for k, v in ref.items():
        assert np.all(np.isfinite(exact[k]))
        if w_scheme in ("uniform", "dynamic-fixed"):  # 8-bit: close to float
            tol = 0.1 * max(1.0, float(np.abs(v).max()))
            assert np.max(np.abs(fake[k] - v)) <= tol


def test_fpga_folding_keys_parse_and_are_checked():
    from qcc.config import parse_config

    config = parse_config({"default": {"simd": 8}, "layers": {"/fc/Gemm": {"pe": 2}}})
    assert config.layers["/fc/Gemm"].merged_over(config.default) == replace(config.default, pe=2, simd=8)
    for bad in (0, -3, True, 1.5, "4"):
        with pytest.raises(QccError, match="pe must be a positive integer"):
            parse_config({"layers": {"/fc/Gemm": {"pe": bad}}})
