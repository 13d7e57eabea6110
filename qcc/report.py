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
from dataclasses import asdict, dataclass
from typing import Any

from qcc.crop import activations_cropped, macs_saved
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Codebook, QuantSpec
from qcc.ops import get_op

__all__ = ["LayerRow", "Report", "summarize", "SCHEMA"]

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


@dataclass(frozen=True)
class Report:
    model: str
    layers: list[LayerRow]
    totals: dict[str, int]
    config: dict[str, Any]

    def to_json(self) -> str:
        doc = {"schema": SCHEMA, "model": self.model, "layers": [asdict(r) for r in self.layers],
               "totals": self.totals, "config": self.config}
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"

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
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        right = {3, 4, 5, 7, 8}

        def fmt(cells):
            return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(header), rule, *(fmt(r) for r in rows[:-1]), rule, fmt(rows[-1])]) + "\n"


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


def summarize(graph: Graph, config: dict[str, Any] | None = None) -> Report:
    """The per-layer report of a graph (every node, in topological order)."""
    layers = [_row(n) for n in graph.nodes]
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
    }
    return Report(model=graph.name, layers=layers, totals=totals, config=dict(config or {}))
