"""Checking a compiled target against the reference integer interpreter on generated inputs.

The interpreter's integer semantics are the specification, so a target is correct on an input when
its outputs equal the interpreter's exactly. `verify_target` first runs the calibration set as one
batch, then lets hypothesis search (qcc.testing.inputs: calibration samples, noise, quantization
edges); hypothesis shrinks the first disagreement it finds. `first_differing_layer` then compiles
growing prefixes of the graph to name the first layer whose output already differs.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcc.config import LAYER_OPS
from qcc.errors import QccError
from qcc.interp import run
from qcc.ir.graph import Graph
from qcc.target import Artifacts, Target

__all__ = ["Mismatch", "VerifyResult", "outputs_equal", "first_difference", "verify_target", "check_inputs",
           "first_differing_layer", "compile_to"]


@dataclass(frozen=True)
class Mismatch:
    """A shrunk input on which the target and the interpreter disagree."""

    inputs: dict[str, np.ndarray]
    output: str  # the first output that differs
    differing_elements: int
    max_abs_diff: float
    layer: str | None = None  # the first layer whose output differs, when it could be located


@dataclass
class VerifyResult:
    target: str
    cases: Counter = field(default_factory=Counter)  # inputs checked, by kind
    mismatch: Mismatch | None = None

    @property
    def passed(self) -> bool:
        return self.mismatch is None


def first_difference(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]) -> tuple[str, int, float] | None:
    """(output, differing elements, max |diff|) of the first output that differs, or None."""
    for name, r in ref.items():
        r = np.asarray(r)
        o = np.asarray(out.get(name)) if name in out else None
        if o is None or o.shape != r.shape:
            return name, int(r.size), float("inf")
        if not np.array_equal(o, r):
            diff = np.abs(o.astype(np.float64) - r.astype(np.float64))
            return name, int(np.count_nonzero(o != r)), float(np.nanmax(diff))
    return None


def outputs_equal(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]) -> bool:
    return first_difference(ref, out) is None


def compile_to(target: Target, graph: Graph, directory: Path) -> Artifacts:
    artifacts = target.lower(graph, directory)
    return Artifacts(directory, artifacts.files, target.name)


def _prefix(graph: Graph, node_name: str) -> Graph:
    """The graph cut after `node_name`: its output becomes the only output."""
    cut = graph.clone()
    node = next(n for n in cut.nodes if n.name == node_name)
    cut.set_outputs([node.outputs[0]])
    cut.remove_dead()
    return cut


def first_differing_layer(graph: Graph, target: Target, inputs: Mapping[str, np.ndarray]) -> str | None:
    """The first layer (in topological order) whose output differs, by compiling graph prefixes.

    A prefix the target cannot lower is skipped; None when no prefix shows the difference.
    """
    for node in graph.nodes:
        if node.op not in LAYER_OPS:
            continue
        prefix = _prefix(graph, node.name)
        with tempfile.TemporaryDirectory(prefix="qcc-verify-") as tmp:
            try:
                artifacts = compile_to(target, prefix, Path(tmp))
                out = target.simulate(artifacts, inputs)
            except QccError:
                continue
            if not outputs_equal(run(prefix, inputs, mode="int"), out):
                return node.name
    return None


def check_inputs(graph: Graph, target: Target, artifacts: Artifacts,
                 inputs: Mapping[str, np.ndarray]) -> VerifyResult:
    """Check one given batch (e.g. a saved counterexample), locating the first differing layer."""
    result = VerifyResult(target.name)
    result.cases["given"] = len(next(iter(inputs.values())))
    found = first_difference(run(graph, inputs, mode="int"), target.simulate(artifacts, inputs))
    if found is not None:
        result.mismatch = Mismatch(dict(inputs), *found, layer=first_differing_layer(graph, target, inputs))
    return result


class _Disagreement(Exception):
    pass


def verify_target(graph: Graph, target: Target, artifacts: Artifacts, *, calibration: Mapping[str, np.ndarray]
                  | None = None, examples: int = 100, seed: int = 0, locate: bool = True,
                  progress: Callable[[str], None] | None = None) -> VerifyResult:
    """Check `artifacts` (compiled from `graph` by `target`) against the interpreter."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    from qcc.testing.inputs import model_inputs

    result = VerifyResult(target.name)
    failures: list[tuple[dict[str, np.ndarray], tuple[str, int, float]]] = []

    def check(kind: str, inputs: dict[str, np.ndarray]) -> None:
        result.cases[kind] += next(iter(inputs.values())).shape[0] if kind == "calibration set" else 1
        found = first_difference(run(graph, inputs, mode="int"), target.simulate(artifacts, inputs))
        if found is not None:
            failures.append((inputs, found))
            raise _Disagreement(kind)

    calib = _calibration_batch(graph, calibration)
    if calib:
        if progress:
            progress(f"{target.name}: checking {len(next(iter(calib.values())))} calibration samples")
        try:
            check("calibration set", calib)
        except _Disagreement:
            failures.clear()  # search again below, so the counterexample is one shrunk sample

    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @hypothesis_seed(seed)
    @given(model_inputs(graph, calibration))
    def search(case):
        kind, inputs = case
        if progress and sum(result.cases.values()) % 10 == 0:
            progress(f"{target.name}: {sum(result.cases.values())} inputs checked")
        check(kind, inputs)

    try:
        search()
    except _Disagreement:
        pass
    except Exception as e:  # hypothesis reports a flaky failure when the target is not deterministic
        if not failures:
            raise
        if progress:
            progress(f"{target.name}: {type(e).__name__} while shrinking; keeping the last disagreement")
    if failures:
        inputs, (output, count, diff) = failures[-1]  # hypothesis replays the shrunk example last
        layer = first_differing_layer(graph, target, inputs) if locate else None
        result.mismatch = Mismatch(inputs, output, count, diff, layer)
    return result


def _calibration_batch(graph: Graph, calibration: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if not calibration:
        return {}
    batch = {}
    for i, v in enumerate(graph.inputs):
        x = calibration.get(v.name, calibration.get("x") if i == 0 else None)
        if x is None:
            return {}
        batch[v.name] = np.asarray(x, np.float32)
    return batch
