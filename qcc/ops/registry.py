"""The op registry: every op is data (an `OpDef`), defined once and used by the verifier, the
interpreter, the frontends and the cost reports.

IR ops mirror ONNX ops, except that operands ONNX passes as constant tensors (Reshape's shape,
Clip's bounds, Squeeze/Unsqueeze/ReduceMean axes, Pad's pads) are attributes, so analyses never
chase constants; the ONNX frontend and exporter convert between the two forms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.errors import ShapeError, UnsupportedOpError, VerifyError
from qcc.ir.types import TensorType

__all__ = ["ANALYSIS_ATTRS", "AttrSpec", "OpDef", "REQUIRED", "register", "get_op", "all_ops", "has_op"]

# Attributes any node may carry whatever its op: results of analyses (e.g. the `calibrate` pass's
# statistics). They print and parse with the graph but are not part of the op's semantics.
ANALYSIS_ATTRS = frozenset({"calibration", "codebook", "ranges", "sensitivity"})


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

_KINDS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
    "floats": lambda v: isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool)
                                                   for x in v),
    "any": lambda v: True,
}


@dataclass(frozen=True)
class AttrSpec:
    """An attribute's kind ('int', 'float', 'str', 'ints', 'floats', 'any') and default.

    A callable default is computed from the input types when the attribute is absent.
    """

    kind: str
    default: Any = REQUIRED

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"unknown attribute kind {self.kind!r}")


Infer = Callable[[list[TensorType | None], dict[str, Any]], list[TensorType]]
Evaluate = Callable[[list[np.ndarray | None], dict[str, Any]], list[np.ndarray]]
Macs = Callable[[list[TensorType | None], list[TensorType], dict[str, Any]], int]


def _no_macs(in_types, out_types, attrs) -> int:
    return 0


@dataclass(frozen=True)
class OpDef:
    """Definition of one op.

    inputs: names, suffix '?' for optional and '*' for variadic (last only).
    infer: output types from input types and (completed) attributes; raises ShapeError.
    evaluate: float reference on numpy arrays (None for absent optional inputs).
    evaluate_int: the integer-exact reference, where the op has one (slot for integer semantics).
    macs: multiply-accumulates for one sample (symbolic dims taken as 1).
    """

    name: str
    inputs: tuple[str, ...]
    infer: Infer
    evaluate: Evaluate
    outputs: tuple[str, ...] = ("Y",)
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    macs: Macs = _no_macs
    evaluate_int: Evaluate | None = None
    doc: str = ""

    @property
    def arity(self) -> tuple[int, int | None]:
        """(min, max) number of inputs; max is None for variadic ops."""
        required = sum(1 for i in self.inputs if not i.endswith(("?", "*")))
        if self.inputs and self.inputs[-1].endswith("*"):
            return required, None
        return required, len(self.inputs)

    def check_arity(self, n: int, node_name: str) -> None:
        lo, hi = self.arity
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
            raise ShapeError(f"node '{node_name}' ({self.name}) takes {want} inputs, got {n}")

    def complete_attrs(self, attrs: dict[str, Any], in_types: list[TensorType | None]) -> dict[str, Any]:
        """Fill defaults so every attribute is explicit (printing and export are then unambiguous)."""
        out = dict(attrs)
        for name, spec in self.attrs.items():
            if name in out:
                continue
            if spec.default is REQUIRED:
                continue  # reported by check_attrs
            out[name] = spec.default(in_types) if callable(spec.default) else spec.default
        return out

    def check_attrs(self, attrs: dict[str, Any], node_name: str) -> None:
        for name, value in attrs.items():
            spec = self.attrs.get(name)
            if spec is None and name in ANALYSIS_ATTRS:
                continue
            if spec is None:
                known = ", ".join(sorted(self.attrs)) or "none"
                raise VerifyError(f"node '{node_name}' ({self.name}): unknown attribute '{name}' "
                                  f"(known: {known})")
            if value is not None and not _KINDS[spec.kind](value):
                raise VerifyError(f"node '{node_name}' ({self.name}): attribute '{name}' should be "
                                  f"{spec.kind}, got {value!r}")
        for name, spec in self.attrs.items():
            if spec.default is REQUIRED and name not in attrs:
                raise VerifyError(f"node '{node_name}' ({self.name}): missing required attribute '{name}'")

    def infer_types(self, in_types: Sequence[TensorType | None], attrs: dict[str, Any],
                    node_name: str) -> list[TensorType]:
        """Arity, attribute and shape checks, then the op's own inference, errors naming the node."""
        self.check_arity(len(in_types), node_name)
        self.check_attrs(attrs, node_name)
        required = [i for i in self.inputs if not i.endswith(("?", "*"))]
        for name, t in zip(required, in_types):
            if t is None:
                raise ShapeError(f"node '{node_name}' ({self.name}): required input '{name}' is missing")
        try:
            return list(self.infer(list(in_types), attrs))
        except ShapeError as e:
            raise ShapeError(f"node '{node_name}' ({self.name}): {e}") from None


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in _REGISTRY:
        raise ValueError(f"op {opdef.name} registered twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def has_op(name: str) -> bool:
    return name in _REGISTRY


def get_op(name: str, *, node_name: str = "?") -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedOpError(name, node_name, list(_REGISTRY)) from None


def all_ops() -> dict[str, OpDef]:
    return dict(sorted(_REGISTRY.items()))
