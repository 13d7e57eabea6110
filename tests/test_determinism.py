"""Compiling the same model twice gives byte-identical artifacts, whatever the working directory and
PYTHONHASHSEED (issue 8 item 6): every file, for every target, in fresh processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcc.target import registered_targets

# Per target: the extra options of a compile that exercises it (the bundled example by default).
TARGET_ARGS = {"cim": [], "cpu": [], "fpga": []}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _compile(target: str, out: Path, cwd: Path, hashseed: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    cmd = [sys.executable, "-m", "qcc", "compile", "--target", target, "-o", str(out), "-q", *TARGET_ARGS[target]]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("target", sorted(TARGET_ARGS))
def test_compiling_twice_gives_identical_bytes(tmp_path, target):
    if target not in registered_targets():
        pytest.skip(f"target {target} is not registered")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _compile(target, tmp_path / "out1", tmp_path / "a", "0")
    _compile(target, tmp_path / "out2", tmp_path / "b", "12345")
    first, second = _digest(tmp_path / "out1"), _digest(tmp_path / "out2")
    assert first.keys() == second.keys()
    differing = sorted(name for name in first if first[name] != second[name])
    assert not differing, f"{target}: files differ between two compiles: {differing}"
