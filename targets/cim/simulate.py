"""Functional crossbar simulator: the mapped model executed crossbar by crossbar, in numpy.

Per mapped MAC layer (targets/cim/mapping.py): input codes become u_x = q - x_min (im2col windows
for a Conv, padding fed as the zero point so it contributes exactly zero), are cut into
ceil(a_bits / dac_bits) slices of dac_bits bits (bit-serial inputs), and every slice is applied to
every crossbar (rows tiled by the crossbar height). Each crossbar column gives an analog sum of
slice x cell level; the ADC converts it (lossless: exact; a lower resolution clips at
2^(adc_bits + flip) - 1); shift-and-add weights the partial sums by 2^(slice * dac_bits) and
2^(cell * bits_per_cell) and subtracts the negative column of a differential pair. The digital
correction adds w_offset * sum(u_x) (offset encoding) and (x_min - zx) * sum(wc) (input offset),
which gives the exact accumulator sum (qx - zx)(qw - zw); the bias is added at the accumulator
scale as in qcc.integer. Every other op, every annotation (requantization via
qcc.integer.quantize_result) and crops are qcc.integer's own rules (this is a subclass of its
semantics), so with lossless ADCs the result equals run(g, x, mode="int") bit for bit.

The analog sums are float64 matrix products (exact: every sum is an integer far below 2^53), done
in chunks of positions so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qcc.crop import evaluate_interior
from qcc.errors import QccError
from qcc.integer import IntegerSemantics, QTensor, evaluate_node, to_float
from qcc.interp import run
from qcc.ir.graph import Graph, Node
from qcc.numerics import bias_to_accumulator, channel_shape
from qcc.targets.cim.arch import Arch, lossless_adc_bits
from qcc.targets.cim.mapping import GraphMapping, LayerMapping, as_matrices

__all__ = ["CrossbarSemantics", "simulate", "crossbar_matmul"]

_CHUNK = 1 << 22  # analog sums (float64) per chunk


def crossbar_matmul(ux: np.ndarray, m: LayerMapping, g: int, arch: Arch) -> np.ndarray:
    """sum_r ux[p, r] * u[r, col] (stored levels, pairs subtracted) via bit slices, crossbars and ADCs.

    ux: [P, rows] non-negative input codes; returns [P, cols] int64.
    """
    p, rows = ux.shape
    r = arch.rows
    tiles = m.row_tiles
    slices = -(-m.a_bits // arch.dac_bits)
    levels = np.zeros((tiles * r, m.phys_cols), np.float64)
    levels[:rows] = m.levels[g]
    levels = levels.reshape(tiles, r, m.phys_cols)
    padded = np.zeros((p, tiles * r), np.int64)
    padded[:, :rows] = ux
    lossless = m.adc_bits >= lossless_adc_bits(min(rows, r), arch.dac_bits, arch.bits_per_cell,
                                               arch.flip_encoding)
    adc_max = float(2 ** (m.adc_bits + int(arch.flip_encoding)) - 1)
    dac_mask = (1 << arch.dac_bits) - 1
    out = np.zeros((p, m.phys_cols), np.int64)
    step = max(1, _CHUNK // max(1, tiles * m.phys_cols))
    for t in range(slices):
        plane = ((padded >> (t * arch.dac_bits)) & dac_mask).astype(np.float64).reshape(p, tiles, r)
        for a in range(0, p, step):
            part = plane[a:a + step].transpose(1, 0, 2)  # tiles, chunk, r
            sums = np.matmul(part, levels)  # per crossbar column analog sums: tiles, chunk, phys
            if not lossless:
                sums = np.minimum(sums, adc_max)
            out[a:a + step] += np.rint(sums).astype(np.int64).sum(axis=0) << (t * arch.dac_bits)
    cells = out.reshape(p, m.cols, m.pairs, m.cells_per_weight)
    shifts = np.arange(m.cells_per_weight, dtype=np.int64) * arch.bits_per_cell
    u = (cells << shifts).sum(axis=-1)
    return u[..., 0] - u[..., 1] if m.pairs == 2 else u[..., 0]


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


def _mac(node: Node, args: list, m: LayerMapping, arch: Arch) -> list | None:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    if not (isinstance(x, QTensor) and isinstance(w, QTensor) and x.per_tensor):
        return None
    w_scale = _per_column(np.asarray(w.scale, np.float64), node, w.q.shape)
    if w_scale is None:
        return None
    zx = int(x.zero_point.reshape(()))
    ux = x.q - m.x_min
    if ux.size and (ux.min() < 0 or ux.max() >= 2**m.a_bits):
        raise QccError(f"CIM layer '{node.name}': input codes outside the mapped {m.a_bits}-bit range")
    wc = m.weight_matrix()  # groups, rows, cols
    if node.op == "Conv":
        kernel = tuple(w.q.shape[2:])
        cols, oh, ow = _im2col(ux, zx - m.x_min, node.attrs, kernel, m.groups)
        lead = (x.q.shape[0], oh, ow)
    else:
        lead = ux.shape[:-1]
        cols = ux.reshape(-1, 1, ux.shape[-1])
    parts = []
    for g in range(m.groups):
        xg = cols[:, g, :]
        acc = crossbar_matmul(xg, m, g, arch)
        acc += xg.sum(axis=1, keepdims=True) * m.w_offset[g][None, :]  # offset encoding correction
        acc += (m.x_min - zx) * wc[g].sum(axis=0)[None, :]  # input offset correction
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
        return result if result is not None else evaluate_node(node, args)

    def evaluate(self, node: Node, args: list) -> list:
        if not self.skip_cropped:
            return self._evaluate(node, args)
        return evaluate_interior(node, args, self._evaluate)


def simulate(graph: Graph, mapping: GraphMapping, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `graph` with its mapped layers on crossbars; outputs dequantized like run(mode="int")."""
    return run(graph, inputs, mode=CrossbarSemantics(mapping))
