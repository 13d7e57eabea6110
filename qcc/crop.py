"""Crop regions: the index arithmetic of zero-bit edge regions on NCHW feature maps (seed 004, AQuA).

A `Region(top, bottom, left, right)` on a value says those edge rows / columns are 0-bit: exactly
the real value zero (DESIGN.md §3). This module holds the arithmetic every user of regions shares:
which input positions an interior output reads, how to evaluate a node on its interior only, which
crops follow from others, what a crop saves, and the image statistics of the per-input policy.

Receptive fields. Along one spatial axis a window op (Conv, MaxPool, AveragePool) with kernel k,
dilation d (span = d (k - 1) + 1), stride s and begin padding p makes output o from the padded
input positions [o s - p, o s - p + span). The interior outputs [a, b) of a cropped output read
[a s - p, (b - 1) s - p + span); slicing the input to that range clipped to [0, H) and padding the
clipped part gives the same windows over the same taps and the same pad values, so the interior is
bit-identical to the interior of the full result. (For ceil_mode pools the padding beyond the
explicit end pad stays the ceil extension, so AveragePool's count_include_pad is unchanged.)
Pointwise ops (Relu, BatchNormalization, Add, Concat on channels, ...) read the same positions.

- `evaluate_interior(node, args, evaluate)`: the node's result computed on the interior only and
  placed into a tensor of the real value zero (zeros, or zero-point codes for integer tensors); the
  semantics then quantize and crop the value as usual. Ops without a rule here (Pad, Softmax, ...)
  are computed in full and zeroed, which gives the same numbers. So is a Conv on float operands
  (fake-quant mode, float islands of the integer semantics): numpy's float einsum sums in an order
  that depends on the array shapes, so a smaller float convolution can differ in the last bit, while
  the integer convolution (int64) is exact. Pools and pointwise ops are exact in float too.
- Backward rule (`needed_margins`): the input rows / columns that only feed cropped outputs. A
  producer whose every consumer leaves those margins unread may crop them too without changing any
  result (crop-activations{propagate=true}). For a 3x3, stride 1, pad 1 conv the producer's crop is
  one smaller than the consumer's.
- Forward rule (`implied_output_region`): an output whose whole receptive field inside the input
  lies in the cropped region sees only zeros; along an axis the top crop t becomes
  max(0, floor((t + p - span) / s) + 1) rows (t - 1 for a 3x3 / stride 1 / pad 1 conv, t // 2 for a
  2x2 / stride 2 pool): the crop shrinks as the layer goes deeper, as in seed 004. Such outputs are
  exactly zero only for layers that map zero to zero (Relu, pools, a conv without bias, Add of two
  cropped maps; the output's quantizer must keep zero), and only there is the region carried forward
  (crop-activations{forward=true}); a conv with a bias or a BatchNormalization ends it.
- Cost: a node evaluated on its interior skips `macs * cropped_positions / (H * W)` MACs
  (`macs_saved`); a cropped value holds `C * cropped_positions` elements at 0 bits per sample.
- Image statistics (`edge_scores`, `choose_crops`): per image and candidate crop, each cut edge
  strip's statistic (mean gradient magnitude, mean |x|, or the entropy of a 16-bin intensity
  histogram) relative to the centre the crop keeps; a candidate is acceptable when every cut strip
  scores <= threshold, and the most saving acceptable candidate is chosen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qcc.ir.graph import Node, Value
from qcc.ir.quant import Region, Uniform
from qcc.ir.types import TensorType
from qcc.ops import get_op

__all__ = [
    "SIDES",
    "STATISTICS",
    "Interior",
    "interior_slices",
    "cropped_area",
    "interior_window",
    "evaluate_interior",
    "needed_margins",
    "implied_output_region",
    "macs_saved",
    "activations_cropped",
    "edge_scores",
    "choose_crops",
]

SIDES = ("top", "bottom", "left", "right")
STATISTICS = ("gradient", "entropy", "intensity")

_WINDOW_OPS = {"Conv", "MaxPool", "AveragePool"}
_UNARY_OPS = {"Relu", "LeakyRelu", "Sigmoid", "Clip", "Identity", "BatchNormalization", "MultiThreshold"}
_BROADCAST_OPS = {"Add", "Sub", "Mul", "Div"}
# numpy's float einsum sums in an order that depends on the array shapes, so a float convolution of
# the interior can differ from the full one in the last bit: only integer convolutions (exact) skip.
_INTEGER_ONLY = {"Conv"}


def interior_slices(region: Region, height: int, width: int) -> tuple[slice, slice]:
    """The rows and columns a region leaves: [top, H - bottom) x [left, W - right)."""
    return slice(region.top, height - region.bottom), slice(region.left, width - region.right)


def cropped_area(region: Region | None, height: int, width: int) -> int:
    """Positions of an H x W map inside the region's edge strips."""
    if region is None:
        return 0
    kept = max(0, height - region.top - region.bottom) * max(0, width - region.left - region.right)
    return height * width - kept


