"""ONNX ModelProto -> qcc Graph, node by node.

The walk keeps an environment from ONNX tensor names to what they are so far:
- an IR `Value` (graph input, node output, or a materialized constant),
- a `Const` (data known at import time, turned into an IR constant only if an IR node uses it,
  so shape operands folded into attributes leave no dead weights behind),
- a `Sym` (a shape tensor with symbolic dims, see folding.py),
- a `PendingQ` (a QuantizeLinear output waiting to learn whether a DequantizeLinear follows).

Constant and shape nodes are folded (folding.py); ops get their IR form in convert.py (constant
operands -> attributes, auto_pad -> pads, ...); quantizers become annotations in quant_import.py.
Quantizers first become annotated Identity nodes; a final clean-up moves each annotation onto the
quantized value itself wherever nothing else reads that value.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qcc.errors import ModelImportError, QccError, UnsupportedOpError
from qcc.frontend.onnx import folding
from qcc.frontend.onnx.loading import DEFAULT_DOMAINS, QONNX_DOMAINS, ModelSource, default_opset, load_proto
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import QuantSpec, Uniform
from qcc.ir.types import DTYPES, TensorType
from qcc.ops import all_ops, has_op

__all__ = ["import_model", "Context", "Const", "Sym", "PendingQ", "supported_ops", "ANNOTATION"]

ANNOTATION = "onnx.annotation"  # node.meta key marking an Identity that only carries a quantizer
_IDENT = re.compile(r"[^A-Za-z0-9_]")


@dataclass
class Const:
    """Data known at import time; becomes an IR constant when an IR node needs it."""

    array: np.ndarray
    quant: QuantSpec | None = None
    value: Value | None = None


@dataclass
class Sym:
    """A shape tensor holding symbolic dims (object array of int | str | UNKNOWN)."""

    array: np.ndarray


@dataclass
class PendingQ:
    """A QuantizeLinear output: an annotation if DequantizeLinear reads it, an IR op otherwise."""

    source: str
    scale: str
    zero_point: str
    spec: Uniform
    node: onnx.NodeProto
    value: Value | None = None  # the IR QuantizeLinear output, once something needs the integers
    dequantized: Any = None  # what the first matching DequantizeLinear produced (shared by the rest)


Entry = Value | Const | Sym | PendingQ


def import_model(model: ModelSource, *, base_dir=None, check: bool = True) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) as a qcc Graph.

    External data files are read from the model's folder (or `base_dir` for a ModelProto); every
    problem with the model raises a QccError subclass with a one-line message.
    """
    proto = load_proto(model, base_dir, check=check)
    return Context(proto).run()


def supported_ops() -> list[str]:
    """ONNX op types the importer accepts (IR ops, folded ops and quantizers)."""
    from qcc.frontend.onnx import convert, quant_import

    names = set(all_ops()) | set(folding.FOLDERS) | set(quant_import.HANDLERS)
    names |= {op for op, target in convert.TARGETS.items() if target is None or has_op(target)}
    return sorted(names)


def sanitize(name: str) -> str:
    """A symbolic dim name as an identifier ('batch size' -> 'batch_size', '2d' -> '_2d')."""
    out = _IDENT.sub("_", name) or "_"
    return "_" + out if out[0].isdigit() else out


