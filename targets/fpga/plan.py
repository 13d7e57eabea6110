"""From a quantized graph to the integer dataflow the RTL implements: streams of pixels between stages.

The plan is pure numbers taken from the integer specification (qcc.integer / qcc.numerics), so the
hardware computes exactly what the reference interpreter computes:

- the graph input is quantized on the host (qcc.numerics.quantize); the design streams its codes one
  pixel (all channels of one position, raster order) per valid/ready transfer;
- a Gemm / MatMul / Conv is a matrix-vector unit: acc = bias_acc + sum (qx - zx) * wc with wc the
  centred weight codes (qcc.integer.constant_value: uniform, bipolar, or the integer centroids of a
  codebook) and bias_acc = round_half_even(b / (sx sw)). A convolution (ConvLayer) first passes a
  sliding-window generator whose window columns are ordered (ky, kx, cin); the weight ROM uses that
  order ([cout, kh, kw, cin] flattened). Grouped convolutions use a block-diagonal weight (zeros off
  the groups). A Gemm on a flattened C x H x W map is a convolution whose kernel is the whole map;
- MaxPool (a window generator padded with the lowest code, then a max per channel), GlobalAveragePool
  (the exact sum of q - z per channel, scale s / (H*W)), Add / Sub (each operand aligned to the
  smaller scale by a rounding shift, exactly qcc.integer._align, then added), Relu, Flatten /
  Reshape / Identity (no-ops on the stream) are stages or post-ops of the stage producing the value;
- after each stage a chain of per-channel integer post-ops: Relu (max with the zero point), a
  uniform annotation (requantize: M0 * 2^-n, rounding shift half to even, zero point, saturation),
  a thresholds annotation (comparator chain, qcc.numerics.integer_thresholds), a bipolar annotation
  (sign). A per-channel value that the reference turns into a float island (Flatten of a per-channel
  GlobalAveragePool result) and then quantizes becomes a threshold table found by bisection on the
  reference function itself (qcc.numerics.step_thresholds), so it is exact. So does a float
  BatchNormalization (+ Relu / Clip) ending in a quantizer, which fold-bn{thresholds=true} leaves where
  a BN scale is negative: per channel a monotone step function of the accumulator, non-increasing on
  the negative channels, so the chain counts down from qmax there (a per-channel step of -1);
- a stream read by two stages passes a ForkLayer whose output FIFOs are deep enough for the other
  branch's buffering (window rows), so a residual block cannot deadlock;
- the last value's codes are dequantized on the host with the scale the reference uses.

Every code range is tracked (an interval per stage), so stream widths are sized from the worst case
and nothing overflows. A matrix-vector unit's accumulator range is qcc.ranges' (the range analysis:
exact per output element, padding included, so a padded convolution whose border windows never see the
whole kernel gets no more bits than it needs); see `_Builder.take_range` for why the final range also
bounds what the accumulator register must hold during a folded reduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qcc.errors import LoweringError, QccError
from qcc.integer import QTensor, constant_value, evaluate_node, quantize_result, to_float
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Bipolar, Codebook, Thresholds, Uniform
from qcc.numerics import (
    bias_to_accumulator,
    integer_thresholds,
    quantize_multiplier,
    requantize,
    step_thresholds,
)
from qcc.ranges import LayerRange, analyze

__all__ = ["PostOp", "DenseLayer", "ConvLayer", "StreamLayer", "PoolLayer", "GapLayer", "AddLayer", "ForkLayer",
           "MapLayer", "StreamInfo", "Plan", "plan_graph", "signed_bits", "LOWERABLE_OPS"]

LOWERABLE_OPS = ("Gemm", "MatMul", "Conv", "Relu", "MaxPool", "GlobalAveragePool", "Add", "Sub", "Flatten",
                 "Reshape", "Identity", "BatchNormalization", "Clip")
_CHAIN_OPS = ("BatchNormalization", "Relu", "Clip", "Identity")  # per-channel, monotone, elementwise
_FREE_OPS = {"Flatten", "Reshape", "Identity"}
_BIG = 2**62


def signed_bits(lo: int, hi: int) -> int:
    """Bits of a two's complement number holding every integer in [lo, hi]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


@dataclass(frozen=True)
class PostOp:
    """One per-channel integer step after a stage's core result.

    kind: "relu" (params zp), "requant" (m0, n, zp, centre, qmin, qmax), "thresholds" (table [C, T],
    optional base and step: out = base + step * number of thresholds <= v; step 1 by default),
    "bipolar" (zp), "centre" (zp: v - zp).
    Parameters are int64 vectors of length C (one per channel). lo / hi: the range of the output.
    """

    kind: str
    params: dict = field(default_factory=dict)
    lo: int = 0
    hi: int = 0


class _Widths:
    """Bit widths of a stage's input, core result and output, from their integer ranges."""

    in_lo: int
    in_hi: int
    acc_lo: int
    acc_hi: int
    post: list[PostOp]

    @property
    def in_width(self) -> int:
        return signed_bits(self.in_lo, self.in_hi)

    @property
    def out_lo(self) -> int:
        return self.post[-1].lo if self.post else self.acc_lo

    @property
    def out_hi(self) -> int:
        return self.post[-1].hi if self.post else self.acc_hi

    @property
    def out_width(self) -> int:
        return signed_bits(self.out_lo, self.out_hi)

    @property
    def acc_width(self) -> int:
        return signed_bits(self.acc_lo, self.acc_hi)


@dataclass
class DenseLayer(_Widths):
    """A matrix-vector unit: n_out x n_in weights, PE output channels x SIMD inputs per cycle."""

    name: str
    n_in: int
    n_out: int
    weights: np.ndarray  # [n_out, n_in] centred integer codes
    bias: np.ndarray  # [n_out] accumulator units
    in_zp: int
    in_lo: int
    in_hi: int
    acc_lo: int
    acc_hi: int
    post: list[PostOp]
    weight_bits: int
    act_bits: int
    pe: int = 1
    simd: int = 1
    kind: str = "dense"
    src: tuple[str, ...] = ()  # input stream names (Plan.streams)
    dst: str = ""  # output stream name
    bipolar: bool = False  # weights and inputs are +-1: XNOR + popcount instead of multipliers

    @property
    def weight_width(self) -> int:
        return signed_bits(int(self.weights.min(initial=0)), int(self.weights.max(initial=0)))

    @property
    def pixels(self) -> int:
        """Output pixels per frame (1 for a dense layer)."""
        return 1

    @property
    def cycles(self) -> int:
        return math.ceil(self.n_in / self.simd) * math.ceil(self.n_out / self.pe) * self.pixels


