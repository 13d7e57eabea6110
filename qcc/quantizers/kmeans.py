"""K-means codebook quantizers: QUENN's linear and Gaussian quantizers (seed 002 §4.2) and Lloyd's k-means.

QUENN (seed 002 §4.2) quantizes a layer in five steps, with K = 2^bits intervals:
  1. range [lo, hi]: min/max of the data (linear, L) or mean +- k*std (Gaussian, G);
  2. normalise: u = (x - lo) / (hi - lo), so the range maps to [0, 1];
  3. interval index: i = floor(u * K), saturated to [0, K-1] (values outside a Gaussian range clip);
  4. representative table: the mid centre of each interval, c_i = lo + (i + 1/2) (hi - lo) / K;
  5. map: x -> c_i.
The seed calls this an optimal uniform quantizer "over the range provided by the layer distribution
type" and cites Max (1960) for it. For the Gaussian range it gives no k, so by default k is Max's
optimum: the half-width, in standard deviations, of the K-level uniform quantizer with least mean
squared error on a unit Gaussian (`gaussian_range_k`; 1.596, 1.991, 2.344, 2.680 for 1-4 bits, as in
Max's Table II). Any k can be passed instead.

Lloyd's k-means (seed 002 eq. 4, arg min sum_i sum_{x in S_i} ||x - mu_i||^2) runs in one dimension
on the distinct values weighted by their counts: k-means++ seeding from a numpy Generator with a
fixed seed (deterministic), then assignment to the nearest centroid (by sorted midpoints) and mean
updates until nothing moves. It uses min(2^bits, number of distinct values) clusters, so data with
few distinct values is represented exactly (up to the integer table grid). Seeding costs O(n K) for
n distinct values; the iterations O(n log K) each.

All three return a `CodebookFit` (see qcc.quantizers.codebook for the integer table).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import ndtr

from qcc.quantizers._common import QuantizerError, as_data, channels_first, check_bits
from qcc.quantizers.codebook import CodebookFit, build_codebook, check_centroid_bits, nearest_index

__all__ = ["fit_kmeans_linear", "fit_kmeans_gaussian", "fit_kmeans_lloyd", "gaussian_range_k", "kmeans_1d",
           "interval_codebook"]


def fit_kmeans_linear(data: object, bits: int, *, per_channel: bool = False, centroid_bits: int = 16,
                      compact: bool = True) -> CodebookFit:
    """QUENN linear quantizer (seed 002 §4.2, steps 1-5 with lo, hi = min, max).

    Index i = min(floor((x - lo) / (hi - lo) * 2^bits), 2^bits - 1); table c_i = lo + (i + 1/2)(hi - lo) / 2^bits.
    per_channel fits one range and table per index along axis 0; compact drops unused table entries.
    """
    what = "fit_kmeans_linear"
    bits, centroid_bits, x, rows = _prepare(what, data, bits, centroid_bits, per_channel)
    fits = [interval_codebook(row, float(row.min()), float(row.max()), 2**bits) for row in rows]
    return build_codebook(x, bits, centroid_bits, list(rows), [t for t, _ in fits], [i for _, i in fits],
                          per_channel=per_channel, compact=compact)


def fit_kmeans_gaussian(data: object, bits: int, *, n_std: float | None = None, per_channel: bool = False,
                        centroid_bits: int = 16, compact: bool = True) -> CodebookFit:
    """QUENN Gaussian quantizer (seed 002 §4.2, steps 1-5 with lo, hi = mean -+ k*std).

    Same interval map as the linear quantizer over [mean - k std, mean + k std]; values beyond the
    range saturate into the end intervals. k = n_std, by default `gaussian_range_k(bits)` (Max's
    optimal uniform quantizer for a Gaussian). std is the population standard deviation.
    """
    what = "fit_kmeans_gaussian"
    bits, centroid_bits, x, rows = _prepare(what, data, bits, centroid_bits, per_channel)
    k = gaussian_range_k(bits) if n_std is None else _positive(what, "n_std", n_std)
    fits = []
    for row in rows:
        mean, std = float(np.mean(row)), float(np.std(row))
        fits.append(interval_codebook(row, mean - k * std, mean + k * std, 2**bits))
    return build_codebook(x, bits, centroid_bits, list(rows), [t for t, _ in fits], [i for _, i in fits],
                          per_channel=per_channel, compact=compact)


def fit_kmeans_lloyd(data: object, bits: int, *, seed: int = 0, max_iter: int = 100, per_channel: bool = False,
                     centroid_bits: int = 16) -> CodebookFit:
    """Lloyd's k-means (seed 002 eq. 4) with k-means++ seeding, min(2^bits, distinct values) clusters.

    Deterministic for a given seed. After the centroids are rounded to the integer table, every
    value is assigned to its nearest table entry (ties to the lower one, as qcc.numerics.fake_quant).
    """
    what = "fit_kmeans_lloyd"
    bits, centroid_bits, x, rows = _prepare(what, data, bits, centroid_bits, per_channel)
    tables = [kmeans_1d(row, 2**bits, seed=seed, max_iter=max_iter) for row in rows]
    return build_codebook(x, bits, centroid_bits, list(rows), tables, None, per_channel=per_channel,
                          compact=True)


def interval_codebook(values: np.ndarray, lo: float, hi: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed 002 §4.2 steps 2-4 on one range: (table of n mid centres, interval index of each value).

    A zero-width range (constant data, zero std) has the single entry lo.
    """
    if not hi > lo:
        return np.array([lo]), np.zeros(values.shape, dtype=np.int64)
    u = (values.astype(np.float64) - lo) / (hi - lo)                    # step 2
    idx = np.clip(np.floor(u * n), 0, n - 1).astype(np.int64)          # step 3
    table = lo + (np.arange(n) + 0.5) * ((hi - lo) / n)                 # step 4
    return table, idx


