"""`qcc verify` and qcc.verification: passes on a correct target, finds and localises an injected bug."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from qcc.cli import main
from qcc.frontend.qir import load, save
from qcc.integer import IntegerSemantics, QTensor
from qcc.interp import run
from qcc.target import _TARGETS, Artifacts, CostReport, LegalBits, Target, register_target
from qcc.testing.inputs import EDGE_KINDS, input_range, model_inputs

BROKEN_LAYER = "/conv3/Conv"


class _OffByOne(IntegerSemantics):
    """The reference semantics with one layer's accumulator off by one."""

    def evaluate(self, node, args):
        out = super().evaluate(node, args)
        if node.name == BROKEN_LAYER and isinstance(out[0], QTensor):
            q = out[0]
            return [QTensor(q.q + 1, q.scale, q.zero_point)]
        return out


class _ReferenceTarget(Target):
    """Runs the saved graph with the integer semantics (or a broken copy of them)."""

    name = "reference-test"
    broken = False

    def __init__(self, **options):
        self._loaded = None

    def legal_bits(self, node):
        return LegalBits(weight_bits=(8,), activation_bits=(8,))

    @property
    def default_pipeline(self) -> str:
        return "fold-bn,calibrate,quantize{w_bits=4,a_bits=4}"

    def cost(self, graph):
        return CostReport(layers=(), totals={})

    def lower(self, graph, out_dir: Path) -> Artifacts:
        save(graph, out_dir / "model.qir")
        return Artifacts(out_dir, {"model": out_dir / "model.qir"}, self.name)

    def simulate(self, artifacts, inputs):
        path = artifacts.files["model"]
        if self._loaded is None or self._loaded[0] != path:
            self._loaded = (path, load(path))
        return run(self._loaded[1], inputs, mode=_OffByOne() if self.broken else "int")


class _BrokenTarget(_ReferenceTarget):
    name = "broken-test"
    broken = True


@pytest.fixture(autouse=True)
def _registered():
    register_target("reference-test", _ReferenceTarget)
    register_target("broken-test", _BrokenTarget)
    yield
    _TARGETS.pop("reference-test", None)
    _TARGETS.pop("broken-test", None)


def test_verify_passes_on_a_target_equal_to_the_interpreter(tmp_path, capsys):
    assert main(["verify", "--target", "reference-test", "--examples", "20", "-q",
                 "--save-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reference-test: PASS: 308 inputs")  # 288 calibration samples + 20 generated
    assert not list(tmp_path.iterdir())


def test_verify_finds_names_and_replays_an_off_by_one_layer(tmp_path, capsys):
    assert main(["verify", "--target", "broken-test", "--examples", "50", "-q", "--save-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "broken-test: MISMATCH" in out
    assert f"first differing layer: {BROKEN_LAYER}" in out
    saved = tmp_path / "counterexample-broken-test.npz"
    with np.load(saved) as z:
        x = z["input"]
    assert x.shape == (1, 1, 8, 8)  # one shrunk sample
    replay = next(line for line in out.splitlines() if "replay:" in line).split("replay: ", 1)[1]
    argv = shlex.split(replay)[1:]
    assert argv[:4] == ["verify", "--target", "broken-test", "--inputs"]
    assert main(argv + ["-q", "--save-dir", str(tmp_path / "again")]) == 1  # the counterexample still fails
    assert main(["verify", "--target", "reference-test", "--inputs", str(saved), "-q"]) == 0


def test_verify_rejects_a_bad_example_count(capsys):
    assert main(["verify", "--target", "reference-test", "--examples", "0"]) == 2
    assert "--examples must be at least 1" in capsys.readouterr().err


def test_verify_report_of_cases_is_json_free_plain_text(capsys):
    assert main(["verify", "--target", "reference-test", "--examples", "5", "-q"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and not line.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


# ------------------------------------------------------------------------------ the input strategy

def _quantized_example():
    from qcc.examples import CALIB, MODEL
    from qcc.frontend import load_model
    from qcc.io import load_arrays
    from qcc.pass_manager import PassContext, run_pipeline

    graph = load_model(MODEL)
    ctx = PassContext()
    ctx.config["calib"] = load_arrays(CALIB)
    run_pipeline(graph, "fold-bn,calibrate,quantize{w_bits=4,a_bits=4}", ctx)
    return graph, ctx.config["calib"]


_GRAPH, _CALIB = _quantized_example()


@settings(max_examples=60, deadline=None)
@given(model_inputs(_GRAPH, _CALIB))
def test_generated_inputs_have_the_models_shape_and_stay_near_its_range(case):
    kind, inputs = case
    (x,) = inputs.values()
    assert x.shape == (1, 1, 8, 8) and x.dtype == np.float32 and np.isfinite(x).all()
    low, high, step = input_range(_GRAPH.inputs[0])
    calib_low, calib_high = float(_CALIB["x"].min()), float(_CALIB["x"].max())
    assert x.min() >= min(low, calib_low) - 6 * step and x.max() <= max(high, calib_high) + 6 * step
    assert kind.split("+")[0] in ("zeros", "calibration", "noise")


def test_edge_values_sit_on_rounding_ties_and_past_saturation():
    from qcc.testing.inputs import _edge_value

    low, high, step = input_range(_GRAPH.inputs[0])
    values = {kind: float(_edge_value(kind, 0.5, low, high, step)) for kind in EDGE_KINDS}
    codes = {kind: (v - low) / step for kind, v in values.items()}
    assert codes["grid"] == pytest.approx(round(codes["grid"]), abs=1e-4)
    assert codes["tie"] % 1 == pytest.approx(0.5, abs=1e-4)
    assert values["below_tie"] < values["tie"] < values["above_tie"]
    assert values["saturate_low"] < low and values["saturate_high"] > high
