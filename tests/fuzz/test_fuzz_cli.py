"""Fuzz the command line (issue 8 item 5): damaged ONNX files (bytes and protobuf fields) and .qir
text never produce a traceback; a failure is exit 2 with exactly one 'qcc: error:' line on stderr
and leaves nothing in the output location; harmless damage may exit 0. The damage and the checks
are in fuzz_harness.py (shared with bench/bench_fuzz.py, which runs 10,000 cases)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fuzz_harness import COMMANDS, KINDS, ONNX_KINDS, QIR_KINDS, damage, make_seeds, problems, run_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# compile is the slow command (a harmless damage compiles the whole model): drawn 1 time in 7
_COMMANDS = st.sampled_from(["show", "run", "opt"] * 2 + ["compile"])
_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                 database=None)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("fuzz") / "seeds")


def _case(seeds, kind: str, seed: int, command: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}-{seed}-", dir=seeds.folder.parent))
    model = damage(kind, seed, seeds, folder)
    outcome = run_case(command, model, seeds, folder)
    assert problems(outcome) == [], (kind, seed, command, outcome.rc, outcome.stderr[-2000:])


@settings(max_examples=200, **_SETTINGS)
@given(kind=st.sampled_from(ONNX_KINDS), seed=st.integers(0, 2**31 - 1), command=_COMMANDS)
def test_damaged_onnx(seeds, kind, seed, command):
    _case(seeds, kind, seed, command)


@settings(max_examples=120, **_SETTINGS)
@given(kind=st.sampled_from(QIR_KINDS), seed=st.integers(0, 2**31 - 1), command=_COMMANDS)
def test_damaged_qir(seeds, kind, seed, command):
    _case(seeds, kind, seed, command)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_and_command(seeds, kind):
    for command in COMMANDS:
        _case(seeds, kind, 0, command)


def test_every_kind_damages_the_model(seeds, tmp_path):
    """No damage kind is a silent no-op: each one changes the file it starts from."""
    for kind in KINDS:
        model = damage(kind, 1, seeds, tmp_path / kind)
        originals = [seeds.onnx, seeds.qdq] if model.suffix == ".onnx" else [seeds.qir, seeds.qir_quant]
        if kind == "qir-npz":
            originals, model = [p.with_suffix(".npz") for p in originals], model.with_suffix(".npz")
        assert all(model.read_bytes() != p.read_bytes() for p in originals), kind


@pytest.mark.parametrize("kind,seed,command", [("onnx-bytes-truncate", 3, "show"), ("onnx-cycle", 1, "compile"),
                                               ("qir-chars", 2, "opt"), ("onnx-absurd-attribute", 5, "run")])
def test_real_process(seeds, kind, seed, command):
    """The same contract from a real `python -m qcc.cli` process: exit code, stderr, files on disk."""
    folder = Path(tempfile.mkdtemp(prefix=f"proc-{kind}-", dir=seeds.folder.parent))
    model = damage(kind, seed, seeds, folder)
    from fuzz_harness import argv_for

    argv, _ = argv_for(command, model, seeds, folder)
    before = set(os.listdir(folder))
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    proc = subprocess.run([sys.executable, "-m", "qcc.cli", *argv], capture_output=True, text=True, cwd=folder,
                          env=env, timeout=120)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("qcc: error:"), proc.stderr
        assert set(os.listdir(folder)) == before
