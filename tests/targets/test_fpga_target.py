"""The fpga target end to end: lower an MLP, simulate it (Icarus), compare with run(mode="int"); errors."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from qcc.cli import main
from qcc.errors import QccError
from qcc.frontend import save_model
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType
from qcc.pass_manager import PassContext, run_pipeline
from qcc.target import get_target
from qcc.targets.fpga import FpgaTarget
from qcc.testing.nets import float_mlp

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs iverilog")


def _mlp(dims=(12, 8, 6, 4), seed=0) -> Graph:
    return float_mlp(dims, seed)


def _calib(n_in: int, seed=1) -> dict:
    return {"x": np.random.default_rng(seed).normal(size=(64, n_in)).astype(np.float32)}


def _quantized(target: FpgaTarget, pipeline: str | None = None) -> Graph:
    g = _mlp()
    run_pipeline(g, pipeline or target.default_pipeline, PassContext(config={"calib": _calib(12)}))
    return g


@pytest.mark.parametrize("options", [{}, {"cycles_per_frame": 12}, {"folding": {"fc0": (2, 3), "fc2": (4, 2)}}])
def test_mlp_simulates_bit_exactly(tmp_path, options):
    target = FpgaTarget(**options)
    g = _quantized(target, "canonicalize,fold-bn,calibrate,quantize{w_bits=4,a_bits=4}")
    artifacts = target.lower(g, tmp_path)
    assert (tmp_path / "rtl" / "qcc_top.v").is_file() and (tmp_path / "model.qir").is_file()
    assert any(p.suffix == ".mem" for p in (tmp_path / "rtl").iterdir())
    x = np.random.default_rng(5).normal(0, 1.5, (40, 12)).astype(np.float32)
    out = target.simulate(artifacts, {"x": x})
    ref = run(g, {"x": x}, mode="int")
    assert out.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])
    if "cycles_per_frame" in options:
        assert target.cost(g).totals["cycles_per_frame"] <= 12


def test_default_pipeline_8_bits(tmp_path):
    target = get_target("fpga")
    g = _quantized(target)
    cost = target.cost(g)
    assert [c.name for c in cost.layers] == ["fc0", "fc1", "fc2"]
    assert cost.totals["cycles_per_frame"] == 12 * 8
    x = np.random.default_rng(6).normal(size=(10, 12)).astype(np.float32)
    out = target.simulate(target.lower(g, tmp_path), {"x": x})
    np.testing.assert_array_equal(out[g.outputs[0].name], run(g, {"x": x}, mode="int")[g.outputs[0].name])


def test_cli_compile_and_run(tmp_path, capsys):
    model, calib, inputs = tmp_path / "mlp.qir", tmp_path / "calib.npz", tmp_path / "in.npz"
    save_model(_mlp(), model)
    np.savez(calib, **_calib(12))
    x = np.random.default_rng(7).normal(size=(16, 12)).astype(np.float32)
    np.savez(inputs, x=x)
    out = tmp_path / "out"
    assert main(["compile", str(model), "--target", "fpga", "-o", str(out), "--calib", str(calib),
                 "--cycles-per-frame", "24"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "luts" in json.dumps(report)
    assert main(["run", str(out), str(inputs), "-o", str(tmp_path / "o.npz")]) == 0
    got = np.load(tmp_path / "o.npz")
    from qcc.frontend import load_model

    g = load_model(out / "model.qir")
    ref = run(g, {"x": x}, mode="int")
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_unsupported_op_is_a_clear_error(tmp_path):
    g = Graph()
    x = g.add_input("x", TensorType(("N", 4), "float32"))
    w = g.add_constant("w", np.ones((3, 4), np.float32))
    h = g.add_node("Gemm", [x, w], attrs={"transB": 1}, name="fc0").outputs[0]
    g.set_outputs([g.add_node("Sigmoid", [h], name="sig").outputs[0]])
    run_pipeline(g, "calibrate,quantize", PassContext(config={"calib": {"x": np.ones((4, 4), np.float32)}}))
    with pytest.raises(QccError, match="Sigmoid 'sig'.*the op is not supported"):
        FpgaTarget().lower(g, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    what, why = FpgaTarget().explain(g)["sig"]
    assert what == "cannot be lowered" and "the op is not supported" in why


def test_bad_options_and_folding():
    with pytest.raises(QccError, match="arch"):
        FpgaTarget(arch="x.toml")
    with pytest.raises(QccError, match="device 'virtex'"):
        FpgaTarget(device="virtex")
    g = _quantized(FpgaTarget(), "canonicalize,calibrate,quantize")
    with pytest.raises(QccError, match="layer 'fc1': pe=5 does not divide its 6 output channels; legal pe: 1, 2, 3, 6"):
        FpgaTarget(folding={"fc1": (5, 1)}).cost(g)


def test_missing_simulator_is_a_clear_error(tmp_path, monkeypatch):
    target = FpgaTarget()
    g = _quantized(target)
    artifacts = target.lower(g, tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(QccError, match="'iverilog' was not found"):
        target.simulate(artifacts, {"x": np.zeros((1, 12), np.float32)})


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="needs yosys")
def test_synthesis_report_and_cost_model(tmp_path):
    target = FpgaTarget(synth=True, device="ecp5")
    g = _mlp(dims=(6, 4))
    run_pipeline(g, "canonicalize,calibrate,quantize{w_bits=3,a_bits=3}", PassContext(config={"calib": _calib(6)}))
    artifacts = target.lower(g, tmp_path)
    assert artifacts.files["netlist"].is_file()
    design = json.loads((tmp_path / "design.json").read_text())
    synth, cost = design["synthesis"], design["cost"]
    assert synth["luts"] > 0 and synth["ffs"] > 0
    assert cost["luts"] > 0 and cost["cycles_per_frame"] == 6 * 4  # PE = SIMD = 1


# ----------------------------------------------------------------------------------- per-layer folding (--config)

def _cli_files(tmp_path, toml: str):
    model, calib, config = tmp_path / "mlp.qir", tmp_path / "calib.npz", tmp_path / "fold.toml"
    save_model(_mlp(), model)
    np.savez(calib, **_calib(12))
    config.write_text(toml)
    return ["compile", str(model), "--target", "fpga", "--calib", str(calib), "--config", str(config)]


def test_cli_folding_from_the_config_file(tmp_path, capsys):
    args = _cli_files(tmp_path, '[default]\nsimd = 2\n[layers."fc0"]\npe = 4\nsimd = 3\n[layers."fc2"]\npe = 2\n')
    out = tmp_path / "out"
    assert main([*args, "-o", str(out), "--cycles-per-frame", "20"]) == 0
    table = capsys.readouterr().out
    layers = {r["name"]: r["cost"] for r in json.loads((out / "report.json").read_text())["layers"] if r["cost"]}
    folds = {name: (int(c["pe"]), int(c["simd"])) for name, c in layers.items()}
    # fc0 as configured; fc1 inherits simd = 2 and the cost model picks pe for 20 cycles; fc2 pe = 2 plus simd = 2
    assert folds == {"fc0": (4, 3), "fc1": (2, 2), "fc2": (2, 2)}
    assert json.loads((out / "design.json").read_text())["folding"] == {"fc0": [4, 3], "fc1": [2, 2], "fc2": [2, 2]}
    lines = table.splitlines()
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[1])]  # the column rule under the header
    cells = [[line[a:b].strip() for a, b in spans] for line in lines]
    col = {name: i for i, name in enumerate(cells[0])}
    for row in cells[2:]:
        if row[0] in folds:
            assert (row[col["pe"]], row[col["simd"]]) == tuple(str(v) for v in folds[row[0]])
            assert row[col["acc_bits"]] == f"{layers[row[0]]['acc_bits']:.0f}"
    inputs = tmp_path / "in.npz"
    x = np.random.default_rng(8).normal(size=(6, 12)).astype(np.float32)
    np.savez(inputs, x=x)
    assert main(["run", str(out), str(inputs), "-o", str(tmp_path / "o.npz")]) == 0
    from qcc.frontend import load_model

    ref = run(load_model(out / "model.qir"), {"x": x}, mode="int")
    got = np.load(tmp_path / "o.npz")
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_cli_config_folding_without_a_throughput_goal_keeps_the_rest_smallest(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*_cli_files(tmp_path, '[layers."fc1"]\npe = 3\nsimd = 4\n'), "-o", str(out)]) == 0
    layers = {r["name"]: r["cost"] for r in json.loads((out / "report.json").read_text())["layers"] if r["cost"]}
    folds = {n: (int(c["pe"]), int(c["simd"])) for n, c in layers.items()}
    assert folds == {"fc0": (1, 1), "fc1": (3, 4), "fc2": (1, 1)}


@pytest.mark.parametrize("toml, message", [
    ('[layers."fc1"]\npe = 5\n',
     "fpga target: layer 'fc1': pe=5 (--config [layers.\"fc1\"]) does not divide its 6 output channels; "
     "legal pe: 1, 2, 3, 6"),
    ('[default]\nsimd = 8\n',
     "fpga target: layer 'fc0': simd=8 (--config [default]) does not divide its reduction length 12 (inputs); "
     "legal simd: 1, 2, 3, 4, 6, 12"),
    ('[layers."fc9"]\npe = 2\n', "unknown layer 'fc9'; did you mean"),
    ('[layers."relu0"]\nsimd = 2\n', "pe / simd set for 'relu0', a Relu node, not a matrix-vector layer"),
    ('[layers."fc0"]\npe = 0\n', "pe must be a positive integer, got 0"),
])
def test_cli_bad_folding_config_is_one_line_exit_2_nothing_written(tmp_path, capsys, toml, message):
    out = tmp_path / "out"
    assert main([*_cli_files(tmp_path, toml), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


# ----------------------------------------------------------------------------------- --explain

def _explain_rows(text: str) -> dict[str, str]:
    rows = text[text.index("fpga lowering"):].splitlines()[2:]
    return {line.split()[0]: line for line in rows if line.strip()}


def test_cli_explain_names_the_rtl_block_of_every_node(tmp_path, capsys):
    assert main(["compile", "--target", "fpga", "-o", str(tmp_path / "out"), "-q", "--explain",
                 "--cycles-per-frame", "4096"]) == 0
    rows = _explain_rows(capsys.readouterr().out)
    assert len(rows) == 13 and not any("no target code" in r for r in rows.values())
    conv2 = rows["/conv2/Conv"]
    assert "SWG 3x3 line buffer" in conv2 and "MVAU pe=1 simd=36" in conv2 and "acc 21 bits" in conv2
    assert "meeting --cycles-per-frame 4096" in conv2 and "(= qcc.ranges required_bits)" in conv2
    assert "residual join (Add) with fork FIFO depth 64" in rows["/Add"]
    assert "stream forked to 2 readers" in rows["/relu2/Relu"]
    assert "MaxPool 2x2/2" in rows["/pool/MaxPool"]
    assert "post-op of '/conv1/Conv': relu" in rows["/relu1/Relu"]
    assert "threshold table" in rows["/Flatten"]


def _bipolar_mlp(dims=(16, 8, 4), seed=0) -> Graph:
    from qcc.ir.quant import Bipolar, Uniform

    rng = np.random.default_rng(seed)
    g = Graph()
    h = g.add_input("x", TensorType(("N", dims[0]), "float32"))
    h.quant = Uniform(bits=4, signed=False, scale=1 / 15)
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = g.add_constant(f"w{i}", np.where(rng.random((b, a)) < 0.5, -0.1, 0.1).astype(np.float32),
                           quant=Bipolar(scale=0.1))
        h = g.add_node("Gemm", [h, w], attrs={"transB": 1}, name=f"fc{i}").outputs[0]
        if i < len(dims) - 2:
            h.quant = Bipolar(scale=1.0)
    g.set_outputs([h])
    return g


def test_explain_xnor_or_multipliers_and_the_folding_rule():
    g = _bipolar_mlp()
    target = FpgaTarget(device="ecp5", cycles_per_frame=16)
    rows = target.explain(g)
    assert rows["fc0"][0].startswith("MVAU") and "multipliers" in rows["fc0"][0]  # 4-bit inputs: not +-1
    assert "bipolar weights on multipliers: the input is not a +-1 stream" in rows["fc0"][1]
    assert "XNOR-popcount" in rows["fc1"][0] and "XNOR + popcount instead of multipliers" in rows["fc1"][1]
    assert "meeting --cycles-per-frame 16" in rows["fc1"][1]
    assert "smallest folding" in FpgaTarget().explain(g)["fc0"][1]
    assert "--lut-budget 100000" in FpgaTarget(lut_budget=100000).explain(g)["fc0"][1]
    pinned = FpgaTarget(cycles_per_frame=16)
    pinned.configure({"layers": {"fc1": {"simd": 4}}})
    why = pinned.explain(g)["fc1"][1]
    assert 'simd set by --config [layers."fc1"]; the other factor: the cheapest' in why


# ----------------------------------------------------------------------------------- accumulators = qcc.ranges

def _full_window(layer) -> bool:
    """Some output position of a convolution sees its whole kernel inside the input map."""
    from qcc.targets.fpga.plan import ConvLayer

    if not isinstance(layer, ConvLayer):
        return True
    (kh, kw), (sy, sx), (top, left, _, _) = layer.kernel, layer.strides, layer.pads
    _, h, w = layer.in_shape
    oh, ow = layer.out_hw
    return (any(0 <= y * sy - top and y * sy - top + kh <= h for y in range(oh))
            and any(0 <= x * sx - left and x * sx - left + kw <= w for x in range(ow)))


@pytest.mark.parametrize("scheme", ["uniform", "residual", "bipolar", "codebook"])
def test_accumulator_widths_are_the_range_analysis_bits(scheme):
    from hypothesis import HealthCheck, given, settings

    from qcc.ranges import analyze
    from qcc.targets.fpga import plan_graph
    from qcc.testing.nets import quantized_nets

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(quantized_nets(scheme, max_layers=3, max_channels=4))
    def check(net):
        g = net.graph
        target = FpgaTarget(device="ecp5")
        required = {name: layer.bits for name, layer in analyze(g).items()}
        report = {c.name: c.fields for c in target.cost(g).layers}
        explained = target.explain(g)
        for layer in plan_graph(g).layers:
            bits = layer.acc_width
            assert report[layer.name]["acc_bits"] == bits and f"acc {bits} bits" in explained[layer.name][0]
            if _full_window(layer):
                assert bits == required[layer.name], (layer.name, bits, required[layer.name])
                assert "(= qcc.ranges required_bits)" in explained[layer.name][1]
            else:  # every tap bounded at full range: sound, at most a bit or two wider than the exact bound
                assert bits >= required[layer.name]
                assert bits == required[layer.name] or f"qcc.ranges needs {required[layer.name]}" in \
                    explained[layer.name][1]

    check()


@pytest.mark.skipif(shutil.which("yosys") is None, reason="needs yosys")
def test_cli_synth_into_a_relative_output_folder(tmp_path, monkeypatch, capsys):
    """Yosys runs in the rtl folder: the paths it gets must not be relative to the caller's directory."""
    model, calib = tmp_path / "mlp.qir", tmp_path / "calib.npz"
    save_model(_mlp(dims=(6, 4)), model)
    np.savez(calib, **_calib(6))
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "mlp.qir", "--target", "fpga", "--device", "ecp5", "--synth", "-o", "out",
                 "--calib", "calib.npz", "-q"]) == 0
    totals = json.loads((tmp_path / "out" / "report.json").read_text())["totals"]
    assert totals["luts"] > 0 and totals["est_luts"] > 0 and (tmp_path / "out" / "netlist.json").is_file()