def gaussian_range_k(bits: int) -> float:
    """Half-width k (in std) of the MSE-optimal 2^bits-level uniform quantizer of N(0, 1) (Max, 1960).

    The quantizer has cells of width 2k/K on [-k, k] (the outer two extend to +-inf) and reproduces
    each cell by its mid point; k minimises E[(X - Q(X))^2], computed in closed form per cell:
    int_a^b (x - c)^2 phi(x) dx = (1 + c^2)(Phi(b) - Phi(a)) - (b phi(b) - a phi(a)) + 2c (phi(b) - phi(a)).
    """
    return _optimal_k(2 ** check_bits("gaussian_range_k", bits))


@functools.cache
def _optimal_k(n: int) -> float:
    from scipy.optimize import minimize_scalar  # imported when used: scipy.optimize is slow to load

    result = minimize_scalar(lambda k: _uniform_gaussian_mse(k, n), bounds=(0.1, 12.0), method="bounded",
                             options={"xatol": 1e-10})
    return float(result.x)


def _uniform_gaussian_mse(k: float, n: int) -> float:
    step = 2.0 * k / n
    inner = -k + np.arange(1, n) * step
    a = np.concatenate([[-np.inf], inner])
    b = np.concatenate([inner, [np.inf]])
    c = -k + (np.arange(n) + 0.5) * step
    mass = ndtr(b) - ndtr(a)
    xphi = _x_pdf(b) - _x_pdf(a)
    return float(np.sum((1.0 + c * c) * mass - xphi + 2.0 * c * (_pdf(b) - _pdf(a))))


def _x_pdf(x: np.ndarray) -> np.ndarray:
    """x * phi(x), with the limit 0 at +-inf."""
    out = np.zeros_like(x)
    finite = np.isfinite(x)
    out[finite] = x[finite] * _pdf(x[finite])
    return out


def kmeans_1d(values: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 100) -> np.ndarray:
    """Lloyd's algorithm in 1-D with k-means++ seeding; returns the ascending centroids (float64).

    Works on the distinct values weighted by their counts (the same objective, less work). Uses
    min(k, distinct values) clusters. An empty cluster is moved to the value farthest from its
    centroid. Stops when the centroids no longer change or after max_iter iterations.
    """
    for name, n in (("k", k), ("max_iter", max_iter)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise QuantizerError(f"kmeans: {name} must be a positive integer, got {n!r}")
    v, counts = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    w = counts.astype(np.float64)
    rng = np.random.default_rng(seed)
    centroids = _kmeans_plus_plus(v, w, min(k, len(v)), rng)
    for _ in range(max_iter):
        idx = nearest_index(v, centroids)
        mass = np.bincount(idx, weights=w, minlength=len(centroids))
        sums = np.bincount(idx, weights=w * v, minlength=len(centroids))
        moved = centroids.copy()
        full = mass > 0
        moved[full] = sums[full] / mass[full]
        if not full.all():
            moved[~full] = _farthest(v, centroids[idx], int(np.count_nonzero(~full)))
        moved.sort()
        if np.array_equal(moved, centroids):
            break
        centroids = moved
    return centroids


def _kmeans_plus_plus(v: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ (Arthur & Vassilvitskii 2007): each next seed drawn with probability ~ w * D(x)^2."""
    first = int(np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right"))
    chosen = [min(first, len(v) - 1)]
    d2 = (v - v[chosen[0]]) ** 2
    for _ in range(1, k):
        cumulative = np.cumsum(w * d2)
        total = cumulative[-1]
        if not total > 0:
            break
        pick = int(np.searchsorted(cumulative, rng.random() * total, side="right"))
        chosen.append(pick)
        d2 = np.minimum(d2, (v - v[pick]) ** 2)
    return np.sort(v[chosen])


def _farthest(v: np.ndarray, assigned: np.ndarray, m: int) -> np.ndarray:
    """The m values farthest from their assigned centroid (ties: the lower value), for empty clusters."""
    order = np.argsort(-np.abs(v - assigned), kind="stable")
    return v[order[:m]]


def _prepare(what: str, data: object, bits: int, centroid_bits: int, per_channel: bool
             ) -> tuple[int, int, np.ndarray, np.ndarray]:
    bits = check_bits(what, bits)
    centroid_bits = check_centroid_bits(what, centroid_bits)
    x = as_data(what, data)
    if per_channel and x.ndim == 0:
        raise QuantizerError(f"{what}: per_channel needs data with a channel axis 0, got a scalar")
    return bits, centroid_bits, x, channels_first(x, 0 if per_channel else None)


def _positive(what: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
        raise QuantizerError(f"{what}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _pdf(x: np.ndarray) -> np.ndarray:
    """The standard normal density (scipy.stats is slow to import for this one formula)."""
    return np.exp(-0.5 * np.square(x)) / np.sqrt(2.0 * np.pi)
