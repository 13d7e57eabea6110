"""kmeans-codebook: replace layer weights by shared-weight codebooks (seed 002 §4.2, weight sharing).

Rewrite, for every selected layer (Conv, Gemm, MatMul with a constant weight W of n elements):

    W  ->  W' = centroid_scale * table[idx]     annotated Codebook(bits, table, centroid_bits, centroid_scale)

idx holds one `bits`-bit index per weight; the table holds at most 2^bits integers of `centroid_bits`
bits (one table per output channel when `per_channel`, all sharing one power-of-two centroid_scale).
The fit is qcc.quantizers': QUENN's linear and Gaussian interval quantizers (seed 002 §4.2 steps
1-5) or Lloyd's k-means (seed 002 eq. 4, k-means++ seeding from `seed`, deterministic). W' lies
exactly on the spec's grid, so fake-quant reproduces it, and the integer semantics (qcc.integer)
computes the layer through the integer table: sum (qx - zx) * table[idx] in int64, at scale
sx * centroid_scale. The bias stays float (folded into the accumulator by the integer semantics).

Memory (seed 002 eq. 5: log2(K) bits per weight instead of the standard width, plus the table):

    memory_bits = n * bits + table_size * centroid_bits      float_bits = n * 32
    compression = float_bits / memory_bits

recorded on the node as attrs["codebook"] = {method, bits, per_channel, centroid_bits, table_size,
index_bits, memory_bits, float_bits, compression}, with totals over all codebook layers in
graph.attrs["codebook"]. qcc.report's weight_bits_total counts a codebook weight the same way (its
bias, float32, is counted there too).

Which layers, and how: the options are the base; `config` (the TOML of qcc.config) overrides them
per layer through w_bits, w_scheme (kmeans-linear | kmeans-gaussian | kmeans-lloyd) and per_channel;
a layer whose configured w_scheme is anything else is left alone, so one file drives both this pass
and `quantize`. `layers` restricts the pass to those node names; `min_params` skips weights with
fewer elements. Weights that already carry a quantizer: a codebook of the same method, bits,
centroid_bits and granularity is left as it is (the pass is idempotent); anything else is an error
naming the layer unless `replace=true`, which refits the stored (already quantized) values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from qcc.config import LayerConfig, QuantConfig, load_config
from qcc.errors import PassError, QccError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Codebook, QuantSpec
from qcc.pass_manager import Pass, PassContext, PassResult
from qcc.passes.quantize import LAYER_OPS, output_axis
from qcc.quantizers import CodebookFit, fit_kmeans_gaussian, fit_kmeans_linear, fit_kmeans_lloyd

__all__ = ["ExtractCodebooksPass", "METHODS", "fit_layer_codebook", "codebook_indices", "decode_codebook"]

METHODS = ("linear", "gaussian", "lloyd")
_FITTERS = {"linear": fit_kmeans_linear, "gaussian": fit_kmeans_gaussian, "lloyd": fit_kmeans_lloyd}
_SCHEME_PREFIX = "kmeans-"
_MAX_CENTROID_BITS = 24  # qcc.quantizers.codebook: decoding stays exact in float32


@dataclass(frozen=True)
class _Choice:
    """What one layer gets: the method, index bits and per-channel tables."""

    method: str
    bits: int
    per_channel: bool


@dataclass(frozen=True)
class ExtractCodebooksPass(Pass):
    """Replace layer weights by k-means codebooks (indices into a small integer centroid table)."""

    name = "kmeans-codebook"
    method: Literal["linear", "gaussian", "lloyd"] = "lloyd"
    bits: int = 4
    per_channel: bool = False
    centroid_bits: int = 8
    seed: int = 0
    layers: tuple[str, ...] = ()  # node names; empty = every layer
    config: str | None = None  # TOML: [default] / [layers."<node>"] w_bits, w_scheme = "kmeans-..."
    min_params: int = 0  # skip weights with fewer elements
    replace: bool = False  # refit weights that another quantizer already annotated

    def __post_init__(self):
        if self.method not in METHODS:
            raise QccError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        _check_int("bits", self.bits, 1, 16)
        _check_int("centroid-bits", self.centroid_bits, 2, _MAX_CENTROID_BITS)
        _check_int("min-params", self.min_params, 0, None)
        _check_int("seed", self.seed, 0, None)

    def resolve(self) -> QuantConfig:
        """The per-layer configuration: the TOML file over these options, or the options alone."""
        base = LayerConfig(w_bits=self.bits, a_bits=8, w_scheme=_SCHEME_PREFIX + self.method, a_scheme="float",
                           per_channel=self.per_channel)
        if self.config is None:
            return QuantConfig(default=base, layers={})
        return load_config(self.config, base=base)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        config = self.resolve()
        config.check_layers([n.name for n in graph.nodes], where=f"configuration {self.config}")
        changed = False
        for node in self._selected(graph):
            choice = _choice(config.for_layer(node.name))
            if choice is not None:
                changed |= self._extract(graph, node, choice, ctx)
        return PassResult(_record_totals(graph) or changed)

    def _selected(self, graph: Graph) -> list[Node]:
        """The layers to consider, in graph order: all, or those named in `layers` (checked)."""
        if not self.layers:
            return [n for n in graph.nodes if _has_weight(n)]
        named = QuantConfig(default=LayerConfig(), layers=dict.fromkeys(self.layers, LayerConfig()))
        named.check_layers([n.name for n in graph.nodes], where="option 'layers'")
        for name in self.layers:
            node = graph.node(name)
            if not _has_weight(node):
                raise PassError(self.name, f"a {node.op} node is not a layer with a constant weight "
                                f"({', '.join(LAYER_OPS)})", node=name)
        return [n for n in graph.nodes if n.name in self.layers]

    def _extract(self, graph: Graph, node: Node, choice: _Choice, ctx: PassContext) -> bool:
        w = node.inputs[1]
        if w.type.numel() < self.min_params:
            return False
        axis = output_axis(node) if choice.per_channel else None
        if w.quant is not None:
            if self._same(node, w.quant, choice, axis):
                return False
            if not self.replace:
                raise PassError(self.name, f"weight '{w.name}' is already quantized ({_describe(w.quant)}); "
                                "pass replace=true to refit its quantized values as a codebook", node=node.name,
                                ran_before=tuple(ctx.history))
        if ctx.progress is not None:
            ctx.progress(f"{self.name}: {node.name} ({choice.method}, {choice.bits} bits)")
        try:
            fit = fit_layer_codebook(w.data, choice.method, choice.bits, axis=axis,
                                     centroid_bits=self.centroid_bits, seed=self.seed)
        except QccError as e:
            raise PassError(self.name, str(e), node=node.name, ran_before=tuple(ctx.history)) from None
        record = _memory_record(choice.method, fit, w)
        changed = _set_weight(graph, node, fit)
        if node.attrs.get("codebook") != record:
            node.attrs["codebook"] = record
            changed = True
        return changed

    def _same(self, node: Node, spec: QuantSpec, choice: _Choice, axis: int | None) -> bool:
        """Whether the weight already is this pass's codebook for these settings."""
        record = node.attrs.get("codebook")
        return (isinstance(spec, Codebook) and isinstance(record, dict) and record.get("method") == choice.method
                and spec.bits == choice.bits and spec.centroid_bits == self.centroid_bits
                and spec.axis == axis)