@dataclass
class ConvLayer(DenseLayer):
    """A convolution: a sliding-window generator (line buffers) feeding a matrix-vector unit.

    n_in = kh * kw * cin (window columns ordered (ky, kx, cin)), n_out = cout; the window generator
    keeps `window_rows` input rows of in_shape[2] pixels (in_shape[0] codes each) and pads with
    `pad_value` (the input zero point). `windowed` is False for a 1x1 / stride 1 / unpadded conv,
    whose window is the pixel itself (no generator).
    """

    kind: str = "conv"
    in_shape: tuple[int, int, int] = (1, 1, 1)  # C, H, W of the input stream
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    pad_value: int = 0
    stream_lo: int = 0  # range of the incoming stream (before padding widens it to [in_lo, in_hi])
    stream_hi: int = 0

    @property
    def out_hw(self) -> tuple[int, int]:
        return _out_hw(self.in_shape[1:], self.kernel, self.strides, self.pads)

    @property
    def pixels(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def windowed(self) -> bool:
        return not (self.kernel == (1, 1) and self.strides == (1, 1) and not any(self.pads))

    @property
    def window_rows(self) -> int:
        return _window_rows(self.kernel[0], self.in_shape[1])

    @property
    def buffer_bits(self) -> int:
        """Bits of the line buffer (window_rows x W pixels) of the window generator."""
        if not self.windowed:
            return 0
        return self.window_rows * self.in_shape[2] * self.in_shape[0] * signed_bits(self.stream_lo, self.stream_hi)


@dataclass
class StreamLayer(_Widths):
    """A stage without weights: a core computation per pixel, then per-channel post-ops.

    The post-op unit handles `pe` channels per cycle (channels / pe cycles per output pixel).
    in_lo / in_hi: the input stream's code range; acc_lo / acc_hi: the core result's range.
    """

    name: str
    kind: str
    channels: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    in_lo: int
    in_hi: int
    acc_lo: int
    acc_hi: int
    post: list[PostOp]
    src: tuple[str, ...] = ()
    dst: str = ""
    pe: int = 0  # 0: all channels at once

    @property
    def lanes(self) -> int:
        return self.pe or self.channels

    @property
    def cycles(self) -> int:
        """Cycles per frame (the post-op unit's share; pooling windows add kh*kw reads per pixel)."""
        return self.out_hw[0] * self.out_hw[1] * math.ceil(self.channels / self.lanes)


@dataclass
class PoolLayer(StreamLayer):
    """MaxPool: a window generator padded with the lowest code, then the max per channel."""

    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def window_rows(self) -> int:
        return _window_rows(self.kernel[0], self.in_hw[0])

    @property
    def buffer_bits(self) -> int:
        return self.window_rows * self.in_hw[1] * self.channels * self.in_width

    @property
    def cycles(self) -> int:
        return self.out_hw[0] * self.out_hw[1] * (self.kernel[0] * self.kernel[1] + 1)


@dataclass
class GapLayer(StreamLayer):
    """GlobalAveragePool: per-channel sums of q - zp over the frame (exact; the scale is s / (H*W))."""

    zp: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))  # [C] input zero points

    @property
    def cycles(self) -> int:
        return self.in_hw[0] * self.in_hw[1] + math.ceil(self.channels / self.lanes)


@dataclass
class AddLayer(StreamLayer):
    """Add / Sub of two streams: each operand aligned (post-op chain `align[i]`), then added."""

    align: tuple[list[PostOp], list[PostOp]] = ((), ())
    in_ranges: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    subtract: bool = False


@dataclass
class ForkLayer(StreamLayer):
    """A stream copied to several consumers, each output through a FIFO of fifo_depths[i] pixels."""

    dsts: tuple[str, ...] = ()
    fifo_depths: tuple[int, ...] = ()

    @property
    def fifo_bits(self) -> int:
        return sum(self.fifo_depths) * self.channels * self.in_width


@dataclass
class MapLayer(StreamLayer):
    """Post-ops only (a Relu or an annotation on a value that is also read elsewhere)."""


@dataclass(frozen=True)
class StreamInfo:
    """A hardware stream: frames of h x w pixels, `channels` codes of `width` bits each."""

    channels: int
    h: int
    w: int
    lo: int
    hi: int

    @property
    def width(self) -> int:
        return signed_bits(self.lo, self.hi)

    @property
    def pixels(self) -> int:
        return self.h * self.w


@dataclass
class Plan:
    input_name: str
    input_spec: Uniform
    output_name: str
    layers: list[DenseLayer]  # the matrix-vector layers (dense and conv), the ones with PE / SIMD
    out_scale: np.ndarray  # per output element (graph order, C*H*W), float64
    out_zp: np.ndarray  # per output element, int64
    out_dtype: str = "float32"
    stages: list = field(default_factory=list)  # every stage in dataflow order (layers included)
    ranges: dict = field(default_factory=dict)  # qcc.ranges' LayerRange per accumulating node (empty: none)
    streams: dict[str, StreamInfo] = field(default_factory=dict)
    input_stream: str = "in"
    output_stream: str = ""

    @property
    def in_info(self) -> StreamInfo:
        return self.streams[self.input_stream]

    @property
    def out_info(self) -> StreamInfo:
        return self.streams[self.output_stream]