def _spatial(t: TensorType | None) -> tuple[int, int] | None:
    """(H, W) of a 4-d type with concrete spatial dims, else None."""
    if t is None or t.rank != 4 or not all(isinstance(d, int) for d in t.shape[2:]):
        return None
    return int(t.shape[2]), int(t.shape[3])


def _output_region(node: Node) -> tuple[Region, int, int] | None:
    """The node's non-empty output region and its map size, if it has one and one output."""
    if len(node.outputs) != 1:
        return None
    out = node.outputs[0]
    size = _spatial(out.type)
    if out.region is None or out.region.empty or size is None or not out.region.fits(*size):
        return None
    return out.region, size[0], size[1]


# ------------------------------------------------------------------------------ interior windows

@dataclass(frozen=True)
class Interior:
    """How to compute a node's interior: per input an index (None = whole), and the node attrs."""

    rows: slice
    cols: slice
    index: tuple[tuple[slice, ...] | None, ...]
    attrs: dict


def _window_params(node: Node) -> tuple[list[int], list[int], list[int], list[int]] | None:
    attrs = node.attrs
    k = list(attrs.get("kernel_shape") or [])
    if len(k) != 2:
        return None
    s = list(attrs.get("strides") or [1, 1])
    d = list(attrs.get("dilations") or [1, 1])
    p = list(attrs.get("pads") or [0, 0, 0, 0])
    return k, s, d, p


def _axis_range(start: int, stop: int, kernel: int, stride: int, dilation: int, pad_begin: int) -> tuple[int, int]:
    """Padded-input positions [lo, hi) read by outputs [start, stop) (input coordinates, may be < 0)."""
    span = dilation * (kernel - 1) + 1
    return start * stride - pad_begin, (stop - 1) * stride - pad_begin + span


def _window_interior(node: Node, region: Region, height: int, width: int) -> Interior | None:
    params = _window_params(node)
    in_size = _spatial(node.inputs[0].type if node.inputs else None)
    if params is None or in_size is None:
        return None
    k, s, d, p = params
    rows, cols = interior_slices(region, height, width)
    index, begin, end = [], [], []
    for axis, out in enumerate((rows, cols)):
        lo_v, hi_v = _axis_range(out.start, out.stop, k[axis], s[axis], d[axis], p[axis])
        size = in_size[axis]
        if lo_v > size or hi_v < 0:
            return None  # the interior reads only padding (pads larger than the kernel): compute in full
        lo, hi = max(lo_v, 0), min(hi_v, size)
        index.append(slice(lo, hi))
        begin.append(lo - lo_v)
        end.append(min(hi_v - hi, p[axis + 2]))  # beyond the explicit pad: the ceil_mode extension
    x_index = (slice(None), slice(None), *index)
    rest = (None,) * (len(node.inputs) - 1)
    return Interior(rows, cols, (x_index, *rest), {**node.attrs, "pads": begin + end})


def _pointwise_index(t: TensorType | None, rows: slice, cols: slice, height: int, width: int):
    """Index for a broadcasting operand: slice its dims aligned with H / W when they are full size."""
    if t is None:
        return None
    idx = [slice(None)] * t.rank
    sliced = False
    for out_axis, (sl, full) in ((2, (rows, height)), (3, (cols, width))):
        j = out_axis - (4 - t.rank)
        if j >= 0 and t.shape[j] == full and full > 1:
            idx[j] = sl
            sliced = True
    return tuple(idx) if sliced else None


def _pointwise_interior(node: Node, region: Region, height: int, width: int) -> Interior | None:
    rows, cols = interior_slices(region, height, width)
    types = node.input_types()
    if node.op in _UNARY_OPS:
        if node.op == "MultiThreshold" and node.attrs.get("data_layout", "NCHW") != "NCHW":
            return None
        if _spatial(types[0]) != (height, width):
            return None
        x_index = (slice(None), slice(None), rows, cols)
        return Interior(rows, cols, (x_index, *(None,) * (len(types) - 1)), dict(node.attrs))
    if node.op == "Concat":
        axis = node.attrs.get("axis", 1)
        if axis not in (0, 1, -4, -3) or any(_spatial(t) != (height, width) for t in types):
            return None
    elif any(t is not None and t.rank > 4 for t in types):
        return None
    index = tuple(_pointwise_index(t, rows, cols, height, width) for t in types)
    return Interior(rows, cols, index, dict(node.attrs))


