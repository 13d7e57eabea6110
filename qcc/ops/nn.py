"""Layers with weights: Conv, Gemm, MatMul, BatchNormalization."""

from __future__ import annotations

import numpy as np

from qcc.errors import ShapeError
from qcc.ir.types import TensorType
from qcc.ops._shapes import broadcast, conv_out, same_dtype, spatial_defaults
from qcc.ops.registry import AttrSpec, OpDef, register

__all__ = ["windows"]


def _conv_pads_default(in_types):
    return spatial_defaults(0)(in_types) * 2


def _conv_kernel_default(in_types):
    w = in_types[1] if len(in_types) > 1 else None
    return [int(d) for d in w.shape[2:]] if w is not None else []


def _conv_infer(in_types, attrs):
    x, w = in_types[0], in_types[1]
    b = in_types[2] if len(in_types) > 2 else None
    if x.rank < 3 or w.rank != x.rank:
        raise ShapeError(f"input rank {x.rank} and weight rank {w.rank} must be equal and >= 3")
    nsp = x.rank - 2
    group = attrs["group"]
    k, s, d, p = attrs["kernel_shape"], attrs["strides"], attrs["dilations"], attrs["pads"]
    if len(k) != nsp or len(s) != nsp or len(d) != nsp or len(p) != 2 * nsp:
        raise ShapeError(f"kernel_shape/strides/dilations/pads do not fit {nsp} spatial dims")
    if list(w.shape[2:]) != list(k):
        raise ShapeError(f"kernel_shape {k} does not match weight shape {list(w.shape)}")
    if any(v < 1 for v in (*s, *d)) or any(v < 0 for v in p) or group < 1:
        raise ShapeError("strides, dilations and group must be >= 1 and pads >= 0")
    cin, cout = x.shape[1], w.shape[0]
    if isinstance(cin, int) and cin != w.shape[1] * group:
        raise ShapeError(f"input has {cin} channels but weight expects {w.shape[1]} x group {group}")
    if cout % group:
        raise ShapeError(f"{cout} output channels are not divisible by group {group}")
    if b is not None and (b.rank != 1 or b.shape[0] != cout):
        raise ShapeError(f"bias shape {list(b.shape)} does not match {cout} output channels")
    if attrs["auto_pad"] != "NOTSET":
        raise ShapeError("auto_pad must be resolved to explicit pads (the frontend does this)")
    spatial = [conv_out(x.shape[2 + i], k[i], s[i], p[i], p[i + nsp], d[i]) for i in range(nsp)]
    return [TensorType((x.shape[0], cout, *spatial), same_dtype([x, w]))]


def _pad_spatial(x: np.ndarray, pads: list[int], value: float = 0.0) -> np.ndarray:
    nsp = x.ndim - 2
    if not any(pads):
        return x
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + nsp]) for i in range(nsp)]
    return np.pad(x, widths, constant_values=value)


def windows(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int]) -> np.ndarray:
    """View of x [N, C, *S] as [N, C, *out, *kernel] sliding windows (no copy)."""
    nsp = x.ndim - 2
    span = [dilations[i] * (kernel[i] - 1) + 1 for i in range(nsp)]
    view = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + nsp)))
    index = (slice(None), slice(None))
    index += tuple(slice(None, None, strides[i]) for i in range(nsp))
    index += tuple(slice(None, None, dilations[i]) for i in range(nsp))
    return view[index]


def _conv_eval(args, attrs):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    nsp = x.ndim - 2
    xp = _pad_spatial(x, attrs["pads"])
    cols = windows(xp, attrs["kernel_shape"], attrs["strides"], attrs["dilations"])  # N,C,*O,*K
    g = attrs["group"]
    n, c = x.shape[:2]
    out_sp = cols.shape[2:2 + nsp]
    cols = cols.reshape(n, g, c // g, *out_sp, *attrs["kernel_shape"])
    wg = w.reshape(g, w.shape[0] // g, *w.shape[1:])  # G, Cout/G, Cin/G, *K
    sp = "hijk"[:nsp]
    ks = "pqrs"[:nsp]
    y = np.einsum(f"ngc{sp}{ks},goc{ks}->ngo{sp}", cols, wg, optimize=True)
    y = y.reshape(n, w.shape[0], *out_sp)
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * nsp))
    return [y.astype(x.dtype, copy=False)]


def _conv_macs(in_types, out_types, attrs):
    w = in_types[1]
    per_out = int(np.prod(w.shape[1:]))
    return out_types[0].numel() * per_out


register(OpDef(
    name="Conv",
    inputs=("X", "W", "B?"),
    attrs={
        "group": AttrSpec("int", 1),
        "kernel_shape": AttrSpec("ints", _conv_kernel_default),
        "strides": AttrSpec("ints", spatial_defaults(1)),
        "dilations": AttrSpec("ints", spatial_defaults(1)),
        "pads": AttrSpec("ints", _conv_pads_default),
        "auto_pad": AttrSpec("str", "NOTSET"),
    },
    infer=_conv_infer,
    evaluate=_conv_eval,
    macs=_conv_macs,
    doc="N-d convolution with groups (depthwise when group == channels), strides, pads, dilations.",
))


