"""Per-layer reports: one JSON schema for every command (DESIGN.md §7) and a human table.

Conventions: counts are for one sample (symbolic dims such as a dynamic batch count as 1).
`params` counts the elements of a node's constant inputs; `activations` its output elements.
`a_bits` is the bit-width of the activation the layer consumes, `out_bits` of the one it produces,
`w_bits` of its main weight (input 1); unquantized float32 tensors count as 32 bits. weight_bits_total
is storage: elements x bits, plus the centroid tables of codebook weights (seed 002 eq. 5).
bops = macs x w_bits x a_bits (the "#MAC ops" of seed 000).
Crops (zero-bit edge regions, qcc.crop): `macs_saved` are the MACs of a layer's cropped output
positions, which are not performed (they stay in `macs`); `activations_cropped` the output elements
held at 0 bits. The table shows both columns only when a graph has crops.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from qcc.config import LAYER_OPS
from qcc.crop import activations_cropped, macs_saved
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Codebook, QuantSpec
from qcc.ops import get_op

__all__ = ["LayerRow", "Report", "summarize", "uniform_totals", "SCHEMA"]

SCHEMA = "qcc.report/1"


@dataclass(frozen=True)
class LayerRow:
    name: str
    op: str
    shape: list
    macs: int
    params: int
    activations: int
    w_bits: int | None
    a_bits: int | None
    out_bits: int
    w_scheme: str | None
    a_scheme: str | None
    weight_bits_total: int
    activation_bits_total: int
    bops: int
    macs_saved: int = 0
    activations_cropped: int = 0
    sensitivity: dict[str, Any] | None = None  # {variable: {scheme: {bits: output_l2}}}
    cost: dict[str, float] = field(default_factory=dict)  # the target's cost fields


@dataclass(frozen=True)
class Report:
    model: str
    layers: list[LayerRow]
    totals: dict[str, int]
    config: dict[str, Any]
    baselines: dict[str, dict[str, int]] = field(default_factory=dict)  # fp32 and uniform 8-bit totals
    accuracy: dict[str, Any] = field(default_factory=dict)  # predicted / measured L2 and top-1
    cost_columns: tuple[str, ...] = ()  # the target's cost fields shown in the table (not in the JSON)

    def to_json(self) -> str:
        doc = {"schema": SCHEMA, "model": self.model, "layers": [asdict(r) for r in self.layers],
               "totals": self.totals, "baselines": self.baselines, "accuracy": self.accuracy,
               "config": self.config}
        return json.dumps(doc, indent=2, sort_keys=False, default=_plain) + "\n"

    def table(self) -> str:
        header = ["layer", "op", "output", "MACs", "params", "activations", "w/a bits"]
        rows = [[r.name, r.op, "x".join(map(str, r.shape)), f"{r.macs:,}", f"{r.params:,}",
                 f"{r.activations:,}", _bits_label(r)] for r in self.layers]
        t = self.totals
        rows.append(["total", "", "", f"{t['macs']:,}", f"{t['params']:,}", f"{t['activations']:,}", ""])
        if t.get("macs_saved") or t.get("activations_cropped"):  # crop columns, only for cropped graphs
            header += ["MACs saved", "0-bit acts"]
            saved = [(r.macs_saved, r.activations_cropped) for r in self.layers]
            saved.append((t["macs_saved"], t["activations_cropped"]))
            rows = [row + [f"{m:,}", f"{a:,}"] for row, (m, a) in zip(rows, saved)]
        right = set(range(len(header))) - {0, 1, 2, 6}
        for key in self.cost_columns:  # the target's own figures, per layer and in total
            header.append(key)
            right.add(len(header) - 1)
            cells = [_cost_cell(r.cost.get(key)) for r in self.layers] + [_cost_cell(t.get(key))]
            rows = [row + [c] for row, c in zip(rows, cells)]
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

        def fmt(cells):
            return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(header), rule, *(fmt(r) for r in rows[:-1]), rule, fmt(rows[-1])]) + "\n"


def _cost_cell(value: Any) -> str:
    """Integral or large figures with thousands separators, others to 4 significant digits; '' when absent."""
    if value is None:
        return ""
    value = float(value)
    if (value.is_integer() or abs(value) >= 1000) and abs(value) < 1e15:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in reports become plain JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _bits_label(r: LayerRow) -> str:
    if r.w_bits is None:
        return "-" if r.a_bits is None else f"-/{r.a_bits}"
    return f"{r.w_bits}/{r.a_bits}"


def _bits(v: Value) -> int:
    if v.quant is not None:
        return int(getattr(v.quant, "bits", 32))
    return 8 * _itemsize(v.type.dtype)


def _storage_bits(v: Value) -> int:
    """Bits to store a constant; a codebook adds its centroid tables to the indices (seed 002 eq. 5)."""
    bits = v.type.numel() * _bits(v)
    if isinstance(v.quant, Codebook):
        bits += sum(len(t) for t in v.quant.tables()) * v.quant.centroid_bits
    return bits


def _itemsize(dtype: str) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize


def _scheme(spec: QuantSpec | None) -> str:
    return spec.scheme if spec is not None else "float"


def _row(node: Node) -> LayerRow:
    opdef = get_op(node.op, node_name=node.name)
    out_types = [o.type for o in node.outputs]
    macs = int(opdef.macs(node.input_types(), out_types, node.attrs))
    consts = [v for v in node.inputs if v is not None and v.is_constant]
    acts = [v for v in node.inputs if v is not None and not v.is_constant]
    weight = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] is not None \
        and node.inputs[1].is_constant else None
    params = sum(v.type.numel() for v in consts)
    activations = sum(o.type.numel() for o in node.outputs)
    w_bits = _bits(weight) if weight is not None else None
    a_bits = _bits(acts[0]) if acts else None
    out_bits = _bits(node.outputs[0])
    return LayerRow(
        name=node.name, op=node.op, shape=list(node.outputs[0].type.shape), macs=macs, params=params,
        activations=activations, w_bits=w_bits, a_bits=a_bits, out_bits=out_bits,
        w_scheme=_scheme(weight.quant) if weight is not None else None,
        a_scheme=_scheme(acts[0].quant) if acts else None,
        weight_bits_total=sum(_storage_bits(v) for v in consts),
        activation_bits_total=sum(o.type.numel() * _bits(o) for o in node.outputs),
        bops=macs * (w_bits or 0) * (a_bits or 0),
        macs_saved=macs_saved(node),
        activations_cropped=sum(activations_cropped(o) for o in node.outputs),
    )


def _sensitivity_summary(node: Node) -> dict[str, Any] | None:
    table = node.attrs.get("sensitivity")
    if not isinstance(table, dict):
        return None
    return {var: {scheme: {bits: entry.get("output_l2") for bits, entry in by_bits.items()}
                  for scheme, by_bits in by_scheme.items()}
            for var, by_scheme in table.items() if isinstance(by_scheme, dict)}


def uniform_totals(graph: Graph, bits: int, layers: list[LayerRow] | None = None) -> dict[str, int]:
    """Weight bits and BOPs of the network with every layer's weights and inputs at `bits` (biases 32)."""
    weight_bits = 0
    for node in graph.nodes:
        for i, v in enumerate(node.inputs):
            if v is None or not v.is_constant:
                continue
            quantizable = node.op in LAYER_OPS and i == 1
            weight_bits += v.type.numel() * (bits if quantizable else 32)
    rows = layers if layers is not None else [_row(n) for n in graph.nodes if n.op in LAYER_OPS]
    bops = sum(r.macs * bits * bits for r in rows if r.op in LAYER_OPS)
    return {"weight_bits_total": weight_bits, "bops": bops}