def interior_window(node: Node, region: Region | None = None) -> Interior | None:
    """How to compute only the uncropped interior of `node`'s output (its region, or `region`).

    None when the node has no cropped 4-d output or no interior rule (it is then computed in full).
    """
    if region is None:
        found = _output_region(node)
        if found is None:
            return None
        region, height, width = found
    else:
        size = _spatial(node.outputs[0].type) if len(node.outputs) == 1 else None
        if size is None or region.empty or not region.fits(*size):
            return None
        height, width = size
    if node.op in _WINDOW_OPS:
        return _window_interior(node, region, height, width)
    if node.op in _UNARY_OPS | _BROADCAST_OPS | {"Concat"}:
        return _pointwise_interior(node, region, height, width)
    return None


# ------------------------------------------------------------------------------ evaluation

def _take_param(param, index: tuple[slice, ...], shape: tuple[int, ...]):
    """Slice a broadcasting parameter (scale / zero point) along the dims it spans."""
    arr = np.asarray(param)
    if arr.ndim != len(shape):
        return param
    idx = tuple(sl if arr.shape[i] == shape[i] and shape[i] > 1 else slice(None) for i, sl in enumerate(index))
    return arr[idx]


def _take(arg, index: tuple[slice, ...] | None):
    """An operand restricted to `index`: arrays are sliced, integer tensors (with codes `q`) too."""
    if arg is None or index is None:
        return arg
    if hasattr(arg, "q"):
        shape = arg.q.shape
        return dataclasses.replace(arg, q=arg.q[index], scale=_take_param(arg.scale, index, shape),
                                   zero_point=_take_param(arg.zero_point, index, shape))
    return arg[index]


def _embed(result, interior: Interior, height: int, width: int):
    """Place an interior result into a full map of the real value zero; None if it cannot be."""
    rows, cols = interior.rows, interior.cols
    h, w = rows.stop - rows.start, cols.stop - cols.start
    codes = result.q if hasattr(result, "q") else np.asarray(result)
    if codes.ndim != 4 or codes.shape[2] < h or codes.shape[3] < w:
        return None
    inner = codes[:, :, :h, :w]  # a ceil_mode pool may return one window more
    shape = (*codes.shape[:2], height, width)
    if not hasattr(result, "q"):
        full = np.zeros(shape, dtype=codes.dtype)
        full[:, :, rows, cols] = inner
        return full
    zp = np.asarray(result.zero_point)
    if np.ndim(result.scale) == 4 and any(np.shape(result.scale)[i] > 1 for i in (2, 3)):
        return None
    if zp.ndim == 4 and any(zp.shape[i] > 1 for i in (2, 3)):
        return None
    full = np.array(np.broadcast_to(zp, shape), dtype=codes.dtype)
    full[:, :, rows, cols] = inner
    return dataclasses.replace(result, q=full)


def evaluate_interior(node: Node, args: list, evaluate: Callable[[Node, list], list]) -> list:
    """`evaluate(node, args)`, but only on the uncropped interior of a cropped output (DESIGN.md §3).

    The result is bit-identical to evaluating everything and zeroing the region: the interior reads
    the same input positions with the same padding, and the region holds the real value zero.
    """
    interior = interior_window(node)
    if interior is None or (node.op in _INTEGER_ONLY and not _integer(args[:2])):
        return evaluate(node, args)
    sliced = [_take(a, i) for a, i in zip(args, interior.index)]
    view = Node(node.op, node.name, list(node.inputs), list(node.outputs), interior.attrs)
    results = evaluate(view, sliced)
    if node.op in _INTEGER_ONLY and not _integer(results):
        return evaluate(node, args)  # the semantics ran it as a float island after all
    height, width = _spatial(node.outputs[0].type)
    full = _embed(results[0], interior, height, width) if len(results) == 1 else None
    if full is None:
        return evaluate(node, args)
    return [full]


def _integer(values: list) -> bool:
    """Whether every value is an integer tensor (codes `q` of an integer dtype)."""
    return all(hasattr(v, "q") and np.issubdtype(np.asarray(v.q).dtype, np.integer) for v in values)


# ------------------------------------------------------------------------------ propagation rules

