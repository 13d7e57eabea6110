"""Which Conv / Gemm layers the CPU target runs as bit-serial TVM kernels, and how their results
rejoin the integer semantics.

`plan_layer` decides at compile time: the activation's annotation gives the code range (offset to
unsigned: x' = q - qmin, zx' = z - qmin), the weight constant gives the centred codes wc = qw - zw
(qcc.integer.constant_value), and these fix the kernel (`ConvSpec` / `DenseSpec`), the packed
weights and the zero-point correction. Kernels are built for batch 1 and run once per sample.

`LayerKernel.accumulate` computes the reference accumulator sum (qx - zx)(qw - zw) with the kernel;
`accelerated_result` then adds the bias and forms the accumulator scale exactly as qcc.integer does
for a MAC (bias round_half_even(b / (sx sw)), scale per output channel), so the layer's result
equals qcc.integer.evaluate_node bit for bit. A run-time argument the plan did not foresee (another
zero point, codes out of range, a cropped interior with other pads) falls back to evaluate_node.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from qcc.integer import QTensor, constant_value, evaluate_node, to_float
from qcc.ir.graph import Node
from qcc.ir.quant import Bipolar, Thresholds, Uniform
from qcc.numerics import bias_to_accumulator, channel_shape
from qcc.targets.cpu.kernels import (
    ConvSpec,
    DenseSpec,
    build_conv,
    build_dense,
    conv_correction,
    dense_correction,
    pack_conv_weights,
    pack_dense_weights,
    weight_bits,
)

__all__ = ["LayerPlan", "LayerKernel", "plan_layer", "accelerated_result", "spec_to_json", "spec_from_json",
           "MAX_BITS"]

MAX_BITS = 16  # widest activation / weight the bit-serial kernels take


@dataclass(frozen=True)
class LayerPlan:
    """A layer's kernel spec, compile-time operands and activation offset."""

    node: str
    spec: DenseSpec | ConvSpec
    wp: np.ndarray
    corr: np.ndarray
    qmin: int
    zx: int  # zero point of the offset codes


def _activation_range(spec) -> tuple[int, int, int] | None:
    """(qmin, qmax, zero point) of an activation annotation, or None when it is not integer."""
    if isinstance(spec, Uniform) and spec.axis is None:
        return spec.qmin, spec.qmax, int(spec.zero_point)
    if isinstance(spec, Bipolar) and getattr(spec, "axis", None) is None:
        return -1, 1, 0
    if isinstance(spec, Thresholds) and isinstance(spec.out_scale, float) and isinstance(spec.out_bias, float):
        ratio = spec.out_bias / spec.out_scale
        if float(ratio).is_integer():
            return 0, 2**spec.bits - 1, -int(ratio)
    return None


def _weight_codes(node: Node) -> np.ndarray | None:
    w = node.inputs[1]
    if w is None or not w.is_constant or w.quant is None:
        return None
    wv = constant_value(w)
    return wv.centred() if isinstance(wv, QTensor) else None


def _gemm_ok(node: Node, wc: np.ndarray) -> bool:
    a = node.attrs
    if a["alpha"] != 1.0 or a["beta"] != 1.0 or a["transA"] or wc.ndim != 2:
        return False
    w = constant_value(node.inputs[1])
    n_out = wc.shape[0] if a["transB"] else wc.shape[1]
    axis = 0 if a["transB"] else 1
    return w.scale.size == 1 or w.scale.shape[axis] == n_out


def _shape(node: Node) -> tuple[int, ...] | None:
    shape = node.inputs[0].type.shape
    return None if any(not isinstance(d, int) for d in shape[1:]) else tuple(shape)


def plan_layer(node: Node) -> LayerPlan | None:
    """The kernel plan for a Conv / Gemm with integer activations and weights, else None."""
    if node.op not in ("Conv", "Gemm") or len(node.inputs) < 2 or node.inputs[0] is None:
        return None
    rng = _activation_range(node.inputs[0].quant)
    wc = _weight_codes(node)
    shape = _shape(node)
    if rng is None or wc is None or shape is None:
        return None
    qmin, qmax, zp = rng
    a_bits = max(1, int(qmax - qmin).bit_length())
    bipolar = isinstance(node.inputs[0].quant, Bipolar) and isinstance(node.inputs[1].quant, Bipolar)
    w_bits = 1 if bipolar else weight_bits(wc)
    if a_bits > MAX_BITS or w_bits > MAX_BITS:
        return None
    zx = zp - qmin
    if node.op == "Gemm":
        if len(shape) != 2 or not _gemm_ok(node, wc):
            return None
        wm = wc if node.attrs["transB"] else wc.T  # [N, K]
        spec = DenseSpec(1, shape[1], wm.shape[0], a_bits, w_bits, bipolar)
        return LayerPlan(node.name, spec, pack_dense_weights(wm, w_bits, bipolar),
                         dense_correction(wm, zx, bipolar), qmin, zx)
    a = node.attrs
    if len(shape) != 4 or wc.ndim != 4:
        return None
    spec = ConvSpec(1, shape[1], shape[2], shape[3], wc.shape[0], wc.shape[2], wc.shape[3], a["group"],
                    tuple(a["strides"]), tuple(a["pads"]), tuple(a["dilations"]), a_bits, w_bits, bipolar)
    corr = conv_correction(wc, zx, bipolar, (shape[2], shape[3]), a)
    return LayerPlan(node.name, spec, pack_conv_weights(wc, w_bits, bipolar), corr, qmin, zx)


