"""From a quantized graph to the integer plan the RTL implements: a chain of dense layers.

The plan is pure numbers taken from the integer specification (qcc.integer / qcc.numerics), so the
hardware computes exactly what the reference interpreter computes:

- the graph input is quantized on the host (qcc.numerics.quantize), the design streams its codes;
- a Gemm is a matrix-vector unit: acc = bias_acc + sum (qx - zx) * wc with wc the centred weight
  codes and bias_acc = round_half_even(b / (sx sw)) (qcc.numerics.bias_to_accumulator);
- after the accumulator a chain of per-channel integer post-ops follows: Relu (max with the zero
  point), a uniform annotation (requantize: M0 * 2^-n, rounding shift half to even, zero point,
  saturation), a thresholds annotation (comparator chain, qcc.numerics.integer_thresholds), a
  bipolar annotation (sign); Flatten / Reshape / Identity between layers are free;
- the last value's codes are dequantized on the host with the scale the reference uses.

Every code range is tracked exactly (an interval per stage), so accumulator and stream widths are
sized from the worst case and nothing overflows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qcc.errors import QccError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Bipolar, Thresholds, Uniform
from qcc.numerics import bias_to_accumulator, channel_shape, integer_thresholds, quantize, quantize_multiplier

__all__ = ["PostOp", "DenseLayer", "Plan", "plan_graph", "signed_bits", "LOWERABLE_OPS"]

LOWERABLE_OPS = ("Gemm", "MatMul", "Relu", "Flatten", "Reshape", "Identity")
_FREE_OPS = {"Flatten", "Reshape", "Identity"}


def signed_bits(lo: int, hi: int) -> int:
    """Bits of a two's complement number holding every integer in [lo, hi]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


@dataclass(frozen=True)
class PostOp:
    """One per-channel integer step after the accumulator.

    kind: "relu" (params zp), "requant" (m0, n, zp, qmin, qmax), "thresholds" (table [C, T]),
    "bipolar" (zp). Parameters are int64 vectors of length C (one per output channel).
    lo / hi: the range of this step's output codes.
    """

    kind: str
    params: dict = field(default_factory=dict)
    lo: int = 0
    hi: int = 0


@dataclass
class DenseLayer:
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

    @property
    def weight_width(self) -> int:
        return signed_bits(int(self.weights.min(initial=0)), int(self.weights.max(initial=0)))

    @property
    def cycles(self) -> int:
        return math.ceil(self.n_in / self.simd) * math.ceil(self.n_out / self.pe)


@dataclass
class Plan:
    input_name: str
    input_spec: Uniform
    output_name: str
    layers: list[DenseLayer]
    out_scale: np.ndarray  # per output channel, float64
    out_zp: np.ndarray  # per output channel, int64
    out_dtype: str = "float32"


@dataclass
class _Stream:
    """What the reference knows about a value: per-channel scale / zero point and code range."""

    scale: np.ndarray  # [C] float64 (or [1] for per tensor)
    zp: np.ndarray  # [C] int64 (or [1])
    lo: int
    hi: int
    width: int  # channels

    @property
    def per_tensor(self) -> bool:
        return np.ptp(self.scale) == 0 and np.ptp(self.zp) == 0


def _unsupported(node: Node, why: str) -> QccError:
    return QccError(f"fpga target cannot lower node '{node.name}' ({node.op}): {why}")


def _vec(a, n: int, dtype) -> np.ndarray:
    a = np.asarray(a, dtype=dtype).reshape(-1)
    return np.full(n, a[0], dtype=dtype) if a.size == 1 else a.copy()


def _spec_vectors(spec, n: int) -> tuple[np.ndarray, np.ndarray]:
    scale = _vec(getattr(spec, "scale", 1.0), n, np.float64)
    zp = _vec(getattr(spec, "zero_point", 0), n, np.int64)
    return scale, zp


