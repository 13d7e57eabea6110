"""Pooling: MaxPool, AveragePool (with ceil_mode and count_include_pad), GlobalAveragePool.

Windows follow ONNX: output size floor((S + pads - span) / stride) + 1, or ceil with ceil_mode, where
a window that would start in the right padding is dropped. Padding must be smaller than the kernel
(onnxruntime refuses larger pads). MaxPool pads with -inf. AveragePool divides by the number of
taps inside the input (count_include_pad = 0) or inside the explicitly padded input
(count_include_pad = 1); taps that only exist because of ceil_mode never count.
"""

from __future__ import annotations

import numpy as np

from qcc.errors import ShapeError
from qcc.ir.types import TensorType
from qcc.ops._shapes import conv_out, spatial_defaults
from qcc.ops.nn import windows
from qcc.ops.registry import REQUIRED, AttrSpec, OpDef, register

__all__: list[str] = []


def _pads_default(in_types):
    return spatial_defaults(0)(in_types) * 2


def _window_attrs(attrs) -> tuple[list[int], list[int], list[int], list[int]]:
    k = attrs["kernel_shape"]
    return k, attrs["strides"], attrs["pads"], attrs.get("dilations") or [1] * len(k)


def _check_window_attrs(nsp: int, attrs) -> None:
    k, s, p, d = _window_attrs(attrs)
    if len(k) != nsp or len(s) != nsp or len(d) != nsp or len(p) != 2 * nsp:
        raise ShapeError(f"kernel_shape/strides/dilations/pads do not fit {nsp} spatial dims")
    if any(v < 1 for v in (*k, *s, *d)) or any(v < 0 for v in p):
        raise ShapeError("kernel_shape, strides and dilations must be >= 1 and pads >= 0")
    if any(p[i] >= k[i] or p[i + nsp] >= k[i] for i in range(nsp)):
        raise ShapeError(f"pads {p} must be smaller than kernel_shape {k}")
    for flag in ("ceil_mode", "count_include_pad"):
        if attrs.get(flag, 0) not in (0, 1):
            raise ShapeError(f"{flag} must be 0 or 1, got {attrs[flag]}")
    if attrs["auto_pad"] != "NOTSET":
        raise ShapeError("auto_pad must be resolved to explicit pads (the frontend does this)")


def _pool_infer(in_types, attrs):
    x = in_types[0]
    if x.rank < 3:
        raise ShapeError(f"pooling needs an input of rank >= 3 (N, C, spatial...), got rank {x.rank}")
    nsp = x.rank - 2
    _check_window_attrs(nsp, attrs)
    k, s, p, d = _window_attrs(attrs)
    ceil_mode = bool(attrs["ceil_mode"])
    spatial = [conv_out(x.shape[2 + i], k[i], s[i], p[i], p[i + nsp], d[i], ceil_mode=ceil_mode)
               for i in range(nsp)]
    return [TensorType((*x.shape[:2], *spatial), x.dtype)]


def _geometry(spatial: tuple[int, ...], attrs) -> tuple[list[int], list[int]]:
    """Output sizes, and the extra end padding ceil_mode needs so every window lies in the array."""
    nsp = len(spatial)
    k, s, p, d = _window_attrs(attrs)
    out, extra = [], []
    for i, size in enumerate(spatial):
        o = conv_out(size, k[i], s[i], p[i], p[i + nsp], d[i], ceil_mode=bool(attrs["ceil_mode"]))
        span = d[i] * (k[i] - 1) + 1
        out.append(o)
        extra.append(max(0, (o - 1) * s[i] + span - (size + p[i] + p[i + nsp])))
    return out, extra


def _reduce_windows(x: np.ndarray, attrs, pads: list[tuple[int, int]], value: float, reduce,
                    out: list[int]) -> np.ndarray:
    """Pad x by `pads` (begin, end per spatial dim) with `value`; reduce the first `out` windows."""
    nsp = x.ndim - 2
    k, s, _, d = _window_attrs(attrs)
    if any(b or e for b, e in pads):
        x = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=value)
    cols = windows(x, k, s, d)[(slice(None), slice(None), *(slice(0, o) for o in out))]
    return reduce(cols, axis=tuple(range(-nsp, 0)))


def _explicit_pads(nsp: int, attrs) -> list[tuple[int, int]]:
    p = attrs["pads"]
    return [(p[i], p[i + nsp]) for i in range(nsp)]


def _lowest(dtype: np.dtype) -> float | int:
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


def _maxpool_eval(args, attrs):
    x = args[0]
    out, extra = _geometry(x.shape[2:], attrs)
    pads = [(b, e + more) for (b, e), more in zip(_explicit_pads(x.ndim - 2, attrs), extra)]
    return [_reduce_windows(x, attrs, pads, _lowest(x.dtype), np.max, out)]


def _avgpool_eval(args, attrs):
    x = args[0]
    out, extra = _geometry(x.shape[2:], attrs)
    explicit = _explicit_pads(x.ndim - 2, attrs)
    pads = [(b, e + more) for (b, e), more in zip(explicit, extra)]
    sums = _reduce_windows(x.astype(np.float64), attrs, pads, 0.0, np.sum, out)
    inside = np.ones((1, 1, *x.shape[2:]))
    if attrs["count_include_pad"]:
        # explicit padding counts, the ceil_mode extension does not
        inside = np.pad(inside, [(0, 0), (0, 0), *explicit], constant_values=1.0)
        pads = [(0, more) for more in extra]
    counts = _reduce_windows(inside, attrs, pads, 0.0, np.sum, out)
    return [(sums / counts).astype(x.dtype, copy=False)]


def _global_pool_infer(in_types, attrs):
    x = in_types[0]
    if x.rank < 3:
        raise ShapeError(f"GlobalAveragePool needs an input of rank >= 3 (N, C, spatial...), got rank {x.rank}")
    return [TensorType((*x.shape[:2], *([1] * (x.rank - 2))), x.dtype)]


def _global_avgpool_eval(args, attrs):
    x = args[0]
    y = x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    return [y.astype(x.dtype, copy=False)]


_WINDOW_ATTRS = {
    "kernel_shape": AttrSpec("ints", REQUIRED),
    "strides": AttrSpec("ints", spatial_defaults(1)),
    "pads": AttrSpec("ints", _pads_default),
    "ceil_mode": AttrSpec("int", 0),
    "auto_pad": AttrSpec("str", "NOTSET"),
}

register(OpDef(
    name="MaxPool",
    inputs=("X",),
    attrs={**_WINDOW_ATTRS, "dilations": AttrSpec("ints", spatial_defaults(1))},
    infer=_pool_infer,
    evaluate=_maxpool_eval,
    doc="Maximum over sliding windows (padding counts as -inf).",
))

register(OpDef(
    name="AveragePool",
    inputs=("X",),
    attrs={**_WINDOW_ATTRS, "count_include_pad": AttrSpec("int", 0)},
    infer=_pool_infer,
    evaluate=_avgpool_eval,
    doc="Mean over sliding windows; count_include_pad = 1 also counts the explicit padding.",
))

register(OpDef(
    name="GlobalAveragePool",
    inputs=("X",),
    infer=_global_pool_infer,
    evaluate=_global_avgpool_eval,
    doc="Mean over all spatial dims, keeping them as size 1.",
))
