"""Packaging: the wheel maps frontend/, passes/, targets/, examples/ under qcc and adds no other top level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (wheel,) = out.glob("qcc-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_only_qcc_is_a_top_level_name(wheel_names):
    tops = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"qcc"}


@pytest.mark.parametrize("member", [
    "qcc/passes/canonicalize.py",
    "qcc/frontend/__init__.py",
    "qcc/frontend/qir/grammar.lark",
    "qcc/targets/__init__.py",
    "qcc/examples/digits_cnn.onnx",
    "qcc/examples/digits_eval.npz",
    "qcc/ops/nn.py",
    "qcc/cli/__main__.py",
])
def test_mapped_packages_and_data_are_in_the_wheel(wheel_names, member):
    assert member in wheel_names


def test_console_script_declared(wheel_names):
    assert any(n.endswith("entry_points.txt") for n in wheel_names)


def test_core_never_imports_mapped_packages():
    """DESIGN.md §1: only the CLI in qcc/ wires frontends, passes and targets."""
    offenders = []
    for path in (ROOT / "qcc").rglob("*.py"):
        if path.parent.name == "cli":  # the command line wires everything together
            continue
        text = path.read_text()
        for banned in ("qcc.frontend", "qcc.passes", "qcc.targets"):
            if f"import {banned}" in text or f"from {banned}" in text:
                offenders.append(f"{path.relative_to(ROOT)} imports {banned}")
    assert offenders == []