def _weights(node: Node, w: Value) -> tuple[np.ndarray, np.ndarray, int]:
    """Centred weight codes [out, in], per-output-channel weight scales, weight bits."""
    spec = w.quant
    data = np.asarray(w.data, dtype=np.float64)
    if data.ndim != 2:
        raise _unsupported(node, "the weight must be a 2-D constant")
    trans = node.op == "Gemm" and node.attrs.get("transB", 0)
    mat = data if trans else data.T  # [out, in]
    w_axis = 0 if trans else 1
    if isinstance(spec, Bipolar):
        codes = np.where(mat >= 0, 1, -1).astype(np.int64)
        scale = np.asarray(spec.scale, np.float64).reshape(-1)
        return codes, _vec(scale, mat.shape[0], np.float64), 1
    if not isinstance(spec, Uniform):
        raise _unsupported(node, f"weights must be uniform or bipolar, not {getattr(spec, 'scheme', 'float')}")
    scale = np.asarray(spec.scale, np.float64).reshape(-1)
    if spec.axis is not None and (spec.axis != w_axis or scale.size not in (1, mat.shape[0])):
        raise _unsupported(node, "per-channel weight quantization must be along the output channels")
    zp = np.asarray(spec.zero_point, np.int64).reshape(channel_shape(2, spec.axis, np.size(spec.zero_point)))
    centred = quantize(data.astype(np.float32), spec) - zp
    centred = centred if trans else centred.T
    return centred.astype(np.int64), _vec(scale, mat.shape[0], np.float64), spec.bits


def _dense(node: Node, stream: _Stream) -> tuple[DenseLayer, _Stream]:
    if node.op == "Gemm" and (node.attrs["alpha"] != 1.0 or node.attrs["beta"] != 1.0 or node.attrs["transA"]):
        raise _unsupported(node, "alpha, beta must be 1 and transA 0")
    w = node.inputs[1]
    if not w.is_constant:
        raise _unsupported(node, "the weight must be a constant")
    if not stream.per_tensor:
        raise _unsupported(node, "the input activation must be quantized per tensor")
    wc, w_scale, w_bits = _weights(node, w)
    n_out, n_in = wc.shape
    if n_in != stream.width:
        raise _unsupported(node, f"expects {n_in} inputs, the stream carries {stream.width}")
    acc_scale = float(stream.scale[0]) * w_scale
    bias = np.zeros(n_out, np.int64)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        b = node.inputs[2]
        if not b.is_constant or b.quant is not None:
            raise _unsupported(node, "the bias must be a float constant")
        bias = bias_to_accumulator(np.broadcast_to(np.asarray(b.data, np.float64).reshape(-1), (n_out,)), acc_scale)
    zx = int(stream.zp[0])
    xlo, xhi = stream.lo - zx, stream.hi - zx
    lo = bias + np.minimum(wc * xlo, wc * xhi).sum(axis=1)
    hi = bias + np.maximum(wc * xlo, wc * xhi).sum(axis=1)
    layer = DenseLayer(name=node.name, n_in=n_in, n_out=n_out, weights=wc, bias=bias, in_zp=zx,
                       in_lo=stream.lo, in_hi=stream.hi, acc_lo=int(lo.min()), acc_hi=int(hi.max()),
                       post=[], weight_bits=w_bits, act_bits=signed_bits(stream.lo, stream.hi))
    out = _Stream(scale=acc_scale, zp=np.zeros(n_out, np.int64), lo=layer.acc_lo, hi=layer.acc_hi, width=n_out)
    return layer, out


def _requant(node: Node, stream: _Stream, spec: Uniform) -> tuple[PostOp, _Stream]:
    c = stream.width
    out_scale, out_zp = _spec_vectors(spec, c)
    pairs = [quantize_multiplier(float(m)) for m in stream.scale / out_scale]
    if any(n < 0 for _, n in pairs):
        raise _unsupported(node, "a requantization multiplier >= 2^31 (degenerate activation range)")
    params = {"m0": np.array([p[0] for p in pairs], np.int64), "n": np.array([p[1] for p in pairs], np.int64),
              "zp": out_zp, "centre": stream.zp.copy()}
    op = PostOp("requant", params, lo=spec.qmin, hi=spec.qmax)
    return op, _Stream(out_scale, out_zp, spec.qmin, spec.qmax, c)


