"""K-quantile non-uniform quantization (seed 003): Gaussian-CDF activation thresholds and weight codebooks.

Activations (seed 003, "Activation quantization using thresholds"). The MAC result x of a layer
followed by ReLU is taken as Gaussian N(mu, sigma) (running statistics); its B_a-bit activation is
the integer level y = Q(x), with thresholds chosen so that the positive part of the distribution
falls into 2^B_a equiprobable bins:
    Z   = F(0; mu, sigma)                       (the mass that ReLU sends to 0)
    b_i = Z + (1 - Z) i / 2^B_a,   i = 1 .. 2^B_a - 1
    t_i = F^-1(b_i; mu, sigma)
The seed prints b_i = [(1 - Z) / 2^B_a] i, which would put the first thresholds below 0 whenever
mu > 0; its own threshold set is {0 < t_0 < t_1 < ...} and its Fig. 1 shows equal probability steps
above F(0), so the levels here start at Z ("equally spaced probability levels above F(0)").
Level 0 holds x <= t_1, i.e. everything ReLU zeroes plus the first positive bin; each other level
holds probability (1 - Z) / 2^B_a. The representative values are the integer levels 0 .. 2^B_a - 1
themselves (out_scale 1, out_bias 0), as in the seed's integer-only network; other scales can be set.
The tail is computed in log space (t_i = mu - sigma * ndtri_exp(log Phi(mu/sigma) + log(1 - i/2^B_a)))
so thresholds stay finite and ordered even when almost no mass is positive.

Thresholds follow FINN MultiThreshold (level = number of thresholds <= x). With input_scale s set
they are integers on the integer accumulator a (x = s a), the spec's `input_scale` form: the seed's
bins are half-open (t_{i-1}, t_i], and for an integer a, s a > t_i exactly when a >= floor(t_i / s) + 1,
so T_i = floor(t_i / s) + 1 reproduces the seed's Q on every accumulator value.

Weights (seed 003, "Non uniform integer weight quantization", after UNIQ, its ref. 4): map
w -> u = F(w; mu_w, sigma_w), quantize u uniformly into K = 2^B_w equiprobable bins
i = min(floor(u K), K - 1), and map back by the quantile function at the bin centre,
c_i = mu_w + sigma_w Phi^-1((i + 1/2) / K) (the bin median). The seed's integer weight
[F(W) - 0.5] 2^B_w is this index shifted by -K/2 (floor). The result is a Codebook.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr, ndtr, ndtri, ndtri_exp

from qcc.ir.quant import Thresholds
from qcc.quantizers._common import MIN_SCALE, QuantizerError, as_data, channels_first, check_bits, normalize_axis
from qcc.quantizers.codebook import CodebookFit, build_codebook, check_centroid_bits

__all__ = ["kquantile_thresholds", "fit_kquantile_thresholds", "fit_kquantile_weights"]

_TINY_POSITIVE = float(np.finfo(np.float32).tiny)  # thresholds stay > 0 so ReLU's zeros map to level 0


def kquantile_thresholds(mean: object, std: object, bits: int, *, input_scale: object = None,
                         out_scale: float = 1.0, out_bias: float = 0.0, axis: int = 1) -> Thresholds:
    """Seed 003 equiprobable Gaussian-CDF thresholds for a ReLU activation of `bits` bits.

    t_i = F^-1(Z + (1 - Z) i / 2^bits; mean, std), Z = F(0; mean, std), i = 1 .. 2^bits - 1, in the
    units of mean / std. With input_scale s, integer thresholds on the accumulator: T_i = floor(t_i / s) + 1.
    mean, std and input_scale are scalars or one value per channel along `axis` (they broadcast).
    """
    what = "kquantile_thresholds"
    bits = check_bits(what, bits)
    means, stds, scales = _stats(what, mean, std, input_scale)
    if np.any(stds <= 0):
        raise QuantizerError(f"{what}: std must be > 0, got {float(stds.min()):g}")
    if scales is not None and np.any(scales <= 0):
        raise QuantizerError(f"{what}: input_scale must be > 0, got {float(scales.min()):g}")
    rows = [_threshold_row(m, s, bits) for m, s in zip(means, stds)]
    if scales is None:
        return Thresholds(bits=bits, thresholds=tuple(rows), out_scale=out_scale, out_bias=out_bias, axis=axis)
    rows = [tuple(float(v) for v in np.floor(np.asarray(r) / s) + 1.0) for r, s in zip(rows, scales)]
    spec_scale = float(scales[0]) if len(scales) == 1 else tuple(float(s) for s in scales)
    return Thresholds(bits=bits, thresholds=tuple(rows), out_scale=out_scale, out_bias=out_bias, axis=axis,
                      input_scale=spec_scale)


def fit_kquantile_thresholds(data: object, bits: int, *, channel_axis: int | None = None,
                             input_scale: object = None, out_scale: float = 1.0, out_bias: float = 0.0
                             ) -> Thresholds:
    """Seed 003 thresholds from the mean / std of pre-activation data (per tensor or per channel).

    The statistics are those of x before ReLU (the seed's running statistics of the MAC result).
    A channel with zero spread gets std = max(2^-60, |mean| 2^-23), i.e. a float32 step around its
    constant value. Per-tensor specs use axis 1 (NCHW channels), or 0 for 1-d data.
    """
    what = "fit_kquantile_thresholds"
    bits = check_bits(what, bits)
    x = as_data(what, data)
    axis = None if channel_axis is None else normalize_axis(what, channel_axis, x.ndim)
    rows = channels_first(x, axis).astype(np.float64)
    means, stds = rows.mean(axis=1), rows.std(axis=1)
    stds = np.where(stds > 0, stds, np.maximum(MIN_SCALE, np.abs(means) * 2.0**-23))
    spec_axis = axis if axis is not None else (1 if x.ndim > 1 else 0)
    return kquantile_thresholds(means, stds, bits, input_scale=input_scale, out_scale=out_scale,
                                out_bias=out_bias, axis=spec_axis)


def fit_kquantile_weights(data: object, bits: int, *, per_channel: bool = False, centroid_bits: int = 16,
                          compact: bool = True) -> CodebookFit:
    """Seed 003 CDF weight quantizer as a Codebook: equiprobable bins of N(mean, std), bin medians.

    i = min(floor(F(w; mean, std) 2^bits), 2^bits - 1), c_i = mean + std Phi^-1((i + 1/2) / 2^bits).
    per_channel fits mean / std along axis 0; zero spread gives the single entry mean.
    """
    what = "fit_kquantile_weights"
    bits = check_bits(what, bits)
    centroid_bits = check_centroid_bits(what, centroid_bits)
    x = as_data(what, data)
    if per_channel and x.ndim == 0:
        raise QuantizerError(f"{what}: per_channel needs data with a channel axis 0, got a scalar")
    rows = channels_first(x, 0 if per_channel else None)
    fits = [_cdf_codebook(row.astype(np.float64), 2**bits) for row in rows]
    return build_codebook(x, bits, centroid_bits, list(rows), [t for t, _ in fits], [i for _, i in fits],
                          per_channel=per_channel, compact=compact)


def _stats(what: str, mean: object, std: object, input_scale: object
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """mean, std (and input_scale) as equally long finite float64 vectors (scalars broadcast)."""
    named = {"mean": mean, "std": std} | ({} if input_scale is None else {"input_scale": input_scale})
    vectors = {}
    for name, value in named.items():
        try:
            vectors[name] = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise QuantizerError(f"{what}: {name} must be a number or a list of numbers, got {value!r}") from None
        if vectors[name].size == 0 or not np.all(np.isfinite(vectors[name])):
            raise QuantizerError(f"{what}: {name} must be finite numbers, got {value!r}")
    sizes = {v.size for v in vectors.values()} - {1}
    if len(sizes) > 1:
        raise QuantizerError(f"{what}: per-channel lengths differ: "
                             f"{', '.join(f'{k} {v.size}' for k, v in vectors.items())}")
    n = sizes.pop() if sizes else 1
    out = {k: np.broadcast_to(v, (n,)) for k, v in vectors.items()}
    return out["mean"], out["std"], out.get("input_scale")


def _threshold_row(mean: float, std: float, bits: int) -> tuple[float, ...]:
    levels = 2**bits
    i = np.arange(1, levels)
    log_tail = log_ndtr(mean / std) + np.log1p(-i / levels)  # log P(X > t_i) = log((1 - Z)(1 - i/2^B))
    t = mean - std * ndtri_exp(log_tail)
    t = np.maximum.accumulate(np.maximum(t, _TINY_POSITIVE))
    if not np.all(np.isfinite(t)):
        raise QuantizerError(f"kquantile_thresholds: thresholds overflow for mean {mean:g}, std {std:g}")
    return tuple(float(v) for v in t)


def _cdf_codebook(row: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    mean, std = float(np.mean(row)), float(np.std(row))
    if not std > 0:
        return np.array([mean]), np.zeros(row.shape, dtype=np.int64)
    u = ndtr((row - mean) / std)
    idx = np.clip(np.floor(u * n), 0, n - 1).astype(np.int64)
    table = mean + std * ndtri((np.arange(n) + 0.5) / n)
    return table, idx
