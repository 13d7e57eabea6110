"""Small quantized nets, one per quantization scheme, made by qcc's own passes from random float graphs.

`graphs` draws annotations directly, which covers the IR; a target, though, receives what the
pipeline produces. `quantized_nets(scheme)` draws a float CNN of conv + batch norm + ReLU blocks,
optionally residual blocks and max pooling, and a GAP + dense head, calibrates it on random data,
and runs the scheme's pipeline, so every target is checked on the graphs users compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from qcc.ir.graph import Graph, Value
from qcc.ir.types import TensorType

__all__ = ["SCHEME_PIPELINES", "QuantizedNet", "quantized_nets", "float_cnns", "float_mlp"]

_QUANTIZE = "quantize{{w_bits={w},a_bits={a}}}"

# Each scheme's pipeline after canonicalize, calibrate; {w} and {a} are the drawn bit-widths.
SCHEME_PIPELINES: dict[str, str] = {
    "uniform": "fold-bn,calibrate," + _QUANTIZE,
    "fixed-point": "fold-bn,calibrate,quantize{{w_bits={w},a_bits={a},w_scheme=\"fixed\",a_scheme=\"fixed\"}}",
    "codebook": "fold-bn,calibrate," + _QUANTIZE + ",kmeans-codebook{{bits={w},replace=true}}",
    "thresholds": "calibrate," + _QUANTIZE + ",fold-bn{{thresholds=true}}",
    "bipolar": "fold-bn,calibrate,binarize{{keep_first_last=true,first_bits={a},last_bits={a}}}",
    "crops": "fold-bn,calibrate," + _QUANTIZE + ",crop-activations{{cut=\"TL\"}}",
    "residual": "fold-bn,calibrate," + _QUANTIZE + ",residual-rewrite",
}

@dataclass(frozen=True)
class QuantizedNet:
    scheme: str
    pipeline: str
    graph: Graph
    calibration: dict[str, np.ndarray]


class _Net:
    def __init__(self, draw):
        self.draw = draw
        self.g = Graph("net")
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, array: np.ndarray) -> Value:
        return self.g.add_constant(self.name("c"), array.astype(np.float32))

    def node(self, op: str, inputs: list, **attrs) -> Value:
        return self.g.add_node(op, inputs, attrs=attrs, name=self.name(op.lower())).output

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.draw(st.integers(0, 2**32 - 1)))

    def conv_bn(self, x: Value, cout: int, k: int, stride: int) -> Value:
        cin = int(x.type.shape[1])
        rng = self.rng()
        w = self.const(rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k)))
        y = self.node("Conv", [x, w, self.const(rng.normal(0, 0.1, cout))], strides=[stride, stride],
                      pads=[k // 2] * 4, kernel_shape=[k, k])
        bn = [rng.uniform(0.5, 1.5, cout), rng.normal(0, 0.2, cout), rng.normal(0, 0.2, cout),
              rng.uniform(0.5, 2.0, cout)]
        return self.node("BatchNormalization", [y, *map(self.const, bn)], epsilon=1e-5)


def float_mlp(dims: tuple[int, ...], seed: int = 0) -> Graph:
    """A float MLP: Gemm layers of widths `dims` with biases, ReLU between them, normal random weights."""
    rng = np.random.default_rng(seed)
    g = Graph()
    h = g.add_input("x", TensorType(("N", dims[0]), "float32"))
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = g.add_constant(f"w{i}", rng.normal(size=(b, a)).astype(np.float32))
        bias = g.add_constant(f"b{i}", rng.normal(size=(b,)).astype(np.float32))
        h = g.add_node("Gemm", [h, w, bias], attrs={"transB": 1}, name=f"fc{i}").outputs[0]
        if i < len(dims) - 2:
            h = g.add_node("Relu", [h], name=f"relu{i}").outputs[0]
    g.set_outputs([h])
    return g


@st.composite
def float_cnns(draw, max_blocks: int = 3, max_channels: int = 6) -> Graph:
    """A float CNN: conv + BN + ReLU blocks (some residual, some followed by max pooling) and a dense head."""
    net = _Net(draw)
    side = draw(st.integers(4, 8))
    x = net.g.add_input("x", TensorType(("N", draw(st.integers(1, 3)), side, side)))
    for _ in range(draw(st.integers(1, max_blocks))):
        c = draw(st.integers(1, max_channels))
        stride = 2 if int(x.type.shape[2]) >= 6 and draw(st.booleans()) else 1
        y = net.node("Relu", [net.conv_bn(x, c, draw(st.sampled_from([1, 3])), stride)])
        if draw(st.booleans()):  # a residual block: relu(x + bn(conv(relu(bn(conv(x))))))
            inner = net.node("Relu", [net.conv_bn(y, c, 3, 1)])
            y = net.node("Relu", [net.node("Add", [net.conv_bn(inner, c, 3, 1), y])])
        if int(y.type.shape[2]) >= 4 and draw(st.booleans()):
            y = net.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
        x = y
    flat = net.node("Flatten", [net.node("GlobalAveragePool", [x])], axis=1)
    classes, width = draw(st.integers(2, 5)), int(flat.type.shape[1])
    rng = net.rng()
    head = net.node("Gemm", [flat, net.const(rng.normal(0, 1 / np.sqrt(width), (classes, width))),
                             net.const(rng.normal(0, 0.1, classes))], transB=1)
    net.g.set_outputs([head])
    return net.g


@st.composite
def quantized_nets(draw, scheme: str = "uniform", *, max_layers: int = 4, max_channels: int = 6,
                   w_bits: tuple[int, int] = (2, 8), a_bits: tuple[int, int] = (2, 8), samples: int = 16):
    """A QuantizedNet: a random float CNN after `scheme`'s pipeline (SCHEME_PIPELINES)."""
    from qcc.pass_manager import PassContext, run_pipeline

    if scheme not in SCHEME_PIPELINES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEME_PIPELINES)}")
    graph = draw(float_cnns(max_blocks=max_layers, max_channels=max_channels))
    w = draw(st.integers(*w_bits))
    a = draw(st.integers(*a_bits))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (samples, *graph.inputs[0].type.shape[1:])
    calibration = {graph.inputs[0].name: rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)}
    pipeline = "canonicalize," + SCHEME_PIPELINES[scheme].format(w=w, a=a)
    run_pipeline(graph, pipeline, PassContext(config={"calib": calibration}))
    return QuantizedNet(scheme, pipeline, graph, calibration)
