"""Synthetic ResNet-style ONNX models for the import benchmark (random weights, fixed seed).

`resnet(blocks_per_stage=(2, 2, 2, 2), width=64)` is ResNet-18's layout (11.7 M parameters at width 64
and 1000 classes); scaling `blocks_per_stage` gives the 1x / 4x / 16x layer-count series.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["resnet"]


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}_{self.n}"

    def const(self, array: np.ndarray) -> str:
        name = self.name("w")
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        name = self.name(op)
        out = name + "_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/{name}/{op}", **attrs))
        return out

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        w = self.const(self.rng.normal(0, (2 / (cin * k * k)) ** 0.5, (cout, cin, k, k)))
        y = self.node("Conv", [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        bn = [self.const(self.rng.uniform(0.5, 1.5, cout)), self.const(self.rng.normal(0, 0.1, cout)),
              self.const(self.rng.normal(0, 0.1, cout)), self.const(self.rng.uniform(0.5, 1.5, cout))]
        y = self.node("BatchNormalization", [y, *bn], epsilon=1e-5)
        return self.node("Relu", [y]) if relu else y


def resnet(blocks_per_stage=(2, 2, 2, 2), width: int = 64, classes: int = 1000, image: int = 224,
           seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    y = b.conv_bn("input", 3, width, 7, 2, relu=True)
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage, blocks in enumerate(blocks_per_stage):
        cout = width * 2**stage
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            h = b.conv_bn(y, cin, cout, 3, stride, relu=True)
            h = b.conv_bn(h, cout, cout, 3, 1, relu=False)
            skip = b.conv_bn(y, cin, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else y
            y = b.node("Relu", [b.node("Add", [h, skip])])
            cin = cout
    y = b.node("GlobalAveragePool", [y])
    y = b.node("Flatten", [y], axis=1)
    w = b.const(b.rng.normal(0, 0.01, (classes, cin)))
    bias = b.const(np.zeros(classes))
    y = b.node("Gemm", [y, w, bias], transB=1)
    b.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        b.nodes, "resnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
