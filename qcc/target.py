"""The target interface (DESIGN.md §5): what a backend tells the compiler and what it must do.

Targets are registered by name as "module:Class" strings and imported when used, so `qcc show`
never imports TVM. Passes reach a target's cost model only through this interface.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from qcc.errors import QccError
from qcc.ir.graph import Graph, Node

__all__ = ["Target", "LegalBits", "LayerCost", "CostReport", "Artifacts", "register_target", "write_artifacts",
           "read_artifacts", "ARTIFACTS_FILE", "explain_table",
           "registered_targets", "get_target", "PLANNED_TARGETS"]


@dataclass(frozen=True)
class LegalBits:
    """What a target executes for one node: bit-widths per operand and the schemes it supports."""

    weight_bits: tuple[int, ...]
    activation_bits: tuple[int, ...]
    schemes: tuple[str, ...] = ("uniform",)


@dataclass(frozen=True)
class LayerCost:
    """One layer's cost; `fields` holds the target's own figures (energy_pj, cycles, luts, ...)."""

    name: str
    op: str
    fields: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CostReport:
    layers: tuple[LayerCost, ...]
    totals: Mapping[str, float]
    units: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifacts:
    """What `lower` wrote: the output folder and the files in it, by role."""

    directory: Path
    files: Mapping[str, Path]
    target: str


ARTIFACTS_FILE = "artifacts.json"


def write_artifacts(artifacts: Artifacts) -> None:
    """Record what `lower` wrote (OUTDIR/artifacts.json), so `qcc run OUTDIR` can find it again."""
    import json

    doc = {"target": artifacts.target,
           "files": {role: str(Path(p).relative_to(artifacts.directory)) for role, p in artifacts.files.items()}}
    (artifacts.directory / ARTIFACTS_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_artifacts(directory: Path) -> Artifacts:
    """The Artifacts of a compiled folder; a clear error when it is not one."""
    import json

    path = Path(directory) / ARTIFACTS_FILE
    if not path.is_file():
        raise QccError(f"{directory} is not a compiled qcc folder (no {ARTIFACTS_FILE}); run 'qcc compile' first")
    try:
        doc = json.loads(path.read_text())
        files = {role: Path(directory) / rel for role, rel in doc["files"].items()}
        return Artifacts(directory=Path(directory), files=files, target=str(doc["target"]))
    except (ValueError, KeyError, TypeError) as e:
        raise QccError(f"{path} is damaged: {e}") from None


class Target(ABC):
    """A backend. Subclasses set `name` and implement every method.

    `lower` writes its files into out_dir and returns Artifacts (the CLI records them in
    artifacts.json); `simulate` runs them and must equal the reference integer interpreter.
    `options` are the command's target options (e.g. arch file, device), passed by keyword.
    """

    name: str = ""
    table_fields: tuple[str, ...] = ()  # per-layer cost fields `qcc compile` shows as table columns
    accumulator_bits: int | None = None  # fixed accumulator width `qcc compile` proves enough (qcc.ranges)
    budget_metric: str | None = None  # the LayerCost field assign-bits' target budget limits (e.g. "energy_pj")

    @abstractmethod
    def legal_bits(self, node: Node) -> LegalBits: ...

    @property
    @abstractmethod
    def default_pipeline(self) -> str: ...

    @abstractmethod
    def cost(self, graph: Graph) -> CostReport: ...

    @abstractmethod
    def lower(self, graph: Graph, out_dir: Path) -> Artifacts: ...

    @abstractmethod
    def simulate(self, artifacts: Artifacts, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def configure(self, config) -> None:
        """Take the per-layer settings of `--config` (a qcc.config.QuantConfig) that concern this target.

        Called before the pipeline runs; layer names are checked against the graph at lowering.
        """
        return None

    def assignment_target(self) -> Target:
        """The target assign-bits costs candidate bit-widths with.

        Its per-layer costs must be additive across layers; a target whose `cost` re-plans the whole
        design under a budget (FPGA folding under a LUT budget) returns a copy with a fixed plan.
        """
        return self

    def explain(self, graph: Graph) -> dict[str, tuple[str, str]]:
        """Per node name: (what it becomes on this target, why), for `qcc compile --explain`."""
        return {}


def explain_table(graph: Graph, target: Target) -> str:
    """The `--explain` table: every node, what the target made of it, and why."""
    explained = target.explain(graph)
    rows = [(n.name, n.op, *explained.get(n.name, ("-", "no target code: the reference semantics run it")))
            for n in graph.nodes]
    header = ("node", "op", f"{target.name} lowering", "why")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 3)
    return "\n".join(lines) + "\n"


# Targets the project plans; a name here without a registered implementation gets a clear message.
PLANNED_TARGETS = {"cpu": "TVM with bit-serial kernels", "cim": "compute-in-memory crossbars",
                   "fpga": "Verilog dataflow netlists"}

_TARGETS: dict[str, str] = {
    "cim": "qcc.targets.cim:CimTarget",
    "cpu": "qcc.targets.cpu:CpuTarget",
    "fpga": "qcc.targets.fpga:FpgaTarget",
}


def register_target(name: str, target: str | type[Target]) -> None:
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _TARGETS[name] = target


def registered_targets() -> list[str]:
    for ep in entry_points(group="qcc.targets"):
        _TARGETS.setdefault(ep.name, ep.value)
    return sorted(_TARGETS)


def get_target(name: str, **options: Any) -> Target:
    available = registered_targets()
    if name not in _TARGETS:
        if name in PLANNED_TARGETS:
            raise QccError(f"target '{name}' ({PLANNED_TARGETS[name]}) is not available in this version of "
                           f"qcc yet; available targets: {', '.join(available) or 'none'}")
        raise QccError(f"unknown target '{name}'; known targets: "
                       f"{', '.join(sorted(set(available) | set(PLANNED_TARGETS)))}")
    module_name, _, class_name = _TARGETS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)
