"""Activation statistics and clip-range selection: the math of the `calibrate` pass, kept in the
core as pure functions so other passes and targets can reuse it.

Why here: quantizing an activation needs a clip range [lo, hi]; the range is chosen from
statistics of the activation on calibration data. The pass (qcc.passes.calibrate) only runs the
interpreter and stores results; everything numeric is below and testable on plain arrays.

Statistics, accumulated over batches:
- `Moments`: count, min, max and mean / M2 in float64, merged across batches with Chan's parallel
  update, so mean and std (population std, ddof=0) match numpy on the concatenated data up to
  float64 rounding.
- `Histogram`: fixed bins over a range known in advance. The pass makes two passes over the data:
  the first finds min and max, the second fills a histogram over [min, max] (and one of |x| over
  [0, absmax]). Bins follow `np.histogram(x, bins, range=(lo, hi))`, so the sum of per-batch
  histograms is exactly the histogram of the concatenated data, and batching never changes it.
- Percentiles are read from the histogram (numpy's 'linear' definition on order statistics, each
  order statistic placed at the midpoint of its share of its bin; the 0th and last are min and max
  exactly). They are within one bin width, (max - min) / bins, of `np.percentile`.

Range selection for `bits` (signed when min < 0; every range contains 0, so zero is exact):
- minmax: [min(min, 0), max(max, 0)].
- percentile p: [min(P(100 - p), 0), max(P(p), 0)].
- mse: the range [a * lo, a * hi] (lo, hi from minmax; a on a grid in (0, 1]) minimising the expected
  squared error of `range_quantize` on the histogram (values uniform within each bin): rounding
  error inside the range plus clipping error outside, both integrated exactly per bin.
- kl: TensorRT's entropy calibration on the |x| histogram. For each candidate count i of kept bins
  (from the number of quantized levels L up to all bins): P = the first i bins with the outliers
  (all mass above) added to bin i-1; Q = the first i bins (without outliers) merged into L groups of
  (nearly) equal width and expanded back, each group's mass spread evenly over the bins where P is
  nonzero; the i with the smallest KL(P || Q) wins and the threshold T is the upper edge of bin i-1.
  L = 2^bits for unsigned data (range [0, T]) and 2^(bits-1) for signed data (range [-T, T]). No
  epsilon smoothing: a candidate whose Q is zero where P is not has infinite divergence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcc.errors import QccError, ShapeError
from qcc.ir.graph import Graph, Value

__all__ = [
    "calibration_data",
    "sample_count",
    "batch_ranges",
    "METHODS",
    "PERCENTILES",
    "Moments",
    "Histogram",
    "ValueStatistics",
    "percentile_key",
    "minmax_range",
    "percentile_range",
    "mse_range",
    "kl_threshold",
    "kl_divergence",
    "kl_range",
    "select_range",
    "range_quantize",
    "expected_error",
    "summarize",
    "calibration_of",
    "histogram_of",
]

METHODS = ("minmax", "percentile", "mse", "kl")
# Percentiles recorded for every value: the high ones and their low counterparts (100 - p).
PERCENTILES = (0.01, 0.1, 1.0, 99.0, 99.9, 99.99)
# Steps of each of the two rounds of the MSE search over shrink factors (coarse, then fine).
_MSE_STEPS = 128


# ------------------------------------------------------------------------------- statistics
@dataclass
class Moments:
    """Running count, min, max, mean and sum of squared deviations (M2), in float64."""

    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: np.ndarray) -> None:
        """Merge a batch (Chan et al.'s parallel update of mean and M2)."""
        x = np.asarray(x)
        n = int(x.size)
        if n == 0:
            return
        x64 = x.astype(np.float64, copy=False)
        mean = float(np.mean(x64))
        m2 = float(np.sum(np.square(x64 - mean)))
        self.min = min(self.min, float(np.min(x)))
        self.max = max(self.max, float(np.max(x)))
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0, like np.std)."""
        return math.sqrt(max(self.m2, 0.0) / self.count) if self.count else 0.0

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0


@dataclass
class Histogram:
    """Counts over fixed, equal-width bins (edges as `np.histogram(..., range=(lo, hi))` makes them)."""

    edges: np.ndarray  # float64 [bins + 1]
    counts: np.ndarray  # int64 [bins]

    @classmethod
    def over(cls, lo: float, hi: float, bins: int) -> Histogram:
        """An empty histogram of `bins` bins over [lo, hi] (numpy widens lo == hi to lo +- 0.5)."""
        if bins < 1:
            raise QccError(f"a histogram needs at least one bin, got {bins}")
        edges = np.histogram_bin_edges(np.empty(0), bins=bins, range=(lo, hi)).astype(np.float64)
        return cls(edges, np.zeros(bins, dtype=np.int64))

    @property
    def bins(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, x: np.ndarray) -> None:
        """Count a batch; values outside the range are not counted (the range comes from pass 1)."""
        counts, _ = np.histogram(np.asarray(x).ravel(), bins=self.bins, range=(self.edges[0], self.edges[-1]))
        self.counts += counts

    def percentile(self, q: float, lo: float, hi: float) -> float:
        """The q-th percentile (0..100) estimated from the counts; lo and hi are the exact min and max."""
        n = self.total
        if n == 0:
            raise QccError("percentile of an empty histogram")
        rank = q / 100.0 * (n - 1)
        k0 = min(int(math.floor(rank)), n - 1)
        k1 = min(k0 + 1, n - 1)
        v0 = self._order_statistic(k0, n, lo, hi)
        v1 = self._order_statistic(k1, n, lo, hi)
        return float(min(max(v0 + (rank - k0) * (v1 - v0), lo), hi))

    def _order_statistic(self, k: int, n: int, lo: float, hi: float) -> float:
        if k <= 0:
            return lo
        if k >= n - 1:
            return hi
        cum = np.cumsum(self.counts)
        b = int(np.searchsorted(cum, k, side="right"))
        before = int(cum[b] - self.counts[b])
        position = (k - before + 0.5) / int(self.counts[b])
        return float(self.edges[b] + position * (self.edges[b + 1] - self.edges[b]))


@dataclass
class ValueStatistics:
    """Everything known about one value after calibration (pass 1 moments, pass 2 histograms)."""

    moments: Moments
    histogram: Histogram
    abs_histogram: Histogram

    @property
    def signed(self) -> bool:
        return self.moments.min < 0

    def percentile(self, q: float) -> float:
        m = self.moments
        if m.min == m.max:
            return m.min
        return self.histogram.percentile(q, m.min, m.max)


def percentile_key(q: float) -> str:
    """The attribute key of a percentile: 99.9 -> "99.9", 1.0 -> "1", 0.01 -> "0.01"."""
    return f"{round(q, 10):g}"


# ------------------------------------------------------------------------------ range choice
def _minmax(stats: ValueStatistics) -> tuple[float, float]:
    return min(stats.moments.min, 0.0), max(stats.moments.max, 0.0)


def minmax_range(stats: ValueStatistics) -> tuple[float, float]:
    """[min, max], widened to contain 0."""
    return _minmax(stats)


def percentile_range(stats: ValueStatistics, percentile: float = 99.99) -> tuple[float, float]:
    """[P(100 - p), P(p)] from the histogram, widened to contain 0."""
    if not 50.0 < percentile <= 100.0:
        raise QccError(f"percentile must be in (50, 100], got {percentile}")
    low = round(100.0 - percentile, 10)  # 100 - 99.9 is 0.0999...4 in binary; use 0.1 as recorded
    lo = min(stats.percentile(low), 0.0) if stats.signed else 0.0
    return lo, max(stats.percentile(percentile), 0.0)


def range_quantize(x: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Quantize-dequantize x on the grid a clip range [lo, hi] (lo <= 0 <= hi) gives at `bits`.

    The grid is the affine one: step s = (hi - lo) / (2^bits - 1), zero exactly on the grid, codes
    round(lo / s) .. round(lo / s) + 2^bits - 1. This is the quantizer the MSE criterion scores.
    """
    step, qmin, qmax = _grid(lo, hi, bits)
    if step == 0.0:
        return np.zeros_like(np.asarray(x, dtype=np.float64))
    q = np.clip(np.rint(np.asarray(x, dtype=np.float64) / step), qmin, qmax)
    return q * step


