"""The .qir syntax: LALR parser (grammar.lark) and records that keep tokens for error positions.

Internal to qcc.frontend.qir. The inline transformer turns the text into plain values (attribute
values, TensorTypes, quant specs) and small records (`Module`, `Stmt`, `Result`, `Const`, `Op`);
the builder in parser.py turns those into a Graph. Errors found here are raised as `Located`
(a reason at a token) or turned into ParseErrors with the position lark reports.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from qcc.errors import ParseError, VerifyError
from qcc.ir.quant import QuantSpec, Region, spec_from_dict
from qcc.ir.types import DTYPES, TensorType

__all__ = ["VERSION", "Located", "Module", "Stmt", "Result", "Const", "Op", "label_of", "read_records"]

VERSION = 1


class Located(Exception):
    """Internal: a reason at a token, turned into a ParseError once the source name is known."""

    def __init__(self, reason: str, token: Token | None):
        super().__init__(reason)
        self.reason = reason
        self.line = getattr(token, "line", None)
        self.column = getattr(token, "column", None)


# ------------------------------------------------------------------------------------ records
@dataclass
class Result:
    """A defined value: `%label: type annotations`."""

    token: Token
    label: str
    type: TensorType
    quant: QuantSpec | None = None
    region: Region | None = None


@dataclass
class Const:
    """`= const "handle"`: a constant whose array is the weight stored under `handle`."""

    token: Token
    handle: str


@dataclass
class Op:
    """`= Op "node name" (operands) {attrs}`; absent optional operands are None."""

    op_token: Token
    name_token: Token
    name: str
    operands: list[Token | None]
    attrs: dict[str, Any]


@dataclass
class Stmt:
    """One definition line: its results and what defines them."""

    results: list[Result]
    rhs: Const | Op


@dataclass
class Module:
    """A whole file: header, definitions in text order, graph attributes."""

    name: str
    params: list[Result]
    outputs: list[Token]
    stmts: list[Stmt]
    version: Token | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Annot:
    """A parsed `quant <scheme>{...}` or `crop region{...}` annotation."""

    kind: str
    token: Token
    spec: QuantSpec | Region


# ------------------------------------------------------------------------------- transformer
def _string(token: Token) -> str:
    try:
        return json.loads(token)
    except json.JSONDecodeError as e:
        raise Located(f"bad string literal {token}: {e.msg}", token) from None


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
        params = [c for c in items if isinstance(c, Result)]
        outputs = [c for c in items if isinstance(c, Token)]
        stmts = [c for c in items if isinstance(c, Stmt)]
        return Module(name=_string(name_tok), params=params, outputs=outputs, stmts=stmts)

    def graph_attrs(self, children):
        return children[0]

    def stmt(self, children):
        *results, rhs = children
        return Stmt(results, rhs)

    def result(self, children):
        token, type_, *annots = children
        res = Result(token, label_of(token), type_)
        for a in annots:
            if getattr(res, a.kind) is not None:
                keyword = "quant" if a.kind == "quant" else "crop"
                raise Located(f"value {token} has two '{keyword}' annotations", a.token)
            setattr(res, a.kind, a.spec)
        return res

    def const(self, children):
        _, handle = children
        return Const(handle, _string(handle))

    def op(self, children):
        op_tok, name_tok, *rest = children
        attrs = rest.pop() if rest and isinstance(rest[-1], dict) else {}
        for key in attrs:
            if not isinstance(key, str):
                raise Located(f"attribute name {key!r} of node {name_tok} must be a name, not a number",
                               op_tok)
        return Op(op_tok, name_tok, _string(name_tok), rest, attrs)

    def operand(self, children):
        tok = children[0]
        return None if tok.type == "ABSENT" else tok

    def annot(self, children):
        kw, scheme, values = children
        if kw.type == "CROP":
            if scheme != "region":
                raise Located(f"expected 'region' after 'crop', got '{scheme}'", scheme)
            return _Annot("region", scheme, _spec("region", values, scheme))
        if scheme == "region":
            raise Located("a region is not a number format; write it as 'crop region{...}'", scheme)
        return _Annot("quant", scheme, _spec(str(scheme), values, scheme))

    def type(self, children):
        dtype, *dims = children
        if dtype not in DTYPES:
            raise Located(f"unknown dtype '{dtype}'; known: {', '.join(DTYPES)}", dtype)
        return TensorType(tuple(dims), DTYPES[dtype])

    def dim(self, children):
        tok = children[0]
        if tok.type == "IDENT":
            return str(tok)
        value = _number(tok)
        if not isinstance(value, int) or value < 0:
            raise Located(f"dimension {tok} must be a non-negative integer or a name", tok)
        return value

    def dict(self, children):
        out: dict[Any, Any] = {}
        for key, key_tok, value in children:
            if key in out:
                raise Located(f"duplicate key {key!r}", key_tok)
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
                raise Located(f"dictionary key {tok} must be a name, a string or an integer", tok)
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
        raise Located(f"{scheme}: field names must be names", token)
    try:
        return spec_from_dict(scheme, values)
    except (VerifyError, TypeError, ValueError) as e:
        raise Located(str(e), token) from None


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
        if char == '"':
            return ParseError("unterminated string", line=e.line, column=e.column, source=source)
        expected = _expected(e.allowed or set())
        reason = f"unexpected character {char!r}" + (f"; {expected}" if expected else "")
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


def read_records(text: str, source: str | None) -> Module:
    try:
        module = _parser().parse(text)
    except Located as e:
        raise ParseError(e.reason, line=e.line, column=e.column, source=source) from None
    except (UnexpectedInput, UnexpectedEOF) as e:
        raise _syntax_error(e, text, source) from None
    if str(module.version) != str(VERSION):
        raise ParseError(f"unsupported qir version {module.version} (this qcc reads version {VERSION})",
                         line=module.version.line, column=module.version.column, source=source)
    return module
