"""Mapping quantized MAC layers onto crossbars (seed 004 §ISAAC, DESIGN.md §5).

Each Conv / Gemm / MatMul whose input is a per-tensor uniform or bipolar activation and whose
weight is a uniform, codebook or bipolar constant (any combination) becomes, per group, a weight
matrix of rows = kh * kw * cin / groups (Gemm / MatMul: K) and cols = cout / groups, in the order
(cin, kh, kw) of an im2col window.

- Weights: the centred integer weight wc = q - zw (codebook: the integer centroid) is stored as
  non-negative cell levels. Offset encoding (default): u = wc - lo with lo the smallest
  representable wc (uniform: qmin - zw; codebook: the smallest centroid), so u has w_bits bits and
  the digital correction adds lo * sum(x). Differential pairs: u+ = max(wc, 0) and u- = max(-wc, 0)
  in two column groups, subtracted digitally. Each level is sliced into ceil(bits / bits_per_cell)
  cells, least significant first (seed 004 Fig. 2: 10-bit weights take 5 columns). Codebook layers
  store their centroid integers in the cells (one column group per centroid would need 2^bits
  column groups; centroid values are never costlier for tables of more than two entries).
- Bipolar weights (codes w in {-1, +1}): w = 2b - 1 with b = (w + 1) / 2 in {0, 1}, so offset
  encoding stores the 1-bit level b (w_step = 2, w_offset = -1: wc = w_step * u + w_offset) and the
  digital side computes sum x w = 2 sum x b - sum x; differential pairs store b+ = [w = +1] and
  b- = [w = -1] (one cell each). Either way a bipolar layer costs what any 1-bit layer costs.
- Physical columns: weight column j, pair p (0 = u / u+, 1 = u-), cell k sit at column
  (j * pairs + p) * cells + k of the group's matrix, tiled over crossbars of rows x cols.
- Inputs: codes q in [qmin, qmax] are fed as u_x = q - qmin (a_bits bits), dac_bits per crossbar
  read, so a_bits / dac_bits reads per output position; the correction (qmin - zx) * sum(wc) is
  digital.
- Bipolar inputs (codes x in {-1, +1}; 0 only where padding or a crop makes the real value zero):
  x = 2a - 1 with a = (x + 1) / 2 fed as a 1-bit DAC code (x_step = 2, x_min = -1, one read per
  position). Then sum x w = 2 sum a w - sum_valid w, where sum_valid w adds the weights of the
  rows that hold a real +-1 input: a padded or cropped row is fed a = 0 and left out of the
  correction, so it contributes 0 as in qcc.integer. Which rows those are depends only on the
  output position (padding and crop regions are static), so the chip's correction is a
  per-position table of weight sums (the simulator computes it from the codes: a code-preserving op
  between a crop and the layer, e.g. a MaxPool over the crop's edge, can make which rows hold 0
  depend on the data; the simulator stays exact there, a chip would need that mask per sample).
  A Relu or Pad between the bipolar annotation and the layer makes codes 0 anywhere, so such a
  layer is not mapped (unmapped_reason says so).
- ADC: per layer the lossless resolution (arch.layer_adc_bits) for the rows one crossbar holds,
  the layer's input slice (min(dac_bits, a_bits) bits) and its cell levels (min(bits_per_cell,
  w_bits) bits), capped at the architecture's ADC when it is lossy.
- Flip encoding (ISAAC, `flip_encoding = true`): in every crossbar, a physical column whose levels
  sum to more than rows_in_that_crossbar * M / 2 (M = 2^min(bits_per_cell, w_bits) - 1, the
  largest level) is programmed with M - level; `flipped[g, row_tile, column]` says which, and the
  digital side recovers sum(x * level) = M * sum(x) - sum(x * (M - level)). This halves the largest
  column sum, so the ADC needs one bit fewer.
- Crops: a cropped output region (Value.region) is not computed: only interior positions count.

- Replication (arch `[mapping] replication = "balance"`, ISAAC's throughput mode): a layer held r
  times computes its output positions r at a time, so its time per sample is ceil(positions / r)
  reads. `balance_replicas` repeatedly gives the slowest layer of the layer pipeline just enough
  replicas to need one read step fewer per input slice, while the crossbars fit in
  arch.replication_limit (max_crossbars or the chip); it stops when the slowest layer cannot be
  sped up. The early convolutions (many positions) get the replicas, as in ISAAC.
- Chip capacity: a layer wider than the whole chip, or a model whose unreplicated layers need more
  crossbars than the chip has, is a clear error (replication only fills crossbars left over).

`mapping_to_json` writes which weights sit in which crossbar with their cell levels (enough to
program a chip); it is deterministic (layers in graph order, crossbars by group, row, column tile).
Crossbars get global ids in that order, replica by replica; each crossbar entry lists the ids of
its copies ("ids", one per replica), and id i sits in tile i // crossbars_per_tile, IMA
(i // crossbars_per_ima) % imas_per_tile, slot i % crossbars_per_ima.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from qcc.errors import QccError
from qcc.integer import constant_value
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Bipolar, Codebook, Thresholds, Uniform
from qcc.targets.cim.arch import Arch, layer_adc_bits

__all__ = ["LayerMapping", "GraphMapping", "map_layer", "map_graph", "mapping_to_json", "MAC_OPS",
           "input_spec", "slice_cells", "as_matrices", "balance_replicas", "read_step_ns", "layer_time_ns",
           "unmapped_reason"]

MAC_OPS = ("Conv", "Gemm", "MatMul")
_THROUGH = {"MaxPool", "Flatten", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Relu", "Pad"}
_KEEP_SIGNS = _THROUGH - {"Relu", "Pad"}  # ops that leave bipolar codes in {-1, +1} (Relu, Pad make 0s)


@dataclass(frozen=True, eq=False)
class LayerMapping:
    """One MAC layer on crossbars; `levels[g]` is group g's [rows, phys_cols] matrix of cell levels."""

    name: str
    op: str
    groups: int
    rows: int
    cols: int
    w_bits: int  # bits of a stored level (u, or |wc| for differential pairs)
    a_bits: int
    x_min: int  # input code fed as 0
    encoding: str  # "offset" | "differential"
    scheme: str  # weight scheme: "uniform" | "codebook" | "bipolar"
    cells_per_weight: int
    bits_per_cell: int
    adc_bits: int
    positions: int  # output positions computed per sample (crops skipped)
    total_positions: int
    levels: np.ndarray  # [groups, rows, phys_cols] int64
    w_offset: np.ndarray  # [groups, cols] int64: wc = w_step * u + w_offset (offset; 0 for differential)
    row_tiles: int
    col_tiles: int
    level_max: int = 0  # M: the largest cell level of this layer (the flip reference)
    flipped: np.ndarray | None = None  # [groups, row_tiles, phys_cols] bool; None = no flip encoding
    replicas: int = 1  # copies of the layer's crossbars (weight replication for throughput)
    x_scheme: str = "uniform"  # input scheme: "uniform" (codes x_min + u) | "bipolar" (codes 2u - 1)

    @property
    def x_step(self) -> int:
        """Input code per DAC code step: x = x_min + x_step * u (2 for bipolar inputs, else 1)."""
        return 2 if self.x_scheme == "bipolar" else 1

    @property
    def w_step(self) -> int:
        """Weight per level step of offset encoding: wc = w_step * u + w_offset (2 for bipolar weights)."""
        return 2 if self.scheme == "bipolar" and self.encoding == "offset" else 1

    @property
    def pairs(self) -> int:
        return 2 if self.encoding == "differential" else 1

    @property
    def phys_cols(self) -> int:
        return self.cols * self.pairs * self.cells_per_weight

    @property
    def base_crossbars(self) -> int:
        """Crossbars of one copy of the layer."""
        return self.groups * self.row_tiles * self.col_tiles

    @property
    def crossbars(self) -> int:
        """Crossbars of the layer with all its replicas."""
        return self.base_crossbars * self.replicas

    @property
    def macs(self) -> int:
        return self.positions * self.groups * self.rows * self.cols

    def stored_levels(self, g: int, row_tile: int, rows_per_crossbar: int) -> np.ndarray:
        """The levels programmed into group g's row tile (flipped columns hold M - level): [rows, phys_cols]."""
        r0 = row_tile * rows_per_crossbar
        lv = self.levels[g, r0:r0 + rows_per_crossbar]
        if self.flipped is None:
            return lv
        return np.where(self.flipped[g, row_tile][None, :], self.level_max - lv, lv)

    def flipped_tile(self, g: int, row_tile: int) -> np.ndarray | None:
        """Which physical columns of group g's row tile are stored flipped (None: no flip encoding)."""
        return None if self.flipped is None else self.flipped[g, row_tile]

    def weight_matrix(self) -> np.ndarray:
        """The centred integer weights [groups, rows, cols] the cells encode (for checks)."""
        g, r = self.groups, self.rows
        cells = self.levels.reshape(g, r, self.cols, self.pairs, self.cells_per_weight)
        shifts = np.arange(self.cells_per_weight, dtype=np.int64) * self.bits_per_cell
        u = (cells << shifts).sum(axis=-1)
        if self.encoding == "differential":
            return u[..., 0] - u[..., 1]
        return self.w_step * u[..., 0] + self.w_offset[:, None, :]