def _threshold_op(node: Node, stream: _Stream, spec: Thresholds) -> tuple[PostOp, _Stream]:
    c = stream.width
    if len(spec.thresholds) == 1:
        table = np.stack([integer_thresholds(spec, stream.scale[ch], stream.zp[ch])[0] for ch in range(c)])
    else:
        table = integer_thresholds(spec, stream.scale, stream.zp)
    if table.shape[0] != c:
        raise _unsupported(node, f"{table.shape[0]} threshold rows for {c} channels")
    ratio = spec.out_bias / spec.out_scale
    if not float(ratio).is_integer():
        raise _unsupported(node, "thresholds whose out_bias is not a multiple of out_scale (a float result)")
    table = np.clip(table, stream.lo, stream.hi + 1)  # beyond the input range: always / never reached
    levels = table.shape[1]
    op = PostOp("thresholds", {"table": table}, lo=0, hi=levels)
    return op, _Stream(_vec(spec.out_scale, c, np.float64), np.full(c, -int(ratio), np.int64), 0, levels, c)


def _annotation(node: Node, value: Value, stream: _Stream) -> tuple[PostOp | None, _Stream]:
    spec = value.quant
    if value.region is not None and not value.region.empty:
        raise _unsupported(node, "cropped regions")
    if spec is None:
        return None, stream
    if isinstance(spec, Uniform):
        return _requant(node, stream, spec)
    if isinstance(spec, Thresholds):
        return _threshold_op(node, stream, spec)
    if isinstance(spec, Bipolar):
        c = stream.width
        op = PostOp("bipolar", {"zp": stream.zp.copy()}, lo=-1, hi=1)
        return op, _Stream(_vec(spec.scale, c, np.float64), np.zeros(c, np.int64), -1, 1, c)
    raise _unsupported(node, f"a {spec.scheme} annotation on an activation")


def _input_stream(graph: Graph) -> tuple[Value, _Stream]:
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise QccError("fpga target: the graph must have exactly one input and one output")
    x = graph.inputs[0]
    if not isinstance(x.quant, Uniform) or x.quant.axis is not None:
        raise QccError(f"fpga target: input '{x.name}' must carry a per-tensor uniform annotation "
                       "(run the quantize pass first)")
    width = int(np.prod([d for d in x.type.shape[1:]]))
    spec = x.quant
    return x, _Stream(np.array([spec.scale], np.float64), np.array([spec.zero_point], np.int64),
                      spec.qmin, spec.qmax, width)


def _check_chain(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op not in LOWERABLE_OPS:
            raise _unsupported(node, f"the op is not supported (supported: {', '.join(LOWERABLE_OPS)})")
        acts = [v for v in node.inputs if v is not None and not v.is_constant]
        if len(acts) != 1 or len(node.outputs) != 1:
            raise _unsupported(node, "only single-input chains are supported")
        if any(not isinstance(d, int) for d in node.outputs[0].type.shape[1:]):
            raise _unsupported(node, "symbolic feature dimensions")


def plan_graph(graph: Graph) -> Plan:
    """The dense-layer chain of `graph`, or a QccError naming the first node it cannot lower."""
    x, stream = _input_stream(graph)
    _check_chain(graph)
    layers: list[DenseLayer] = []
    current: DenseLayer | None = None
    for node in graph.nodes:
        if node.op in ("Gemm", "MatMul"):
            current, stream = _dense(node, stream)
            layers.append(current)
        elif node.op == "Relu":
            if current is None:
                raise _unsupported(node, "a Relu before the first dense layer")
            current.post.append(PostOp("relu", {"zp": stream.zp.copy()}, lo=max(stream.lo, int(stream.zp.min())),
                                       hi=max(stream.hi, int(stream.zp.max()))))
            stream = _Stream(stream.scale, stream.zp, current.post[-1].lo, current.post[-1].hi, stream.width)
        elif node.op in _FREE_OPS and not stream.per_tensor and current is not None:
            raise _unsupported(node, "reshaping a per-channel stream")
        post, stream = _annotation(node, node.outputs[0], stream)
        if post is not None:
            if current is None:
                raise _unsupported(node, "an annotation before the first dense layer")
            current.post.append(post)
    if not layers:
        raise QccError("fpga target: the graph has no dense (Gemm / MatMul) layer")
    out = graph.outputs[0]
    if out.producer is None:
        raise QccError("fpga target: the output must be computed by the graph")
    return Plan(input_name=x.name, input_spec=x.quant, output_name=out.name, layers=layers,
                out_scale=np.asarray(stream.scale, np.float64), out_zp=np.asarray(stream.zp, np.int64),
                out_dtype=out.type.dtype)
