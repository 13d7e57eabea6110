"""Parse .qir text back into a Graph.

Two steps: the LALR parser (grammar.lark) with an inline transformer turns the text into small
records that keep their tokens for error positions; the builder then creates the Graph through
its public API (add_input, add_constant, add_node with the declared output types and names),
checks each node's declared types against the op registry at the node's line, and finally runs the
IR verifier, mapping its errors back to the line that defines the named node or value.

Every user error is a ParseError with a 1-based line and column, except an unknown op type, which
is an `UnknownOpError` (both an UnsupportedOpError, since the op registry is the source of truth,
and a ParseError, so it carries the position too).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from qcc.errors import ParseError, UnsupportedOpError, VerifyError
from qcc.ir.graph import Graph, Value
from qcc.ir.quant import QuantSpec, Region, spec_from_dict
from qcc.ir.types import DTYPES, TensorType
from qcc.ir.verify import verify
from qcc.ops import get_op

__all__ = ["VERSION", "UnknownOpError", "parse_graph", "load", "declared_constants"]

VERSION = 1


class UnknownOpError(UnsupportedOpError, ParseError):
    """An op type the registry does not define, located in the .qir text."""

    def __init__(self, error: UnsupportedOpError, *, line: int, column: int, source: str | None):
        ParseError.__init__(self, str(error), line=line, column=column, source=source)
        self.op_type = error.op_type
        self.node_name = error.node_name


class _Located(Exception):
    """Internal: a reason at a token, turned into a ParseError once the source name is known."""

    def __init__(self, reason: str, token: Token | None):
        super().__init__(reason)
        self.reason = reason
        self.line = getattr(token, "line", None)
        self.column = getattr(token, "column", None)


# ------------------------------------------------------------------------------------ records
@dataclass
class _Result:
    """A defined value: `%label: type annotations`."""

    token: Token
    label: str
    type: TensorType
    quant: QuantSpec | None = None
    region: Region | None = None


@dataclass
class _Const:
    token: Token
    handle: str


@dataclass
class _Op:
    op_token: Token
    name_token: Token
    name: str
    operands: list[Token | None]
    attrs: dict[str, Any]


@dataclass
class _Stmt:
    results: list[_Result]
    rhs: _Const | _Op


@dataclass
class _Module:
    version: Token
    name: str
    params: list[_Result]
    outputs: list[Token]
    stmts: list[_Stmt]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Annot:
    kind: str
    token: Token
    spec: QuantSpec | Region


# ------------------------------------------------------------------------------- transformer
def _string(token: Token) -> str:
    try:
        return json.loads(token)
    except json.JSONDecodeError as e:
        raise _Located(f"bad string literal {token}: {e.msg}", token) from None


def label_of(token: Token) -> str:
    """The name inside a `%name` or `%"quoted name"` token."""
    body = token[1:]
    return _string(Token("STRING", body, line=token.line, column=token.column)) if body[0] == '"' else body


class _ToRecords(Transformer):
    """Inline transformer: tree nodes become plain values and records (keeps tokens for positions)."""

    def start(self, children):
        version, graph, *rest = children
        graph.version = version
        if rest:
            graph.attrs = rest[0]
        return graph

    def graph(self, children):
        name_tok, *items = children
        params = [c for c in items if isinstance(c, _Result)]
        outputs = [c for c in items if isinstance(c, Token)]
        stmts = [c for c in items if isinstance(c, _Stmt)]
        return _Module(version=None, name=_string(name_tok), params=params, outputs=outputs,  # type: ignore[arg-type]
                       stmts=stmts)

    def graph_attrs(self, children):
        return children[0]

    def stmt(self, children):
        *results, rhs = children
        return _Stmt(results, rhs)

    def result(self, children):
        token, type_, *annots = children
        res = _Result(token, label_of(token), type_)
        for a in annots:
            if getattr(res, a.kind) is not None:
                raise _Located(f"value {token} has two '{'quant' if a.kind == 'quant' else 'crop'}' "
                               f"annotations", a.token)
            setattr(res, a.kind, a.spec)
        return res

    def const(self, children):
        _, handle = children
        return _Const(handle, _string(handle))

    def op(self, children):
        op_tok, name_tok, *rest = children
        attrs = rest.pop() if rest and isinstance(rest[-1], dict) else {}
        for key in attrs:
            if not isinstance(key, str):
                raise _Located(f"attribute name {key!r} of node {name_tok} must be a name, not a number",
                               op_tok)
        return _Op(op_tok, name_tok, _string(name_tok), rest, attrs)

    def operand(self, children):
        tok = children[0]
        return None if tok.type == "ABSENT" else tok

    def annot(self, children):
        kw, scheme, values = children
        if kw.type == "CROP":
            if scheme != "region":
                raise _Located(f"expected 'region' after 'crop', got '{scheme}'", scheme)
            return _Annot("region", scheme, _spec("region", values, scheme))
        if scheme == "region":
            raise _Located("a region is not a number format; write it as 'crop region{...}'", scheme)
        return _Annot("quant", scheme, _spec(str(scheme), values, scheme))

    def type(self, children):
        dtype, *dims = children
        if dtype not in DTYPES:
            raise _Located(f"unknown dtype '{dtype}'; known: {', '.join(DTYPES)}", dtype)
        return TensorType(tuple(dims), DTYPES[dtype])

    def dim(self, children):
        tok = children[0]
        if tok.type == "IDENT":
            return str(tok)
        value = _number(tok)
        if not isinstance(value, int) or value < 0:
            raise _Located(f"dimension {tok} must be a non-negative integer or a name", tok)
        return value

    def dict(self, children):
        out: dict[Any, Any] = {}
        for key, key_tok, value in children:
            if key in out:
                raise _Located(f"duplicate key {key_tok}", key_tok)
            out[key] = value
        return out

    def entry(self, children):
        key_tok, value = children
        return key_tok[0], key_tok[1], value

    def key(self, children):
        tok = children[0]
        if tok.type == "STRING":
            return _string(tok), tok
        if tok.type == "NUMBER":
            value = _number(tok)
            if not isinstance(value, int):
                raise _Located(f"dictionary key {tok} must be a name, a string or an integer", tok)
            return value, tok
        return str(tok), tok

    def list(self, children):
        return list(children)

    def numlist(self, children):
        return [_number(x.strip()) for x in children[0][1:-1].split(",")]

    def number(self, children):
        return _number(children[0])

    def string(self, children):
        return _string(children[0])

    def true(self, _):
        return True

    def false(self, _):
        return False

    def none(self, _):
        return None

    def inf(self, _):
        return float("inf")

    def neg_inf(self, _):
        return float("-inf")

    def nan(self, _):
        return float("nan")


def _number(tok: Token | str) -> int | float:
    text = str(tok)
    if any(c in text for c in ".eEn"):  # a decimal point, an exponent, inf or nan
        return float(text)
    return int(text)


def _spec(scheme: str, values: dict[str, Any], token: Token) -> QuantSpec | Region:
    if any(not isinstance(k, str) for k in values):
        raise _Located(f"{scheme}: field names must be names", token)
    try:
        return spec_from_dict(scheme, values)
    except (VerifyError, TypeError, ValueError) as e:
        raise _Located(str(e), token) from None


# ------------------------------------------------------------------------------------ syntax
@functools.cache
def _parser() -> Lark:
    grammar = resources.files("qcc.frontend.qir").joinpath("grammar.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", transformer=_ToRecords(),
                maybe_placeholders=False)


_DESCRIBE = {"VALUE": "a value (%name)", "STRING": "a string", "NUMBER": "a number", "IDENT": "a name",
             "$END": "end of input"}


def _describe(terminal: str) -> str:
    if terminal in _DESCRIBE:
        return _DESCRIBE[terminal]
    for t in _parser().terminals:
        if t.name == terminal:
            return f"'{t.pattern.value}'" if t.pattern.type == "str" else terminal.lower()
    return terminal.lower()


def _expected(names: set[str] | frozenset[str]) -> str:
    items = sorted({_describe(n) for n in names})
    if len(items) > 8:
        return ""
    if len(items) == 1:
        return f"expected {items[0]}"
    return f"expected {', '.join(items[:-1])} or {items[-1]}"


def _syntax_error(e: UnexpectedInput, text: str, source: str | None) -> ParseError:
    if isinstance(e, UnexpectedCharacters):
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        reason = "unterminated string" if char == '"' else f"unexpected character {char!r}"
        expected = _expected(e.allowed or set())
        reason = f"{reason}; {expected}" if expected else reason
        return ParseError(reason, line=e.line, column=e.column, source=source)
    if isinstance(e, UnexpectedToken) and e.token.type != "$END":
        got = str(e.token)
        got = got if len(got) <= 30 else got[:27] + "..."
        expected = _expected(e.expected)
        reason = f"{expected}, got '{got}'" if expected else f"unexpected '{got}'"
        return ParseError(reason, line=e.line, column=e.column, source=source)
    expected = _expected(getattr(e, "expected", None) or set())
    reason = "unexpected end of input" + (f"; {expected}" if expected else "")
    line, column = _end_position(text)
    return ParseError(reason, line=line, column=column, source=source)


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def _records(text: str, source: str | None) -> _Module:
    try:
        module = _parser().parse(text)
    except _Located as e:
        raise ParseError(e.reason, line=e.line, column=e.column, source=source) from None
    except (UnexpectedInput, UnexpectedEOF) as e:
        raise _syntax_error(e, text, source) from None
    if _number(module.version) != VERSION:
        raise ParseError(f"unsupported qir version {module.version} (this qcc reads version {VERSION})",
                         line=module.version.line, column=module.version.column, source=source)
    return module


# ----------------------------------------------------------------------------------- builder
class _Builder:
    """Creates the Graph from the records; raises _Located for every user error."""

    def __init__(self, module: _Module, weights: Mapping[str, np.ndarray]):
        self.module = module
        self.weights = weights
        self.graph = Graph(module.name)
        self.values: dict[str, Value] = {}       # label -> value
        self.defined_at: dict[str, Token] = {}   # label -> defining token
        self.locations: dict[str, Token] = {}    # value or node name -> token (for verifier errors)
        self.node_names: dict[str, Token] = {}

    def build(self) -> Graph:
        self._index_definitions()
        names = self._value_names()
        for res in self.module.params:
            value = self.graph.add_input(names[res.label], res.type, quant=res.quant)
            self._bind(res, value)
        for stmt in self.module.stmts:
            if isinstance(stmt.rhs, _Const):
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
                raise _Located(f"value {res.token} is already defined on line {prev.line}", res.token)
            self.defined_at[res.label] = res.token
        for tok in self.module.outputs:
            if label_of(tok) not in self.defined_at:
                raise _Located(f"undefined value {tok} in the graph outputs", tok)

    def _all_results(self):
        yield from self.module.params
        for stmt in self.module.stmts:
            yield from stmt.results

    def _value_names(self) -> dict[str, str]:
        """Graph names for labels: inputs and outputs keep theirs, constants take their handle."""
        names: dict[str, str] = {}
        owner: dict[str, Token] = {}

        def claim(label: str, name: str, token: Token) -> None:
            if name in owner and names.get(label) != name:
                raise _Located(f"name '{name}' of {token} is already used on line {owner[name].line}", token)
            names[label] = name
            owner[name] = token

        for res in self.module.params:
            claim(res.label, res.label, res.token)
        for tok in self.module.outputs:
            label = label_of(tok)
            const = self._const_of(label)
            if const is None and label not in names:
                claim(label, label, self.defined_at[label])
        for stmt in self.module.stmts:
            if isinstance(stmt.rhs, _Const) and len(stmt.results) == 1:
                claim(stmt.results[0].label, stmt.rhs.handle, stmt.rhs.token)
        for stmt in self.module.stmts:
            for res in stmt.results:
                if res.label not in names:
                    names[res.label] = _fresh(res.label, owner)
                    owner[names[res.label]] = res.token
        return names

    def _const_of(self, label: str) -> _Const | None:
        for stmt in self.module.stmts:
            if isinstance(stmt.rhs, _Const) and stmt.results[0].label == label:
                return stmt.rhs
        return None

    def _bind(self, res: _Result, value: Value) -> None:
        value.region = res.region
        self.values[res.label] = value
        self.locations.setdefault(value.name, res.token)

    # ---- definitions
    def _add_constant(self, stmt: _Stmt, names: dict[str, str]) -> None:
        const = stmt.rhs
        if len(stmt.results) != 1:
            raise _Located("a constant defines exactly one value", stmt.results[1].token)
        res = stmt.results[0]
        if const.handle not in self.weights:
            raise _Located(f"missing weight '{const.handle}' (no array with that handle in the weights)",
                           const.token)
        array = np.asarray(self.weights[const.handle])
        try:
            actual = TensorType.of(array)
        except VerifyError as e:
            raise _Located(f"weight '{const.handle}': {e}", const.token) from None
        if actual != res.type:
            raise _Located(f"weight '{const.handle}' is {actual} but {res.token} is declared {res.type}",
                           const.token)
        value = self.graph.add_constant(names[res.label], array, quant=res.quant)
        self._bind(res, value)

    def _add_node(self, stmt: _Stmt, names: dict[str, str]) -> None:
        op = stmt.rhs
        if op.name in self.node_names:
            raise _Located(f"node name \"{op.name}\" is already used on line {self.node_names[op.name].line}",
                           op.name_token)
        self.node_names[op.name] = op.name_token
        inputs = [self._operand(tok) for tok in op.operands]
        try:
            opdef = get_op(op.op_token, node_name=op.name)
        except UnsupportedOpError as e:
            raise _UnknownOp(e, op.op_token) from None
        in_types = [v.type if v is not None else None for v in inputs]
        try:
            attrs = opdef.complete_attrs(op.attrs, in_types)
            inferred = opdef.infer_types(in_types, attrs, node_name=op.name)
        except VerifyError as e:
            raise _Located(str(e), op.op_token) from None
        self._check_declared(stmt, op, inferred)
        node = self.graph.add_node(str(op.op_token), inputs, attrs=attrs, name=op.name,
                                   output_types=[r.type for r in stmt.results],
                                   output_names=[names[r.label] for r in stmt.results])
        self.locations[node.name] = op.op_token
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
            raise _Located(f"value {tok} is used before its definition on line {self.defined_at[label].line}",
                           tok)
        raise _Located(f"undefined value {tok}", tok)

    @staticmethod
    def _check_declared(stmt: _Stmt, op: _Op, inferred: list[TensorType]) -> None:
        if len(inferred) != len(stmt.results):
            raise _Located(f"node \"{op.name}\" ({op.op_token}) defines {len(inferred)} outputs, "
                           f"{len(stmt.results)} are declared", stmt.results[0].token)
        for res, t in zip(stmt.results, inferred):
            if not _compatible(res.type, t):
                raise _Located(f"node \"{op.name}\" ({op.op_token}): output {res.token} is declared "
                               f"{res.type} but the op infers {t} (shape mismatch)", res.token)

    def _output_values(self) -> list[Value]:
        return [self.values[label_of(tok)] for tok in self.module.outputs]

    def locate(self, message: str) -> Token | None:
        """The defining token of the first node or value the verifier's message names."""
        for name in re.findall(r"'([^']*)'", message):
            if name in self.locations:
                return self.locations[name]
        return None


class _UnknownOp(Exception):
    def __init__(self, error: UnsupportedOpError, token: Token):
        super().__init__(str(error))
        self.error = error
        self.token = token


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
    module = _records(text, source)
    builder = _Builder(module, weights if weights is not None else {})
    try:
        graph = builder.build()
    except _Located as e:
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
    module = _records(text, source)
    return {s.rhs.handle: (s.results[0].type, s.results[0].quant)
            for s in module.stmts if isinstance(s.rhs, _Const)}


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
    except (OSError, ValueError) as e:
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