def _out_hw(hw, kernel, strides, pads) -> tuple[int, int]:
    return ((hw[0] + pads[0] + pads[2] - kernel[0]) // strides[0] + 1,
            (hw[1] + pads[1] + pads[3] - kernel[1]) // strides[1] + 1)


def _window_rows(kh: int, h: int) -> int:
    """Line-buffer rows: a power of two above kh (cheap modulo), or the whole map when that is smaller."""
    rows = 1 << (kh).bit_length()
    return h if rows >= h else rows


# ------------------------------------------------------------------------------ planning state

@dataclass
class _Stream:
    """What the reference knows about a value: per-channel scale / zero point, code range, layout."""

    scale: np.ndarray  # [C] float64
    zp: np.ndarray  # [C] int64
    lo: int
    hi: int
    width: int  # channels
    hw: tuple[int, int] = (1, 1)
    flat: bool = False  # the logical tensor is the C x H x W map flattened (CHW order)
    binary: bool = False  # every code is -1 or +1 (a bipolar annotation)

    @property
    def per_tensor(self) -> bool:
        return np.ptp(self.scale) == 0 and np.ptp(self.zp) == 0


@dataclass
class _Ref:
    stream: _Stream
    stage: object | None  # None: the graph input
    hw_name: str  # the hardware stream carrying the value


_CPU = "compile for --target cpu, which runs every op"
_FLOAT_OPS = {"BatchNormalization": "a BatchNormalization left in float (fold-bn keeps it when it cannot fold it, "
                                    "e.g. a negative scale under thresholds=true)"}


def _unsupported(node: Node, why: str, remedy: str = _CPU) -> LoweringError:
    """The refusal of one node: what stops it and the user's next step (a config line, another target)."""
    return LoweringError("fpga", node.name, node.op, why, remedy)


def _layer_key(name: str) -> str:
    return f'[layers."{name}"]'


def _unsupported_op(node: Node) -> LoweringError:
    if node.op == "Clip":
        return _unsupported(node, "a Clip on an integer stream (Clip is lowered only after a float "
                                  "BatchNormalization, inside its comparator chain)")
    why = _FLOAT_OPS.get(node.op, f"the op is not supported (supported: {', '.join(LOWERABLE_OPS)})")
    if node.op == "BatchNormalization":
        return _unsupported(node, why, "fold it into the layer before it (the fold-bn pass without thresholds=true "
                                       "folds any scale), or " + _CPU)
    return _unsupported(node, why)


def _quantize_remedy(value: Value, reader: Node | None = None) -> str:
    """How to make `value` a quantized stream: its reader's activation scheme (a layer's a_scheme is the
    precision of the input it reads, qcc.config), unless a float op produced it; or run on the CPU."""
    producer = value.producer
    if producer is not None and producer.op in _FLOAT_OPS:
        return _unsupported_op(producer).remedy
    reader = reader or (value.uses[0][0] if value.uses else None)
    where = f" in {_layer_key(reader.name)} of --config" if reader is not None else ""
    return f"quantize it (a_scheme = \"uniform\" or \"bipolar\"{where}, not float), or " + _CPU


def _vec(a, n: int, dtype) -> np.ndarray:
    a = np.asarray(a, dtype=dtype).reshape(-1)
    return np.full(n, a[0], dtype=dtype) if a.size == 1 else a.copy()


def _spec_vectors(spec, n: int) -> tuple[np.ndarray, np.ndarray]:
    scale = _vec(getattr(spec, "scale", 1.0), n, np.float64)
    zp = _vec(getattr(spec, "zero_point", 0), n, np.int64)
    return scale, zp


# ------------------------------------------------------------------------------ post-ops

def _requant(node: Node, stream: _Stream, spec: Uniform) -> tuple[PostOp, _Stream]:
    c = stream.width
    out_scale, out_zp = _spec_vectors(spec, c)
    pairs = [quantize_multiplier(float(m)) for m in stream.scale / out_scale]
    if any(n < 0 for _, n in pairs):
        raise _unsupported(node, "a requantization multiplier >= 2^31 (degenerate activation range)",
                           "calibrate with data that exercise this layer (--calib), or " + _CPU)
    params = {"m0": np.array([p[0] for p in pairs], np.int64), "n": np.array([p[1] for p in pairs], np.int64),
              "zp": out_zp, "centre": stream.zp.copy()}
    op = PostOp("requant", params, lo=spec.qmin, hi=spec.qmax)
    return op, _Stream(out_scale, out_zp, spec.qmin, spec.qmax, c, stream.hw, stream.flat)


def _threshold_op(node: Node, stream: _Stream, spec: Thresholds) -> tuple[PostOp, _Stream]:
    c = stream.width
    if len(spec.thresholds) == 1:
        table = np.stack([integer_thresholds(spec, stream.scale[ch], stream.zp[ch])[0] for ch in range(c)])
    else:
        table = integer_thresholds(spec, stream.scale, stream.zp)
    if table.shape[0] != c:
        raise _unsupported(node, f"{table.shape[0]} threshold rows for {c} channels",
                           "give one threshold row per channel (or one row shared by all), or " + _CPU)
    ratio = spec.out_bias / spec.out_scale
    if not float(ratio).is_integer():
        raise _unsupported(node, "thresholds whose out_bias is not a multiple of out_scale (a float result)",
                           "use an out_bias that is an integer multiple of out_scale, or " + _CPU)
    table = np.clip(table, stream.lo, stream.hi + 1)  # beyond the input range: always / never reached
    levels = table.shape[1]
    op = PostOp("thresholds", {"table": table}, lo=0, hi=levels)
    return op, _Stream(_vec(spec.out_scale, c, np.float64), np.full(c, -int(ratio), np.int64), 0, levels, c,
                       stream.hw, stream.flat)


def _bipolar_op(stream: _Stream, spec: Bipolar) -> tuple[PostOp, _Stream]:
    c = stream.width
    op = PostOp("bipolar", {"zp": stream.zp.copy()}, lo=-1, hi=1)
    return op, _Stream(_vec(spec.scale, c, np.float64), np.zeros(c, np.int64), -1, 1, c, stream.hw, stream.flat,
                       True)


def _annotation_crop(node: Node, value: Value) -> LoweringError:
    return _unsupported(node, f"its output '{value.name}' has a cropped region (the RTL streams whole maps)",
                        f"remove `crop` from {_layer_key(node.name)} in --config, or compile for --target cim "
                        "or cpu, which skip cropped regions")


def _annotation(node: Node, value: Value, stream: _Stream) -> tuple[PostOp | None, _Stream]:
    spec = value.quant
    if value.region is not None and not value.region.empty:
        raise _annotation_crop(node, value)
    if spec is None:
        return None, stream
    if isinstance(spec, Uniform):
        return _requant(node, stream, spec)
    if isinstance(spec, Thresholds):
        return _threshold_op(node, stream, spec)
    if isinstance(spec, Bipolar):
        return _bipolar_op(stream, spec)
    reader = value.uses[0][0] if value.uses else None
    where = f" in {_layer_key(reader.name)} of --config" if reader is not None else ""
    raise _unsupported(node, f"a {spec.scheme} annotation on its output '{value.name}'",
                       f"use a_scheme = \"uniform\" or \"bipolar\"{where}, or " + _CPU)


def _float_island_op(node: Node, value: Value, stream: _Stream) -> tuple[PostOp, _Stream]:
    """A per-channel value dequantized to float then quantized by `value`'s annotation, as thresholds.

    The reference (qcc.integer) computes float32((q - z) * s) then quantizes it; that is a
    non-decreasing step function of q per channel, so bisection on the reference itself gives
    integer thresholds reproducing it on every code of the stream's range.
    """
    spec = value.quant
    c = stream.width
    if isinstance(spec, Bipolar):  # sign of s (q - z) with s > 0 is the sign of q - z
        return _bipolar_op(stream, spec)
    if not isinstance(spec, Uniform) or spec.axis is not None:
        raise _unsupported(node, "a per-channel value turned to float needs a per-tensor uniform annotation",
                           f"quantize '{value.name}' per tensor with a uniform scheme, or " + _CPU)
    scale = stream.scale.reshape(c, 1)
    zp = stream.zp.reshape(c, 1)

    def levels(q: np.ndarray) -> np.ndarray:
        real = to_float(QTensor(q, scale, zp))
        return np.asarray(quantize_result(real, spec).q) - spec.qmin

    lo = np.full(c, stream.lo, np.int64)
    hi = np.full(c, stream.hi, np.int64)
    table = step_thresholds(levels, lo, hi, spec.qmax - spec.qmin)
    table = np.where(np.isneginf(table), stream.lo, np.where(np.isposinf(table), stream.hi + 1, table))
    op = PostOp("thresholds", {"table": table.astype(np.int64), "base": np.full(c, spec.qmin, np.int64)},
                lo=spec.qmin, hi=spec.qmax)
    out_scale, out_zp = _spec_vectors(spec, c)
    return op, _Stream(out_scale, out_zp, spec.qmin, spec.qmax, c, stream.hw, stream.flat)


def _float_chain(graph: Graph, node: Node) -> list[Node]:
    """A float BatchNormalization and the single-use per-channel monotone ops after it (Relu, Clip, BN,
    Identity), up to the first annotated value: on the hardware one comparator chain. One MaxPool may
    sit in the chain with only non-decreasing ops (Relu, Clip, Identity) after it: with Q the rest of
    the chain and the quantizer (non-decreasing), Q(max_i v_i) = max_i Q(v_i), so the pool runs on the
    quantized codes after the comparator chain."""
    chain, value = [node], node.outputs[0]
    pooled = False
    while value.quant is None:
        user = value.uses[0][0] if len(value.uses) == 1 and not graph.is_output(value) else None
        allowed = _CHAIN_OPS if not pooled else ("Relu", "Clip", "Identity")
        if user is not None and user.op == "MaxPool" and not pooled:
            allowed, pooled = ("MaxPool",), True
        if user is None or user.op not in allowed or len(user.outputs) != 1:
            where = (f"is read by {user.op} '{user.name}'" if user is not None else
                     f"is read by {len(value.uses)} nodes" if value.uses else "is a graph output")
            raise _unsupported(node, f"a float {node.op} whose result reaches no quantized value through "
                                     f"{' / '.join(_CHAIN_OPS)} / one MaxPool (the float value '{value.name}' {where})",
                               _unsupported_op(node).remedy)
        chain.append(user)
        value = user.outputs[0]
    for n in chain:
        if any(v is not None and not v.is_constant for v in n.inputs[1:]):
            raise _unsupported(n, "a per-channel parameter computed at run time", _unsupported_op(node).remedy)
        region = n.outputs[0].region
        if region is not None and not region.empty:
            raise _annotation_crop(n, n.outputs[0])
    return chain


def _chain_levels(chain: list[Node], spec, stream: _Stream, shape: tuple[int, ...]):
    """The reference's map from accumulator codes to output codes through the pointwise `chain`, per channel.

    levels(q) for q [C, K] (row c: codes of channel c) runs qcc.integer.evaluate_node on each node
    (BN, Relu, Clip in float32 on the dequantized codes, as the interpreter does), then the quantizer
    `spec`, and returns the output codes [C, K]. (Only the chain's end is annotated, _float_chain.)
    """
    c = stream.width
    scale, zp = stream.scale.reshape(shape), stream.zp.reshape(shape)

    def levels(q: np.ndarray) -> np.ndarray:
        k = q.shape[1]
        cur = QTensor(np.ascontiguousarray(q.T).reshape(k, *shape[1:]), scale, zp)
        for n in chain:
            cur = evaluate_node(n, [cur, *(constant_value(v) if v is not None else None for v in n.inputs[1:])])[0]
        cur = quantize_result(cur, spec)
        return np.asarray(cur.q, np.int64).reshape(k, c).T

    return levels


def _chain_op(node: Node, chain: list[Node], end: Value, stream: _Stream) -> tuple[PostOp, _Stream]:
    """BN (and Relu / Clip) then a quantizer, on an integer stream, as a comparator chain per channel.

    acc -> float32 BN -> ... -> quantize is a monotone step function of the accumulator per channel:
    non-decreasing where the BN scale is positive, non-increasing where it is negative (fold-bn keeps
    such BNs in float). With n = qmax - qmin levels, out = qmin + #{k : acc >= T_k} on an increasing
    channel and out = qmax - #{k : acc >= T_k} = qmin + #{k : acc < T_k} on a decreasing one; the T_k
    are found by bisection (qcc.numerics.step_thresholds) on the reference itself, so the table is
    exact on every code of the stream's range (checked on a grid and at every threshold).
    """
    spec = end.quant
    c = stream.width
    if stream.flat and stream.hw != (1, 1):
        raise _unsupported(node, "a per-channel op on a flattened map", _unsupported_op(node).remedy)
    if isinstance(spec, Uniform) and spec.axis in (None, 1):
        qmin, qmax, unit = spec.qmin, spec.qmax, 1
        out_scale, out_zp = _spec_vectors(spec, c)
    elif isinstance(spec, Bipolar):
        qmin, qmax, unit = -1, 1, 2
        out_scale, out_zp = _vec(spec.scale, c, np.float64), np.zeros(c, np.int64)
    else:
        raise _unsupported(end.producer, f"a {spec.scheme} annotation after a float {node.op}",
                           "use a uniform or bipolar activation scheme there, or " + _CPU)
    n = (qmax - qmin) // unit
    levels = _chain_levels(chain, spec, stream, (1, c) if stream.flat else (1, c, 1, 1))
    lo, hi = np.full(c, stream.lo, np.int64), np.full(c, stream.hi, np.int64)
    dec = levels(lo[:, None])[:, 0] > levels(hi[:, None])[:, 0]

    def count(q: np.ndarray) -> np.ndarray:  # non-decreasing per channel: thresholds reached
        steps = (levels(q) - qmin) // unit
        return np.where(dec[:, None], n - steps, steps)

    table = step_thresholds(count, lo, hi, n)
    table = np.where(np.isneginf(table), stream.lo, np.where(np.isposinf(table), stream.hi + 1, table))
    table = table.astype(np.int64)
    _check_table(node, count, table, stream.lo, stream.hi)
    params = {"table": table, "base": np.where(dec, qmax, qmin).astype(np.int64),
              "step": np.where(dec, -unit, unit).astype(np.int64)}
    op = PostOp("thresholds", params, lo=qmin, hi=qmax)
    return op, _Stream(out_scale, out_zp, qmin, qmax, c, stream.hw, stream.flat, isinstance(spec, Bipolar))


def _check_table(node: Node, count, table: np.ndarray, lo: int, hi: int) -> None:
    """The comparator chain reproduces `count` on a grid of the range and on both sides of every threshold
    (it does when the chain is monotone per channel, which its ops are; this guards that claim)."""
    grid = np.unique(np.linspace(lo, hi, num=min(hi - lo + 1, 1025)).round().astype(np.int64))
    c = table.shape[0]
    q = np.concatenate([np.broadcast_to(grid, (c, grid.size)), np.clip(table, lo, hi), np.clip(table - 1, lo, hi)],
                       axis=1)
    got = (q[:, :, None] >= table[:, None, :]).sum(axis=2)
    if not np.array_equal(got, count(q)):
        raise _unsupported(node, "its float result is not a monotone function of the accumulator per channel",
                           _unsupported_op(node).remedy)


def _relu_op(stream: _Stream) -> tuple[PostOp, _Stream]:
    op = PostOp("relu", {"zp": stream.zp.copy()}, lo=max(stream.lo, int(stream.zp.min())),
                hi=max(stream.hi, int(stream.zp.max())))
    return op, _Stream(stream.scale, stream.zp, op.lo, op.hi, stream.width, stream.hw, stream.flat)


# ------------------------------------------------------------------------------ weights

def _weight_codes(node: Node, w: Value) -> tuple[np.ndarray, np.ndarray, int]:
    """Centred weight codes (as qcc.integer sees them), weight scales per output channel, bits."""
    spec = w.quant
    if not isinstance(spec, Uniform | Bipolar | Codebook):
        raise _unsupported(node, f"the weight '{w.name}' is not quantized (uniform, bipolar or codebook)",
                           f"quantize it (w_scheme uniform, bipolar or codebook in {_layer_key(node.name)} of "
                           "--config, not float), or " + _CPU)
    qt = constant_value(w)
    bits = 1 if isinstance(spec, Bipolar) else int(getattr(spec, "bits", 0) or 0)
    return qt.centred(), np.asarray(qt.scale, np.float64), bits


def _scale_vector(scale: np.ndarray, axis: int, n: int, node: Node) -> np.ndarray:
    if scale.size == 1:
        return np.full(n, float(scale.reshape(-1)[0]))
    if scale.ndim <= axis or scale.shape[axis] != n:
        raise _unsupported(node, "per-channel weight quantization must be along the output channels",
                           f"quantize the weights per tensor or per output channel (per_channel in "
                           f"{_layer_key(node.name)} of --config), or " + _CPU)
    return np.moveaxis(scale, axis, 0).reshape(n, -1)[:, 0].astype(np.float64)


def _bias(node: Node, n_out: int, acc_scale: np.ndarray) -> np.ndarray:
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return np.zeros(n_out, np.int64)
    b = node.inputs[2]
    if not b.is_constant:
        raise _unsupported(node, f"the bias '{b.name}' is computed at run time (the RTL stores it in a ROM)")
    data = to_float(constant_value(b), np.float64).reshape(-1)
    if data.size not in (1, n_out):
        raise _unsupported(node, f"a bias of {data.size} values for {n_out} outputs (one, or one per output, "
                                 "is needed)")
    return bias_to_accumulator(np.broadcast_to(data, (n_out,)), acc_scale)


def _acc_range(wc: np.ndarray, bias: np.ndarray, xlo: int, xhi: int) -> tuple[int, int]:
    """Interval bound of bias + sum w (x - z), every tap anywhere in [xlo, xhi] (sound, not tight with
    padding); the fallback when qcc.ranges has no record of the layer."""
    wo = wc.astype(object)
    lo = bias.astype(object) + np.minimum(wo * xlo, wo * xhi).sum(axis=1)
    hi = bias.astype(object) + np.maximum(wo * xlo, wo * xhi).sum(axis=1)
    return int(lo.min()), int(hi.max())


def _range_analysis(graph: Graph) -> dict[str, LayerRange]:
    """qcc.ranges' records by node name; none (every layer keeps the plan's own sound bound) when the
    analysis cannot follow the graph."""
    try:
        return analyze(graph)
    except QccError:
        return {}


# ------------------------------------------------------------------------------ the builder

class _Builder:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.stages: list = []
        self.macs: list[DenseLayer] = []
        self.env: dict[str, _Ref] = {}
        self.streams: dict[str, StreamInfo] = {}
        self.current: dict[int, str] = {}  # id(stage) -> the graph value at its output
        self.ranges = _range_analysis(graph)
        self.consumed: set[str] = set()  # nodes lowered as part of another's post-op

    # -------------------------------------------------------------- helpers
    def ref(self, node: Node, value: Value) -> _Ref:
        r = self.env.get(value.name)
        if r is None:
            raise _unsupported(node, f"its input '{value.name}' is a float value, not a quantized stream",
                               _quantize_remedy(value, node))
        return r

    def add_stage(self, stage, value: Value, stream: _Stream) -> None:
        stage.dst = f"s{len(self.stages)}"
        self.stages.append(stage)
        self.current[id(stage)] = value.name
        self.env[value.name] = _Ref(stream, stage, stage.dst)

    def absorbable(self, value: Value, r: _Ref) -> bool:
        """A post-op on `value` may join its producing stage (nothing else reads the value)."""
        return (r.stage is not None and self.current.get(id(r.stage)) == value.name and len(value.uses) == 1
                and not self.graph.is_output(value))

    def post(self, node: Node, value: Value, op: PostOp, stream: _Stream, out: Value) -> None:
        """Apply post-op `op` to `value`, giving `out` (joins the producer, or a new map stage)."""
        r = self.ref(node, value)
        if self.absorbable(value, r):
            r.stage.post.append(op)
            self.current[id(r.stage)] = out.name
            self.env[out.name] = _Ref(stream, r.stage, r.hw_name)
            return
        s = r.stream
        stage = MapLayer(name=node.name, kind="map", channels=s.width, in_hw=s.hw, out_hw=s.hw, in_lo=s.lo,
                         in_hi=s.hi, acc_lo=s.lo, acc_hi=s.hi, post=[op], src=(r.hw_name,))
        self.add_stage(stage, out, stream)

    def annotate(self, node: Node, out: Value) -> None:
        r = self.env[out.name]
        op, stream = _annotation(node, out, r.stream)
        if op is not None:
            r.stage.post.append(op)
            self.env[out.name] = _Ref(stream, r.stage, r.hw_name)

    # -------------------------------------------------------------- ops
    def node(self, node: Node) -> None:
        out = node.outputs[0]
        op = node.op
        if node.name in self.consumed:  # part of a float chain lowered at its BatchNormalization
            return
        if op == "BatchNormalization":
            self.float_chain(node)
            return
        if op in ("Gemm", "MatMul", "Conv"):
            self.mac(node)
        elif op == "Relu":
            x = node.inputs[0]
            relu, stream = _relu_op(self.ref(node, x).stream)
            self.post(node, x, relu, stream, out)
        elif op in _FREE_OPS:
            self.free(node)
            return
        elif op == "MaxPool":
            self.maxpool(node)
        elif op == "GlobalAveragePool":
            self.gap(node)
        elif op in ("Add", "Sub"):
            self.add(node)
        else:
            raise _unsupported_op(node)
        self.annotate(node, out)

    def float_chain(self, node: Node) -> None:
        """A float BN (+ Relu / Clip) ending in a quantizer: one comparator chain on the stream (_chain_op)."""
        chain = _float_chain(self.graph, node)
        end = chain[-1].outputs[0]
        pools = [n for n in chain if n.op == "MaxPool"]
        x = node.inputs[0]
        op, stream = _chain_op(node, [n for n in chain if n.op != "MaxPool"], end, self.ref(node, x).stream)
        self.consumed.update(n.name for n in chain[1:])
        if not pools:
            self.post(node, x, op, stream, end)
            return
        # the comparator chain per pixel, then the pool on the quantized codes (see _float_chain)
        self.post(node, x, op, stream, pools[0].inputs[0])
        self.maxpool(pools[0])
        r = self.env[pools[0].outputs[0].name]
        self.env[end.name] = r
        self.current[id(r.stage)] = end.name

    def free(self, node: Node) -> None:
        """Flatten / Reshape / Identity: the same codes on the stream (the layout is only a view)."""
        x, out = node.inputs[0], node.outputs[0]
        r = self.ref(node, x)
        s = r.stream
        shape = out.type.shape
        if len(shape) not in (2, 4) or (len(shape) == 4 and tuple(shape[1:]) != (s.width, *s.hw)):
            raise _unsupported(node, "only flattening a C x H x W map (or keeping its shape) is supported")
        stream = _Stream(s.scale, s.zp, s.lo, s.hi, s.width, s.hw, len(shape) == 2 or s.flat, s.binary)
        if not s.per_tensor and node.op != "Identity":  # the reference turns this into a float island
            if out.quant is None:
                raise _unsupported(node, "reshaping a per-channel stream without an annotation (a float result)",
                                   f"quantize '{out.name}' (an activation scheme in {_layer_key(node.name)} of "
                                   "--config), or " + _CPU)
            op, stream = _float_island_op(node, out, stream)
            self.post(node, x, op, stream, out)
            return
        op, annotated = _annotation(node, out, stream)
        if op is not None:
            self.post(node, x, op, annotated, out)
            return
        if self.absorbable(x, r):
            self.current[id(r.stage)] = out.name
        self.env[out.name] = _Ref(stream, r.stage, r.hw_name)

    def mac(self, node: Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        if not w.is_constant:
            raise _unsupported(node, f"the weight '{w.name}' is computed at run time, not a constant")
        r = self.ref(node, x)
        s = r.stream
        if not s.per_tensor:
            if x.quant is None:
                raise _unsupported(node, f"its input '{x.name}' is not quantized (it carries the previous layer's "
                                         "per-channel accumulator)", _quantize_remedy(x, node))
            raise _unsupported(node, f"its input '{x.name}' is quantized per channel (the unit takes one zero point)",
                               f"quantize '{x.name}' per tensor, or " + _CPU)
        wc, w_scale, w_bits = _weight_codes(node, w)
        if node.op == "Conv":
            layer = self._conv(node, s, wc, w_scale)
        else:
            layer = self._dense(node, s, wc, w_scale)
        layer.weight_bits = w_bits
        self.take_range(node, layer)
        layer.src = (r.hw_name,)
        # +-1 weights on a +-1 stream: XNOR + popcount (a padded convolution's window also holds the pad
        # value 0, which the unit recognises and leaves out of the count). A grouped convolution's
        # block-diagonal matrix has zeros off the groups: those stay on the multiplier path.
        layer.bipolar = (isinstance(w.quant, Bipolar) and s.binary and (s.lo, s.hi, int(s.zp[0])) == (-1, 1, 0)
                         and bool(np.all(np.abs(layer.weights) == 1)))
        acc_scale = float(s.scale[0]) * self._w_scale
        stream = _Stream(acc_scale, np.zeros(layer.n_out, np.int64), layer.acc_lo, layer.acc_hi, layer.n_out,
                         layer.out_hw if isinstance(layer, ConvLayer) else (1, 1), node.op != "Conv")
        self.macs.append(layer)
        self.add_stage(layer, node.outputs[0], stream)

    def take_range(self, node: Node, layer: DenseLayer) -> None:
        """The accumulator range from qcc.ranges (issue 8: the analysis sizes FPGA accumulators).

        qcc.ranges bounds the FINAL sum bias + sum_k w_k (x_k - z) per output channel, exactly. The RTL
        register also holds partial sums during a folded reduction (the bias is preloaded on the first
        step, SIMD products are added per step), and those can leave the final range: with every
        x_k - z < 0 (a thresholds stream whose zero point lies above its codes) and w_k > 0, bias alone
        exceeds every final sum. No allowance is needed, though: the MVU's accumulation uses only +, -
        and * on two's complement registers of acc_width bits (wider operands are truncated, the
        bias literal / ROM word is taken modulo 2^acc_width), i.e. it computes in Z / 2^acc_width,
        where the map from the integers is a ring homomorphism. So the register ends holding the final
        sum modulo 2^acc_width, and that is the sum itself when the final range fits acc_width signed
        bits; nothing reads a partial sum (the post-ops take the final one). Hence acc_width =
        qcc.ranges.required_bits(lo, hi) over the channels. The intersection with the plan's own
        interval bound (both sound) only guards against the two analyses disagreeing.
        """
        record = self.ranges.get(node.name)
        if record is None:
            return
        lo, hi = int(np.min(record.lo)), int(np.max(record.hi))
        layer.acc_lo, layer.acc_hi = max(lo, layer.acc_lo), min(hi, layer.acc_hi)
        if layer.acc_lo > layer.acc_hi:  # disjoint: one of the analyses is wrong; keep the sound union
            layer.acc_lo, layer.acc_hi = min(lo, layer.acc_lo), max(hi, layer.acc_hi)

    def _dense(self, node: Node, s: _Stream, wc: np.ndarray, w_scale: np.ndarray) -> DenseLayer:
        if node.op == "Gemm" and (node.attrs["alpha"] != 1.0 or node.attrs["beta"] != 1.0 or node.attrs["transA"]):
            raise _unsupported(node, "alpha, beta must be 1 and transA 0")
        if wc.ndim != 2:
            raise _unsupported(node, "the weight must be a 2-D constant")
        trans = node.op == "Gemm" and node.attrs.get("transB", 0)
        mat = wc if trans else wc.T  # [out, in]
        n_out, n_in = mat.shape
        self._w_scale = _scale_vector(w_scale, 0 if trans else 1, n_out, node)
        c, (h, w_) = s.width, s.hw
        if n_in != c * h * w_:
            raise _unsupported(node, f"expects {n_in} inputs, the stream carries {c * h * w_}")
        acc_scale = float(s.scale[0]) * self._w_scale
        bias = _bias(node, n_out, acc_scale)
        zx = int(s.zp[0])
        if (h, w_) != (1, 1):  # a dense layer on a flattened map: a convolution with the map as kernel
            kernel = mat.reshape(n_out, c, h, w_)
            return self._conv_layer(node, s, kernel, bias, (h, w_), (1, 1), (0, 0, 0, 0), 1)
        acc_lo, acc_hi = _acc_range(mat, bias, s.lo - zx, s.hi - zx)
        return DenseLayer(name=node.name, n_in=n_in, n_out=n_out, weights=mat.astype(np.int64), bias=bias,
                          in_zp=zx, in_lo=s.lo, in_hi=s.hi, acc_lo=acc_lo, acc_hi=acc_hi, post=[], weight_bits=0,
                          act_bits=signed_bits(s.lo, s.hi))

    def _conv(self, node: Node, s: _Stream, wc: np.ndarray, w_scale: np.ndarray) -> ConvLayer:
        a = node.attrs
        if wc.ndim != 4 or s.flat:
            raise _unsupported(node, "only 2-D convolutions on N x C x H x W maps are supported",
                               "compile for --target cpu or cim")
        if any(int(d) != 1 for d in a.get("dilations") or (1, 1)):
            raise _unsupported(node, f"dilations {list(a.get('dilations'))} (the window generator takes adjacent "
                                     "pixels)", "compile for --target cpu or cim, which run dilated convolutions")
        groups = int(a.get("group", 1))
        cout, cin_g, kh, kw = wc.shape
        if cin_g * groups != s.width or cout % groups:
            raise _unsupported(node, f"weights for {cin_g * groups} input channels, the stream carries {s.width}")
        self._w_scale = _scale_vector(w_scale, 0, cout, node)
        acc_scale = float(s.scale[0]) * self._w_scale
        bias = _bias(node, cout, acc_scale)
        full = np.zeros((cout, s.width, kh, kw), np.int64)  # block-diagonal for groups > 1
        per = cout // groups
        for g in range(groups):
            full[g * per:(g + 1) * per, g * cin_g:(g + 1) * cin_g] = wc[g * per:(g + 1) * per]
        pads = tuple(int(p) for p in (a.get("pads") or (0, 0, 0, 0)))
        strides = tuple(int(v) for v in (a.get("strides") or (1, 1)))
        return self._conv_layer(node, s, full, bias, (kh, kw), strides, pads, groups)

    def _conv_layer(self, node, s: _Stream, kernel: np.ndarray, bias, ksize, strides, pads, groups) -> ConvLayer:
        cout = kernel.shape[0]
        mat = kernel.transpose(0, 2, 3, 1).reshape(cout, -1)  # im2col columns (ky, kx, cin)
        zx = int(s.zp[0])
        lo, hi = (min(s.lo, zx), max(s.hi, zx)) if any(pads) else (s.lo, s.hi)
        acc_lo, acc_hi = _acc_range(mat, bias, lo - zx, hi - zx)
        (oh, ow) = _out_hw(s.hw, ksize, strides, (pads[0], pads[1], pads[2], pads[3]))
        if oh < 1 or ow < 1:
            raise _unsupported(node, "the kernel is larger than the padded input")
        return ConvLayer(name=node.name, n_in=mat.shape[1], n_out=cout, weights=mat.astype(np.int64), bias=bias,
                         in_zp=zx, in_lo=lo, in_hi=hi, acc_lo=acc_lo, acc_hi=acc_hi, post=[], weight_bits=0,
                         act_bits=signed_bits(s.lo, s.hi), in_shape=(s.width, *s.hw), kernel=tuple(ksize),
                         strides=tuple(strides), pads=tuple(pads), groups=groups, pad_value=zx, stream_lo=s.lo,
                         stream_hi=s.hi)

    def maxpool(self, node: Node) -> None:
        a = node.attrs
        x = node.inputs[0]
        r = self.ref(node, x)
        s = r.stream
        if s.flat or len(a["kernel_shape"]) != 2:
            raise _unsupported(node, "only 2-D pooling on N x C x H x W maps is supported")
        if a.get("ceil_mode", 0) or any(int(d) != 1 for d in a.get("dilations") or (1, 1)):
            raise _unsupported(node, "ceil_mode and dilations are not supported")
        kernel = tuple(int(k) for k in a["kernel_shape"])
        strides = tuple(int(v) for v in (a.get("strides") or (1, 1)))
        pads = tuple(int(p) for p in (a.get("pads") or (0, 0, 0, 0)))
        out_hw = _out_hw(s.hw, kernel, strides, pads)
        stage = PoolLayer(name=node.name, kind="maxpool", channels=s.width, in_hw=s.hw, out_hw=out_hw, in_lo=s.lo,
                          in_hi=s.hi, acc_lo=s.lo, acc_hi=s.hi, post=[], src=(r.hw_name,), kernel=kernel,
                          strides=strides, pads=pads)
        out = _Stream(s.scale, s.zp, s.lo, s.hi, s.width, out_hw, False, s.binary)
        self.add_stage(stage, node.outputs[0], out)

    def gap(self, node: Node) -> None:
        x = node.inputs[0]
        r = self.ref(node, x)
        s = r.stream
        if s.flat:
            raise _unsupported(node, "needs an N x C x H x W map")
        count = s.hw[0] * s.hw[1]
        lo = int(np.min(count * (s.lo - s.zp)))
        hi = int(np.max(count * (s.hi - s.zp)))
        stage = GapLayer(name=node.name, kind="gap", channels=s.width, in_hw=s.hw, out_hw=(1, 1), in_lo=s.lo,
                         in_hi=s.hi, acc_lo=lo, acc_hi=hi, post=[], src=(r.hw_name,), pe=1, zp=s.zp.copy())
        out = _Stream(s.scale / count, np.zeros(s.width, np.int64), lo, hi, s.width)
        self.add_stage(stage, node.outputs[0], out)

    def add(self, node: Node) -> None:
        xs = [v for v in node.inputs if v is not None]
        if len(xs) != 2:
            raise _unsupported(node, "needs two operands")
        refs = [self.ref(node, v) for v in xs]
        a, b = refs[0].stream, refs[1].stream
        if a.width != b.width or a.hw != b.hw or a.flat != b.flat:
            raise _unsupported(node, "operands of different shapes (broadcasting is not supported)")
        scale = np.minimum(a.scale, b.scale)
        aligns, ranges, lo, hi = [], [], [], []
        for s in (a, b):
            chain, (vlo, vhi) = _align_chain(node, s, scale)
            aligns.append(chain)
            ranges.append((s.lo, s.hi))
            lo.append(vlo)
            hi.append(vhi)
        sub = node.op == "Sub"
        acc_lo = lo[0] - hi[1] if sub else lo[0] + lo[1]
        acc_hi = hi[0] - lo[1] if sub else hi[0] + hi[1]
        stage = AddLayer(name=node.name, kind="add", channels=a.width, in_hw=a.hw, out_hw=a.hw,
                         in_lo=min(a.lo, b.lo), in_hi=max(a.hi, b.hi), acc_lo=acc_lo, acc_hi=acc_hi, post=[],
                         src=(refs[0].hw_name, refs[1].hw_name), align=(aligns[0], aligns[1]),
                         in_ranges=(ranges[0], ranges[1]), subtract=sub)
        out = _Stream(scale, np.zeros(a.width, np.int64), acc_lo, acc_hi, a.width, a.hw, a.flat)
        self.add_stage(stage, node.outputs[0], out)


def _align_chain(node: Node, s: _Stream, scale: np.ndarray) -> tuple[list[PostOp], tuple[int, int]]:
    """q - z brought to `scale` exactly as qcc.integer._align: a rounding-shift requantization."""
    ratio = s.scale / scale
    lo_c = np.full(s.width, s.lo, np.int64) - s.zp
    hi_c = np.full(s.width, s.hi, np.int64) - s.zp
    if np.all(ratio == 1.0):
        return [PostOp("centre", {"zp": s.zp.copy()}, lo=int(lo_c.min()), hi=int(hi_c.max()))], \
            (int(lo_c.min()), int(hi_c.max()))
    pairs = [quantize_multiplier(float(m)) for m in ratio]
    m0 = np.array([p[0] for p in pairs], np.int64)
    n = np.array([p[1] for p in pairs], np.int64)
    if np.any(n < 0):
        raise _unsupported(node, "its operands' scales differ by a factor >= 2^31",
                           "calibrate with data that exercise both branches (--calib), or " + _CPU)
    rlo = int(requantize(lo_c, m0, n, 0, -_BIG, _BIG).min())
    rhi = int(requantize(hi_c, m0, n, 0, -_BIG, _BIG).max())
    op = PostOp("requant", {"m0": m0, "n": n, "zp": np.zeros(s.width, np.int64), "centre": s.zp.copy()},
                lo=rlo, hi=rhi)
    return [op], (rlo, rhi)


# ------------------------------------------------------------------------------ forks and FIFOs

def _capacity(stage) -> int:
    """Pixels a stage can hold between taking an input pixel and giving the matching output."""
    if isinstance(stage, ConvLayer) and stage.windowed:
        return (stage.window_rows + 1) * stage.in_shape[2] + 4
    if isinstance(stage, PoolLayer):
        return (stage.window_rows + 1) * stage.in_hw[1] + 4
    if isinstance(stage, ForkLayer):
        return max(stage.fifo_depths) + 2
    return 4


def _insert_forks(stages: list, streams: dict[str, StreamInfo], output: str, out_value: Value) -> list:
    readers: dict[str, list] = {}
    for st in stages:
        for i, name in enumerate(st.src):
            readers.setdefault(name, []).append((st, i))
    out: list = []
    forks: dict[str, ForkLayer] = {}
    for name, users in readers.items():
        if len(users) < 2 and name != output:
            continue
        if name == output:
            node = out_value.producer
            raise LoweringError("fpga", node.name, node.op, f"the graph output '{out_value.name}' is also read by "
                                "another layer (the output stream leaves the design)",
                                "make the output a value no other layer reads, or " + _CPU)
        info = streams[name]
        dsts = tuple(f"{name}_f{k}" for k in range(len(users)))
        fork = ForkLayer(name=f"fork_{name}", kind="fork", channels=info.channels, in_hw=(info.h, info.w),
                         out_hw=(info.h, info.w), in_lo=info.lo, in_hi=info.hi, acc_lo=info.lo, acc_hi=info.hi,
                         post=[], src=(name,), dst=dsts[0], dsts=dsts, fifo_depths=(2,) * len(users))
        for (st, i), d in zip(users, dsts):
            st.src = tuple(d if k == i else s for k, s in enumerate(st.src))
            streams[d] = info
        forks[name] = fork
    for st in stages:
        out.append(st)
        dsts = st.dsts if isinstance(st, ForkLayer) else (st.dst,)
        for d in dsts:
            if d in forks:
                out.append(forks[d])
    for fork in forks.values():
        fork.fifo_depths = tuple(_fifo_depth(out, fork, d) for d in fork.dsts)
    return out


def _fifo_depth(stages: list, fork: ForkLayer, dst: str) -> int:
    """Depth for the branch `dst`: the buffering of the other branches up to where they join."""
    other = [d for d in fork.dsts if d != dst]
    if not other:
        return 2
    need = max(_branch_capacity(stages, d) for d in other)
    return 1 << max(1, (need + 2 - 1).bit_length())


def _branch_capacity(stages: list, start: str, depth: int = 0) -> int:
    """Pixels held along the chain of single-input stages from stream `start` (stops at a join)."""
    total, name = 0, start
    for _ in range(len(stages)):
        nxt = next((st for st in stages if name in st.src), None)
        if nxt is None or len(nxt.src) > 1:
            return total
        total += _capacity(nxt)
        name = nxt.dsts[0] if isinstance(nxt, ForkLayer) else nxt.dst
    return total


# ------------------------------------------------------------------------------ entry point

def _input_stream(graph: Graph) -> tuple[Value, _Stream]:
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise QccError(f"lowering to target 'fpga' failed: the graph has {len(graph.inputs)} input(s) and "
                       f"{len(graph.outputs)} output(s), the design streams exactly one of each; " + _CPU)
    x = graph.inputs[0]
    if not isinstance(x.quant, Uniform) or x.quant.axis is not None:
        raise LoweringError("fpga", x.name, "input", "it needs a per-tensor uniform annotation (the host quantizes "
                            "the frames it streams)", _quantize_remedy(x).replace("\"uniform\" or \"bipolar\"",
                                                                                   "\"uniform\""))
    shape = x.type.shape
    if any(not isinstance(d, int) for d in shape[1:]):
        raise LoweringError("fpga", x.name, "input", f"symbolic feature dimensions {list(shape[1:])}",
                            "give the input fixed channel / height / width (only the batch may be symbolic), or "
                            + _CPU)
    spec = x.quant
    if len(shape) == 4:
        c, hw, flat = shape[1], (shape[2], shape[3]), False
    elif len(shape) == 2:
        c, hw, flat = shape[1], (1, 1), True
    else:
        raise LoweringError("fpga", x.name, "input", f"a rank-{len(shape)} input (the design streams N x C or "
                            "N x C x H x W)", _CPU)
    return x, _Stream(np.full(c, spec.scale, np.float64), np.full(c, spec.zero_point, np.int64),
                      spec.qmin, spec.qmax, c, hw, flat)


def _check_nodes(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op not in LOWERABLE_OPS:
            raise _unsupported_op(node)
        if len(node.outputs) != 1:
            raise _unsupported(node, "nodes with several outputs are not supported")


def _stream_info(stage) -> StreamInfo:
    hw = stage.out_hw if not isinstance(stage, DenseLayer) or isinstance(stage, ConvLayer) else (1, 1)
    channels = stage.n_out if isinstance(stage, DenseLayer) else stage.channels
    return StreamInfo(channels, hw[0], hw[1], stage.out_lo, stage.out_hi)


def plan_graph(graph: Graph) -> Plan:
    """The dataflow of `graph`, or a QccError naming the first node it cannot lower."""
    x, stream = _input_stream(graph)
    _check_nodes(graph)
    b = _Builder(graph)
    b.env[x.name] = _Ref(stream, None, "in")
    for node in graph.nodes:
        b.node(node)
    if not b.macs:
        raise QccError("lowering to target 'fpga' failed: the graph has no dense or convolution (Gemm / MatMul / "
                       "Conv) layer to build a design around; " + _CPU)
    out = graph.outputs[0]
    if out.producer is None or out.name not in b.env:
        raise QccError(f"lowering to target 'fpga' failed: the output '{out.name}' is not computed by a layer; "
                       + _CPU)
    r = b.env[out.name]
    streams = {"in": StreamInfo(stream.width, stream.hw[0], stream.hw[1], stream.lo, stream.hi)}
    for st in b.stages:
        streams[st.dst] = _stream_info(st)
    stages = _insert_forks(b.stages, streams, r.hw_name, out)
    s = r.stream
    hw = s.hw[0] * s.hw[1]
    return Plan(input_name=x.name, input_spec=x.quant, output_name=out.name, layers=b.macs,
                out_scale=np.repeat(np.asarray(s.scale, np.float64), hw),
                out_zp=np.repeat(np.asarray(s.zp, np.int64), hw), out_dtype=out.type.dtype,
                stages=stages, streams=streams, input_stream="in", output_stream=r.hw_name, ranges=b.ranges)
