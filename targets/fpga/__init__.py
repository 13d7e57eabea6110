"""The FPGA target: quantized networks as Verilog dataflow designs, simulated with Icarus, synthesized with Yosys.

`qcc compile --target fpga` lowers the quantized graph (qcc.targets.fpga.plan) to one matrix-vector
unit per layer (qcc.targets.fpga.rtl), folded (PE x SIMD) to meet --cycles-per-frame or --lut-budget
by the cost model (qcc.targets.fpga.cost) or as the --config file says per layer; writes a testbench
(qcc.targets.fpga.sim) and, with --synth, a Yosys netlist and resource report per layer
(qcc.targets.fpga.synth); with --pnr, nextpnr's Fmax (qcc.targets.fpga.pnr). `qcc run` simulates the
RTL, bit for bit equal to the integer reference (qcc.integer).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.ir.graph import Graph, Node
from qcc.ir.quant import Bipolar
from qcc.numerics import quantize
from qcc.target import Artifacts, CostReport, LayerCost, LegalBits, Target
from qcc.targets.fpga.cost import LayerShape, estimate, shape_of_layer, total_cost
from qcc.targets.fpga.plan import Plan, plan_graph
from qcc.targets.fpga.pnr import place_and_route, pnr_tool
from qcc.targets.fpga.rtl import check_folding, emit_design
from qcc.targets.fpga.sim import emit_testbench, simulate_codes
from qcc.targets.fpga.synth import DEVICES, synthesize

__all__ = ["FpgaTarget", "plan_graph", "choose_folding", "folding_from_config"]

_OPTIONS = ("device", "cycles_per_frame", "lut_budget", "synth", "pnr", "folding", "stall")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _front(shape: LayerShape, family: str) -> list[tuple[int, float, int, int]]:
    """(cycles, estimated LUTs, PE, SIMD) of every folding that divides the layer, fastest first."""
    return sorted((shape.folded(pe, simd).cycles, estimate(shape.folded(pe, simd), family)["luts"], pe, simd)
                  for pe in _divisors(shape.n_out) for simd in _divisors(shape.n_in))


def _fold_for_cycles(front: list[tuple[int, float, int, int]], cycles: int) -> tuple[int, int]:
    """The cheapest (estimated LUTs) folding meeting `cycles`, else the fastest one."""
    fits = [r for r in front if r[0] <= cycles]
    if not fits:
        fastest = min(front)
        return fastest[2], fastest[3]
    best = min(fits, key=lambda r: (r[1], -r[0]))
    return best[2], best[3]


def choose_folding(plan: Plan, *, cycles_per_frame: int | None = None, lut_budget: int | None = None,
                   folding: Mapping[str, tuple[int | None, int | None]] | None = None,
                   device: str = "ice40") -> None:
    """Set PE / SIMD per layer: explicit per layer, else to meet a throughput or a LUT budget.

    cycles_per_frame: every layer takes at most that many cycles (the dataflow's initiation
    interval), each with the folding the cost model (qcc.targets.fpga.cost) finds cheapest in LUTs.
    lut_budget: the fastest such design whose estimated LUTs fit. Default: PE = SIMD = 1 (smallest).
    folding: {layer: (PE, SIMD)} overrides (None keeps the automatic choice of that factor).
    """
    folding = dict(folding or {})
    unknown = sorted(set(folding) - {layer.name for layer in plan.layers})
    if unknown:
        raise QccError(f"fpga target: folding names unknown layers: {', '.join(unknown)} "
                       f"(layers: {', '.join(layer.name for layer in plan.layers)})")
    if cycles_per_frame is not None or lut_budget is not None:
        shapes = [layer.shape if isinstance(layer, _Approx) else shape_of_layer(layer) for layer in plan.layers]
        fronts = [_front(s, device) for s in shapes]
        cycles = cycles_per_frame if cycles_per_frame is not None else _cycles_for_budget(fronts, lut_budget)
        if cycles < 1:
            raise QccError(f"fpga target: --cycles-per-frame must be >= 1, got {cycles}")
        for layer, front in zip(plan.layers, fronts):
            layer.pe, layer.simd = _fold_for_cycles(front, cycles)
    for layer in plan.layers:
        pe, simd = folding.get(layer.name, (None, None))
        layer.pe, layer.simd = pe if pe is not None else layer.pe, simd if simd is not None else layer.simd
        check_folding(layer)


def _cycles_for_budget(fronts, lut_budget: int) -> int:
    """The fewest cycles per frame whose cheapest foldings fit `lut_budget` estimated LUTs."""
    candidates = sorted({r[0] for front in fronts for r in front})
    smallest = None
    for cycles in candidates:
        luts = sum(min(r[1] for r in front if r[0] <= cycles) if any(r[0] <= cycles for r in front)
                   else min(front)[1] for front in fronts)
        if luts <= lut_budget:
            return cycles
        smallest = luts
    raise QccError(f"fpga target: --lut-budget {lut_budget} is below the smallest design's estimated "
                   f"{int(smallest or 0)} LUTs (PE = SIMD = 1 everywhere)")


def folding_from_config(config) -> dict[str, tuple[int | None, int | None]]:
    """{layer: (PE, SIMD)} from a qcc.config.QuantConfig (LayerConfig.pe / .simd) or a TOML mapping
    ({"layers": {name: {"pe": 4, "simd": 8}}}); a layer without them is left out."""
    if config is None:
        return {}
    layers = config.get("layers", {}) if isinstance(config, Mapping) else getattr(config, "layers", {})
    out = {}
    for name, entry in layers.items():
        get = entry.get if isinstance(entry, Mapping) else (lambda key, e=entry: getattr(e, key, None))
        pe, simd = get("pe"), get("simd")
        for key, value in (("pe", pe), ("simd", simd)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise QccError(f"configuration [layers.\"{name}\"]: {key} must be a positive integer, got {value!r}")
        if pe is not None or simd is not None:
            out[name] = (pe, simd)
    return out


class FpgaTarget(Target):
    """Verilog dataflow designs for quantized networks (Icarus simulation, Yosys synthesis, nextpnr Fmax)."""

    name = "fpga"
    table_fields = ("pe", "simd", "luts", "bram_bits", "cycles_per_frame")

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
        self.pnr = bool(options.get("pnr", False))
        self.synth = bool(options.get("synth", False)) or self.pnr
        if self.pnr:
            pnr_tool(self.device)  # a missing tool or an unsupported family fails before any work
        self.folding = dict(options.get("folding") or {})
        self.stall = bool(options.get("stall", True))
        self._measured: dict | None = None  # synthesis / place-and-route figures of the last lowered graph

    def use_config(self, config) -> None:
        """Per-layer folding from the --config file: `[layers."name"] pe = 4, simd = 8`.

        config: a qcc.config.QuantConfig (its LayerConfig entries' pe / simd) or the TOML mapping.
        Explicit `folding=` options win over the file.
        """
        self.folding = {**folding_from_config(config), **self.folding}

    @property
    def default_pipeline(self) -> str:
        return "canonicalize,fold-bn,calibrate,quantize"

    def legal_bits(self, node: Node) -> LegalBits:
        return LegalBits(weight_bits=tuple(range(1, 9)), activation_bits=tuple(range(1, 9)),
                         schemes=("uniform", "thresholds", "bipolar"))

    def plan(self, graph: Graph) -> Plan:
        plan = plan_graph(graph)
        choose_folding(plan, cycles_per_frame=self.cycles_per_frame, lut_budget=self.lut_budget,
                       folding=self.folding, device=self.device)
        return plan

    def cost(self, graph: Graph) -> CostReport:
        """The cost model per layer (qcc.targets.fpga.cost); Yosys / nextpnr figures once synthesized.

        A graph the planner cannot take yet (e.g. only some layers quantized, as assign-bits costs
        candidates) is estimated from its layer nodes and annotations.
        """
        try:
            plan = plan_graph(graph)
        except QccError:
            holders = _approximate_layers(graph)
            if not holders:
                raise
            choose_folding(holders, cycles_per_frame=self.cycles_per_frame, lut_budget=self.lut_budget,
                           folding=self.folding, device=self.device)
            shapes = [h.shape.folded(h.pe, h.simd) for h in holders.layers]
        else:
            choose_folding(plan, cycles_per_frame=self.cycles_per_frame, lut_budget=self.lut_budget,
                           folding=self.folding, device=self.device)
            shapes = [shape_of_layer(st) for st in (plan.stages or plan.layers)]
        ops = {n.name: n.op for n in graph.nodes}
        rows = [estimate(s, self.device) for s in shapes]
        totals = total_cost(rows)
        for row in rows:
            row["cycles_per_frame"] = row["cycles"]
            row.update({f"est_{k}": row[k] for k in _MEASURED})
        totals.update({f"est_{k}": totals[k] for k in _MEASURED})
        measured = self._measured if self._measured and self._measured["graph"] is graph else None
        if measured is not None:
            totals.update(measured["totals"])
            for s, row in zip(shapes, rows):
                row.update(measured["layers"].get(s.name, {}))
        layers = tuple(LayerCost(s.name, ops.get(s.name, s.op), row) for s, row in zip(shapes, rows))
        return CostReport(layers=layers, totals=totals,
                          units={"luts": "LUT", "ffs": "FF", "bram_bits": "bit", "cycles": "cycle",
                                 "cycles_per_frame": "cycle", "latency_cycles": "cycle", "fmax_mhz": "MHz"})

    def lower(self, graph: Graph, out_dir: Path) -> Artifacts:
        from qcc.frontend.qir import save

        out_dir = Path(out_dir)
        self._measured = None
        plan = self.plan(graph)
        rtl = emit_design(plan, out_dir / "rtl")
        tb = emit_testbench(plan, out_dir / "tb.v")
        save(graph, out_dir / "model.qir")
        estimate_totals = self.cost(graph).totals
        design = {"device": self.device, "folding": {layer.name: [layer.pe, layer.simd] for layer in plan.layers},
                  "cost": {k: float(v) for k, v in estimate_totals.items()}}
        files = {"model": out_dir / "model.qir", "testbench": tb, "design": out_dir / "design.json",
                 **{f"rtl:{p.name}": p for p in rtl.verilog}, **{f"mem:{p.name}": p for p in rtl.memories}}
        if self.synth:
            netlist = out_dir / "netlist.json"
            synth = synthesize(out_dir / "rtl", list(rtl.verilog), rtl.top, self.device, netlist, per_module=True)
            files["netlist"] = netlist
            measured = {"graph": graph, "totals": {k: float(synth[k]) for k in _MEASURED},
                        "layers": _per_layer(plan, synth.get("modules", {}))}
            if self.pnr:
                i, o = plan.in_info, plan.out_info
                pnr = place_and_route(out_dir / "rtl", list(rtl.verilog), rtl.top, i.channels * i.width,
                                      o.channels * o.width, self.device, out_dir / "pnr", luts=float(synth["luts"]))
                measured["totals"].update(pnr)
                files["pnr_report"] = out_dir / "pnr" / "pnr_report.json"
            design["synthesis"] = {**{k: v for k, v in synth.items() if k != "modules"},
                                   "layers": measured["layers"], **measured["totals"]}
            self._measured = measured
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


_MEASURED = ("luts", "ffs", "bram_bits", "dsps")


def _per_layer(plan: Plan, modules: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Yosys per-module counts by stage name: modules qcc_<kind><i> (and a window generator qcc_swg<i>)
    implement plan stage i."""
    stages = plan.stages or plan.layers
    out: dict[str, dict[str, float]] = {}
    for module, counts in modules.items():
        m = re.fullmatch(r"qcc_[a-z_]*?(\d+)", module)
        if m and int(m.group(1)) < len(stages):
            row = out.setdefault(stages[int(m.group(1))].name, dict.fromkeys(_MEASURED, 0.0))
            for k in _MEASURED:
                row[k] += float(counts[k])
    return out


@dataclass
class _Approx:
    """A layer of a graph the planner cannot take yet: its estimated shape and folding."""

    shape: LayerShape
    pe: int = 1
    simd: int = 1

    @property
    def name(self) -> str:
        return self.shape.name

    @property
    def n_in(self) -> int:
        return self.shape.n_in

    @property
    def n_out(self) -> int:
        return self.shape.n_out


@dataclass
class _ApproxPlan:
    layers: list[_Approx]

    def __bool__(self) -> bool:
        return bool(self.layers)


def _bits_of(spec, default: int) -> int:
    if isinstance(spec, Bipolar):
        return 1
    return int(getattr(spec, "bits", default) or default)


def _approximate_layers(graph: Graph) -> _ApproxPlan:
    """LayerShapes from layer nodes and their annotations (missing ones: 8 bits), for estimates only."""
    layers = []
    for node in graph.nodes:
        if node.op not in ("Gemm", "MatMul", "Conv") or len(node.inputs) < 2 or not node.inputs[1].is_constant:
            continue
        w = np.asarray(node.inputs[1].data)
        pixels, window = 1, {}
        a_bits = _bits_of(node.inputs[0].quant, 8)
        if node.op == "Conv":
            n_out, n_in = int(w.shape[0]), int(np.prod(w.shape[1:]))
            pixels = int(np.prod([d for d in node.outputs[0].type.shape[2:] if isinstance(d, int)]))
            window = _window_guess(node, n_in, a_bits)
        elif node.op == "Gemm" and node.attrs.get("transB", 0):
            n_out, n_in = int(w.shape[0]), int(w.shape[1])
        else:
            n_in, n_out = int(w.shape[0]), int(w.shape[-1])
        w_bits = max(_bits_of(node.inputs[1].quant, 8), 2)
        x_bits = a_bits + 1
        acc = w_bits + x_bits + max(1, math.ceil(math.log2(max(n_in, 2))))
        per_channel = getattr(node.inputs[1].quant, "axis", None) is not None
        layers.append(_Approx(LayerShape(name=node.name, op=node.op, n_in=n_in, n_out=n_out, w_bits=w_bits,
                                         x_bits=x_bits, in_bits=a_bits, out_bits=8, acc_bits=acc,
                                         post=("relu", "requant"), param_bits=acc + (40 if per_channel else 0),
                                         pixels=pixels, **window)))
    return _ApproxPlan(layers)


def _window_guess(node: Node, n_in: int, a_bits: int) -> dict:
    """A convolution's window generator: window vector and line buffer (rows a power of two >= kh)."""
    shape = node.inputs[0].type.shape
    kernel = list(node.attrs.get("kernel_shape") or [1, 1])
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or kernel == [1, 1]:
        return {}
    c, h, w = shape[1:]
    rows = min(h, 1 << max(kernel[0] - 1, 0).bit_length())
    return {"window_bits": n_in * a_bits, "ram_depth": rows * w, "ram_width": c * a_bits}
