"""Per-layer quantization configuration: the TOML file `quantize{config=...}` and `--config` read.

    [default]
    w_bits = 8
    a_bits = 8
    w_scheme = "uniform"
    a_scheme = "uniform"
    [layers."/features/conv1/Conv"]
    w_bits = 4
    a_bits = 4
    crop = [25, 25, 25, 25]   # output rows/cols cut at top, bottom, left, right
    pe = 4                    # FPGA folding: output channels in parallel (must divide them)
    simd = 8                  # FPGA folding: inputs per cycle (must divide the reduction length)

Layer keys are node names (`qcc show --summary` lists them). `a_bits` / `a_scheme` of a layer are
the precision of the activation the layer consumes (its input, what its MACs read: BOPs, CIM input
cycles); `w_*` its weights; `crop` its output's zero-bit edges; `pe` / `simd` the layer's folding on
the FPGA target (other targets ignore them; the FPGA target checks they divide the layer).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from qcc.errors import QccError

__all__ = ["LayerConfig", "QuantConfig", "W_SCHEMES", "A_SCHEMES", "LAYER_OPS", "load_config", "parse_config"]

# The ops a configuration calls layers: they have weights (input 1) and read an activation (input 0).
LAYER_OPS = ("Conv", "Gemm", "MatMul")

W_SCHEMES = ("uniform", "fixed", "dynamic-fixed", "kmeans-linear", "kmeans-gaussian", "kmeans-lloyd", "kquantile",
             "bipolar", "float")
A_SCHEMES = ("uniform", "fixed", "dynamic-fixed", "kquantile", "bipolar", "float")


@dataclass(frozen=True)
class LayerConfig:
    """The settings of one layer (None = not set here, inherit)."""

    w_bits: int | None = None
    a_bits: int | None = None
    w_scheme: str | None = None
    a_scheme: str | None = None
    crop: tuple[int, int, int, int] | None = None
    per_channel: bool | None = None
    pe: int | None = None
    simd: int | None = None

    def merged_over(self, base: LayerConfig) -> LayerConfig:
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self)
                                if getattr(self, f.name) is not None})


@dataclass(frozen=True)
class QuantConfig:
    default: LayerConfig
    layers: Mapping[str, LayerConfig]

    def for_layer(self, name: str) -> LayerConfig:
        own = self.layers.get(name)
        return own.merged_over(self.default) if own is not None else self.default

    def check_layers(self, node_names: Iterable[str], where: str = "configuration") -> None:
        """Every configured layer must exist; suggest close names when it does not."""
        known = list(node_names)
        for name in self.layers:
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                f"; layers are: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''}"
            raise QccError(f"{where}: unknown layer '{name}'{hint}")


_DEFAULT = LayerConfig(w_bits=8, a_bits=8, w_scheme="uniform", a_scheme="uniform", per_channel=True)


def _layer(table: Mapping[str, Any], where: str) -> LayerConfig:
    known = {f.name for f in fields(LayerConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise QccError(f"{where}: unknown key(s) {', '.join(unknown)}; keys: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for key in ("w_bits", "a_bits"):
        if key in table:
            bits = table[key]
            if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
                raise QccError(f"{where}: {key} must be an integer from 1 to 16, got {bits!r}")
            values[key] = bits
    for key, allowed in (("w_scheme", W_SCHEMES), ("a_scheme", A_SCHEMES)):
        if key in table:
            if table[key] not in allowed:
                raise QccError(f"{where}: {key} {table[key]!r} is not one of {', '.join(allowed)}")
            values[key] = table[key]
    if "crop" in table:
        crop = table["crop"]
        if not (isinstance(crop, list) and len(crop) == 4
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in crop)):
            raise QccError(f"{where}: crop must be 4 non-negative integers [top, bottom, left, right], "
                           f"got {crop!r}")
        values["crop"] = tuple(crop)
    for key in ("pe", "simd"):
        if key in table:
            n = table[key]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise QccError(f"{where}: {key} must be a positive integer, got {n!r}")
            values[key] = n
    if "per_channel" in table:
        if not isinstance(table["per_channel"], bool):
            raise QccError(f"{where}: per_channel must be true or false")
        values["per_channel"] = table["per_channel"]
    return LayerConfig(**values)


def parse_config(doc: Mapping[str, Any], source: str = "configuration", base: LayerConfig | None = None) -> QuantConfig:
    """A QuantConfig from a TOML-like mapping; [default] applies over `base` (8-bit uniform if None)."""
    unknown = sorted(set(doc) - {"default", "layers"})
    if unknown:
        raise QccError(f"{source}: unknown table(s) {', '.join(unknown)}; expected [default] and [layers.\"...\"]")
    default = _layer(doc.get("default", {}), f"{source} [default]").merged_over(base or _DEFAULT)
    layers_doc = doc.get("layers", {})
    if not isinstance(layers_doc, Mapping):
        raise QccError(f"{source}: [layers] must be a table of per-layer tables")
    layers = {name: _layer(t, f"{source} [layers.\"{name}\"]") for name, t in layers_doc.items()}
    return QuantConfig(default=default, layers=layers)


def load_config(path: str | os.PathLike, base: LayerConfig | None = None) -> QuantConfig:
    p = Path(path)
    if not p.is_file():
        raise QccError(f"configuration file {p} does not exist")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise QccError(f"{p}: {e}") from None
    return parse_config(doc, str(p), base)