def test_explain_a_float_batchnorm_chain_as_comparators():
    from qcc.ir.quant import Uniform

    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 6), "float32"))
    x.quant = Uniform(bits=4, scale=0.1)
    w = g.add_constant("w", (rng.integers(-7, 8, (4, 6)) * 0.05).astype(np.float32), quant=Uniform(bits=4, scale=0.05))
    h = g.add_node("Gemm", [x, w], attrs={"transB": 1}, name="fc0").outputs[0]
    params = [np.array([1.0, -0.5, 2.0, 0.7]), np.zeros(4), np.zeros(4), np.ones(4)]
    h = g.add_node("BatchNormalization", [h, *(g.add_constant(f"p{i}", p.astype(np.float32))
                                              for i, p in enumerate(params))], name="bn").outputs[0]
    h = g.add_node("Relu", [h], name="relu").outputs[0]
    h.quant = Uniform(bits=4, signed=False, scale=0.05)
    w2 = g.add_constant("w2", (rng.integers(-7, 8, (3, 4)) * 0.05).astype(np.float32),
                        quant=Uniform(bits=4, scale=0.05))
    g.set_outputs([g.add_node("Gemm", [h, w2], attrs={"transB": 1}, name="fc1").outputs[0]])
    rows = FpgaTarget().explain(g)
    assert "thresholds 15 comparators" in rows["fc0"][0]
    assert rows["bn"][0] == "post-op of 'fc0': comparator chain (thresholds per channel)"
    assert rows["relu"][0] == "part of the comparator chain of 'bn'"


def test_lut_budget_assigns_bits_with_the_fpga_cost_model_and_the_design_fits(tmp_path):
    """--lut-budget puts assign-bits (metric: the cost model's LUTs) before quantize, then folds within the budget."""
    out = tmp_path / "out"
    assert main(["compile", "--target", "fpga", "--lut-budget", "150000", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assignment = report["config"]["bit_assignment"]
    assert assignment["budgets"]["target_budget"]["unit"] == "luts"
    assert assignment["budgets"]["target_budget"]["used"] <= 150000
    assert report["totals"]["luts"] <= 150000  # pooling and residual stages included, not only the MVAUs
    assert FpgaTarget(lut_budget=150000).assignment_target().lut_budget is None
