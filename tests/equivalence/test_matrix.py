"""The cross-target equivalence matrix: every target x every scheme against the integer interpreter.

Each cell draws small random CNNs (qcc.testing.nets: conv + BN + ReLU blocks, residual adds, max
pooling, a dense head), quantizes them with the scheme's own pipeline, compiles them for the
target and checks, on calibration samples and fresh noise, that the target's outputs equal
`qcc.interp.run(graph, x, mode="int")` bit for bit. A net a target cannot lower must be refused
with a clear QccError at compile time, never run with wrong numbers; in a cell the target supports,
every net must compile.
The interpreter = onnxruntime (QDQ, 8-bit uniform) column lives in tests/frontend/test_qdq_vs_integer.py.

QCC_MATRIX_EXAMPLES=N runs N nets per cell (CI: a few); QCC_MATRIX_REPORT=path.json records the
cases each cell ran (bench/bench_matrix.py writes the README's table from it).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcc.errors import QccError
from qcc.interp import run
from qcc.target import get_target, registered_targets
from qcc.testing.nets import SCHEME_PIPELINES, quantized_nets
from qcc.verification import compile_to

SCHEMES = tuple(SCHEME_PIPELINES)
# Schemes each target lowers; the others must be refused cleanly.
SUPPORTED = {
    "cim": set(SCHEMES) - {"bipolar"},  # issue 5 maps uniform and codebook weights; bipolar is refused
    "cpu": set(SCHEMES),
    # fpga: cropped regions are not lowered, and a BN that fold-bn{thresholds=true} leaves in float
    # form (a negative scale) is a float op the RTL cannot run: such nets are refused by name.
    "fpga": set(SCHEMES) - {"crops", "thresholds"},
}
# Nets per cell in CI, by target (compiles for cpu and fpga take seconds each).
DEFAULT_EXAMPLES = {"cim": 6, "cpu": 4, "fpga": 2}
CASES: Counter = Counter()


def _examples(target: str) -> int:
    return int(os.environ.get("QCC_MATRIX_EXAMPLES", DEFAULT_EXAMPLES[target]))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("QCC_MATRIX_REPORT")
    if path:
        doc = {f"{t}/{s}/{outcome}": n for (t, s, outcome), n in sorted(CASES.items())}
        Path(path).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _inputs(net, seed: int) -> dict[str, np.ndarray]:
    (name, calib), = net.calibration.items()
    noise = np.random.default_rng(seed).uniform(-1.5, 1.5, size=(2, *calib.shape[1:])).astype(np.float32)
    return {name: np.concatenate([calib[:3], noise])}


def _check_cell(target_name: str, scheme: str) -> None:
    if target_name not in registered_targets():
        pytest.skip(f"target {target_name} is not registered")
    target = get_target(target_name)

    @settings(max_examples=_examples(target_name), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(net=quantized_nets(scheme, max_layers=3, max_channels=5), seed=st.integers(0, 2**31 - 1))
    def cell(net, seed):
        inputs = _inputs(net, seed)
        with tempfile.TemporaryDirectory(prefix="qcc-matrix-") as tmp:
            try:
                artifacts = compile_to(target, net.graph, Path(tmp))
            except QccError:
                assert scheme not in SUPPORTED[target_name], f"{net.pipeline}: refused by {target_name}"
                CASES[target_name, scheme, "refused"] += 1
                return
            got = target.simulate(artifacts, inputs)
        want = run(net.graph, inputs, mode="int")
        assert set(got) == set(want)
        for name, value in want.items():
            np.testing.assert_array_equal(np.asarray(got[name]), value, err_msg=f"{net.pipeline}: output {name}")
        CASES[target_name, scheme, "equal"] += 1

    cell()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cim_equals_interpreter(scheme):
    _check_cell("cim", scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cpu_equals_interpreter(scheme):
    _check_cell("cpu", scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fpga_equals_interpreter(scheme):
    _check_cell("fpga", scheme)
