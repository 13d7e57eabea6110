"""The FPGA target: quantized networks as Verilog dataflow designs, simulated with Icarus, synthesized with Yosys.

`qcc compile --target fpga` lowers the quantized graph (qcc.targets.fpga.plan) to one matrix-vector
unit per layer (qcc.targets.fpga.rtl), folded (PE x SIMD) to meet --cycles-per-frame or --lut-budget
by the cost model (qcc.targets.fpga.cost) or as the --config file says per layer; writes a testbench
(qcc.targets.fpga.sim) and, with --synth, a Yosys netlist and resource report per layer
(qcc.targets.fpga.synth); with --pnr, nextpnr's Fmax (qcc.targets.fpga.pnr). `qcc run` simulates the
RTL, bit for bit equal to the integer reference (qcc.integer).
"""

from __future__ import annotations

import difflib
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


def _front(shape: LayerShape, family: str, pe: int | None = None,
           simd: int | None = None) -> list[tuple[int, float, int, int]]:
    """(cycles, estimated LUTs, PE, SIMD) of every folding that divides the layer (PE / SIMD fixed where
    given), fastest first."""
    pes = [pe] if pe is not None else _divisors(shape.n_out)
    simds = [simd] if simd is not None else _divisors(shape.n_in)
    return sorted((shape.folded(p, s).cycles, estimate(shape.folded(p, s), family)["luts"], p, s)
                  for p in pes for s in simds)


def _fold_for_cycles(front: list[tuple[int, float, int, int]], cycles: int) -> tuple[int, int]:
    """The cheapest (estimated LUTs) folding meeting `cycles`, else the fastest one."""
    fits = [r for r in front if r[0] <= cycles]
    if not fits:
        fastest = min(front)
        return fastest[2], fastest[3]
    best = min(fits, key=lambda r: (r[1], -r[0]))
    return best[2], best[3]


def _reduction(layer) -> str:
    """How a layer's reduction length (SIMD's dimension) is made up, for error messages."""
    if hasattr(layer, "in_shape") and hasattr(layer, "kernel"):
        (kh, kw), cin = layer.kernel, layer.in_shape[0]
        return f"reduction length {layer.n_in} (kh*kw*cin = {kh}*{kw}*{cin})"
    return f"reduction length {layer.n_in} (inputs)"


def _check_factor(layer, key: str, value: int | None, source: str = "") -> None:
    """A fixed PE (SIMD) must be a positive integer dividing the output channels (reduction length)."""
    if value is None:
        return
    dim = layer.n_out if key == "pe" else layer.n_in
    what = f"{layer.n_out} output channels" if key == "pe" else _reduction(layer)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or dim % value:
        legal = ", ".join(str(d) for d in _divisors(dim))
        where = f" ({source})" if source else ""
        raise QccError(f"fpga target: layer '{layer.name}': {key}={value!r}{where} does not divide its {what}; "
                       f"legal {key}: {legal}")


