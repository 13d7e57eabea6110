"""FPGA lowering refusals are actionable: `qcc compile --target fpga` exits 2 with one line naming the node,
the reason and the remedy (a config line or another target), and leaves no output folder (issue 8 item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.cli import main
from qcc.errors import LoweringError
from qcc.frontend import save_model
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType
from qcc.pass_manager import PassContext, run_pipeline
from qcc.targets.fpga.plan import plan_graph
from qcc.testing.nets import float_mlp

_CPU = "compile for --target cpu, which runs every op"


def _cnn(dilation: int = 1) -> Graph:
    """conv (3x3, pad 1 or a dilated 3x3) -> relu -> conv2 (1x1) on a 2 x 6 x 6 map."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 2, 6, 6), "float32"))
    w = g.add_constant("w", rng.normal(size=(3, 2, 3, 3)).astype(np.float32))
    b = g.add_constant("b", rng.normal(size=(3,)).astype(np.float32))
    pad = dilation
    h = g.add_node("Conv", [x, w, b], attrs={"kernel_shape": [3, 3], "pads": [pad] * 4,
                                             "dilations": [dilation, dilation]}, name="conv").outputs[0]
    h = g.add_node("Relu", [h], name="relu").outputs[0]
    w2 = g.add_constant("w2", rng.normal(size=(4, 3, 1, 1)).astype(np.float32))
    g.set_outputs([g.add_node("Conv", [h, w2], attrs={"kernel_shape": [1, 1]}, name="conv2").outputs[0]])
    return g


def _sigmoid_head() -> Graph:
    g = float_mlp((6, 4, 3))
    g.set_outputs([g.add_node("Sigmoid", [g.outputs[0]], name="sig").outputs[0]])
    return g


# (graph, input shape, --config text, the op and node named, the remedy)
CASES = {
    "unsupported-op": (_sigmoid_head, (6,), None, "Sigmoid 'sig'", _CPU),
    "dilations": (lambda: _cnn(2), (2, 6, 6), None, "Conv 'conv'",
                  "compile for --target cpu or cim, which run dilated convolutions"),
    "crop": (_cnn, (2, 6, 6), '[layers."conv"]\ncrop = [1, 0, 0, 0]\n', "Conv 'conv'",
             'remove `crop` from [layers."conv"] in --config, or compile for --target cim or cpu, which skip '
             "cropped regions"),
    "float-input": (lambda: float_mlp((6, 5, 4, 3)), (6,), '[layers."fc0"]\na_scheme = "float"\n', "input 'x'",
                    'quantize it (a_scheme = "uniform" in [layers."fc0"] of --config, not float), or ' + _CPU),
    "float-activation": (lambda: float_mlp((6, 5, 4, 3)), (6,), '[layers."fc1"]\na_scheme = "float"\n',
                         "Gemm 'fc1'", 'quantize it (a_scheme = "uniform" or "bipolar" in [layers."fc1"] of '
                         "--config, not float), or " + _CPU),
    "float-weights": (lambda: float_mlp((6, 5, 4, 3)), (6,), '[layers."fc1"]\nw_scheme = "float"\n', "Gemm 'fc1'",
                      'quantize it (w_scheme uniform, bipolar or codebook in [layers."fc1"] of --config, not float), '
                      "or " + _CPU),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_refusal_is_one_actionable_line_exit_2_nothing_written(tmp_path, capsys, case):
    build, shape, toml, where, remedy = CASES[case]
    model, calib, out = tmp_path / "m.qir", tmp_path / "calib.npz", tmp_path / "out"
    save_model(build(), model)
    np.savez(calib, x=np.random.default_rng(1).normal(size=(16, *shape)).astype(np.float32))
    args = ["compile", str(model), "--target", "fpga", "-o", str(out), "--calib", str(calib), "-q"]
    if toml is not None:
        (tmp_path / "layers.toml").write_text(toml)
        args += ["--config", str(tmp_path / "layers.toml")]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"lowering to target 'fpga' failed at {where}: " in err, err
    assert err.endswith("; " + remedy), err
    assert not out.exists() and not list(tmp_path.glob(".*out*"))


def _float_bn_net(quantized: bool = True) -> Graph:
    """conv -> BN with a negative scale on one channel -> relu -> conv (or the BN's float result as the
    output): fold-bn{thresholds=true} keeps that BN in float (a negated channel would need its weights
    flipped)."""
    rng = np.random.default_rng(3)
    g = Graph()
    x = g.add_input("x", TensorType(("N", 2, 5, 5), "float32"))
    w = g.add_constant("w", rng.normal(size=(3, 2, 3, 3)).astype(np.float32))
    h = g.add_node("Conv", [x, w], attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, name="conv").outputs[0]
    params = [np.array([1.0, -0.5, 2.0]), rng.normal(size=3), rng.normal(size=3), np.array([1.0, 0.5, 2.0])]
    consts = [g.add_constant(f"bn_{i}", p.astype(np.float32)) for i, p in enumerate(params)]
    h = g.add_node("BatchNormalization", [h, *consts], name="bn").outputs[0]
    if quantized:
        h = g.add_node("Relu", [h], name="relu").outputs[0]
        w2 = g.add_constant("w2", rng.normal(size=(2, 3, 1, 1)).astype(np.float32))
        h = g.add_node("Conv", [h, w2], attrs={"kernel_shape": [1, 1]}, name="conv2").outputs[0]
    g.set_outputs([h])
    calib = {"x": rng.normal(size=(16, 2, 5, 5)).astype(np.float32)}
    run_pipeline(g, "calibrate,quantize{w_bits=4,a_bits=4},fold-bn{thresholds=true}",
                 PassContext(config={"calib": calib}))
    return g


def test_float_batchnorm_without_a_quantizer_names_the_bn_and_how_to_fold_it():
    g = _float_bn_net(quantized=False)
    assert any(n.op == "BatchNormalization" for n in g.nodes)
    with pytest.raises(LoweringError) as info:
        plan_graph(g)
    e = info.value
    assert e.target == "fpga" and e.node == "bn" and e.op == "BatchNormalization"
    assert "reaches no quantized value" in e.reason
    assert "fold-bn pass without thresholds=true" in e.remedy and "--target cpu" in e.remedy
    assert str(e).startswith("lowering to target 'fpga' failed at BatchNormalization 'bn': ")


def test_every_refusal_is_a_lowering_error_with_a_remedy():
    """Graph-level problems (no single input, an unannotated input) are also refused with a next step."""
    g = Graph()
    x = g.add_input("x", TensorType(("N", 4), "float32"))
    w = g.add_constant("w", np.ones((3, 4), np.float32))
    g.set_outputs([g.add_node("Gemm", [x, w], attrs={"transB": 1}, name="fc").outputs[0]])
    with pytest.raises(LoweringError) as info:
        plan_graph(g)
    assert info.value.node == "x" and info.value.op == "input" and info.value.remedy.endswith(_CPU)
    assert '[layers."fc"]' in info.value.remedy