def _gemm_infer(in_types, attrs):
    a, b = in_types[0], in_types[1]
    c = in_types[2] if len(in_types) > 2 else None
    if a.rank != 2 or b.rank != 2:
        raise ShapeError(f"Gemm needs 2-d inputs, got ranks {a.rank} and {b.rank}")
    m, ka = (a.shape[1], a.shape[0]) if attrs["transA"] else a.shape
    kb, n = (b.shape[1], b.shape[0]) if attrs["transB"] else b.shape
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise ShapeError(f"inner dims differ: {list(a.shape)} x {list(b.shape)}")
    if c is not None:
        if broadcast(c.shape, (m, n)) != (m, n):
            raise ShapeError(f"bias {list(c.shape)} does not broadcast to {[m, n]}")
    return [TensorType((m, n), same_dtype([a, b]))]


def _gemm_eval(args, attrs):
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    y = attrs["alpha"] * (a @ b)
    if c is not None:
        y = y + attrs["beta"] * c
    return [y.astype(args[0].dtype, copy=False)]


def _gemm_macs(in_types, out_types, attrs):
    a = in_types[0]
    k = a.shape[0] if attrs["transA"] else a.shape[1]
    k = 1 if isinstance(k, str) else k
    return out_types[0].numel() * k


register(OpDef(
    name="Gemm",
    inputs=("A", "B", "C?"),
    attrs={
        "alpha": AttrSpec("float", 1.0),
        "beta": AttrSpec("float", 1.0),
        "transA": AttrSpec("int", 0),
        "transB": AttrSpec("int", 0),
    },
    infer=_gemm_infer,
    evaluate=_gemm_eval,
    macs=_gemm_macs,
    doc="Y = alpha * A' B' + beta * C (fully connected layer).",
))


def _matmul_infer(in_types, attrs):
    a, b = in_types[0], in_types[1]
    if a.rank == 0 or b.rank == 0:
        raise ShapeError(f"MatMul needs inputs of rank >= 1, got ranks {a.rank} and {b.rank}")
    ash = a.shape if a.rank > 1 else (1, a.shape[0])
    bsh = b.shape if b.rank > 1 else (b.shape[0], 1)
    ka, kb = ash[-1], bsh[-2]
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise ShapeError(f"inner dims differ: {list(a.shape)} x {list(b.shape)}")
    try:
        batch = broadcast(ash[:-2], bsh[:-2])
    except ShapeError:
        raise ShapeError(f"batch dims of {list(a.shape)} and {list(b.shape)} do not broadcast") from None
    rows = (ash[-2],) if a.rank > 1 else ()
    cols = (bsh[-1],) if b.rank > 1 else ()
    return [TensorType((*batch, *rows, *cols), same_dtype([a, b]))]


def _matmul_eval(args, attrs):
    return [np.matmul(args[0], args[1])]


def _matmul_macs(in_types, out_types, attrs):
    a = in_types[0]
    k = a.shape[-1]
    k = 1 if isinstance(k, str) else k
    return out_types[0].numel() * k


register(OpDef(
    name="MatMul",
    inputs=("A", "B"),
    infer=_matmul_infer,
    evaluate=_matmul_eval,
    macs=_matmul_macs,
    doc="Matrix product with numpy matmul semantics (1-d operands promoted, batch dims broadcast).",
))


def _batchnorm_infer(in_types, attrs):
    x = in_types[0]
    if x.rank < 2:
        raise ShapeError(f"BatchNormalization needs an input of rank >= 2 (N, C, ...), got rank {x.rank}")
    channels = x.shape[1]
    for name, t in zip(("scale", "B", "mean", "var"), in_types[1:]):
        if t.rank != 1:
            raise ShapeError(f"{name} must be 1-d, got shape {list(t.shape)}")
        n = t.shape[0]
        if isinstance(n, int) and isinstance(channels, int) and n != channels:
            raise ShapeError(f"{name} has {n} entries but the input has {channels} channels")
    return [TensorType(x.shape, same_dtype(in_types))]


def _batchnorm_eval(args, attrs):
    x, scale, bias, mean, var = args
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + attrs["epsilon"])
    y = (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)
    return [y.astype(x.dtype, copy=False)]


def _batchnorm_macs(in_types, out_types, attrs):
    return out_types[0].numel()


register(OpDef(
    name="BatchNormalization",
    inputs=("X", "scale", "B", "mean", "var"),
    attrs={"epsilon": AttrSpec("float", 1e-5)},
    infer=_batchnorm_infer,
    evaluate=_batchnorm_eval,
    macs=_batchnorm_macs,
    doc="Inference batch norm over axis 1: Y = (X - mean) / sqrt(var + epsilon) * scale + B.",
))
