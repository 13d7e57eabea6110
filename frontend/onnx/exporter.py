"""qcc Graph -> ONNX ModelProto.

IR attributes that ONNX passes as operands (Reshape's shape, Clip's bounds, Squeeze / Unsqueeze /
ReduceMean axes, Pad's pads and value) go back to initializers, per the target opset. Quantization
annotations become quantizer nodes (quant_export.py): QuantizeLinear / DequantizeLinear pairs
(`format="qdq"`, what onnxruntime runs) or QONNX Quant / BipolarQuant / MultiThreshold
(`format="qonnx"`). Names are kept, so importing an export gives back an equivalent graph; the bytes
are deterministic for the same graph.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

import qcc
from qcc.errors import ModelExportError
from qcc.frontend.onnx.loading import OPSET_MAX, OPSET_MIN
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.types import TensorType
from qcc.ops import get_op
from qcc.ops.registry import ANALYSIS_ATTRS

__all__ = ["export_model", "save_model", "FORMATS", "Builder"]

FORMATS = ("qdq", "qonnx")
QONNX_DOMAIN = "qonnx.custom_op.general"

_ATTR_TYPES = {
    "int": onnx.AttributeProto.INT,
    "float": onnx.AttributeProto.FLOAT,
    "str": onnx.AttributeProto.STRING,
    "ints": onnx.AttributeProto.INTS,
    "floats": onnx.AttributeProto.FLOATS,
}


def export_model(graph: Graph, opset: int = 17, *, format: str = "qdq") -> onnx.ModelProto:
    """The graph as an ONNX model of the given default-domain opset (11 to 21)."""
    if not OPSET_MIN <= opset <= OPSET_MAX:
        raise ModelExportError(f"cannot export to ONNX opset {opset}; qcc writes opsets {OPSET_MIN} to "
                               f"{OPSET_MAX}")
    if format not in FORMATS:
        raise ModelExportError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}")
    return Builder(graph, opset, format).build()


def save_model(graph: Graph, path: str | os.PathLike, opset: int = 17, *, format: str = "qdq") -> None:
    """Export and write atomically (a temporary file in the same folder, then a rename)."""
    data = export_model(graph, opset, format=format).SerializeToString()
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
    return helper.make_tensor_value_info(name, elem, list(t.shape))


class Builder:
    """Collects nodes, initializers and names for one export."""

    def __init__(self, graph: Graph, opset: int, format: str):
        self.graph = graph
        self.opset = opset
        self.format = format
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.used: set[str] = {v.name for v in graph.values()} | {n.name for n in graph.nodes}
        self.names: dict[int, str] = {}  # IR value -> the ONNX name its readers use
        self.domains: set[str] = set()

    # ------------------------------------------------------------------ naming and emitting
    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.used:
            name, k = f"{hint}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], *, name: str, domain: str = "",
             **attrs: Any) -> None:
        if domain:
            self.domains.add(domain)
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None,
                                           **{k: v for k, v in attrs.items() if v is not None}))

    def ref(self, value: Value | None) -> str:
        return "" if value is None else self.names[id(value)]

    # ------------------------------------------------------------------ the walk
    def build(self) -> onnx.ModelProto:
        from qcc.frontend.onnx.quant_export import export_constant, wrap_value

        g = self.graph
        for v in g.inputs:
            self.names[id(v)] = v.name
            wrap_value(self, v, raw=v.name, node_name=v.name)
        for c in g.constants:
            export_constant(self, c)
        for n in g.nodes:
            self._export_node(n)
        outputs = self._outputs()
        proto_graph = helper.make_graph(self.nodes, g.name, [value_info(v.name, v.type) for v in g.inputs],
                                        outputs, initializer=self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, 1) for d in sorted(self.domains)]
        model = helper.make_model(proto_graph, opset_imports=opsets, producer_name="qcc",
                                  producer_version=qcc.__version__)
        model.ir_version = helper.find_min_ir_version_for(opsets[:1], ignore_unknown=True)
        return model

    def _export_node(self, n: Node) -> None:
        from qcc.frontend.onnx.quant_export import exports_as_quantizer, wrap_value

        if exports_as_quantizer(self, n):
            return
        outs = []
        for v in n.outputs:
            needs_raw_name = v.quant is not None and self.graph.is_output(v)
            outs.append(self.fresh(f"{v.name}_prequant") if needs_raw_name else v.name)
            self.names[id(v)] = outs[-1]
        emit = _EXPORTERS.get(n.op, _generic)
        emit(self, n, [self.ref(v) for v in n.inputs], outs)
        for v, raw in zip(n.outputs, outs):
            wrap_value(self, v, raw=raw, node_name=n.name)

    def _outputs(self) -> list[onnx.ValueInfoProto]:
        return [value_info(self.names[id(v)], v.type) for v in self.graph.outputs]

    # ------------------------------------------------------------------ attributes
    def attrs(self, n: Node, skip: tuple[str, ...] = ()) -> dict[str, onnx.AttributeProto]:
        """IR attributes as ONNX AttributeProtos, typed by the op definition (empty lists included)."""
        opdef = get_op(n.op, node_name=n.name)
        out = {}
        for key in sorted(n.attrs):
            value = n.attrs[key]
            if key in skip or key in ANALYSIS_ATTRS or value is None:
                continue  # analysis results (e.g. calibration) have no ONNX form
            spec = opdef.attrs.get(key)
            kind = _ATTR_TYPES.get(spec.kind) if spec is not None else None
            if kind == onnx.AttributeProto.FLOAT:
                value = float(value)
            elif kind == onnx.AttributeProto.FLOATS:
                value = [float(v) for v in value]
            out[key] = helper.make_attribute(key, value, attr_type=kind)
        return out


def _emit(b: Builder, n: Node, inputs: list[str], outputs: list[str], *, skip: tuple[str, ...] = (),
          domain: str = "", op: str | None = None) -> None:
    while inputs and not inputs[-1]:
        inputs = inputs[:-1]
    node = helper.make_node(op or n.op, inputs, outputs, name=n.name, domain=domain or None)
    node.attribute.extend(b.attrs(n, skip).values())
    if domain:
        b.domains.add(domain)
    b.nodes.append(node)


def _generic(b: Builder, n: Node, inputs: list[str], outputs: list[str]) -> None:
    if not onnx.defs.has(n.op):
        raise ModelExportError(f"node '{n.name}': op {n.op} has no ONNX form")
    _emit(b, n, inputs, outputs)


def _int64(b: Builder, n: Node, what: str, values: list[int]) -> str:
    return b.const(f"{n.name}_{what}", np.asarray(values, dtype=np.int64))


def _clip(b: Builder, n: Node, inputs: list[str], outputs: list[str]) -> None:
    dtype = np.dtype(n.inputs[0].type.dtype)
    lo, hi = n.attrs.get("min", -np.inf), n.attrs.get("max", np.inf)
    ins = [inputs[0], "", ""]
    if np.isfinite(lo):
        ins[1] = b.const(f"{n.name}_min", np.asarray(lo, dtype=dtype))
    if np.isfinite(hi):
        ins[2] = b.const(f"{n.name}_max", np.asarray(hi, dtype=dtype))
    _emit(b, n, ins, outputs, skip=("min", "max"))


def _reshape(b: Builder, n: Node, inputs: list[str], outputs: list[str]) -> None:
    _emit(b, n, [inputs[0], _int64(b, n, "shape", n.attrs["shape"])], outputs, skip=("shape",))


def _axes_op(b: Builder, n: Node, inputs: list[str], outputs: list[str], first_input_opset: int) -> None:
    axes = list(n.attrs.get("axes", []))
    if b.opset < first_input_opset:
        _emit(b, n, inputs[:1], outputs, skip=() if axes else ("axes",))
        return
    ins = [inputs[0], _int64(b, n, "axes", axes) if axes else ""]
    _emit(b, n, ins, outputs, skip=("axes",))


def _squeeze(b: Builder, n: Node, inputs: list[str], outputs: list[str]) -> None:
    _axes_op(b, n, inputs, outputs, 13)


def _reduce_mean(b: Builder, n: Node, inputs: list[str], outputs: list[str]) -> None:
    _axes_op(b, n, inputs, outputs, 18)


def _pad(b: Builder, n: Node, inputs: list[str], outputs: list[str]) -> None:
    dtype = np.dtype(n.inputs[0].type.dtype)
    pads = _int64(b, n, "pads", n.attrs["pads"])
    value = b.const(f"{n.name}_value", np.asarray(n.attrs.get("value", 0.0), dtype=dtype))
    _emit(b, n, [inputs[0], pads, value], outputs, skip=("pads", "value"))


def _softmax(b: Builder, n: Node, inputs: list[str], outputs: list[str]) -> None:
    rank = n.inputs[0].type.rank
    axis = n.attrs.get("axis", -1)
    if b.opset < 13 and axis % max(rank, 1) != rank - 1:
        raise ModelExportError(f"node '{n.name}': Softmax over axis {axis} of a rank-{rank} tensor has no "
                               f"opset-{b.opset} form; export with opset >= 13")
    _emit(b, n, inputs, outputs)


def _multi_threshold(b: Builder, n: Node, inputs: list[str], outputs: list[str]) -> None:
    _emit(b, n, inputs, outputs, domain=QONNX_DOMAIN)


def _quantizer(b: Builder, n: Node, inputs: list[str], outputs: list[str]) -> None:
    if b.opset < 13 and n.inputs[1].type.rank > 0 and n.inputs[1].type.numel() > 1:
        raise ModelExportError(f"node '{n.name}': per-axis {n.op} needs opset >= 13")
    _emit(b, n, inputs, outputs, skip=() if b.opset >= 13 else ("axis",))


_EXPORTERS = {
    "Clip": _clip,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _squeeze,
    "ReduceMean": _reduce_mean,
    "Pad": _pad,
    "Softmax": _softmax,
    "MultiThreshold": _multi_threshold,
    "QuantizeLinear": _quantizer,
    "DequantizeLinear": _quantizer,
}