def spec_to_json(spec: DenseSpec | ConvSpec) -> dict:
    doc = {f.name: getattr(spec, f.name) for f in fields(spec)}
    doc["kind"] = "dense" if isinstance(spec, DenseSpec) else "conv"
    return {k: list(v) if isinstance(v, tuple) else v for k, v in doc.items()}


def spec_from_json(doc: dict) -> DenseSpec | ConvSpec:
    doc = dict(doc)
    cls = DenseSpec if doc.pop("kind") == "dense" else ConvSpec
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})


class LayerKernel:
    """A compiled kernel with its packed operands; `accumulate` runs it sample by sample."""

    def __init__(self, plan: LayerPlan, function=None):
        import tvm

        self.plan = plan
        self._dev = tvm.cpu()
        if function is None:
            build = build_dense if isinstance(plan.spec, DenseSpec) else build_conv
            function = build(plan.spec)["main"]
        self._fn = function
        self._wp = tvm.runtime.tensor(plan.wp, self._dev)
        self._corr = tvm.runtime.tensor(plan.corr, self._dev)

    def accepts(self, node: Node, x) -> bool:
        spec = self.plan.spec
        if not (isinstance(x, QTensor) and x.per_tensor) or int(x.zero_point.reshape(())) - self.plan.qmin \
                != self.plan.zx:
            return False
        if x.q.size and (x.q.min() < self.plan.qmin or x.q.max() - self.plan.qmin >= 2**spec.a_bits):
            return False
        if isinstance(spec, ConvSpec):
            return x.q.shape[1:] == (spec.c, spec.h, spec.w) and tuple(node.attrs["pads"]) == spec.pads
        return x.q.ndim == 2 and x.q.shape[1] == spec.k

    def accumulate(self, x: QTensor) -> np.ndarray:
        """sum (qx - zx)(qw - zw) in int64: [B, N] for dense, [B, CO, OH, OW] for conv."""
        import tvm

        spec = self.plan.spec
        codes = (x.q - self.plan.qmin).astype(np.int32)
        if isinstance(spec, DenseSpec):
            out_shape, n = (1, spec.n_pad), spec.n
        else:
            out_shape, n = (1, spec.co_pad, *spec.out_hw), spec.co
        out = tvm.runtime.tensor(np.zeros(out_shape, np.int64), self._dev)
        results = []
        for b in range(codes.shape[0]):
            self._fn(tvm.runtime.tensor(np.ascontiguousarray(codes[b:b + 1]), self._dev), self._wp, self._corr, out)
            results.append(out.numpy()[:, :n])
        return np.concatenate(results, axis=0) if results else np.zeros((0, *out_shape[1:]), np.int64)


def _vector(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.size == 1:
        return np.full(n, a.reshape(()), dtype=a.dtype)
    return np.moveaxis(a, axis, 0).reshape(n, -1)[:, 0]


def accelerated_result(node: Node, args: list, kernel: LayerKernel) -> list:
    """The layer's integer result (accumulator + bias, at scale sx*sw) using the kernel; falls back to
    qcc.integer.evaluate_node for arguments the plan does not cover."""
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    if not (isinstance(w, QTensor) and kernel.accepts(node, x)):
        return evaluate_node(node, args)
    acc = kernel.accumulate(x)
    if node.op == "Conv":
        channels, out_axis = w.q.shape[0], 1
        w_scale = _vector(w.scale, 0, channels)
    else:
        trans_b = node.attrs["transB"]
        channels, out_axis = acc.shape[1], 1
        w_scale = _vector(w.scale, 0 if trans_b else w.q.ndim - 1, channels)
    acc_scale = float(x.scale.reshape(())) * w_scale.astype(np.float64)
    if bias is not None:
        b = to_float(bias, np.float64).reshape(-1)
        if b.size not in (1, channels):
            return evaluate_node(node, args)
        b = np.broadcast_to(b, (channels,))
        acc = acc + bias_to_accumulator(b, acc_scale).reshape(channel_shape(acc.ndim, out_axis, channels))
    scale = acc_scale.reshape(channel_shape(acc.ndim, out_axis, channels)) if np.ptp(acc_scale) \
        else np.asarray(acc_scale[0])
    return [QTensor(acc, scale, np.zeros((), np.int64))]
