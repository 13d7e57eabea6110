"""The compute-in-memory target (`qcc compile --target cim`): crossbar mapping, cost, simulator.

Options: `arch` (an architecture TOML file; default ISAAC, see qcc.targets.cim.arch) and
`energy_budget` (energy per inference, e.g. "5uJ", for assign-bits with the CIM cost model).
`accumulator_bits` is the arch's `acc_bits`: `qcc compile` refuses a model whose accumulators can
exceed it unless --allow-overflow, and the simulator wraps them as the hardware register would.
`lower` writes the quantized model (model.qir + .npz), mapping.json (crossbars, rows, columns, cell
levels, replicas), arch.toml (the architecture used, with its [mapping] and [nonideal] tables) and
two PNG plots (crossbar utilisation, per-layer energy breakdown); `simulate` maps the saved model
again (mapping is deterministic) and runs the crossbar simulator, which equals the integer
interpreter bit for bit when the ADCs are lossless and arch.toml has no non-idealities (with them,
the non-ideal outputs, reproducible from their seed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.ir.graph import Graph, Node
from qcc.target import Artifacts, CostReport, LayerCost, LegalBits, Target
from qcc.targets.cim.arch import ISAAC, Arch, arch_to_toml, load_arch
from qcc.targets.cim.cost import ENERGY_PARTS, UNITS, graph_cost
from qcc.targets.cim.mapping import MAC_OPS, map_graph, mapping_to_json, unmapped_reason

__all__ = ["CimTarget", "parse_energy"]

_ENERGY_UNITS = {"pj": 1.0, "nj": 1e3, "uj": 1e6, "µj": 1e6, "mj": 1e9, "j": 1e12}
_ENERGY = re.compile(r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>[a-zA-Zµ]*)")


def parse_energy(text: str) -> float:
    """"5uJ" -> 5e6 (pJ); a bare number is pJ. Units: pJ, nJ, uJ (µJ), mJ, J."""
    m = _ENERGY.fullmatch(str(text).strip())
    unit = (m["unit"] if m else "").lower() or "pj"
    if m is None or unit not in _ENERGY_UNITS:
        raise QccError(f"energy budget '{text}' is not an energy: expected a number and a unit pJ, nJ, uJ, mJ "
                       f"or J (e.g. 5uJ)")
    value = float(m["num"]) * _ENERGY_UNITS[unit]
    if not value > 0:
        raise QccError(f"energy budget '{text}' must be positive")
    return value


class CimTarget(Target):
    """Crossbar compute-in-memory accelerators (ISAAC by default)."""

    name = "cim"
    # per-layer cost columns of the `qcc compile` table (keys of LayerCost.fields), with totals
    table_fields = ("crossbars", "adc_conversions", "cycles", "energy_pj", "latency_ns")
    budget_metric = "energy_pj"  # what --energy-budget limits in assign-bits

    def __init__(self, arch: str | Path | Arch | None = None, energy_budget: str | float | None = None,
                 **others):
        if others:
            raise QccError(f"target 'cim' takes no option(s) {', '.join(sorted(others))} "
                           f"(it takes --arch and --energy-budget)")
        if isinstance(arch, Arch):
            self.arch = arch
        else:
            self.arch = ISAAC if arch is None else load_arch(arch)
        # the digital accumulator `qcc compile` proves wide enough (qcc.ranges; --allow-overflow: it wraps)
        self.accumulator_bits = self.arch.acc_bits
        self.energy_budget_pj = None if energy_budget is None else (
            float(energy_budget) if isinstance(energy_budget, int | float) else parse_energy(energy_budget))

    def legal_bits(self, node: Node) -> LegalBits:
        bits = tuple(range(1, 17))
        return LegalBits(weight_bits=bits, activation_bits=bits, schemes=("uniform", "codebook", "bipolar"))

    @property
    def default_pipeline(self) -> str:
        if self.energy_budget_pj is None:
            return "canonicalize,fold-bn,calibrate,quantize"
        return ("canonicalize,fold-bn,calibrate,annotate-sensitivity,"
                f"assign-bits{{target-budget={self.energy_budget_pj!r},target-metric=energy_pj}},quantize")

    def cost(self, graph: Graph) -> CostReport:
        mapping = map_graph(graph, self.arch, check=False)
        layers, totals = graph_cost(mapping)
        rows = tuple(LayerCost(m.name, m.op, layers[m.name]) for m in mapping.layers.values())
        return CostReport(layers=rows, totals=totals, units=UNITS)

    def explain(self, graph: Graph) -> dict[str, tuple[str, str]]:
        mapping = map_graph(graph, self.arch, check=False)
        from qcc.ranges import ACCUMULATING_OPS

        needs = _accumulator_needs(graph)
        out = {n.name: ("digital unit", "not a MAC layer: the tile's digital logic runs it on codes"
                        + (f", {self._accumulator_why(needs.get(n.name))}" if n.op in ACCUMULATING_OPS else ""))
               for n in graph.nodes}
        for node in graph.nodes:
            if node.op in MAC_OPS and node.name not in mapping.layers:
                out[node.name] = ("not mapped", unmapped_reason(node))
        for name, m in mapping.layers.items():
            what = (f"{m.crossbars} crossbar(s): {m.rows}x{m.cols} matrix, {m.cells_per_weight} cell(s)/weight, "
                    f"{m.adc_bits}-bit ADC")
            why = (f"{_weights_why(m)}, {_inputs_why(m)}, "
                   f"{m.row_tiles}x{m.col_tiles} tiles" + (f", {m.replicas} copies" if m.replicas > 1 else "")
                   + (f", {m.total_positions - m.positions} cropped positions skipped"
                      if m.positions < m.total_positions else "")
                   + f", {self._accumulator_why(needs.get(name))}")
            out[name] = (what, why)
        return out

    def _accumulator_why(self, need: int | None) -> str:
        """A layer's accumulator width (qcc.ranges) against the arch's register, for --explain."""
        if need is None:
            return f"{self.accumulator_bits}-bit accumulator"
        if need > self.accumulator_bits:
            return f"accumulator needs {need} bits but has {self.accumulator_bits}: wraps (--allow-overflow)"
        return f"accumulator needs {need} of {self.accumulator_bits} bits"

    def lower(self, graph: Graph, out_dir: Path) -> Artifacts:
        from qcc.frontend.qir import save

        out_dir = Path(out_dir)
        mapping = map_graph(graph, self.arch)
        _check_mapped(graph, mapping)
        save(graph, out_dir / "model.qir")
        (out_dir / "mapping.json").write_text(mapping_to_json(mapping))
        (out_dir / "arch.toml").write_text(arch_to_toml(self.arch))
        layers, _ = graph_cost(mapping)
        _plot_utilisation(layers, out_dir / "crossbar_utilisation.png")
        _plot_energy(layers, out_dir / "energy_breakdown.png")
        files = {"model": out_dir / "model.qir", "weights": out_dir / "model.npz",
                 "mapping": out_dir / "mapping.json", "arch": out_dir / "arch.toml",
                 "utilisation_plot": out_dir / "crossbar_utilisation.png",
                 "energy_plot": out_dir / "energy_breakdown.png"}
        return Artifacts(directory=out_dir, files={k: v for k, v in files.items() if v.exists()}, target=self.name)

    def simulate(self, artifacts: Artifacts, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from qcc.targets.cim.simulate import simulate

        graph, mapping = self._loaded(artifacts)
        return simulate(graph, mapping, inputs)

    def _loaded(self, artifacts: Artifacts):
        """(graph, mapping) of a compiled folder, kept while its files are unchanged (batched --eval runs)."""
        from qcc.frontend.qir import load

        for role in ("model", "arch"):
            if role not in artifacts.files or not Path(artifacts.files[role]).is_file():
                raise QccError(f"{artifacts.directory} has no {role} file; recompile with 'qcc compile --target cim'")
        paths = [Path(artifacts.files[r]) for r in ("model", "weights", "arch") if r in artifacts.files]
        key = tuple((str(p.resolve()), p.stat().st_mtime_ns) for p in paths if p.is_file())
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            graph = load(artifacts.files["model"])
            cache.clear()
            cache[key] = (graph, map_graph(graph, load_arch(artifacts.files["arch"])))
        return cache[key]


def _accumulator_needs(graph: Graph) -> dict[str, int]:
    """Accumulator bits per accumulating node (qcc.ranges.analyze, the proof `qcc compile` runs); {} if it fails."""
    from qcc.ranges import analyze

    try:
        return {name: layer.bits for name, layer in analyze(graph).items()}
    except QccError:
        return {}


def _weights_why(m) -> str:
    if m.scheme != "bipolar":
        return f"{m.encoding} encoding of {m.scheme} weights"
    if m.encoding == "differential":
        return "bipolar weights w as differential pairs of 1-bit cells [w = +1], [w = -1]"
    return "bipolar weights w = 2b - 1 as 1-bit cells b, digital -sum(x) correction"


def _inputs_why(m) -> str:
    if m.x_scheme == "bipolar":
        return ("bipolar inputs x = 2a - 1 fed as 1-bit DAC codes a in one read, digital -sum(w) correction "
                "over the unpadded rows")
    return f"{m.a_bits}-bit inputs bit-serial"


def _check_mapped(graph: Graph, mapping) -> None:
    for node in graph.nodes:
        if node.op in MAC_OPS and node.name not in mapping.layers:
            raise QccError(f"target 'cim' cannot map {node.op} '{node.name}' onto crossbars: "
                           f"{unmapped_reason(node)}; {_remedy(node, unmapped_reason(node))}")


def _remedy(node: Node, reason: str) -> str:
    """What would make the layer map (issue 8's diagnostics): a config line, or another target."""
    if _is_bipolar(node):
        return "or compile for --target cpu, which runs bipolar layers as XNOR-popcount"
    if "quantized" in reason or "per-tensor" in reason:
        return (f"quantize it, e.g. --config with [layers.\"{node.name}\"] w_bits = 8 and a_bits = 8, "
                f"or compile for --target cpu")
    return "compile for --target cpu, which runs it exactly"


def _is_bipolar(node: Node) -> bool:
    from qcc.ir.quant import Bipolar

    return any(isinstance(v.quant, Bipolar) for v in node.inputs[:2] if v is not None)


def _plot_utilisation(layers: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(layers)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.5))
    ax.bar(range(len(names)), [100 * layers[n]["utilisation"] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("cell utilisation (%)")
    ax.set_ylim(0, 100)
    for i, n in enumerate(names):
        ax.text(i, 2, f"{layers[n]['crossbars']}", ha="center", fontsize=7)
    ax.set_title("crossbar utilisation (numbers: crossbars)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_energy(layers: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(layers)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 3), 3.5))
    bottom = np.zeros(len(names))
    for part in ENERGY_PARTS:
        values = np.array([layers[n][f"energy_{part}_pj"] / 1e3 for n in names])
        ax.bar(range(len(names)), values, bottom=bottom, label=part)
        bottom += values
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("energy per inference (nJ)")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("per-layer energy by component")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
