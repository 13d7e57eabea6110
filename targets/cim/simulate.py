"""Functional crossbar simulator: the mapped model executed crossbar by crossbar, in numpy.

Per mapped MAC layer (targets/cim/mapping.py): input codes q = x_min + x_step * u_x become DAC
codes u_x (im2col windows for a Conv; uniform inputs: padding fed as the zero point, so it
contributes exactly zero), are cut into ceil(a_bits / dac_bits) slices of dac_bits bits
(bit-serial inputs), and every slice is applied to every crossbar (rows tiled by the crossbar
height). Each crossbar column gives an analog sum of slice x programmed level; the ADC converts it,
clipping at 2^adc_bits - 1 (never reached when the layer's ADC is lossless); a flipped column
(ISAAC's flip encoding, see mapping.py) is taken back digitally as M * sum(slice) - read;
shift-and-add weights the partial sums by 2^(slice * dac_bits) and 2^(cell * bits_per_cell) and
subtracts the negative column of a differential pair. The digital corrections then give the exact
accumulator sum_r (qx - zx)(qw - zw) = x_step * (w_step * S + w_offset * sum(u_x)) + (x_min - zx) *
sum_r wc with S the crossbar sum (offset encoding; differential pairs: S is sum u_x * wc already).
For bipolar inputs (x_step = 2, x_min = -1) a padded or cropped row, whose real value is 0 and
which no 1-bit code can feed, is fed u_x = 0 and left out of that last weight sum (a per-position
table on the chip). The bias is added at the accumulator scale as in qcc.integer, and the sum is
wrapped to the arch's acc_bits-bit two's complement output register (`wrap`: a no-op whenever
qcc.ranges proves the layer fits, which `qcc compile` checks unless --allow-overflow); the integer
results of the digital unit's accumulating ops (Add, Sub, Mul, Global/AveragePool sums, the set
qcc.ranges checks) wrap to the same width. Every other
op, every annotation (requantization via qcc.integer.quantize_result) and crops are qcc.integer's
own rules (this is a subclass of its semantics), so with lossless ADCs and an accumulator that
fits the result equals run(g, x, mode="int") bit for bit.

Non-idealities (arch `[nonideal]`, arch.NonIdeal): each replica's cells get their own stuck-at
faults and Gaussian conductance variation, drawn once per cell from a generator seeded by (seed,
layer name, replica, group, row tile), so results are reproducible; the ADC then rounds and clips
the non-integer analog sums. `measure_top1` gives the resulting accuracy on labelled data. With
them off the simulator is bit-exact as above.

The analog sums are float32 matrix products when every sum stays below 2^24 (float64 otherwise),
so they are exact integers; all input slices of a chunk of positions go through one product.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from qcc.crop import evaluate_interior
from qcc.errors import QccError
from qcc.integer import IntegerSemantics, QTensor, evaluate_node, exact_contraction, to_float
from qcc.interp import run
from qcc.ir.graph import Graph, Node
from qcc.numerics import bias_to_accumulator, channel_shape
from qcc.ranges import ACCUMULATING_OPS
from qcc.targets.cim.arch import Arch
from qcc.targets.cim.mapping import GraphMapping, LayerMapping, as_matrices

__all__ = ["CrossbarSemantics", "simulate", "crossbar_matmul", "programmed_levels", "measure_top1", "wrap"]

_CHUNK = 1 << 18  # input slice elements per chunk (cache sized)


def crossbar_matmul(ux: np.ndarray, m: LayerMapping, g: int, arch: Arch, *,
                    positions_per_sample: int = 1) -> np.ndarray:
    """sum_r ux[p, r] * u[r, col] (stored levels, pairs subtracted) via bit slices, crossbars and ADCs.

    ux: [P, rows] non-negative input codes; returns [P, cols] int64. With non-idealities every replica
    of the layer has its own cells, and output position i of a sample (row p: i = p %
    positions_per_sample) runs on replica i % replicas.
    """
    p, rows = ux.shape
    slices = -(-m.a_bits // arch.dac_bits)
    reps = m.replicas if arch.nonideal.enabled else 1
    replica_of = np.arange(p) % max(positions_per_sample, 1) % reps
    out = np.zeros((p, m.phys_cols), np.int64)
    for rep in range(reps):
        idx = np.flatnonzero(replica_of == rep) if reps > 1 else slice(None)
        for t in range(m.row_tiles):
            r0, r1 = t * arch.rows, min((t + 1) * arch.rows, rows)
            out[idx] += _crossbar_tile(ux[idx, r0:r1], m, programmed_levels(m, g, t, arch, rep), m.flipped_tile(g, t),
                                       arch, slices)
    cells = out.reshape(p, m.cols, m.pairs, m.cells_per_weight)
    shifts = np.arange(m.cells_per_weight, dtype=np.int64) * arch.bits_per_cell
    u = (cells << shifts).sum(axis=-1)
    return u[..., 0] - u[..., 1] if m.pairs == 2 else u[..., 0]


def programmed_levels(m: LayerMapping, g: int, t: int, arch: Arch, replica: int = 0) -> np.ndarray:
    """The conductances (in level units) of group g's row tile t in one replica: [rows, phys_cols].

    Ideal: the stored integer levels. With arch.nonideal: stuck cells first (stuck_at_zero -> 0,
    stuck_at_one -> 2^bits_per_cell - 1), then each conductance times (1 + sigma * N(0, 1)), clipped
    at 0; drawn from a generator seeded by (seed, crc32(layer name), replica, group, tile).
    """
    stored = m.stored_levels(g, t, arch.rows)
    ni = arch.nonideal
    if not ni.enabled:
        return stored
    rng = np.random.default_rng([ni.seed, zlib.crc32(m.name.encode()), replica, g, t])
    levels = stored.astype(np.float64)
    u = rng.random(levels.shape)
    levels[u < ni.stuck_at_zero] = 0.0
    levels[(u >= ni.stuck_at_zero) & (u < ni.stuck_at_zero + ni.stuck_at_one)] = (1 << arch.bits_per_cell) - 1
    if ni.conductance_sigma:
        levels *= 1.0 + ni.conductance_sigma * rng.standard_normal(levels.shape)
        np.maximum(levels, 0.0, out=levels)
    return levels


def _crossbar_tile(ux: np.ndarray, m: LayerMapping, levels: np.ndarray, flip: np.ndarray | None, arch: Arch,
                   slices: int) -> np.ndarray:
    """One row tile's crossbars over all input slices: analog sums, ADC, flip correction, shift-and-add."""
    p, rows = ux.shape
    peak = rows * ((1 << arch.dac_bits) - 1) * max(float(levels.max(initial=0)), 1.0)
    dtype = np.float32 if peak < 2**24 else np.float64  # integer sums below 2^mantissa are exact
    levels = levels.astype(dtype)
    if flip is not None and not flip.any():
        flip = None
    adc_max = float((1 << m.adc_bits) - 1)
    dac_mask = (1 << arch.dac_bits) - 1
    shifts = (np.arange(slices, dtype=np.int64) * arch.dac_bits)[:, None, None]
    weights = 2.0 ** (np.arange(slices) * arch.dac_bits)  # shift-and-add (exact in float64)
    out = np.zeros((p, m.phys_cols), np.int64)
    step = max(1, _CHUNK // (slices * max(rows, m.phys_cols)))
    for a in range(0, p, step):
        x = ((ux[None, a:a + step] >> shifts) & dac_mask).astype(dtype)  # slices, chunk, rows
        sums = (x.reshape(-1, rows) @ levels).reshape(slices, -1, m.phys_cols)  # analog column sums
        read = np.minimum(np.rint(sums, out=sums), adc_max, out=sums).astype(np.float64)  # the ADC
        if flip is not None:
            total = x.sum(axis=2, keepdims=True, dtype=np.float64) * m.level_max
            read = np.where(flip, total - read, read)
        out[a:a + step] = np.rint(np.tensordot(weights, read, axes=(0, 0))).astype(np.int64)
    return out


def wrap(acc: np.ndarray, bits: int) -> np.ndarray:
    """`acc` in a `bits`-bit two's complement register: (acc + 2^(bits-1)) mod 2^bits - 2^(bits-1).

    Where the hardware wraps: the tile's shift-and-add unit adds every ADC read (shifted by its
    input slice and cell position), then the other row tiles' partial sums, the digital offset
    corrections and the bias into one acc_bits output register, each addition modulo 2^acc_bits.
    Shifts and additions commute with reduction modulo 2^acc_bits, so wrapping the exact int64 sum
    once, after the bias, gives the register's bits after every one of those steps. The ADC reads
    themselves are analog and never wrap (the ADC clips, see _crossbar_tile).
    """
    if bits >= 64:
        return acc
    half = np.int64(1) << np.int64(bits - 1)
    return ((acc + half) & ((half << np.int64(1)) - 1)) - half


def _im2col(ux: np.ndarray, pad_value: int, attrs: dict, kernel: tuple[int, int], groups: int):
    """[N, C, H, W] -> ([N * OH * OW, groups, C/groups * kh * kw], OH, OW), padding = pad_value."""
    n, c, _, _ = ux.shape
    kh, kw = kernel
    sh, sw = attrs.get("strides") or [1, 1]
    dh, dw = attrs.get("dilations") or [1, 1]
    pt, pl, pb, pr = (attrs.get("pads") or [0, 0, 0, 0])
    xp = np.pad(ux, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    oh = (xp.shape[2] - span_h) // sh + 1
    ow = (xp.shape[3] - span_w) // sw + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (span_h, span_w), axis=(2, 3))
    win = win[:, :, : (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw, ::dh, ::dw]  # N C OH OW kh kw
    win = win.reshape(n, groups, c // groups, oh, ow, kh, kw).transpose(0, 3, 4, 1, 2, 5, 6)
    return win.reshape(n * oh * ow, groups, -1), oh, ow


def _per_column(a: np.ndarray, node: Node, w_shape: tuple[int, ...]) -> np.ndarray | None:
    """A weight parameter (scale) as one value per output column, or None if it varies along rows."""
    full = as_matrices(node, np.broadcast_to(a, w_shape))
    if full is None or np.any(full != full[:, :1, :]):
        return None
    return full[:, 0, :].reshape(-1)


def _dac_codes(q: np.ndarray, m: LayerMapping, zx: int, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(u_x, valid): DAC codes with q = x_min + x_step * u_x, and for bipolar inputs which elements hold
    a real +-1 (a code 0, a crop worth exactly zero, is fed as u_x = 0 and left out of the correction)."""
    valid = None
    if m.x_scheme == "bipolar":
        valid = (q != zx).astype(np.int64)
        q = np.where(valid == 1, q, m.x_min)
    u, rem = np.divmod(q - m.x_min, m.x_step)
    if u.size and (rem.any() or u.min() < 0 or u.max() >= 2**m.a_bits):
        raise QccError(f"CIM layer '{name}': input codes outside the mapped {m.a_bits}-bit range")
    return u, valid


def _weight_sums(wc: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The input offset correction's weight sums: sum of wc over every row, or per position over the
    rows `mask` marks ([P, rows] 0/1)."""
    if mask is None:
        return wc.sum(axis=0)[None, :]
    return exact_contraction(np.matmul, mask.astype(np.int64), wc.astype(np.int64), (-2,))


def _mac(node: Node, args: list, m: LayerMapping, arch: Arch) -> list | None:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    if not (isinstance(x, QTensor) and isinstance(w, QTensor) and x.per_tensor):
        return None
    w_scale = _per_column(np.asarray(w.scale, np.float64), node, w.q.shape)
    if w_scale is None:
        return None
    zx = int(x.zero_point.reshape(()))
    ux, valid = _dac_codes(x.q, m, zx, node.name)
    wc = m.weight_matrix()  # groups, rows, cols
    mask = None  # [P, groups, rows]: rows holding a real bipolar input (None: every row counts)
    if node.op == "Conv":
        kernel = tuple(w.q.shape[2:])
        if valid is None:  # padding fed as the code worth exactly zero
            cols, oh, ow = _im2col(ux, zx - m.x_min, node.attrs, kernel, m.groups)
        else:  # bipolar: padding fed as 0 and masked out of the correction
            cols, oh, ow = _im2col(ux, 0, node.attrs, kernel, m.groups)
            mask, _, _ = _im2col(valid, 0, node.attrs, kernel, m.groups)
        lead = (x.q.shape[0], oh, ow)
        per_sample = oh * ow
    else:
        lead = ux.shape[:-1]
        cols = ux.reshape(-1, 1, ux.shape[-1])
        mask = None if valid is None else valid.reshape(-1, 1, ux.shape[-1])
        per_sample = int(np.prod(lead[1:], dtype=np.int64)) if len(lead) > 1 else 1
    parts = []
    for g in range(m.groups):
        xg = cols[:, g, :]
        acc = m.w_step * crossbar_matmul(xg, m, g, arch, positions_per_sample=per_sample)
        acc += xg.sum(axis=1, keepdims=True) * m.w_offset[g][None, :]  # offset encoding: now sum(u_x * wc)
        acc *= m.x_step
        acc += (m.x_min - zx) * _weight_sums(wc[g], None if mask is None else mask[:, g, :])  # input offset
        parts.append(acc)
    acc = np.concatenate(parts, axis=1).reshape(*lead, -1)
    out_axis = acc.ndim - 1
    if node.op == "Conv":
        acc = acc.transpose(0, 3, 1, 2)
        out_axis = 1
    channels = acc.shape[out_axis]
    acc_scale = float(x.scale.reshape(())) * w_scale
    if bias is not None:
        b = to_float(bias, np.float64).reshape(-1)
        if b.size not in (1, channels):
            return None
        b = np.broadcast_to(b, (channels,))
        acc = acc + bias_to_accumulator(b, acc_scale).reshape(channel_shape(acc.ndim, out_axis, channels))
    acc = wrap(acc, arch.acc_bits)
    scale = acc_scale.reshape(channel_shape(acc.ndim, out_axis, channels)) if np.ptp(acc_scale) else \
        np.asarray(acc_scale[0])
    return [QTensor(acc, scale, np.zeros((), np.int64))]


class CrossbarSemantics(IntegerSemantics):
    """qcc.integer's semantics with the mapped MAC layers executed on simulated crossbars."""

    name = "cim"

    def __init__(self, mapping: GraphMapping):
        self.mapping = mapping

    def _evaluate(self, node: Node, args: list) -> list:
        m = self.mapping.layers.get(node.name)
        result = _mac(node, args, m, self.mapping.arch) if m is not None else None
        if result is not None:
            return result
        result = evaluate_node(node, args)
        if node.op in ACCUMULATING_OPS and result and isinstance(result[0], QTensor):
            # the tile's digital unit (residual Add / Sub, Mul, average-pool sums, an unmapped MAC) adds
            # in the same acc_bits registers, the widths qcc.ranges proves for every accumulating op
            first = result[0]
            result = [QTensor(wrap(first.q, self.mapping.arch.acc_bits), first.scale, first.zero_point), *result[1:]]
        return result

    def evaluate(self, node: Node, args: list) -> list:
        if not self.skip_cropped:
            return self._evaluate(node, args)
        return evaluate_interior(node, args, self._evaluate)


def simulate(graph: Graph, mapping: GraphMapping, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `graph` with its mapped layers on crossbars; outputs dequantized like run(mode="int").

    The crossbar products are many small matrix products: one BLAS thread runs them fastest (and
    does not fight other processes for the cores).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return run(graph, inputs, mode=CrossbarSemantics(mapping))


def measure_top1(graph: Graph, mapping: GraphMapping, x: np.ndarray, y: np.ndarray, *, batch: int = 128,
                 input_name: str | None = None) -> float:
    """Top-1 accuracy of the simulated crossbars (with the arch's non-idealities) on labelled data.

    x: inputs [N, ...] for the graph's single input (or `input_name`); y: integer labels [N]. The
    graph must have one output of logits [N, classes].
    """
    if input_name is None:
        if len(graph.inputs) != 1:
            raise QccError(f"measure_top1: the graph has {len(graph.inputs)} inputs; name the one x feeds")
        input_name = graph.inputs[0].name
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y) or not len(y):
        raise QccError(f"measure_top1: {len(x)} inputs but {len(y)} labels")
    hits = 0
    for a in range(0, len(y), batch):
        out = simulate(graph, mapping, {input_name: x[a:a + batch]})
        if len(out) != 1:
            raise QccError(f"measure_top1: the graph has {len(out)} outputs; top-1 needs one output of logits")
        (logits,) = out.values()
        hits += int(np.sum(np.argmax(logits.reshape(len(logits), -1), axis=1) == y[a:a + batch]))
    return hits / len(y)
