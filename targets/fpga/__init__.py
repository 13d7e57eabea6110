"""The FPGA target: quantized MLPs as Verilog dataflow designs, simulated with Icarus, synthesized with Yosys.

`qcc compile --target fpga` lowers the quantized graph (qcc.targets.fpga.plan) to one matrix-vector
unit per dense layer (qcc.targets.fpga.rtl), writes a testbench (qcc.targets.fpga.sim) and, with
--synth, a Yosys netlist and resource report (qcc.targets.fpga.synth). `qcc run` simulates the RTL,
bit for bit equal to the integer reference (qcc.integer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.ir.graph import Graph, Node
from qcc.numerics import quantize
from qcc.target import Artifacts, CostReport, LayerCost, LegalBits, Target
from qcc.targets.fpga.plan import Plan, plan_graph
from qcc.targets.fpga.rtl import check_folding, emit_design
from qcc.targets.fpga.sim import emit_testbench, simulate_codes
from qcc.targets.fpga.synth import DEVICES, layer_cost, synthesize

__all__ = ["FpgaTarget", "plan_graph", "choose_folding"]

_OPTIONS = ("device", "cycles_per_frame", "lut_budget", "synth", "folding", "stall")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _fold_for_cycles(n_in: int, n_out: int, cycles: int) -> tuple[int, int]:
    """The smallest PE x SIMD (SIMD first, it needs no extra accumulators) meeting `cycles`."""
    best = None
    for pe in _divisors(n_out):
        for simd in _divisors(n_in):
            if (n_in // simd) * (n_out // pe) <= cycles and (best is None or pe * simd < best[0] * best[1]):
                best = (pe, simd)
    return best or (n_out, n_in)


def choose_folding(plan: Plan, *, cycles_per_frame: int | None = None, lut_budget: int | None = None,
                   folding: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Set PE / SIMD per layer: explicit per layer, else to meet a throughput or a LUT budget.

    cycles_per_frame: every layer takes at most that many cycles (the dataflow's initiation
    interval). lut_budget: the fastest uniform throughput whose estimated LUTs fit. Default: PE =
    SIMD = 1 (smallest design).
    """
    folding = dict(folding or {})
    if cycles_per_frame is not None:
        _fold_all(plan, int(cycles_per_frame))
    elif lut_budget is not None:
        worst = max(layer.n_in * layer.n_out for layer in plan.layers)
        chosen = worst
        for target in sorted({layer.cycles for layer in plan.layers} | {1, worst}):
            _fold_all(plan, target)
            if sum(layer_cost(layer)["luts"] for layer in plan.layers) <= lut_budget:
                chosen = target
                break
        _fold_all(plan, chosen)
    for layer in plan.layers:
        if layer.name in folding:
            layer.pe, layer.simd = folding.pop(layer.name)
        check_folding(layer)
    if folding:
        raise QccError(f"fpga target: folding names unknown layers: {', '.join(sorted(folding))}")


def _fold_all(plan: Plan, cycles: int) -> None:
    if cycles < 1:
        raise QccError(f"fpga target: --cycles-per-frame must be >= 1, got {cycles}")
    for layer in plan.layers:
        layer.pe, layer.simd = _fold_for_cycles(layer.n_in, layer.n_out, cycles)