@dataclass(frozen=True, eq=False)
class GraphMapping:
    arch: Arch
    layers: dict[str, LayerMapping]

    @property
    def crossbars(self) -> int:
        return sum(m.crossbars for m in self.layers.values())


def input_spec(value: Value) -> Uniform | Bipolar | None:
    """The uniform or bipolar annotation whose codes reach `value` (through code-preserving ops), if any.

    A bipolar annotation counts only through ops that keep its codes in {-1, +1} (not Relu or Pad).
    """
    passed: set[str] = set()
    while value is not None:
        if isinstance(value.quant, Thresholds):
            return _threshold_levels(value.quant)
        if isinstance(value.quant, Bipolar):
            return value.quant if passed <= _KEEP_SIGNS else None
        if value.quant is not None:
            return value.quant if isinstance(value.quant, Uniform) else None
        node = value.producer
        if node is None or node.op not in _THROUGH:
            return None
        passed.add(node.op)
        value = node.inputs[0]
    return None


def _threshold_levels(spec: Thresholds) -> Uniform | None:
    """Multi-threshold outputs are levels 0..2^bits-1 worth out_scale * (level - z) when z = -out_bias /
    out_scale is an integer code (qcc.integer keeps them integer then): unsigned codes for the DACs."""
    ratio = float(spec.out_bias) / float(spec.out_scale)
    if not ratio.is_integer() or not 0 <= -ratio <= 2**spec.bits - 1:
        return None
    return Uniform(bits=spec.bits, signed=False, scale=float(spec.out_scale), zero_point=int(-ratio))


