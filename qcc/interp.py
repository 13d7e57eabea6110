"""The reference interpreter: runs a graph on numpy arrays.

Execution is split from meaning: `run` walks the graph in topological order and asks a `Semantics`
object to evaluate each node and to post-process each value. `FloatSemantics` is the float
reference (quantization annotations ignored, except threshold activations, which are the function
itself); `FakeQuantSemantics` applies every annotation as quantize-dequantize in float. The
integer-exact semantics plug in as a third `Semantics` without touching the walker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from qcc.crop import evaluate_interior
from qcc.errors import ShapeError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Thresholds
from qcc.numerics import apply_region, fake_quant
from qcc.ops import get_op

__all__ = ["Semantics", "FloatSemantics", "FakeQuantSemantics", "SEMANTICS", "run", "check_inputs"]


class Semantics(Protocol):
    name: str

    def evaluate(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray]: ...

    def value(self, value: Value, array: np.ndarray) -> np.ndarray: ...


class FloatSemantics:
    """Float reference: what the quantized model approximates."""

    name = "float"

    def evaluate(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray]:
        return get_op(node.op, node_name=node.name).evaluate(args, node.attrs)

    def value(self, value: Value, array: np.ndarray) -> np.ndarray:
        if isinstance(value.quant, Thresholds):
            return fake_quant(array, value.quant)
        return array


class FakeQuantSemantics(FloatSemantics):
    """Every annotation applied in float (quantize-dequantize, crops zeroed)."""

    name = "fake"
    skip_cropped = True  # crop hook (qcc.crop): a cropped output's region is not computed

    def evaluate(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray]:
        if not self.skip_cropped:
            return super().evaluate(node, args)
        return evaluate_interior(node, args, super().evaluate)

    def value(self, value: Value, array: np.ndarray) -> np.ndarray:
        if value.quant is not None and not value.is_constant:
            array = fake_quant(array, value.quant)
        if value.region is not None and not value.region.empty:
            array = apply_region(array, value.region)
        return array


def _integer_semantics() -> Semantics:
    from qcc.integer import IntegerSemantics  # qcc.integer builds on this module

    return IntegerSemantics()


SEMANTICS: dict[str, Callable[[], Semantics]] = {
    "float": FloatSemantics,
    "fake": FakeQuantSemantics,
    "int": _integer_semantics,
}


def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match user arrays to graph inputs (a single-input graph also takes the key 'x').

    Labels under the key 'y' (the data-file format: x inputs, y labels) are ignored unless 'y' names
    a graph input.
    """
    given = dict(inputs)
    if "y" in given and all(v.name != "y" for v in graph.inputs):
        given.pop("y")
    if len(graph.inputs) == 1 and graph.inputs[0].name not in given and "x" in given:
        given[graph.inputs[0].name] = given.pop("x")
    names = [v.name for v in graph.inputs]
    missing = [n for n in names if n not in given]
    if missing:
        raise ShapeError(f"missing input(s) {', '.join(missing)}; the graph takes {', '.join(names)}")
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ShapeError(f"unknown input(s) {', '.join(unknown)}; the graph takes {', '.join(names)}")
    out = {}
    symbols: dict[str, int] = {}
    for v in graph.inputs:
        a = np.asarray(given[v.name])
        if not v.type.matches(a.shape):
            raise ShapeError(f"input '{v.name}' has shape {list(a.shape)}, expected {list(v.type.shape)}")
        for d, s in zip(v.type.shape, a.shape):
            if isinstance(d, str) and symbols.setdefault(d, s) != s:
                raise ShapeError(f"input '{v.name}': dim {d} is {s} here but {symbols[d]} elsewhere")
        if a.dtype != np.dtype(v.type.dtype):
            if not np.can_cast(a.dtype, v.type.dtype, casting="same_kind"):
                raise ShapeError(f"input '{v.name}' has dtype {a.dtype}, expected {v.type.dtype}")
            a = a.astype(v.type.dtype)
        out[v.name] = a
    return out


@np.errstate(all="ignore")  # inf / nan results are data (calibrate reports them), not warnings on stderr
def run(graph: Graph, inputs: Mapping[str, np.ndarray], *, mode: str | Semantics = "float",
        keep_all: bool = False, dequantize: bool = True) -> dict[str, np.ndarray]:
    """Run `graph` on `inputs` (keyed by input name); returns outputs keyed by output name.

    mode: "float", "fake" (fake-quant float) or "int" (integer-exact, qcc.integer), or a Semantics.
    keep_all=True returns every value (for sensitivity analysis and debugging), not just outputs.
    dequantize=False keeps integer results as the semantics' own objects (QTensor codes).
    """
    sem = SEMANTICS[mode]() if isinstance(mode, str) else mode
    env: dict[int, np.ndarray] = {}
    checked = check_inputs(graph, inputs)
    for v in graph.inputs:
        env[id(v)] = sem.value(v, checked[v.name])
    for c in graph.constants:
        env[id(c)] = sem.value(c, c.data)
    remaining = {id(v): len(v.uses) for v in graph.values()}
    keep = {id(v) for v in graph.outputs}
    for node in graph.nodes:
        args = [env[id(v)] if v is not None else None for v in node.inputs]
        try:
            results = sem.evaluate(node, args)
        except ValueError as e:  # symbolic dims verified, but these sizes do not fit: a user error
            if not any(isinstance(d, str) for v in node.inputs if v is not None for d in v.type.shape):
                raise
            shapes = ", ".join(str(list(np.shape(getattr(a, "q", a)))) for a in args if a is not None)
            raise ShapeError(f"node '{node.name}' ({node.op}) cannot run on inputs of shapes {shapes}: {e}") from None
        for out, arr in zip(node.outputs, results):
            env[id(out)] = sem.value(out, arr if hasattr(arr, "q") else np.asarray(arr))
        if not keep_all:
            for v in node.inputs:
                if v is None or v.is_constant:
                    continue
                remaining[id(v)] -= 1
                if remaining[id(v)] <= 0 and id(v) not in keep:
                    env.pop(id(v), None)
    wanted = [v for v in graph.values() if id(v) in env] if keep_all else graph.outputs
    out = {v.name: env[id(v)] for v in wanted}
    if dequantize:
        out = {k: _as_float(a, v.type.dtype) for (k, a), v in zip(out.items(), wanted)}
    return out


def _as_float(array, dtype: str) -> np.ndarray:
    """Integer results (objects with codes `q` and a `real()` view) as arrays of the value's dtype."""
    return array.real(np.dtype(dtype)) if hasattr(array, "real") and hasattr(array, "q") else array