def _baselines(graph: Graph, layers: list[LayerRow]) -> dict[str, dict[str, int]]:
    """Totals of the same network in fp32 and in uniform 8-bit."""
    return {"fp32": uniform_totals(graph, 32, layers), "uniform8": uniform_totals(graph, 8, layers)}


def _accuracy(graph: Graph, given: dict[str, Any] | None) -> dict[str, Any]:
    acc: dict[str, Any] = {}
    sens = graph.attrs.get("sensitivity")
    if isinstance(sens, dict):
        acc.update({k: sens[k] for k in ("float_top1", "float_top5") if sens.get(k) is not None})
    assignment = graph.attrs.get("bit_assignment")
    if isinstance(assignment, dict):
        acc.update({k: assignment[k] for k in ("predicted_l2", "measured_l2", "measured_top1")
                    if assignment.get(k) is not None})
    acc.update(given or {})
    return acc


def summarize(graph: Graph, config: dict[str, Any] | None = None, *, target=None,
              accuracy: dict[str, Any] | None = None) -> Report:
    """The per-layer report of a graph (every node, in topological order).

    target: a qcc.target.Target whose cost fields join each layer row and the totals.
    accuracy: measured figures to add (e.g. top-1 on --eval data).
    """
    costs = {}
    cost_totals: dict[str, float] = {}
    if target is not None:
        report = target.cost(graph)
        costs = {c.name: dict(c.fields) for c in report.layers}
        cost_totals = dict(report.totals)
    layers = [replace(_row(n), sensitivity=_sensitivity_summary(n), cost=costs.get(n.name, {}))
              for n in graph.nodes]
    totals = {
        "layers": len(layers),
        "macs": sum(r.macs for r in layers),
        "params": sum(r.params for r in layers),
        "activations": sum(r.activations for r in layers),
        "weight_bits_total": sum(r.weight_bits_total for r in layers),
        "activation_bits_total": sum(r.activation_bits_total for r in layers),
        "peak_activation_bits": max((r.activation_bits_total for r in layers), default=0),
        "bops": sum(r.bops for r in layers),
        "macs_saved": sum(r.macs_saved for r in layers),
        "activations_cropped": sum(r.activations_cropped for r in layers),
        **cost_totals,
    }
    config = dict(config or {})
    if isinstance(graph.attrs.get("bit_assignment"), dict):  # the chosen mixed-precision configuration
        config.setdefault("bit_assignment", graph.attrs["bit_assignment"])
    columns = tuple(getattr(target, "table_fields", ()) or ()) if target is not None else ()
    return Report(model=graph.name, layers=layers, totals=totals, config=config,
                  baselines=_baselines(graph, layers), accuracy=_accuracy(graph, accuracy),
                  cost_columns=columns)