def slice_cells(u: np.ndarray, cells: int, bits_per_cell: int) -> np.ndarray:
    """Non-negative levels [..., n] -> cells [..., n * cells], least significant cell first."""
    shifts = np.arange(cells, dtype=np.int64) * bits_per_cell
    c = (u[..., None] >> shifts) & ((1 << bits_per_cell) - 1)
    return c.reshape(*u.shape[:-1], u.shape[-1] * cells)


def as_matrices(node: Node, wc: np.ndarray) -> np.ndarray | None:
    """Centred weights as [groups, rows, cols] in im2col order, or None when not a plain matrix."""
    if node.op == "Conv":
        if wc.ndim != 4:
            return None  # 1-D / 3-D convolutions stay digital
        groups = int(node.attrs.get("group", 1))
        cout = wc.shape[0]
        per = wc.reshape(groups, cout // groups, -1)  # [g, cout_g, cin_g*kh*kw]
        return per.transpose(0, 2, 1)
    if node.op == "Gemm":
        a = node.attrs
        if a["alpha"] != 1.0 or a["beta"] != 1.0 or a["transA"] or wc.ndim != 2:
            return None
        return (wc.T if a["transB"] else wc)[None]
    return wc[None] if wc.ndim == 2 else None


def _positions(node: Node) -> tuple[int, int]:
    """(computed, total) output positions per sample; a cropped region is not computed."""
    out = node.outputs[0]
    shape = out.type.shape
    if node.op == "Conv":
        h, w = (shape[2], shape[3]) if len(shape) == 4 else (int(np.prod(shape[2:])), 1)
        total = int(h) * int(w)
        region = out.region
        if region is None or region.empty or len(shape) != 4:
            return total, total
        inner = max(int(h) - region.top - region.bottom, 0) * max(int(w) - region.left - region.right, 0)
        return inner, total
    if node.op == "Gemm":
        return 1, 1
    total = int(np.prod([int(d) for d in shape[1:-1]])) if len(shape) > 2 else 1
    return total, total


def _mappable(node: Node) -> tuple[Uniform | Bipolar, Value] | None:
    if node.op not in MAC_OPS or len(node.inputs) < 2:
        return None
    x, w = node.inputs[0], node.inputs[1]
    if w is None or not w.is_constant or not isinstance(w.quant, Uniform | Codebook | Bipolar):
        return None
    spec = input_spec(x)
    if spec is None or spec.axis is not None and spec.channels and spec.channels > 1:
        return None
    if any(isinstance(d, str) for d in node.outputs[0].type.shape[1:]):
        return None
    return spec, w


def unmapped_reason(node: Node) -> str:
    """Why a MAC node does not map onto crossbars (for the error message); "" when it does."""
    if node.op not in MAC_OPS:
        return f"{node.op} is not a MAC op"
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if w is None or not w.is_constant:
        return "its weight is not a constant"
    if not isinstance(w.quant, Uniform | Codebook | Bipolar):
        return "its weight is not quantized (uniform, codebook or bipolar; run quantize)"
    spec = input_spec(node.inputs[0])
    if spec is None and _bipolar_through_zeros(node.inputs[0]):
        return ("its bipolar input passes a Relu or Pad, which makes codes 0 that a 1-bit DAC cannot feed "
                "(annotate the value after it instead)")
    if spec is None or spec.axis is not None and spec.channels and spec.channels > 1:
        return "its input is not a per-tensor uniform or bipolar activation (run quantize)"
    if any(isinstance(d, str) for d in node.outputs[0].type.shape[1:]):
        return "its output shape is not static"
    if node.op == "Conv" and w.data.ndim != 4:
        return f"only 2-D convolutions map onto crossbars (this one is {w.data.ndim - 2}-D)"
    if node.op == "Gemm" and (node.attrs["alpha"] != 1.0 or node.attrs["beta"] != 1.0 or node.attrs["transA"]):
        return "Gemm with alpha or beta other than 1 or transA = 1 is not a plain matrix"
    if node.op == "MatMul" and w.data.ndim != 2:
        return "MatMul with a weight of more than 2 dimensions is not a plain matrix"
    return "its weight zero point varies along the reduction axis"


def _bipolar_through_zeros(value: Value | None) -> bool:
    """Whether a bipolar annotation reaches `value` only through an op that makes 0 codes (Relu, Pad)."""
    while value is not None and value.quant is None:
        node = value.producer
        if node is None or node.op not in _THROUGH:
            return False
        value = node.inputs[0]
    return value is not None and isinstance(value.quant, Bipolar)


def map_layer(node: Node, arch: Arch, encoding: str | None = None) -> LayerMapping | None:
    """The crossbar mapping of one MAC node, or None when it is not a quantized MAC layer."""
    found = _mappable(node)
    if found is None:
        return None
    xspec, wval = found
    encoding = encoding or arch.signed_encoding
    w = constant_value(wval)
    wc = w.centred()
    wm = as_matrices(node, wc)
    if wm is None:
        return None
    groups, rows, cols = wm.shape
    w_step = 1
    if isinstance(wval.quant, Codebook):
        values = [c for t in wval.quant.tables() for c in t]
        lo, hi = min(values), max(values)
        w_off = np.full((groups, cols), lo, np.int64)
    elif isinstance(wval.quant, Bipolar):
        lo, hi, w_step = -1, 1, 2  # w = 2b - 1
        w_off = np.full((groups, cols), lo, np.int64)
    else:
        zp = np.broadcast_to(w.zero_point, w.q.shape).astype(np.int64)
        zpm = as_matrices(node, zp)
        if zpm is None or np.any(zpm != zpm[:, :1, :]):
            return None  # zero point varies along the reduction axis: no integer form
        w_off = (wval.quant.qmin - zpm[:, 0, :]).astype(np.int64)
        lo, hi = wval.quant.qmin - int(zp.max()), wval.quant.qmax - int(zp.min())
    if encoding == "differential":
        w_bits = max(math.ceil(math.log2(max(abs(lo), abs(hi)) + 1)), 1)
        u = np.stack([np.maximum(wm, 0), np.maximum(-wm, 0)], axis=-1)  # g, r, c, 2
        w_off = np.zeros((groups, cols), np.int64)
    else:
        w_bits = max(math.ceil(math.log2((hi - lo) // w_step + 1)), 1)
        u = ((wm - w_off[:, None, :]) // w_step)[..., None]
    cells = math.ceil(w_bits / arch.bits_per_cell)
    levels = slice_cells(u.reshape(groups, rows, -1), cells, arch.bits_per_cell)
    positions, total = _positions(node)
    phys = cols * u.shape[-1] * cells
    levels = levels.astype(np.int64)
    level_bits = min(arch.bits_per_cell, w_bits)
    level_max = (1 << level_bits) - 1
    x_scheme = "bipolar" if isinstance(xspec, Bipolar) else "uniform"
    x_min = -1 if x_scheme == "bipolar" else xspec.qmin  # bipolar: x = 2a - 1, a the 1-bit DAC code
    adc = layer_adc_bits(min(rows, arch.rows), min(arch.dac_bits, xspec.bits), level_bits, arch.flip_encoding)
    if not arch.lossless:
        adc = min(adc, arch.adc_bits)
    flipped = _flips(levels, arch.rows, level_max) if arch.flip_encoding else None
    return LayerMapping(
        name=node.name, op=node.op, groups=groups, rows=rows, cols=cols, w_bits=w_bits, a_bits=xspec.bits,
        x_min=x_min, encoding=encoding, scheme=wval.quant.scheme, cells_per_weight=cells,
        bits_per_cell=arch.bits_per_cell, adc_bits=adc, positions=positions, total_positions=total,
        levels=levels, w_offset=w_off, row_tiles=math.ceil(rows / arch.rows),
        col_tiles=math.ceil(phys / arch.cols), level_max=level_max, flipped=flipped, x_scheme=x_scheme)


def _flips(levels: np.ndarray, xbar_rows: int, level_max: int) -> np.ndarray:
    """ISAAC's flip rule per crossbar column: flip when the levels sum to more than rows * M / 2."""
    groups, rows, phys = levels.shape
    tiles = math.ceil(rows / xbar_rows)
    padded = np.zeros((groups, tiles * xbar_rows, phys), np.int64)
    padded[:, :rows] = levels
    sums = padded.reshape(groups, tiles, xbar_rows, phys).sum(axis=2)
    tile_rows = np.minimum(rows - np.arange(tiles) * xbar_rows, xbar_rows)
    return 2 * sums > tile_rows[None, :, None] * level_max


def read_step_ns(m: LayerMapping, arch: Arch) -> float:
    """One read step of the layer: the crossbar read, or its columns' ADC conversions if slower."""
    return max(arch.read_ns, min(m.phys_cols, arch.cols) / arch.adc_rate_gsps)


def layer_time_ns(m: LayerMapping, arch: Arch, replicas: int | None = None) -> float:
    """Time per sample of a layer held `replicas` times (default: its own): ceil(P / r) * slices steps."""
    r = m.replicas if replicas is None else replicas
    return -(-m.positions // r) * -(-m.a_bits // arch.dac_bits) * read_step_ns(m, arch)


def balance_replicas(layers: dict[str, LayerMapping], arch: Arch) -> dict[str, int]:
    """ISAAC-style replicas per layer: speed up the slowest layer while the crossbars fit the limit."""
    reps = {name: 1 for name in layers}
    spare = arch.replication_limit - sum(m.base_crossbars for m in layers.values())
    while layers:
        slow = max(layers.values(), key=lambda m: (layer_time_ns(m, arch, reps[m.name]), m.name))
        r = reps[slow.name]
        per = -(-slow.positions // r)
        if per <= 1:
            break
        nxt = -(-slow.positions // (per - 1))  # fewest replicas that save one step
        extra = (nxt - r) * slow.base_crossbars
        if extra > spare:
            break
        spare -= extra
        reps[slow.name] = nxt
    return reps


def map_graph(graph: Graph, arch: Arch, encoding: str | None = None, *, check: bool = True) -> GraphMapping:
    """Map every quantized MAC layer (replicated when the arch asks for it).

    With `check`, a clear error when a layer or the model does not fit on the chip; without it (cost
    estimates of configurations that may not fit) an oversized model is mapped without replicas.
    """
    layers = {}
    for node in graph.nodes:
        m = map_layer(node, arch, encoding)
        if m is not None:
            layers[node.name] = m
    base = sum(m.base_crossbars for m in layers.values())
    if check:
        _check_fits(layers, base, arch)
    if arch.replication == "balance" and base <= arch.replication_limit:
        reps = balance_replicas(layers, arch)
        layers = {n: dataclasses.replace(m, replicas=reps[n]) for n, m in layers.items()}
    return GraphMapping(arch, layers)


def _check_fits(layers: dict[str, LayerMapping], base: int, arch: Arch) -> None:
    chip = f"the chip has {arch.crossbars} ({arch.tiles} tiles of {arch.crossbars_per_tile})"
    for m in layers.values():
        if m.base_crossbars > arch.crossbars:
            raise QccError(f"layer '{m.name}' needs {m.base_crossbars} crossbars, wider than the whole chip: "
                           f"{chip} (use fewer weight bits or a larger architecture)")
    if base > arch.crossbars:
        big = max(layers.values(), key=lambda m: m.base_crossbars)
        raise QccError(f"the model needs {base} crossbars but {chip}; largest layer '{big.name}' needs "
                       f"{big.base_crossbars} (use fewer weight bits or a larger architecture)")


def _crossbars(m: LayerMapping, arch: Arch, first_id: int) -> list[dict]:
    out = []
    per_weight = m.pairs * m.cells_per_weight
    for g in range(m.groups):
        for rt in range(m.row_tiles):
            r0, r1 = rt * arch.rows, min((rt + 1) * arch.rows, m.rows)
            for ct in range(m.col_tiles):
                c0, c1 = ct * arch.cols, min((ct + 1) * arch.cols, m.phys_cols)
                k = len(out)
                entry = {"group": g, "rows": [r0, r1], "columns": [c0, c1],
                         "weight_columns": [c0 // per_weight, (c1 - 1) // per_weight + 1],
                         "ids": [first_id + rep * m.base_crossbars + k for rep in range(m.replicas)],
                         "levels": m.stored_levels(g, rt, arch.rows)[:, c0:c1].tolist()}
                if m.flipped is not None:
                    entry["flipped"] = m.flipped[g, rt, c0:c1].astype(int).tolist()
                out.append(entry)
    return out


def _layer_json(m: LayerMapping, arch: Arch, first_id: int) -> dict:
    return {"name": m.name, "op": m.op, "groups": m.groups, "rows": m.rows, "cols": m.cols,
            "w_bits": m.w_bits, "a_bits": m.a_bits, "x_min": m.x_min, "x_scheme": m.x_scheme,
            "x_step": m.x_step, "w_step": m.w_step, "encoding": m.encoding,
            "scheme": m.scheme, "cells_per_weight": m.cells_per_weight, "adc_bits": m.adc_bits,
            "positions": m.positions, "total_positions": m.total_positions, "replicas": m.replicas,
            "column_order": "(weight column, pair, cell) with the least significant cell first",
            "level_max": m.level_max,
            "levels_note": "programmed levels: a column with flipped = 1 holds level_max - level",
            "codes_note": "input x = x_min + x_step * dac_code; weight wc = w_step * level + w_offset "
                          "(differential: level+ - level-)",
            "w_offset": m.w_offset.tolist(), "crossbars": _crossbars(m, arch, first_id)}


def mapping_to_json(mapping: GraphMapping) -> str:
    arch = mapping.arch
    layers, first = [], 0
    for m in mapping.layers.values():
        layers.append(_layer_json(m, arch, first))
        first += m.crossbars
    doc = {"format": "qcc.cim.mapping/1", "crossbar": [arch.rows, arch.cols], "acc_bits": arch.acc_bits,
           "bits_per_cell": arch.bits_per_cell, "dac_bits": arch.dac_bits,
           "crossbars": mapping.crossbars, "crossbars_per_ima": arch.crossbars_per_ima,
           "imas_per_tile": arch.imas_per_tile, "replication": arch.replication, "layers": layers}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
