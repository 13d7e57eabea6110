"""Budgets and the cost quantities bit-width assignment trades against sensitivity.

Why here: `assign-bits`, reports and the command line must agree on what "1Mb of weights" means and
on how a configuration is charged, so the parsing and the arithmetic live in one place, as pure
functions of a layer's sizes (no graph rewriting, no data).

Budget strings: a non-negative number, an optional decimal prefix k/K (1e3), M (1e6), G (1e9),
T (1e12), and a unit. Memory budgets take b (bits) or B (bytes = 8 bits): "1Mb" = 1e6 bits,
"64KB" = 64e3 bytes = 512e3 bits; a bare number without prefix is bits. BOPs budgets take no unit
(an optional "ops" suffix is accepted): "2G" = 2e9 bit-operations.

Quantities charged to one layer for a choice (w_scheme, w_bits, a_scheme, a_bits), matching
qcc.report's conventions (counts for one sample; a symbolic batch counts as 1):
- weight_bits: main weight elements x w_bits, plus for codebook schemes the centroid tables
  (one per output channel when per-channel, each min(2^w_bits, elements per table) entries of
  centroid_bits; an upper bound on the report's count, which drops centroids k-means leaves
  unused, so a budget met here is met by the quantized graph), plus the layer's other constants
  (biases) at their stored width (float32 = 32);
- act_bits: elements of the layer's input activation x a_bits (seed 001: the input activation of
  each conv should fit on chip; the buffer budget applies to the largest one, or to their sum);
- bops: MACs x w_bits x a_bits (seed 000's "#MAC ops").
The "float" scheme counts 32 bits, "bipolar" 1 bit, whatever the bits field says.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from qcc.errors import QccError
from qcc.ir.graph import Node
from qcc.ops import get_op

__all__ = [
    "WEIGHT_BITS",
    "ACT_BITS",
    "BOPS",
    "TARGET",
    "CODEBOOK_SCHEMES",
    "BudgetValue",
    "LayerSizes",
    "parse_budget",
    "layer_sizes",
    "scheme_bits",
    "weight_bits",
    "activation_bits",
    "bops",
]

WEIGHT_BITS = "weight_bits"
ACT_BITS = "act_bits"
BOPS = "bops"
TARGET = "target"

CODEBOOK_SCHEMES = ("kmeans-linear", "kmeans-gaussian", "kmeans-lloyd", "kquantile")

_PREFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_UNITS = {"b": 1.0, "B": 8.0}
_BUDGET = re.compile(r"(?P<num>(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)\s*(?P<prefix>[kKMGT]?)(?P<unit>[A-Za-z]*)")


@dataclass(frozen=True)
class BudgetValue:
    """A parsed budget: `value` in base units (bits, or bit-operations), shown back in the user's unit."""

    text: str
    value: float
    kind: Literal["memory", "bops"]
    scale: float  # base units per display unit: 8e3 for "KB"
    suffix: str  # the display unit: "KB", "Mb", "G", "b"

    def format(self, amount: float) -> str:
        """`amount` (base units) in this budget's unit, rounded up so the shown value is enough."""
        shown = _ceil_significant(amount / self.scale)
        base = "bits" if self.kind == "memory" else "BOPs"
        exact = f"{amount:.0f}" if float(amount).is_integer() else f"{amount:.6g}"
        if self.scale == 1.0 and self.suffix in ("", "b"):
            return f"{exact} {base}"
        return f"{shown}{self.suffix} ({exact} {base})"


def parse_budget(text: str, kind: Literal["memory", "bops"], option: str = "budget") -> BudgetValue:
    """"64KB" -> 512000 bits; "2G" -> 2e9 BOPs. Errors name the option and show examples."""
    raw = str(text).strip()
    example = "e.g. 1Mb (bits) or 64KB (bytes)" if kind == "memory" else "e.g. 2G or 500M"
    if raw.startswith("-"):
        raise QccError(f"{option} '{text}' is negative; a budget must be a positive amount ({example})")
    m = _BUDGET.fullmatch(raw)
    if m is None:
        raise QccError(f"{option} '{text}' is not a budget: expected a number, an optional k/M/G prefix "
                       f"and a unit ({example})")
    number, prefix, unit = float(m["num"]), m["prefix"], m["unit"]
    scale = _PREFIXES[prefix] * _unit_scale(text, kind, prefix, unit, option, example)
    value = number * scale
    if not (math.isfinite(value) and value > 0):
        raise QccError(f"{option} '{text}' must be a positive, finite amount ({example})")
    suffix = prefix + (unit if kind == "memory" else "")
    return BudgetValue(text=raw, value=value, kind=kind, scale=scale, suffix=suffix)


