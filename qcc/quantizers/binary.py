"""Bipolar (binary) quantizer for XNOR-popcount layers (seed 001; XNOR-Net, seed 001's reference list).

    b = sign(w) in {-1, +1}, with sign(0) = +1 (as qcc.numerics and QKeras's 1-bit quantizer)
    w ~ alpha * b,  alpha = mean |w|  per tensor or per output channel (XNOR-Net's optimal scale:
                    it minimises ||w - alpha b||^2 for b = sign(w))

A layer computed as 2 * popcount(xnor) - N is then rescaled by alpha (DESIGN.md §3). scaled=False
gives the plain BNN weights (alpha = 1). A channel of zeros gets the tiny scale MIN_SCALE (> 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.ir.quant import Bipolar
from qcc.numerics import channel_shape
from qcc.quantizers._common import as_data, channels_first, normalize_axis, scale_at_least

__all__ = ["BipolarFit", "fit_bipolar"]


@dataclass(frozen=True, eq=False)
class BipolarFit:
    """A fitted bipolar quantizer: the spec, the signs (int8, +-1) and the quantized data alpha * sign."""

    spec: Bipolar
    signs: np.ndarray
    data: np.ndarray


def fit_bipolar(data: object, *, per_channel_axis: int | None = None, scaled: bool = True) -> BipolarFit:
    """Bipolar sign quantizer with scale alpha = mean |w| (per tensor, or per index along an axis).

    q(w) = alpha * (+1 if w >= 0 else -1); scaled=False fixes alpha = 1.
    """
    what = "fit_bipolar"
    x = as_data(what, data)
    axis = None if per_channel_axis is None else normalize_axis(what, per_channel_axis, x.ndim)
    rows = channels_first(x, axis).astype(np.float64)
    alphas = [scale_at_least(a) if scaled else 1.0 for a in np.mean(np.abs(rows), axis=1)]
    spec = Bipolar(scale=alphas[0]) if axis is None else Bipolar(scale=tuple(alphas), axis=axis)
    signs = np.where(x >= 0, 1, -1).astype(np.int8)
    alpha = np.asarray(alphas, dtype=np.float64).reshape(channel_shape(x.ndim, axis, len(alphas)))
    return BipolarFit(spec=spec, signs=signs, data=(signs * alpha).astype(x.dtype))