def needed_margins(node: Node, index: int) -> tuple[int, int, int, int]:
    """Rows / columns at each edge of input `index` that no computed output of `node` reads.

    Zero unless the node is evaluated on a cropped interior; the input must be a 4-d map.
    """
    interior = interior_window(node)
    size = _spatial(node.inputs[index].type) if node.inputs[index] is not None else None
    if interior is None or size is None or interior.index[index] is None:
        return (0, 0, 0, 0)
    sl = interior.index[index]
    rank = len(sl)
    rows, cols = sl[rank - 2], sl[rank - 1]
    return (rows.start or 0, size[0] - (size[0] if rows.stop is None else rows.stop),
            cols.start or 0, size[1] - (size[1] if cols.stop is None else cols.stop))


def _forward_axis(begin: int, end: int, in_size: int, out_size: int, k: int, s: int, d: int,
                  p: int) -> tuple[int, int]:
    """Outputs at each end whose real input taps all lie in the cropped [0, begin) / [H - end, H)."""
    span = d * (k - 1) + 1
    first_real = span - p > 0  # output 0 reads some real input
    last_real = (out_size - 1) * s - p < in_size  # the last output reads some real input
    top = min(out_size, (begin + p - span) // s + 1) if first_real and begin > 0 else 0
    bottom = out_size - math.ceil((in_size - end + p) / s) if last_real and end > 0 else 0
    return max(0, top), max(0, min(out_size, bottom))


def _keeps_zero(node: Node) -> bool:
    """Whether the node maps all-zero inputs to exactly zero (and its output quantizer keeps zero)."""
    spec = node.outputs[0].quant
    if spec is not None and not isinstance(spec, Uniform):
        return False
    op = node.op
    if op in ("Relu", "LeakyRelu", "Identity", "MaxPool", "AveragePool", "Add", "Sub", "Concat"):
        return op != "Concat" or node.attrs.get("axis", 1) in (0, 1, -4, -3)
    if op == "Clip":
        return node.attrs.get("min", -math.inf) <= 0.0 <= node.attrs.get("max", math.inf)
    if op == "Conv":
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return bias is None or (bias.is_constant and not np.any(bias.data))
    return False


def _combine(regions: list[Region]) -> Region:
    """Positions zero in every operand: the per-side minimum (a subset of the intersection)."""
    return Region(*(min(r.as_tuple()[i] for r in regions) for i in range(4)))


def implied_output_region(node: Node) -> Region | None:
    """The forward rule: the output region whose values are exactly zero because the inputs are cropped.

    None when the node does not keep zeros, an operand is not a cropped 4-d map, or nothing follows.
    """
    if len(node.outputs) != 1 or not _keeps_zero(node):
        return None
    out_size = _spatial(node.outputs[0].type)
    maps = list(node.inputs[:1]) if node.op in _WINDOW_OPS else [v for v in node.inputs if v is not None]
    if out_size is None or not maps:
        return None
    if any(v.is_constant or v.region is None or _spatial(v.type) is None for v in maps):
        return None
    region = _combine([v.region for v in maps])
    if node.op in _WINDOW_OPS:
        region = _forward_window(node, region, _spatial(maps[0].type), out_size)
    elif any(_spatial(v.type) != out_size for v in maps):
        return None
    if region is None or region.empty or not region.fits(*out_size):
        return None
    return region


def _forward_window(node: Node, region: Region, in_size: tuple[int, int], out_size: tuple[int, int]) -> Region | None:
    params = _window_params(node)
    if params is None:
        return None
    k, s, d, p = params
    top, bottom = _forward_axis(region.top, region.bottom, in_size[0], out_size[0], k[0], s[0], d[0], p[0])
    left, right = _forward_axis(region.left, region.right, in_size[1], out_size[1], k[1], s[1], d[1], p[1])
    return Region(top, bottom, left, right)


# ------------------------------------------------------------------------------ cost

def macs_saved(node: Node) -> int:
    """MACs the interpreter skips because the node's output region is not computed (one sample)."""
    found = _output_region(node)
    if found is None or interior_window(node) is None:
        return 0
    region, height, width = found
    out_types = [o.type for o in node.outputs]
    macs = int(get_op(node.op, node_name=node.name).macs(node.input_types(), out_types, node.attrs))
    return macs * cropped_area(region, height, width) // (height * width)


def activations_cropped(value: Value) -> int:
    """Elements of `value` held at 0 bits by its region (one sample: symbolic dims count as 1)."""
    size = _spatial(value.type)
    if size is None or value.region is None:
        return 0
    return value.type.numel() // (size[0] * size[1]) * cropped_area(value.region, *size)


# ------------------------------------------------------------------------------ image statistics

def _pixel_map(x: np.ndarray, statistic: str) -> np.ndarray:
    """Per-pixel activity [N, H, W]: gradient magnitude or |x|, summed over channels."""
    x = x.astype(np.float64)
    if statistic == "intensity":
        return np.abs(x).sum(axis=1)
    dy = np.zeros_like(x)
    dx = np.zeros_like(x)
    dy[:, :, :-1, :] = x[:, :, 1:, :] - x[:, :, :-1, :]
    dx[:, :, :, :-1] = x[:, :, :, 1:] - x[:, :, :, :-1]
    return np.sqrt(dy**2 + dx**2).sum(axis=1)


def _entropy(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int = 16) -> np.ndarray:
    """Shannon entropy (bits) of each sample's values [N, M] in `bins` bins over [lo, hi] per sample."""
    width = np.where(hi > lo, hi - lo, 1.0)
    idx = np.clip(((values - lo[:, None]) / width[:, None] * bins).astype(np.int64), 0, bins - 1)
    counts = np.stack([np.bincount(row, minlength=bins) for row in idx]).astype(np.float64)
    prob = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(prob > 0, -prob * np.log2(prob), 0.0)
    return terms.sum(axis=1)


def _strips(region: Region, height: int, width: int) -> list[tuple[slice, slice] | None]:
    """The four edge strips of a region (None for an uncut side)."""
    t, b, l, r = region.as_tuple()
    return [
        (slice(0, t), slice(None)) if t else None,
        (slice(height - b, height), slice(None)) if b else None,
        (slice(None), slice(0, l)) if l else None,
        (slice(None), slice(width - r, width)) if r else None,
    ]


def edge_scores(x: np.ndarray, region: Region, statistic: str = "gradient") -> np.ndarray:
    """Per sample and side (T, B, L, R), the cut strip's statistic over the kept centre's; 0 if uncut.

    x is an NCHW image batch. A score near 0 means the strip is background next to the centre.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic '{statistic}'; choose one of {', '.join(STATISTICS)}")
    n, _, height, width = x.shape
    rows, cols = interior_slices(region, height, width)
    scores = np.zeros((n, 4))
    if statistic == "entropy":
        flat = x.astype(np.float64).sum(axis=1)
        lo, hi = flat.reshape(n, -1).min(axis=1), flat.reshape(n, -1).max(axis=1)
        centre = _entropy(flat[:, rows, cols].reshape(n, -1), lo, hi)
        for side, strip in enumerate(_strips(region, height, width)):
            if strip is not None:
                scores[:, side] = _entropy(flat[:, strip[0], strip[1]].reshape(n, -1), lo, hi) / (centre + 1e-12)
        return scores
    activity = _pixel_map(x, statistic)
    centre = activity[:, rows, cols].reshape(n, -1).mean(axis=1)
    for side, strip in enumerate(_strips(region, height, width)):
        if strip is not None:
            scores[:, side] = activity[:, strip[0], strip[1]].reshape(n, -1).mean(axis=1) / (centre + 1e-12)
    return scores


def choose_crops(x_batch: np.ndarray, candidates: Sequence[Region], statistic: str = "gradient",
                 threshold: float = 0.5, savings: Sequence[float] | None = None) -> np.ndarray:
    """Per sample, the index of the candidate crop to use.

    candidates are regions of the input image (the strips each candidate would cut). A candidate is
    acceptable for an image when every cut strip scores <= threshold (`edge_scores`); the acceptable
    candidate with the largest saving wins (default saving: the cropped input area; ties go to the
    lower index). With no acceptable candidate the least saving one is used. An uncut candidate
    scores 0, so it is always acceptable.
    """
    x = np.asarray(x_batch)
    if x.ndim != 4:
        raise ValueError(f"choose_crops needs an NCHW batch, got shape {list(x.shape)}")
    if not candidates:
        raise ValueError("choose_crops needs at least one candidate")
    height, width = x.shape[2:]
    gain = np.asarray(savings if savings is not None else
                      [cropped_area(c, height, width) for c in candidates], dtype=np.float64)
    if gain.shape != (len(candidates),):
        raise ValueError(f"{len(candidates)} candidates but {gain.size} savings")
    ok = np.stack([edge_scores(x, c, statistic).max(axis=1) <= threshold for c in candidates], axis=1)
    ranked = np.where(ok, gain[None, :], -np.inf)
    best = ranked.argmax(axis=1)  # first maximum: ties to the lower index
    fallback = int(gain.argmin())
    return np.where(ok.any(axis=1), best, fallback).astype(np.int64)