def _unit_scale(text: str, kind: str, prefix: str, unit: str, option: str, example: str) -> float:
    if kind == "bops":
        if unit.lower() in ("", "ops", "bops"):
            return 1.0
        raise QccError(f"{option} '{text}': a BOPs budget takes no unit '{unit}' ({example})")
    if unit in _UNITS:
        return _UNITS[unit]
    if unit == "" and prefix == "":
        return 1.0  # a bare number of bits
    if unit == "":
        raise QccError(f"{option} '{text}': say b (bits) or B (bytes) after the prefix ({example})")
    raise QccError(f"{option} '{text}': unknown unit '{unit}'; use b (bits) or B (bytes) ({example})")


def _ceil_significant(x: float, digits: int = 4) -> str:
    """x rounded up at `digits` significant digits, without float noise ("1.235")."""
    if x <= 0:
        return "0"
    exponent = math.floor(math.log10(x)) - (digits - 1)
    steps = math.ceil(round(x / 10.0**exponent, 6))
    if exponent >= 0:
        return str(steps * 10**exponent)
    text = f"{steps * 10.0**exponent:.{-exponent}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


# ----------------------------------------------------------------------------------- layer costs

@dataclass(frozen=True)
class LayerSizes:
    """What a layer's costs depend on (one sample)."""

    name: str
    weight_elements: int  # main weight (input 1) elements; 0 when it is not a constant
    weight_tables: int  # codebook tables: output channels when per-channel, else 1
    fixed_bits: int  # the other constants (biases) at their stored width
    input_elements: int  # elements of the activation the layer reads (input 0)
    macs: int


def layer_sizes(node: Node, table_axis: int | None = None) -> LayerSizes:
    """The sizes of a layer node; `table_axis` is the per-channel weight axis (None = per-tensor)."""
    opdef = get_op(node.op, node_name=node.name)
    macs = int(opdef.macs(node.input_types(), [o.type for o in node.outputs], node.attrs))
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    weight = w if w is not None and w.is_constant else None
    tables = 1
    if weight is not None and table_axis is not None:
        tables = int(weight.type.concrete()[table_axis])
    fixed = sum(v.type.numel() * _stored_bits(v) for i, v in enumerate(node.inputs)
                if i != 1 and v is not None and v.is_constant)
    return LayerSizes(name=node.name, weight_elements=weight.type.numel() if weight is not None else 0,
                      weight_tables=tables, fixed_bits=int(fixed),
                      input_elements=x.type.numel() if x is not None and not x.is_constant else 0, macs=macs)


def _stored_bits(v) -> int:
    import numpy as np

    if v.quant is not None:
        return int(getattr(v.quant, "bits", 32))
    return 8 * np.dtype(v.type.dtype).itemsize


def scheme_bits(scheme: str, bits: int) -> int:
    """The width a scheme really stores: float 32, bipolar 1, otherwise `bits`."""
    if scheme == "float":
        return 32
    if scheme == "bipolar":
        return 1
    return int(bits)


def weight_bits(sizes: LayerSizes, scheme: str, bits: int, centroid_bits: int = 8) -> int:
    """Weight storage of a layer: indices or codes, codebook tables, and its fixed constants."""
    b = scheme_bits(scheme, bits)
    total = sizes.weight_elements * b + sizes.fixed_bits
    if scheme in CODEBOOK_SCHEMES and sizes.weight_elements:
        per_table = max(1, sizes.weight_elements // max(1, sizes.weight_tables))
        total += sizes.weight_tables * min(2**b, per_table) * centroid_bits
    return int(total)


def activation_bits(sizes: LayerSizes, scheme: str, bits: int) -> int:
    """Bits of the layer's input activation (what must sit in the on-chip buffer)."""
    return int(sizes.input_elements * scheme_bits(scheme, bits))


def bops(sizes: LayerSizes, w_scheme: str, w_bits: int, a_scheme: str, a_bits: int) -> int:
    """Bit-operations: MACs x weight bits x activation bits."""
    return int(sizes.macs * scheme_bits(w_scheme, w_bits) * scheme_bits(a_scheme, a_bits))