def _grid(lo: float, hi: float, bits: int) -> tuple[float, int, int]:
    levels = 2**bits - 1
    step = (hi - lo) / levels
    if step <= 0.0:
        return 0.0, 0, 0
    qmin = int(np.rint(lo / step))
    return step, qmin, qmin + levels


def _rounding_integral(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """G(x) = integral from 0 to x of (distance from t to the nearest multiple of step)^2 dt."""
    k = np.floor(x / step)
    u = x - k * step
    half = step / 2
    g = np.where(u <= half, u**3 / 3, step**3 / 12 - (step - u) ** 3 / 3)
    return k * step**3 / 12 + g


def expected_error(hist: Histogram | _Bins, lo: np.ndarray | float, hi: np.ndarray | float, bits: int) -> np.ndarray:
    """Mean squared error of `range_quantize(., lo, hi, bits)` over the histogram's data.

    Values are taken as uniform within each bin; the rounding error inside the clip range and the
    clipping error outside it are integrated exactly per bin. lo and hi may be arrays of candidates
    (same shape); the result has that shape.
    """
    shape = np.shape(lo)
    lo = np.atleast_1d(np.asarray(lo, dtype=np.float64)).ravel()
    hi = np.atleast_1d(np.asarray(hi, dtype=np.float64)).ravel()
    step = (hi - lo) / (2**bits - 1)
    safe = np.where(step > 0, step, 1.0)
    qmin = np.rint(lo / safe)
    low = np.where(step > 0, qmin * step, 0.0)[:, None]  # clip bounds on the grid
    high = np.where(step > 0, (qmin + 2**bits - 1) * step, 0.0)[:, None]
    left, right = (hist.left, hist.right) if isinstance(hist, _Bins) else (hist.edges[:-1], hist.edges[1:])
    a, b = left[None, :], right[None, :]
    density = hist.counts[None, :] / (b - a)
    s = safe[:, None]
    inner_a, inner_b = np.clip(a, low, high), np.clip(b, low, high)
    inner = np.where(step[:, None] > 0,
                     _rounding_integral(inner_b, s) - _rounding_integral(inner_a, s), 0.0)
    above = (np.maximum(b, high) - high) ** 3 / 3 - (np.maximum(a, high) - high) ** 3 / 3
    below = (low - np.minimum(a, low)) ** 3 / 3 - (low - np.minimum(b, low)) ** 3 / 3
    total = max(hist.total, 1)
    err = np.sum(density * (inner + above + below), axis=1) / total
    return err.reshape(shape)


def mse_range(stats: ValueStatistics, bits: int) -> tuple[float, float]:
    """The shrunken minmax range a * [lo, hi] with the smallest expected squared error.

    a is searched coarse to fine: k / 128 for k = 1..128, then 128 steps across the two coarse
    intervals around the best (resolution 1 / 8192 of the minmax range).
    """
    lo, hi = _minmax(stats)
    if lo == hi:
        return lo, hi
    hist = _nonzero_bins(stats.histogram)
    coarse = np.arange(1, _MSE_STEPS + 1, dtype=np.float64) / _MSE_STEPS
    best = float(coarse[int(np.argmin(expected_error(hist, coarse * lo, coarse * hi, bits)))])
    fine = best + np.linspace(-1.0, 1.0, _MSE_STEPS + 1) / _MSE_STEPS
    fine = fine[(fine > 0) & (fine <= 1)]
    best = float(fine[int(np.argmin(expected_error(hist, fine * lo, fine * hi, bits)))])
    return best * lo, best * hi


def _nonzero_bins(hist: Histogram) -> Histogram:
    """The same data with empty bins dropped (they add nothing to `expected_error`)."""
    keep = np.flatnonzero(hist.counts)
    return _Bins(hist.edges[keep], hist.edges[keep + 1], hist.counts[keep])


@dataclass(frozen=True)
class _Bins:
    """Bins given by their own left and right edges (not necessarily adjacent)."""

    left: np.ndarray
    right: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def kl_threshold(hist: Histogram, levels: int) -> float:
    """TensorRT's entropy threshold on a histogram of |x| starting at 0 (see the module docstring)."""
    counts = hist.counts.astype(np.float64)
    n = len(counts)
    if levels >= n or counts.sum() == 0:
        return float(hist.edges[-1])
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # tail[i] = sum(counts[i:])
    best_i, best_kl = n, math.inf
    for i in range(levels, n + 1):
        kl = kl_divergence(counts[:i], tail[i], levels)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return float(hist.edges[best_i])


def kl_divergence(kept: np.ndarray, outliers: float, levels: int) -> float:
    """KL(P || Q) of one candidate: `kept` bin counts, `outliers` the mass above them."""
    p = np.asarray(kept, dtype=np.float64).copy()
    p[-1] += outliers
    nonzero = p > 0
    starts = (np.arange(levels) * len(p)) // levels
    group_mass = np.add.reduceat(kept, starts)
    group_nonzero = np.add.reduceat(nonzero.astype(np.float64), starts)
    group_of_bin = np.repeat(np.arange(levels), np.diff(np.append(starts, len(p))))
    share = np.divide(group_mass, group_nonzero, out=np.zeros(levels), where=group_nonzero > 0)
    q = share[group_of_bin][nonzero]
    if np.any(q <= 0):
        return math.inf
    p = p[nonzero] / p.sum()
    q = q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def kl_range(stats: ValueStatistics, bits: int) -> tuple[float, float]:
    """[0, T] for unsigned data (2^bits levels), [-T, T] for signed (2^(bits-1) levels)."""
    if stats.moments.absmax == 0.0:
        return 0.0, 0.0
    if stats.signed:
        t = kl_threshold(stats.abs_histogram, max(2 ** (bits - 1), 1))
        return -t, t
    return 0.0, kl_threshold(stats.abs_histogram, 2**bits)


def select_range(stats: ValueStatistics, method: str, bits: int = 8,
                 percentile: float = 99.99) -> tuple[float, float]:
    """The clip range [lo, hi] chosen by `method` (one of METHODS)."""
    if method == "minmax":
        return minmax_range(stats)
    if method == "percentile":
        return percentile_range(stats, percentile)
    if method == "mse":
        return mse_range(stats, bits)
    if method == "kl":
        return kl_range(stats, bits)
    raise QccError(f"unknown calibration method '{method}'; choose one of: {', '.join(METHODS)}")


# ------------------------------------------------------------------------------- attributes
def summarize(stats: ValueStatistics, *, method: str, bits: int, samples: int,
              percentile: float = 99.99) -> dict[str, Any]:
    """The printable calibration record of one value (plain Python numbers, string keys)."""
    m = stats.moments
    lo, hi = select_range(stats, method, bits, percentile)
    return {
        "min": float(m.min),
        "max": float(m.max),
        "mean": float(m.mean),
        "std": float(m.std),
        "absmax": float(m.absmax),
        "percentiles": {percentile_key(q): float(stats.percentile(q)) for q in PERCENTILES},
        "range": [float(lo), float(hi)],
        "method": method,
        "bits": int(bits),
        "samples": int(samples),
    }


def _output_index(value: Value) -> int | None:
    node = value.producer
    if node is None:
        return None
    return next((i for i, o in enumerate(node.outputs) if o is value), None)


def calibration_of(graph: Graph, value: Value) -> dict[str, Any] | None:
    """The calibration record the `calibrate` pass stored for `value`, or None."""
    if value.is_constant:
        return None
    if value.producer is None:
        records = graph.attrs.get("calibration")
        return records.get(value.name) if isinstance(records, Mapping) else None
    index = _output_index(value)
    records = value.producer.attrs.get("calibration")
    if index is None or not isinstance(records, list) or index >= len(records):
        return None
    return records[index]


def histogram_of(graph: Graph, value: Value, *, absolute: bool = False) -> Histogram | None:
    """The histogram (of x, or of |x|) the `calibrate` pass kept in meta for `value`, or None."""
    key = "abs_histogram" if absolute else "histogram"
    if value.is_constant:
        return None
    if value.producer is None:
        return graph.meta.get(key, {}).get(value.name)
    index = _output_index(value)
    kept = value.producer.meta.get(key)
    if index is None or not isinstance(kept, list) or index >= len(kept):
        return None
    return kept[index]


# ------------------------------------------------------------------------------ calibration data

def calibration_data(graph: Graph, calib: Any) -> dict[str, np.ndarray]:
    """The calibration arrays keyed by graph input name, shapes checked (samples along axis 0)."""
    if calib is None:
        raise QccError("no calibration data: pass --calib CALIB.npz (or set ctx.config['calib'])")
    if isinstance(calib, np.ndarray):
        calib = {"x": calib}
    if not isinstance(calib, Mapping):
        raise QccError(f"calibration data must be a dict of arrays (x, y), got {type(calib).__name__}")
    given = {k: np.asarray(v) for k, v in calib.items()}
    names = [v.name for v in graph.inputs]
    if "y" in given and "y" not in names:
        given.pop("y")
    if len(names) == 1 and names[0] not in given and "x" in given:
        given[names[0]] = given.pop("x")
    missing = [n for n in names if n not in given]
    if missing:
        raise QccError(f"calibration data has no array for input(s) {', '.join(missing)} "
                       f"(has: {', '.join(sorted(calib)) or 'nothing'})")
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise QccError(f"calibration data has array(s) {', '.join(unknown)} that are not graph inputs "
                       f"(inputs: {', '.join(names)})")
    for v in graph.inputs:
        _check_shape(v, given[v.name])
    return {v.name: given[v.name] for v in graph.inputs}


def _check_shape(value: Value, array: np.ndarray) -> None:
    expected = value.type.shape
    if not expected:
        raise ShapeError(f"input '{value.name}' is a scalar, so calibration data cannot hold samples of it")
    fits = array.ndim == len(expected) and all(
        isinstance(d, str) or d == s for d, s in zip(expected[1:], array.shape[1:]))
    if not fits:
        dims = ", ".join(map(str, expected))
        raise ShapeError(f"calibration data for input '{value.name}' has shape {list(array.shape)}, "
                         f"expected [samples, {', '.join(map(str, expected[1:]))}] (input is [{dims}])")


def sample_count(data: dict[str, np.ndarray]) -> int:
    counts = {name: int(a.shape[0]) for name, a in data.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in counts.items())
        raise ShapeError(f"calibration arrays hold different numbers of samples ({listed})")
    count = next(iter(counts.values()), 0)
    if count == 0:
        raise QccError("calibration data is empty (0 samples)")
    return count


def batch_ranges(graph: Graph, count: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges; a fixed batch dimension in the graph sets the batch size."""
    fixed = sorted({v.type.shape[0] for v in graph.inputs if isinstance(v.type.shape[0], int)})
    if len(fixed) > 1:
        raise ShapeError(f"graph inputs have different fixed batch sizes {fixed}")
    if fixed:
        batch_size = fixed[0]
        if batch_size == 0:
            raise ShapeError("the graph's batch dimension is fixed at 0, so it cannot run calibration samples")
        if count % batch_size:
            raise ShapeError(f"the graph's batch dimension is fixed at {batch_size}, but {count} calibration "
                             f"samples are not a multiple of it")
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