@dataclass
class Context:
    """The state of one import; converters call its helpers."""

    proto: onnx.ModelProto
    graph: Graph = field(init=False)
    opset: int = field(init=False)
    env: dict[str, Entry] = field(default_factory=dict)
    consumers: Counter = field(default_factory=Counter)
    node_names: dict[int, str] = field(default_factory=dict)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    users: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    narrowed: dict[str, Uniform] = field(default_factory=dict)  # Clip outputs absorbed into a quantizer

    def __post_init__(self):
        self.opset = default_opset(self.proto)
        self.graph = Graph(sanitize(self.proto.graph.name) if self.proto.graph.name else "main")

    # ------------------------------------------------------------------ driver
    def run(self) -> Graph:
        g = self.proto.graph
        self._name_nodes()
        for node in self.nodes:
            for name in node.input:
                self.consumers[name] += 1
                self.users.setdefault(name, []).append(node)
        for out in g.output:
            self.consumers[out.name] += 1
        self._read_initializers()
        self._read_inputs()
        from qcc.frontend.onnx.convert import convert_node

        for node in self.nodes:
            self._check_defined(node)
            convert_node(self, node, self.node_names[id(node)])
        self._set_outputs()
        from qcc.frontend.onnx.quant_import import settle_annotations

        settle_annotations(self.graph)
        self.graph.remove_dead()
        return self.graph

    def _name_nodes(self) -> None:
        """ONNX node names, or 'OpType_index' where empty; repeats get a numeric suffix. Given names
        are claimed first, so a generated one never takes a name the model uses later."""
        self.nodes = list(self.proto.graph.node)  # held, so id(node) stays valid as a key
        given = {node.name for node in self.nodes if node.name}
        seen: set[str] = set()
        for i, node in enumerate(self.nodes):
            base = node.name or f"{node.op_type}_{i}"
            name, k = base, 1
            while name in seen or (not node.name and name in given):
                name, k = f"{base}_{k}", k + 1
            seen.add(name)
            self.node_names[id(node)] = name

    def _read_initializers(self) -> None:
        for tensor in self.proto.graph.initializer:
            self.env[tensor.name] = Const(tensor_array(tensor))

    def _read_inputs(self) -> None:
        for vi in self.proto.graph.input:
            if vi.name in self.env:
                continue  # an initializer listed as an input (exporters before IR version 4)
            self.env[vi.name] = self.graph.add_input(vi.name, self._input_type(vi))

    def _input_type(self, vi: onnx.ValueInfoProto) -> TensorType:
        t = vi.type
        if not t.HasField("tensor_type"):
            raise ModelImportError(f"graph input '{vi.name}' is not a tensor")
        dtype = ir_dtype(t.tensor_type.elem_type, f"graph input '{vi.name}'")
        if not t.tensor_type.HasField("shape"):
            raise ModelImportError(f"graph input '{vi.name}' has no shape; qcc needs its rank")
        dims: list[int | str] = []
        for axis, d in enumerate(t.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            elif d.dim_param:
                dims.append(sanitize(d.dim_param))
            else:
                dims.append(sanitize(f"{vi.name}_dim{axis}"))
        return TensorType(tuple(dims), dtype)

    def _check_defined(self, node: onnx.NodeProto) -> None:
        for name in node.input:
            if name and name not in self.env:
                raise ModelImportError(f"node '{self.node_names_of(node)}' ({node.op_type}) reads "
                                       f"'{name}', which no earlier node, input or initializer defines "
                                       "(the graph is not in topological order?)")

    def _set_outputs(self) -> None:
        outs: list[Value] = []
        for vi in self.proto.graph.output:
            if vi.name not in self.env:
                raise ModelImportError(f"graph output '{vi.name}' is not computed by any node")
            value = self.value(vi.name, f"graph output '{vi.name}'")
            if value.name != vi.name:
                value = self._name_output(value, vi.name, outs)
            outs.append(value)
        self.graph.set_outputs(outs)

    def _name_output(self, value: Value, name: str, taken: list[Value]) -> Value:
        """Give an output its ONNX name: rename a node output, or add an Identity for the rest."""
        renamable = value.producer is not None and not any(v is value for v in taken)
        if renamable and not self._name_taken(name):
            self.graph.rename_value(value, name)
            return value
        node = self.graph.add_node("Identity", [value], name=self.graph.fresh_node_name(name),
                                   output_names=[name])
        return node.output

    def _name_taken(self, name: str) -> bool:
        return any(v.name == name for v in self.graph.values())

    # ------------------------------------------------------------------ helpers for converters
    def node_names_of(self, node: onnx.NodeProto) -> str:
        return self.node_names.get(id(node)) or node.name or node.op_type

    def error(self, node: onnx.NodeProto, name: str, reason: str) -> ModelImportError:
        return ModelImportError(f"node '{name}' ({node.op_type}): {reason}")

    def entry(self, name: str) -> Entry | None:
        return self.env.get(name) if name else None

    def array(self, name: str) -> np.ndarray | None:
        """Import-time data of a tensor (plain or symbolic), or None if it is computed at run time."""
        e = self.entry(name)
        if isinstance(e, Const):
            return e.array
        if isinstance(e, Sym):
            return e.array
        return None

    def const(self, node: onnx.NodeProto, name: str, index: int, what: str) -> np.ndarray | None:
        """A constant operand (None when the optional input is absent); ModelImportError otherwise."""
        if index >= len(node.input) or not node.input[index]:
            return None
        e = self.entry(node.input[index])
        if isinstance(e, Const):
            return e.array
        raise self.error(node, name, f"{what} (input {index}, '{node.input[index]}') must be a constant; "
                                     "qcc keeps it as an attribute")

    def value(self, name: str, user: str = "a node") -> Value | None:
        """The IR value of a tensor, materializing constants and pending quantizers on first use."""
        if not name:
            return None
        e = self.env[name]
        if isinstance(e, Value):
            return e
        if isinstance(e, Const):
            if e.value is None:
                e.value = self.graph.add_constant(self.graph.fresh_name(name), widen(e.array), quant=e.quant)
            return e.value
        if isinstance(e, PendingQ):
            from qcc.frontend.onnx.quant_import import materialize_quantize

            return materialize_quantize(self, e)
        dims = ", ".join(str(d) for d in e.array.reshape(-1))
        raise ModelImportError(f"'{name}' is a shape computed from symbolic dims [{dims}] and is read by "
                               f"{user}; qcc folds such shapes only into Reshape targets")

    def values(self, node: onnx.NodeProto) -> list[Value | None]:
        vals = [self.value(n, f"node '{self.node_names_of(node)}' ({node.op_type})") for n in node.input]
        while vals and vals[-1] is None:
            vals.pop()
        return vals

    def bind(self, name: str, entry: Entry) -> None:
        if name:
            self.env[name] = entry

    def emit(self, op: str, inputs: list[Value | None], attrs: dict[str, Any], *, name: str,
             outputs: list[str]) -> Node:
        """Add an IR node and bind its outputs to ONNX names (names kept where free)."""
        names = [o or f"{name}:{i}" for i, o in enumerate(outputs)]
        node = self.graph.add_node(op, inputs, attrs=attrs, name=name,
                                   output_names=[self.graph.fresh_name(n) for n in names])
        for onnx_name, v in zip(outputs, node.outputs):
            self.bind(onnx_name, v)
        return node

    def is_default_domain(self, node: onnx.NodeProto) -> bool:
        return node.domain in DEFAULT_DOMAINS

    def is_qonnx_domain(self, node: onnx.NodeProto) -> bool:
        return node.domain in QONNX_DOMAINS

    def unsupported(self, node: onnx.NodeProto, name: str) -> QccError:
        op = node.op_type if self.is_default_domain(node) else f"{node.domain}.{node.op_type}"
        return UnsupportedOpError(op, name, supported_ops())


def ir_dtype(code: int, what: str) -> str:
    try:
        name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)).name
    except Exception:
        name = onnx.TensorProto.DataType.Name(code) if code in onnx.TensorProto.DataType.values() else str(code)
    if name not in DTYPES.values():
        raise ModelImportError(f"{what} has element type {name}, which qcc does not support "
                               f"(supported: {', '.join(sorted(DTYPES.values()))})")
    return name


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A TensorProto as numpy (4-bit types stay 4-bit until `widen`)."""
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as e:
        raise ModelImportError(f"tensor '{tensor.name}' cannot be read: {str(e).splitlines()[0]}") from None
    return array


def widen(array: np.ndarray) -> np.ndarray:
    """4-bit arrays (ml_dtypes int4 / uint4) as int8 / uint8, the narrowest IR dtypes."""
    if array.dtype.name in ("int4", "uint4"):
        return array.astype(np.int8 if array.dtype.name == "int4" else np.uint8)
    return array