class FpgaTarget(Target):
    """Verilog dataflow designs for quantized MLPs (Icarus simulation, Yosys synthesis)."""

    name = "fpga"

    def __init__(self, **options):
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise QccError(f"fpga target does not take option(s): {', '.join(unknown)}")
        self.device = str(options.get("device") or "ice40")
        if self.device not in DEVICES:
            raise QccError(f"fpga target: unknown device '{self.device}'; choose one of {', '.join(DEVICES)}")
        self.cycles_per_frame = options.get("cycles_per_frame")
        self.lut_budget = options.get("lut_budget")
        if self.cycles_per_frame is not None and self.lut_budget is not None:
            raise QccError("fpga target: give --cycles-per-frame or --lut-budget, not both")
        self.synth = bool(options.get("synth", False))
        self.folding = dict(options.get("folding") or {})
        self.stall = bool(options.get("stall", True))

    @property
    def default_pipeline(self) -> str:
        return "canonicalize,fold-bn,calibrate,quantize"

    def legal_bits(self, node: Node) -> LegalBits:
        return LegalBits(weight_bits=tuple(range(1, 9)), activation_bits=tuple(range(1, 9)),
                         schemes=("uniform", "thresholds", "bipolar"))

    def plan(self, graph: Graph) -> Plan:
        plan = plan_graph(graph)
        choose_folding(plan, cycles_per_frame=self.cycles_per_frame, lut_budget=self.lut_budget,
                       folding=self.folding)
        return plan

    def cost(self, graph: Graph) -> CostReport:
        plan = self.plan(graph)
        layers = tuple(LayerCost(layer.name, "Gemm", layer_cost(layer)) for layer in plan.layers)
        totals = {k: sum(c.fields[k] for c in layers) for k in ("luts", "ffs", "bram_bits", "dsps")}
        totals["cycles_per_frame"] = max(c.fields["cycles"] for c in layers)
        totals["latency_cycles"] = sum(c.fields["cycles"] + 3 for c in layers)
        return CostReport(layers=layers, totals=totals,
                          units={"luts": "LUT", "ffs": "FF", "bram_bits": "bit", "cycles": "cycle"})

    def lower(self, graph: Graph, out_dir: Path) -> Artifacts:
        from qcc.frontend.qir import save

        out_dir = Path(out_dir)
        plan = self.plan(graph)
        rtl = emit_design(plan, out_dir / "rtl")
        tb = emit_testbench(plan, out_dir / "tb.v")
        save(graph, out_dir / "model.qir")
        design = {"device": self.device, "folding": {layer.name: [layer.pe, layer.simd] for layer in plan.layers},
                  "cost": {k: float(v) for k, v in self.cost(graph).totals.items()}}
        files = {"model": out_dir / "model.qir", "testbench": tb, "design": out_dir / "design.json",
                 **{f"rtl:{p.name}": p for p in rtl.verilog}, **{f"mem:{p.name}": p for p in rtl.memories}}
        if self.synth:
            netlist = out_dir / "netlist.json"
            design["synthesis"] = synthesize(out_dir / "rtl", list(rtl.verilog), rtl.top, self.device, netlist)
            files["netlist"] = netlist
        (out_dir / "design.json").write_text(json.dumps(design, indent=2, sort_keys=True) + "\n")
        return Artifacts(directory=out_dir, files=files, target=self.name)

    def simulate(self, artifacts: Artifacts, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from qcc.frontend.qir import load

        graph = load(artifacts.files["model"])
        design = json.loads(Path(artifacts.files["design"]).read_text())
        plan = plan_graph(graph)
        choose_folding(plan, folding={k: tuple(v) for k, v in design["folding"].items()})
        x = inputs.get(plan.input_name)
        if x is None:
            raise QccError(f"fpga target: inputs lack '{plan.input_name}'")
        x = np.asarray(x, dtype=np.dtype(graph.inputs[0].type.dtype))
        codes = quantize(x, plan.input_spec).reshape(x.shape[0], -1)
        rtl = sorted(p for role, p in artifacts.files.items() if role.startswith("rtl:"))
        out, _ = simulate_codes(plan, rtl, Path(artifacts.files["testbench"]), codes, stall=self.stall)
        real = ((out - plan.out_zp).astype(np.float64) * plan.out_scale).astype(np.dtype(plan.out_dtype))
        shape = graph.outputs[0].type.shape
        tail = [d for d in shape[1:]] if all(isinstance(d, int) for d in shape[1:]) else [math.prod(out.shape[1:])]
        return {plan.output_name: real.reshape(x.shape[0], *tail)}