# --------------------------------------------------------------------------------- codebooks
def fit_layer_codebook(data: np.ndarray, method: str, bits: int, *, axis: int | None = None,
                       centroid_bits: int = 8, seed: int = 0) -> CodebookFit:
    """The codebook of a weight tensor: one table, or one per index along `axis` (the output channels).

    The quantizers fit per channel along axis 0, so another axis is moved there and back.
    """
    if method not in _FITTERS:
        raise QccError(f"unknown codebook method {method!r}; methods: {', '.join(METHODS)}")
    moved = axis is not None and axis != 0
    first = np.moveaxis(data, axis, 0) if moved else data
    options: dict[str, object] = {"per_channel": axis is not None, "centroid_bits": centroid_bits}
    if method == "lloyd":
        options["seed"] = seed
    fit = _FITTERS[method](first, bits, **options)
    if not moved:
        return fit
    return CodebookFit(spec=fit.spec.replace(axis=axis), indices=np.moveaxis(fit.indices, 0, axis),
                       data=np.ascontiguousarray(np.moveaxis(fit.data, 0, axis)))


def codebook_indices(data: np.ndarray, spec: Codebook) -> np.ndarray:
    """Each weight's index into its table (int64, data's shape), for data on the codebook's grid."""
    codes = np.rint(np.asarray(data, np.float64) / spec.centroid_scale).astype(np.int64)
    rows = _channel_rows(codes, spec.axis)
    out = np.stack([np.searchsorted(np.asarray(t), r) for t, r in zip(_row_tables(spec, len(rows)), rows)])
    return _from_rows(out, codes.shape, spec.axis)


