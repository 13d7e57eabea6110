"""Text tests for passes: each tests/filecheck/<pass>.qir holds a `# RUN: <pipeline>` line, the input
IR, a `# ----- expected` line and the exact IR the pipeline must print. Weights for the input are
made deterministically from the declared constant types, except that a `# DATA: <handle> = <json>`
line in the input gives a constant its data (e.g. a BN variance that must be positive). A
`# CALIB: <json>` line gives calibration data: the array "x" of `ctx.config["calib"]` (float32, samples
along axis 0), for data-driven passes such as `calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qcc.frontend.qir import declared_constants, parse_graph, print_graph
from qcc.pass_manager import PassContext, run_pipeline

CASES = sorted((Path(__file__).parents[1] / "filecheck").glob("*.qir"))
SEPARATOR = "# ----- expected"
DATA_PREFIX = "# DATA:"
CALIB_PREFIX = "# CALIB:"


def _declared_data(text: str) -> dict[str, list]:
    out = {}
    for line in text.splitlines():
        if line.startswith(DATA_PREFIX):
            handle, _, value = line.removeprefix(DATA_PREFIX).rpartition("=")
            out[handle.strip()] = json.loads(value)
    return out


def _weights(text: str) -> dict[str, np.ndarray]:
    out = {}
    given = _declared_data(text)
    for i, (handle, (ttype, _)) in enumerate(sorted(declared_constants(text).items())):
        n = ttype.numel()
        data = np.asarray(given[handle]) if handle in given else ((np.arange(n) * 7 + i) % 11 - 5) * 0.25
        out[handle] = data.reshape(ttype.concrete()).astype(ttype.dtype)
    return out


def _context(text: str) -> PassContext:
    ctx = PassContext()
    for line in text.splitlines():
        if line.startswith(CALIB_PREFIX):
            x = np.asarray(json.loads(line.removeprefix(CALIB_PREFIX)), dtype=np.float32)
            ctx.config["calib"] = {"x": x}
    return ctx


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_filecheck(case: Path):
    text = case.read_text()
    run_line = next(line for line in text.splitlines() if line.startswith("# RUN:"))
    pipeline = run_line.removeprefix("# RUN:").strip()
    source, expected = text.split(SEPARATOR + "\n")
    graph = parse_graph(source, _weights(source), source=str(case))
    run_pipeline(graph, pipeline, _context(source))
    assert print_graph(graph) == expected