def _check_names(names, layers: list[str], graph_ops: Mapping[str, str] | None = None) -> None:
    """Folded layer names must be matrix-vector layers of the design; close names are suggested."""
    for name in sorted(set(names) - set(layers)):
        if graph_ops and name in graph_ops:
            raise QccError(f"fpga target: pe / simd set for '{name}', a {graph_ops[name]} node, not a matrix-vector "
                           f"layer (Gemm / MatMul / Conv): {', '.join(layers)}")
        close = difflib.get_close_matches(name, layers, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"layers: {', '.join(layers)}"
        raise QccError(f"fpga target: pe / simd set for unknown layer '{name}'; {hint}")


def choose_folding(plan: Plan, *, cycles_per_frame: int | None = None, lut_budget: int | None = None,
                   folding: Mapping[str, tuple[int | None, int | None]] | None = None,
                   device: str = "ice40", sources: Mapping[str, str] | None = None,
                   graph_ops: Mapping[str, str] | None = None) -> dict[str, str]:
    """Set PE / SIMD per layer: explicit per layer, else to meet a throughput or a LUT budget.

    folding: {layer: (PE, SIMD)} fixed factors (None leaves that factor to the automatic choice, which
    then searches only the foldings with the fixed one). The rest: cycles_per_frame: every layer takes
    at most that many cycles (the dataflow's initiation interval), each with the folding the cost model
    (qcc.targets.fpga.cost) finds cheapest in LUTs; lut_budget: the fastest such design whose estimated
    LUTs fit; neither: PE = SIMD = 1 (smallest). sources: {layer: where its folding was set} for errors;
    graph_ops: {node name: op} of the graph, to tell a non-layer node from a misspelt name.
    Returns {layer: why it got its folding} (for --explain).
    """
    folding = dict(folding or {})
    sources = sources or {}
    _check_names(folding, [layer.name for layer in plan.layers], graph_ops)
    fixed = []
    for layer in plan.layers:
        pe, simd = folding.get(layer.name, (None, None))
        _check_factor(layer, "pe", pe, _source(sources, layer.name, "pe"))
        _check_factor(layer, "simd", simd, _source(sources, layer.name, "simd"))
        fixed.append((pe, simd))
    reasons = {}
    if cycles_per_frame is not None or lut_budget is not None:
        shapes = [layer.shape if isinstance(layer, _Approx) else shape_of_layer(layer) for layer in plan.layers]
        fronts = [_front(s, device, pe, simd) for s, (pe, simd) in zip(shapes, fixed)]
        cycles = cycles_per_frame if cycles_per_frame is not None else \
            _cycles_for_budget(fronts, lut_budget, _unfolded_luts(plan, device))
        if cycles < 1:
            raise QccError(f"fpga target: --cycles-per-frame must be >= 1, got {cycles}")
        goal = (f"--cycles-per-frame {cycles}" if cycles_per_frame is not None else
                f"--lut-budget {lut_budget}: {cycles} cycles per frame is the fastest goal whose cheapest foldings fit")
        for layer, front in zip(plan.layers, fronts):
            layer.pe, layer.simd = _fold_for_cycles(front, cycles)
            reasons[layer.name] = _goal_reason(front, layer, cycles, goal, device)
    for layer, (pe, simd) in zip(plan.layers, fixed):
        layer.pe, layer.simd = pe if pe is not None else layer.pe, simd if simd is not None else layer.simd
        if layer.name not in reasons:
            reasons[layer.name] = ("no --cycles-per-frame / --lut-budget: the smallest folding (PE = SIMD = 1 "
                                   "where not set)")
        where = {k: _source(sources, layer.name, k) or "the folding option" for k in ("pe", "simd")}
        reasons[layer.name] = _fixed_reason(pe, simd, where, reasons[layer.name])
        if not isinstance(layer, _Approx):
            check_folding(layer)
    return reasons


def _source(sources: Mapping, layer: str, key: str) -> str:
    """Where a layer's PE or SIMD was set: sources[layer] is one text or {"pe": ..., "simd": ...}."""
    src = sources.get(layer, "")
    return src.get(key, "") if isinstance(src, Mapping) else src


def _goal_reason(front, layer, cycles: int, goal: str, device: str) -> str:
    chosen = next(r for r in front if (r[2], r[3]) == (layer.pe, layer.simd))
    if chosen[0] > cycles:
        return f"the fastest folding ({chosen[0]} cycles per frame); none of the {len(front)} meets {goal}"
    fits = sum(1 for r in front if r[0] <= cycles)
    return (f"the cheapest ({chosen[1]:,.0f} est. {device} LUTs, {chosen[0]} cycles per frame) of the {fits} "
            f"dividing foldings meeting {goal}")


def _fixed_reason(pe, simd, where: Mapping[str, str], auto: str) -> str:
    if pe is not None and simd is not None:
        if where["pe"] == where["simd"]:
            return f"pe and simd set by {where['pe']}"
        return f"pe set by {where['pe']}, simd by {where['simd']}"
    if pe is None and simd is None:
        return auto
    key = "pe" if pe is not None else "simd"
    return f"{key} set by {where[key]}; the other factor: {auto}"


def _unfolded_luts(plan, device: str) -> float:
    """Estimated LUTs of the stages folding does not change (pooling, residual joins): the budget pays them first."""
    layers = {id(layer) for layer in plan.layers}
    return sum(estimate(shape_of_layer(st), device)["luts"] for st in getattr(plan, "stages", ()) or ()
               if id(st) not in layers)


def _cycles_for_budget(fronts, lut_budget: int, fixed_luts: float = 0.0) -> int:
    """The fewest cycles per frame whose cheapest foldings, plus `fixed_luts`, fit `lut_budget` estimated LUTs."""
    candidates = sorted({r[0] for front in fronts for r in front})
    smallest = None
    for cycles in candidates:
        luts = fixed_luts + sum(min(r[1] for r in front if r[0] <= cycles) if any(r[0] <= cycles for r in front)
                                else min(front)[1] for front in fronts)
        if luts <= lut_budget:
            return cycles
        smallest = luts
    raise QccError(f"fpga target: --lut-budget {lut_budget} is below the smallest design's estimated "
                   f"{int(smallest or 0)} LUTs (PE = SIMD = 1 where not set)")


def _as_config(config):
    """A qcc.config.QuantConfig from a QuantConfig or its TOML mapping ({"default": ..., "layers": ...})."""
    from qcc.config import QuantConfig, parse_config

    if config is None or isinstance(config, QuantConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(config, "fpga folding configuration")
    raise QccError(f"fpga target: a configuration must be a QuantConfig or a mapping, not {type(config).__name__}")


def folding_from_config(config, layers: list[str] | None = None) -> dict[str, tuple[int | None, int | None]]:
    """{layer: (PE, SIMD)} from a qcc.config.QuantConfig or its TOML mapping: the [layers."name"]
    entries with pe / simd, and, for each name of `layers`, the [default] pe / simd it inherits."""
    config = _as_config(config)
    if config is None:
        return {}
    out = {name: (lc.pe, lc.simd) for name, lc in config.layers.items() if lc.pe is not None or lc.simd is not None}
    for name in layers or ():
        lc = config.for_layer(name)
        if lc.pe is not None or lc.simd is not None:
            out[name] = (lc.pe, lc.simd)
    return out


def _config_sources(config, layers: list[str]) -> dict[str, dict[str, str]]:
    """Where each layer's pe / simd comes from ({layer: {"pe": text, "simd": text}}), for messages."""
    out: dict[str, dict[str, str]] = {}
    for name in layers:
        own = config.layers.get(name)
        for key in ("pe", "simd"):
            if own is not None and getattr(own, key) is not None:
                out.setdefault(name, {})[key] = f"--config [layers.\"{name}\"]"
            elif getattr(config.default, key) is not None:
                out.setdefault(name, {})[key] = "--config [default]"
    return out


class FpgaTarget(Target):
    """Verilog dataflow designs for quantized networks (Icarus simulation, Yosys synthesis, nextpnr Fmax)."""

    name = "fpga"
    table_fields = ("pe", "simd", "acc_bits", "luts", "bram_bits", "cycles_per_frame")
    budget_metric = "luts"  # what --lut-budget limits in assign-bits

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
        self._config = None  # the --config file's QuantConfig (per-layer pe / simd), see configure
        self._measured: dict | None = None  # synthesis / place-and-route figures of the last lowered graph

    def configure(self, config) -> None:
        """Per-layer folding from the --config file: `[layers."name"] pe = 4, simd = 8` (or in [default]).

        config: a qcc.config.QuantConfig or its TOML mapping. Layers it names get that PE / SIMD (a factor
        left out is chosen by the cost model given the other); the others the cost model's default
        (--cycles-per-frame / --lut-budget). Explicit `folding=` options win over the file. Names and
        divisibility are checked against the graph when it is planned (QccError naming the layer, its
        dimensions and the legal divisors).
        """
        self._config = _as_config(config)

    def _folding(self, layers: list[str]) -> tuple[dict, dict]:
        """({layer: (PE, SIMD)}, {layer: source}) of the config file and the folding= option."""
        if self._config is None:
            return dict(self.folding), {}
        folding = {**folding_from_config(self._config, layers), **self.folding}
        sources = {k: v for k, v in _config_sources(self._config, layers).items() if k not in self.folding}
        return folding, sources

    def _choose(self, plan, graph: Graph) -> dict[str, str]:
        folding, sources = self._folding([layer.name for layer in plan.layers])
        return choose_folding(plan, cycles_per_frame=self.cycles_per_frame, lut_budget=self.lut_budget, folding=folding,
                       device=self.device, sources=sources, graph_ops={n.name: n.op for n in graph.nodes})

    @property
    def default_pipeline(self) -> str:
        """With --lut-budget, assign-bits first picks bit-widths whose smallest folding fits the budget
        (the FPGA cost model, as --energy-budget does for cim); the folding then spends what is left."""
        if self.lut_budget is None:
            return "canonicalize,fold-bn,calibrate,quantize"
        return ("canonicalize,fold-bn,calibrate,annotate-sensitivity,"
                f"assign-bits{{target-budget={float(self.lut_budget)!r},target-metric=luts}},quantize")

    def assignment_target(self) -> FpgaTarget:
        """This target without the LUT budget: per-layer LUTs at a fixed folding rule add up across layers,
        while under a budget `cost` re-folds the whole design for every candidate."""
        if self.lut_budget is None:
            return self
        fixed = FpgaTarget(device=self.device, folding=self.folding, stall=self.stall)
        fixed._config = self._config
        return fixed

    def legal_bits(self, node: Node) -> LegalBits:
        return LegalBits(weight_bits=tuple(range(1, 9)), activation_bits=tuple(range(1, 9)),
                         schemes=("uniform", "thresholds", "bipolar"))

    def plan(self, graph: Graph) -> Plan:
        plan = plan_graph(graph)
        self._choose(plan, graph)
        return plan

    def explain(self, graph: Graph) -> dict[str, tuple[str, str]]:
        """Per node: the RTL block it became (MVAU pe / simd, XNOR or multipliers, accumulator bits, post-ops;
        window generator; pooling; residual join and fork FIFO) and why (qcc.targets.fpga.explain)."""
        from qcc.targets.fpga.explain import explain_plan

        try:
            plan = plan_graph(graph)
        except QccError as e:  # say which node stops the lowering (a LoweringError names it), and why
            node = getattr(e, "node", None)
            if node is None:
                return {n.name: ("not lowered", str(e)) for n in graph.nodes}
            return {node: ("cannot be lowered", str(e))}
        reasons = self._choose(plan, graph)
        return explain_plan(graph, plan, reasons, self.device)

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
            self._choose(holders, graph)
            shapes = [h.shape.folded(h.pe, h.simd) for h in holders.layers]
        else:
            self._choose(plan, graph)
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
