"""Hypothesis strategies for whole graphs: small random CNN-like DAGs with every annotation scheme.

Use them to test your own passes and targets against the reference interpreter:

    from hypothesis import given
    from qcc.testing import graphs, graph_inputs

    @given(data=st.data())
    def test_my_pass(data):
        g = data.draw(graphs())
        x = data.draw(graph_inputs(g))
        ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from qcc.ir.graph import Graph, Value
from qcc.ir.quant import Bipolar, Codebook, Region, Thresholds, Uniform
from qcc.ir.types import TensorType
from qcc.numerics import fake_quant

__all__ = ["GraphOptions", "graphs", "graph_inputs", "weight_annotations", "activation_annotations",
           "ALL_SCHEMES"]

ALL_SCHEMES = ("uniform", "codebook", "thresholds", "bipolar", "region")
LAYERS = ("conv", "depthwise", "relu", "bn", "add", "maxpool", "avgpool", "concat", "clip")


@dataclass(frozen=True)
class GraphOptions:
    """Knobs for `graphs`: size, which layers may appear, which annotation schemes are drawn."""

    max_layers: int = 6
    max_channels: int = 8
    min_side: int = 4
    max_side: int = 10
    layers: tuple[str, ...] = LAYERS
    schemes: tuple[str, ...] = ALL_SCHEMES
    annotate: bool = True
    head: bool = True  # end with GlobalAveragePool + Flatten + Gemm
    symbolic_batch: bool = False


def _scale(draw) -> float:
    return draw(st.sampled_from([2.0**-k for k in range(2, 9)] + [0.013, 0.05, 0.1, 0.37]))


def weight_annotations(schemes: tuple[str, ...] = ALL_SCHEMES, channels: int = 1):
    """A strategy of specs for a weight tensor whose axis 0 has `channels` entries."""
    choices = [s for s in ("uniform", "codebook", "bipolar") if s in schemes]

    @st.composite
    def build(draw):
        scheme = draw(st.sampled_from(choices))
        per_channel = draw(st.booleans())
        if scheme == "uniform":
            bits = draw(st.integers(2, 8))
            if per_channel:
                scale = tuple(_scale(draw) for _ in range(channels))
                return Uniform(bits=bits, signed=True, scale=scale, zero_point=(0,) * channels, axis=0)
            return Uniform(bits=bits, signed=True, scale=_scale(draw), zero_point=0)
        if scheme == "codebook":
            bits = draw(st.integers(1, 4))
            table = draw(st.lists(st.integers(-127, 127), min_size=1, max_size=2**bits, unique=True))
            return Codebook(bits=bits, centroids=tuple(sorted(table)), centroid_bits=8,
                            centroid_scale=_scale(draw))
        if per_channel:
            return Bipolar(scale=tuple(_scale(draw) for _ in range(channels)), axis=0)
        return Bipolar(scale=_scale(draw))

    return build()


def activation_annotations(schemes: tuple[str, ...] = ALL_SCHEMES, channels: int = 1):
    """A strategy of specs for an NCHW activation with `channels` channels."""
    choices = [s for s in ("uniform", "thresholds", "bipolar") if s in schemes]

    @st.composite
    def build(draw):
        scheme = draw(st.sampled_from(choices))
        if scheme == "uniform":
            bits = draw(st.integers(2, 8))
            signed = draw(st.booleans())
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            return Uniform(bits=bits, signed=signed, scale=_scale(draw), zero_point=draw(st.integers(lo, hi)))
        if scheme == "thresholds":
            bits = draw(st.integers(1, 3))
            rows = 1 if draw(st.booleans()) else channels
            width = 2**bits - 1
            table = [tuple(sorted(draw(st.lists(st.floats(-2, 2, width=32), min_size=width, max_size=width))))
                     for _ in range(rows)]
            return Thresholds(bits=bits, thresholds=tuple(table), out_scale=_scale(draw),
                              out_bias=draw(st.sampled_from([0.0, -0.5, 0.25])))
        return Bipolar(scale=_scale(draw))

    return build()


class _Builder:
    def __init__(self, draw, opts: GraphOptions):
        self.draw = draw
        self.opts = opts
        self.g = Graph("random")
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def weight(self, shape: tuple[int, ...]) -> Value:
        draw, opts = self.draw, self.opts
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        data = rng.normal(0, 0.5, size=shape).astype(np.float32)
        spec = None
        if opts.annotate and draw(st.booleans()) and {"uniform", "codebook", "bipolar"} & set(opts.schemes):
            spec = draw(weight_annotations(opts.schemes, channels=shape[0]))
            data = fake_quant(data, spec)  # constants hold values on their grid
        return self.g.add_constant(self.name("w"), data, quant=spec)

    def annotate(self, v: Value) -> None:
        draw, opts = self.draw, self.opts
        if not opts.annotate or not draw(st.booleans()):
            return
        if {"uniform", "thresholds", "bipolar"} & set(opts.schemes) and draw(st.booleans()):
            v.quant = draw(activation_annotations(opts.schemes, channels=int(v.type.shape[1])))
        if "region" in opts.schemes and v.type.rank == 4 and draw(st.booleans()):
            h, w = v.type.shape[2], v.type.shape[3]
            top = draw(st.integers(0, (h - 1) // 2))
            bottom = draw(st.integers(0, h - 1 - top - 1)) if h - 1 - top > 0 else 0
            left = draw(st.integers(0, (w - 1) // 2))
            right = draw(st.integers(0, w - 1 - left - 1)) if w - 1 - left > 0 else 0
            v.region = Region(top, bottom, left, right)

    def add(self, op: str, inputs, **attrs) -> Value:
        node = self.g.add_node(op, inputs, attrs=attrs, name=self.name(op.lower()))
        out = node.output
        self.annotate(out)
        return out

    def layer(self, kind: str, x: Value, history: list[Value]) -> Value | None:
        draw = self.draw
        c, h, w = (int(d) for d in x.type.shape[1:])
        if kind in ("conv", "depthwise"):
            k = draw(st.sampled_from([1, 3]))
            stride = draw(st.sampled_from([1, 1, 2]))
            pad = draw(st.integers(0, k // 2))
            if (h + 2 * pad - k) < 0 or (w + 2 * pad - k) < 0 or min(h, w) < 3:
                return None
            if kind == "depthwise":
                cout, group = c, c
            else:
                cout = draw(st.integers(1, self.opts.max_channels))
                group = draw(st.sampled_from([g for g in (1, 2) if c % g == 0 and cout % g == 0]))
            wt = self.weight((cout, c // group, k, k))
            bias = self.g.add_constant(self.name("b"), draw_bias(draw, cout)) if draw(st.booleans()) else None
            inputs = [x, wt] + ([bias] if bias is not None else [])
            return self.add("Conv", inputs, group=group, strides=[stride, stride], pads=[pad] * 4)
        if kind == "relu":
            return self.add("Relu", [x])
        if kind == "clip":
            return self.add("Clip", [x], min=0.0, max=draw(st.sampled_from([1.0, 6.0])))
        if kind == "bn":
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            params = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                      rng.uniform(0.5, 2.0, c)]
            consts = [self.g.add_constant(self.name("bn"), p.astype(np.float32)) for p in params]
            return self.add("BatchNormalization", [x, *consts], epsilon=1e-5)
        if kind == "add":
            same = [v for v in history if v is not x and v.type.shape == x.type.shape]
            if not same:
                return None
            return self.add("Add", [x, draw(st.sampled_from(same))])
        if kind in ("maxpool", "avgpool"):
            if min(h, w) < 4:
                return None
            op = "MaxPool" if kind == "maxpool" else "AveragePool"
            return self.add(op, [x], kernel_shape=[2, 2], strides=[2, 2])
        if kind == "concat":
            same = [v for v in history if v.type.shape[2:] == x.type.shape[2:] and v.type.rank == 4]
            return self.add("Concat", [x, draw(st.sampled_from(same))], axis=1)
        raise ValueError(kind)


def draw_bias(draw, n: int) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.normal(0, 0.1, n).astype(np.float32)


@st.composite
def graphs(draw, options: GraphOptions | None = None) -> Graph:
    """A small random valid Graph (passes the verifier) over an NCHW input."""
    opts = options or GraphOptions()
    b = _Builder(draw, opts)
    c = draw(st.integers(1, opts.max_channels))
    h = draw(st.integers(opts.min_side, opts.max_side))
    w = draw(st.integers(opts.min_side, opts.max_side))
    batch = "N" if opts.symbolic_batch else 1
    x = b.g.add_input("x", TensorType((batch, c, h, w)))
    history = [x]
    for _ in range(draw(st.integers(1, opts.max_layers))):
        kind = draw(st.sampled_from(opts.layers))
        out = b.layer(kind, history[-1], history)
        if out is not None:
            history.append(out)
    y = history[-1]
    if opts.head:
        gap = b.add("GlobalAveragePool", [y])
        flat = b.g.add_node("Flatten", [gap], attrs={"axis": 1}, name=b.name("flatten")).output
        classes = draw(st.integers(1, 5))
        wt = b.weight((classes, int(flat.type.shape[1])))
        y = b.g.add_node("Gemm", [flat, wt], attrs={"transB": 1}, name=b.name("gemm")).output
    b.g.set_outputs([y])
    return b.g


def graph_inputs(graph: Graph, batch: int = 1, low: float = -2.0, high: float = 2.0):
    """A strategy of input dicts for `graph` (symbolic dims get `batch`), finite float32 values."""

    @st.composite
    def build(draw):
        out = {}
        for v in graph.inputs:
            shape = v.type.concrete(batch)
            seed = draw(st.integers(0, 2**32 - 1))
            rng = np.random.default_rng(seed)
            out[v.name] = rng.uniform(low, high, size=shape).astype(v.type.dtype)
        return out

    return build()
