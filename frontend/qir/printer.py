"""Print a Graph as .qir text, and save it with its weights.

The printer is generic: every op prints as `Op "node name" (operands) {attributes}`, so any
registered op round-trips with no per-op code. Output is canonical for a given graph: attributes
and dictionary keys sorted, constants listed in order of first use, intermediate values renumbered
in definition order, floats written with `repr` (exact, including inf, -inf, nan and -0.0).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qcc.errors import QccError, VerifyError
from qcc.io import atomic_writes, write_npz
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import QuantSpec, Region, Uniform, spec_to_dict
from qcc.ir.types import TensorType

__all__ = ["print_graph", "format_attr", "save"]

_BARE_LABEL = re.compile(r"[A-Za-z0-9_]+")
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ------------------------------------------------------------------------------ attributes
def _string(s: str) -> str:
    text = json.dumps(s, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them as \u escapes
        text = json.dumps(s, ensure_ascii=True)
    return text


def _float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def _key(k: Any) -> str:
    if isinstance(k, bool) or not isinstance(k, int | str | np.integer):
        raise VerifyError(f"dictionary key {k!r} is not a string or an integer, so it cannot be printed")
    if not isinstance(k, str):
        return str(int(k))
    return k if _BARE_KEY.fullmatch(k) else _string(k)


def _sort_key(k: Any) -> tuple[bool, Any]:
    return (isinstance(k, str), k if isinstance(k, str) else int(k))


def format_attr(v: Any) -> str:
    """One attribute value in .qir syntax (ints, floats, strings, bools, none, lists, dicts)."""
    if v is None:
        return "none"
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return _float(float(v))
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, np.ndarray):
        return format_attr(v.tolist())
    if isinstance(v, list | tuple):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return _dict(v)
    raise VerifyError(f"attribute value {v!r} of type {type(v).__name__} cannot be printed "
                      f"(use numbers, strings, bools, none, lists and dicts)")


def _dict(d: Mapping[Any, Any]) -> str:
    items = sorted(d.items(), key=lambda kv: _sort_key(_check_key(kv[0])))
    return "{" + ", ".join(f"{_key(k)} = {format_attr(v)}" for k, v in items) + "}"


def _check_key(k: Any) -> Any:
    _key(k)
    return k


# ----------------------------------------------------------------------------- annotations
def _spec(keyword: str, spec: QuantSpec | Region) -> str:
    """`quant <scheme>{fields}` / `crop region{fields}`, leaving out fields at their default."""
    scheme = "region" if isinstance(spec, Region) else spec.scheme
    values = spec_to_dict(spec)
    fields = []
    for f in dataclasses.fields(spec):
        text = format_attr(values[f.name])
        if isinstance(spec, Uniform) and f.name == "scale":
            text = _float32_attr(values[f.name])
        if f.default is not dataclasses.MISSING and text == format_attr(f.default):
            continue
        fields.append(f"{f.name} = {text}")
    return f"{keyword} {scheme}{{{', '.join(fields)}}}"


def _float32_attr(v: Any) -> str:
    """Uniform scales are float32 values: print the shortest text that rounds back to them."""
    if isinstance(v, list):
        return "[" + ", ".join(_float32_attr(x) for x in v) + "]"
    return str(np.float32(v))


def _type(t: TensorType) -> str:
    return f"{t.short_dtype}[{','.join(str(d) for d in t.shape)}]"


# ---------------------------------------------------------------------------------- labels
def _label(name: str) -> str:
    return "%" + (name if _BARE_LABEL.fullmatch(name) else _string(name))


class _Labels:
    """Text labels: graph inputs and outputs keep their names, the rest are renumbered."""

    def __init__(self, graph: Graph):
        self._by_id: dict[int, str] = {}
        self._taken = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
        self._counters = {"": 0, "c": 0}
        for v in [*graph.inputs, *graph.outputs]:
            self._by_id[id(v)] = _label(v.name)

    def define(self, value: Value, prefix: str = "") -> str:
        if id(value) in self._by_id:
            return self._by_id[id(value)]
        while True:
            name = f"{prefix}{self._counters[prefix]}"
            self._counters[prefix] += 1
            if name not in self._taken:
                break
        self._by_id[id(value)] = "%" + name
        return "%" + name

    def use(self, value: Value | None, node: Node | None) -> str:
        """The label of a defined value (`_` for an absent optional input)."""
        if value is None:
            return "_"
        label = self._by_id.get(id(value))
        if label is None:
            user = f"node '{node.name}' ({node.op})" if node is not None else "the graph outputs"
            raise VerifyError(f"{user} uses '{value.name}', which is not defined in the graph "
                              f"(dangling value)")
        return label


# ------------------------------------------------------------------------------------ graph
def _result(label: str, value: Value) -> str:
    text = f"{label}: {_type(value.type)}"
    if value.quant is not None:
        text += " " + _spec("quant", value.quant)
    if value.region is not None:
        text += " " + _spec("crop", value.region)
    return text


def _constants_in_order(graph: Graph, nodes: list[Node]) -> list[Value]:
    """Constants by first use (nodes in order, then graph outputs), unused ones by name."""
    consts = {id(c): c for c in graph.constants}
    order: dict[int, Value] = {}
    for node in nodes:
        for v in node.inputs:
            if v is not None and id(v) in consts:
                order.setdefault(id(v), v)
    for v in graph.outputs:
        if id(v) in consts:
            order.setdefault(id(v), v)
    rest = sorted((c for c in graph.constants if id(c) not in order), key=lambda c: c.name)
    return [*order.values(), *rest]


def _node(node: Node, labels: _Labels) -> str:
    operands = ", ".join(labels.use(v, node) for v in node.inputs)
    results = ", ".join(_result(labels.define(o), o) for o in node.outputs)
    text = f"  {results} = {node.op} {_string(node.name)} ({operands})"
    if node.attrs:
        text += " " + _dict(node.attrs)
    return text


def _graph_attrs(attrs: Mapping[str, Any]) -> list[str]:
    if not attrs:
        return []
    items = sorted(attrs.items(), key=lambda kv: _sort_key(_check_key(kv[0])))
    body = [f"  {_key(k)} = {format_attr(v)}" for k, v in items]
    return ["attributes {", ",\n".join(body), "}"]


def print_graph(graph: Graph) -> str:
    """The canonical .qir text of `graph` (weights are referenced by handle, never inlined)."""
    labels = _Labels(graph)
    nodes = graph.nodes
    params = ", ".join(_result(labels.define(v), v) for v in graph.inputs)
    outputs = ", ".join(labels.use(v, None) for v in graph.outputs)
    lines = ["qir 1", f"graph {_string(graph.name)} ({params}) -> ({outputs}) {{"]
    for c in _constants_in_order(graph, nodes):
        lines.append(f"  {_result(labels.define(c, 'c'), c)} = const {_string(c.name)}")
    lines.extend(_node(n, labels) for n in nodes)
    lines.append("}")
    lines.extend(_graph_attrs(graph.attrs))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- save
def save(graph: Graph, path: str | Path) -> None:
    """Write `path` (.qir text) and `path` with suffix .npz (weights by handle), atomically.

    Both files appear complete or not at all; the same graph gives byte-identical files.
    """
    path = Path(path)
    if path.suffix == ".npz":
        raise QccError(f"cannot save a graph as {path}: that name is for its weights; use a .qir name")
    text = print_graph(graph).encode("utf-8")
    arrays = {c.name: c.data for c in graph.constants}
    with atomic_writes(path.with_suffix(".npz"), path) as (npz_tmp, qir_tmp):
        write_npz(npz_tmp, arrays)
        qir_tmp.write_bytes(text)
