"""Parse .qir text back into a Graph.

Two steps: syntax.py (the LALR parser of grammar.lark with an inline transformer) turns the text
into small records that keep their tokens for error positions; the builder here creates the Graph
through its public API (add_input, add_constant, add_node with the declared output types and
names), checks each node's declared types against the op registry at the node's line, and finally
runs the IR verifier, mapping its errors back to the line that defines the named node or value.

Every user error is a ParseError with a 1-based line and column, except an unknown op type, which
is an `UnknownOpError` (both an UnsupportedOpError, since the op registry is the source of truth,
and a ParseError, so it carries the position too).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lark import Token

from qcc.errors import ParseError, ShapeError, UnsupportedOpError, VerifyError
from qcc.frontend.qir.syntax import VERSION, Const, Located, Module, Op, Result, Stmt, label_of, read_records
from qcc.ir.graph import Graph, Value
from qcc.ir.quant import QuantSpec
from qcc.ir.types import TensorType
from qcc.ir.verify import verify
from qcc.ops import OpDef, get_op

__all__ = ["VERSION", "UnknownOpError", "parse_graph", "load", "declared_constants"]


class UnknownOpError(UnsupportedOpError, ParseError):
    """An op type the registry does not define, located in the .qir text."""

    def __init__(self, error: UnsupportedOpError, *, line: int, column: int, source: str | None):
        ParseError.__init__(self, str(error), line=line, column=column, source=source)
        self.op_type = error.op_type
        self.node_name = error.node_name


# ----------------------------------------------------------------------------------- builder
class _Builder:
    """Creates the Graph from the records; raises Located for every user error."""

    def __init__(self, module: Module, weights: Mapping[str, np.ndarray]):
        self.module = module
        self.weights = weights
        self.graph = Graph(module.name)
        self.values: dict[str, Value] = {}       # label -> value
        self.defined_at: dict[str, Token] = {}   # label -> defining token
        self.value_locations: dict[str, Token] = {}  # value name -> defining token (verifier errors)
        self.node_locations: dict[str, Token] = {}   # node name -> op token
        self.node_names: dict[str, Token] = {}

    def build(self) -> Graph:
        self._index_definitions()
        names = self._value_names()
        for res in self.module.params:
            value = self.graph.add_input(names[res.label], res.type, quant=res.quant)
            self._bind(res, value)
        for stmt in self.module.stmts:
            if isinstance(stmt.rhs, Const):
                self._add_constant(stmt, names)
            else:
                self._add_node(stmt, names)
        self.graph.set_outputs(self._output_values())
        self.graph.attrs = self.module.attrs
        return self.graph

    # ---- names
    def _index_definitions(self) -> None:
        for res in self._all_results():
            prev = self.defined_at.get(res.label)
            if prev is not None:
                raise Located(f"value {res.token} is already defined on line {prev.line}", res.token)
            self.defined_at[res.label] = res.token
        for tok in self.module.outputs:
            if label_of(tok) not in self.defined_at:
                raise Located(f"undefined value {tok} in the graph outputs", tok)

    def _all_results(self):
        yield from self.module.params
        for stmt in self.module.stmts:
            yield from stmt.results

    def _value_names(self) -> dict[str, str]:
        """Graph names for labels: inputs and outputs keep theirs, constants take their handle."""
        names: dict[str, str] = {}
        owner: dict[str, Token] = {}

        def claim(label: str, name: str, token: Token, what: str) -> None:
            if name in owner:
                raise Located(f"{what} '{name}' is already used as a name on line {owner[name].line}", token)
            names[label] = name
            owner[name] = token

        for res in self.module.params:
            claim(res.label, res.label, res.token, "graph input")
        constants = {s.results[0].label for s in self.module.stmts if isinstance(s.rhs, Const)}
        for tok in self.module.outputs:
            label = label_of(tok)
            if label not in names and label not in constants:
                claim(label, label, self.defined_at[label], "graph output")
        for stmt in self.module.stmts:
            if isinstance(stmt.rhs, Const) and len(stmt.results) == 1:
                claim(stmt.results[0].label, stmt.rhs.handle, stmt.rhs.token, "weight handle")
        for stmt in self.module.stmts:
            for res in stmt.results:
                if res.label not in names:
                    names[res.label] = _fresh(res.label, owner)
                    owner[names[res.label]] = res.token
        return names

    def _bind(self, res: Result, value: Value) -> None:
        value.region = res.region
        self.values[res.label] = value
        self.value_locations[value.name] = res.token

    # ---- definitions
    def _add_constant(self, stmt: Stmt, names: dict[str, str]) -> None:
        const = stmt.rhs
        if len(stmt.results) != 1:
            raise Located("a constant defines exactly one value", stmt.results[1].token)
        res = stmt.results[0]
        if const.handle not in self.weights:
            raise Located(f"missing weight '{const.handle}' (no array with that handle in the weights)",
                           const.token)
        try:
            array = np.asarray(self.weights[const.handle])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise Located(f"cannot read weight '{const.handle}': {e}", const.token) from None
        try:
            actual = TensorType.of(array)
        except VerifyError as e:
            raise Located(f"weight '{const.handle}': {e}", const.token) from None
        if actual != res.type:
            raise Located(f"weight '{const.handle}' is {actual} but {res.token} is declared {res.type}",
                           const.token)
        value = self.graph.add_constant(names[res.label], array, quant=res.quant)
        self._bind(res, value)

    def _add_node(self, stmt: Stmt, names: dict[str, str]) -> None:
        op = stmt.rhs
        if not op.name:
            raise Located("a node name must not be empty", op.name_token)
        if op.name in self.node_names:
            raise Located(f"node name \"{op.name}\" is already used on line {self.node_names[op.name].line}",
                           op.name_token)
        self.node_names[op.name] = op.name_token
        inputs = [self._operand(tok) for tok in op.operands]
        try:
            opdef = get_op(op.op_token, node_name=op.name)
        except UnsupportedOpError as e:
            raise _UnknownOp(e, op.op_token) from None
        in_types = [v.type if v is not None else None for v in inputs]
        try:
            _check_inputs(opdef, in_types, op.name)
            attrs = opdef.complete_attrs(op.attrs, in_types)
            inferred = opdef.infer_types(in_types, attrs, node_name=op.name)
        except VerifyError as e:
            raise Located(str(e), op.op_token) from None
        self._check_declared(stmt, op, inferred)
        node = self.graph.add_node(str(op.op_token), inputs, attrs=attrs, name=op.name,
                                   output_types=[r.type for r in stmt.results],
                                   output_names=[names[r.label] for r in stmt.results])
        self.node_locations[node.name] = op.op_token
        for res, value in zip(stmt.results, node.outputs):
            value.quant = res.quant
            self._bind(res, value)

    def _operand(self, tok: Token | None) -> Value | None:
        if tok is None:
            return None
        label = label_of(tok)
        value = self.values.get(label)
        if value is not None:
            return value
        if label in self.defined_at:
            raise Located(f"value {tok} is used before its definition on line {self.defined_at[label].line}",
                           tok)
        raise Located(f"undefined value {tok}", tok)

    @staticmethod
    def _check_declared(stmt: Stmt, op: Op, inferred: list[TensorType]) -> None:
        if len(inferred) != len(stmt.results):
            raise Located(f"node \"{op.name}\" ({op.op_token}) defines {len(inferred)} outputs, "
                           f"{len(stmt.results)} are declared", stmt.results[0].token)
        for res, t in zip(stmt.results, inferred):
            if not _compatible(res.type, t):
                raise Located(f"node \"{op.name}\" ({op.op_token}): output {res.token} is declared "
                               f"{res.type} but the op infers {t} (shape mismatch)", res.token)

    def _output_values(self) -> list[Value]:
        return [self.values[label_of(tok)] for tok in self.module.outputs]

    def locate(self, message: str) -> Token | None:
        """The defining token of the node, else the value, that a verifier message names first."""
        for name in re.findall(r"node '([^']*)'", message):
            if name in self.node_locations:
                return self.node_locations[name]
        for name in re.findall(r"'([^']*)'", message):
            if name in self.value_locations:
                return self.value_locations[name]
        return None


class _UnknownOp(Exception):
    def __init__(self, error: UnsupportedOpError, token: Token):
        super().__init__(str(error))
        self.error = error
        self.token = token


def _check_inputs(opdef: OpDef, in_types: list[TensorType | None], node_name: str) -> None:
    """Arity and required inputs, before attribute defaults are computed from the input types."""
    opdef.check_arity(len(in_types), node_name)
    required = [i for i in opdef.inputs if not i.endswith(("?", "*"))]
    for name, t in zip(required, in_types):
        if t is None:
            raise ShapeError(f"node '{node_name}' ({opdef.name}): required input '{name}' is missing")


def _fresh(label: str, taken: Mapping[str, Any]) -> str:
    if label not in taken:
        return label
    i = 1
    while f"{label}_{i}" in taken:
        i += 1
    return f"{label}_{i}"


def _compatible(declared: TensorType, inferred: TensorType) -> bool:
    if declared.dtype != inferred.dtype or declared.rank != inferred.rank:
        return False
    return all(isinstance(a, str) or isinstance(b, str) or a == b
               for a, b in zip(declared.shape, inferred.shape))


# -------------------------------------------------------------------------------------- API
def parse_graph(text: str, weights: Mapping[str, np.ndarray] | None = None,
                source: str | None = None) -> Graph:
    """Parse .qir text; constants take their arrays from `weights` by handle. Verifies the graph."""
    module = read_records(text, source)
    builder = _Builder(module, weights if weights is not None else {})
    try:
        graph = builder.build()
    except Located as e:
        raise ParseError(e.reason, line=e.line, column=e.column, source=source) from None
    except _UnknownOp as e:
        raise UnknownOpError(e.error, line=e.token.line, column=e.token.column, source=source) from None
    try:
        verify(graph)
    except VerifyError as e:
        tok = builder.locate(str(e))
        raise ParseError(str(e), line=getattr(tok, "line", None), column=getattr(tok, "column", None),
                         source=source) from None
    return graph


def declared_constants(text: str, source: str | None = None) -> dict[str, tuple[TensorType, QuantSpec | None]]:
    """Handle -> (declared type, quant) of every constant in the text, without building the graph.

    Lets tools and tests make or check weights for a hand-written .qir file.
    """
    module = read_records(text, source)
    return {s.rhs.handle: (s.results[0].type, s.results[0].quant)
            for s in module.stmts if isinstance(s.rhs, Const)}


def load(path: str | Path) -> Graph:
    """Read `path` (.qir) and its weights from the .npz beside it (same name, suffix .npz)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ParseError(f"cannot read {path}: {e}", source=str(path)) from None
    npz = path.with_suffix(".npz")
    if not npz.is_file():
        return parse_graph(text, {}, source=str(path))
    try:
        archive = np.load(npz, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ParseError(f"cannot read weights {npz}: {e}", source=str(path)) from None
    with archive:
        return parse_graph(text, _FrozenArrays(archive), source=str(path))


class _FrozenArrays(Mapping):
    """The arrays of an open .npz, marked read-only so the graph keeps them without a copy."""

    def __init__(self, archive):
        self._archive = archive

    def __getitem__(self, key: str) -> np.ndarray:
        array = self._archive[key]
        array.flags.writeable = False
        return array

    def __contains__(self, key: object) -> bool:
        return key in self._archive.files

    def __iter__(self):
        return iter(self._archive.files)

    def __len__(self) -> int:
        return len(self._archive.files)