def decode_codebook(indices: np.ndarray, spec: Codebook, dtype=np.float32) -> np.ndarray:
    """centroid_scale * table[indices] (per channel along spec.axis): the weights a codebook stands for."""
    rows = _channel_rows(np.asarray(indices, np.int64), spec.axis)
    ints = np.stack([np.asarray(t, np.int64)[r] for t, r in zip(_row_tables(spec, len(rows)), rows)])
    return (_from_rows(ints, np.shape(indices), spec.axis) * spec.centroid_scale).astype(dtype)


def _channel_rows(a: np.ndarray, axis: int | None) -> np.ndarray:
    return a.reshape(1, -1) if axis is None else np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def _from_rows(rows: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    if axis is None:
        return rows.reshape(shape)
    moved = (shape[axis], *shape[:axis], *shape[axis + 1:])
    return np.moveaxis(rows.reshape(moved), 0, axis)


def _row_tables(spec: Codebook, rows: int) -> tuple[tuple[int, ...], ...]:
    tables = spec.tables()
    if len(tables) != rows:
        raise QccError(f"codebook has {len(tables)} table(s) for {rows} channel(s)")
    return tables


# --------------------------------------------------------------------------------- helpers
def _check_int(name: str, value: object, lo: int, hi: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bounds = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise QccError(f"{name} must be an integer {bounds}, got {value!r}")


def _has_weight(node: Node) -> bool:
    return node.op in LAYER_OPS and len(node.inputs) > 1 and node.inputs[1] is not None \
        and node.inputs[1].is_constant


def _choice(layer: LayerConfig) -> _Choice | None:
    """The codebook settings of a layer, or None when its configured weight scheme is not k-means."""
    scheme = layer.w_scheme or ""
    if not scheme.startswith(_SCHEME_PREFIX):
        return None
    return _Choice(method=scheme.removeprefix(_SCHEME_PREFIX), bits=int(layer.w_bits or 0),
                   per_channel=bool(layer.per_channel))


def _describe(spec: QuantSpec) -> str:
    bits = getattr(spec, "bits", None)
    return f"{spec.scheme}, {bits} bits" if bits is not None else spec.scheme


def _memory_record(method: str, fit: CodebookFit, w: Value) -> dict:
    """Seed 002 eq. 5 for one layer, as printed in node.attrs["codebook"]."""
    n = int(fit.indices.size)
    float_bits = n * 8 * np.dtype(w.type.dtype).itemsize
    memory = fit.memory_bits
    return {"method": method, "bits": fit.spec.bits, "per_channel": fit.spec.axis is not None,
            "centroid_bits": fit.spec.centroid_bits, "table_size": fit.table_size, "index_bits": n * fit.spec.bits,
            "memory_bits": memory, "float_bits": float_bits, "compression": round(float_bits / memory, 4)}


def _set_weight(graph: Graph, node: Node, fit: CodebookFit) -> bool:
    """Point the layer at the decoded weights (a new constant; the old one goes when unused)."""
    w = node.inputs[1]
    if w.quant == fit.spec and np.array_equal(w.data, fit.data):
        return False
    graph.replace_constant_input(node, 1, fit.data.astype(w.data.dtype), fit.spec)
    return True


def _record_totals(graph: Graph) -> bool:
    """graph.attrs["codebook"]: the layers' memory summed; whether it changed."""
    records = [n.attrs["codebook"] for n in graph.nodes if isinstance(n.attrs.get("codebook"), dict)]
    if not records:
        return False
    memory = sum(int(r["memory_bits"]) for r in records)
    float_bits = sum(int(r["float_bits"]) for r in records)
    totals = {"layers": len(records), "memory_bits": memory, "float_bits": float_bits,
              "compression": round(float_bits / memory, 4)}
    if graph.attrs.get("codebook") == totals:
        return False
    graph.attrs["codebook"] = totals
    return True
