"""calibrate: run calibration data through the float interpreter and record, for every non-constant
value, its statistics and a clip range.

An analysis: the graph's structure and numbers are unchanged; results go into attributes so they
print, parse and feed later passes (`quantize` reads the ranges):
- node outputs: `node.attrs["calibration"] = [record of output 0, ...]`;
- graph inputs: `graph.attrs["calibration"] = {input name: record}`;
- a record: min, max, mean, std (population), absmax, percentiles ({"99.99": v, "0.01": v, ...}),
  range ([lo, hi] chosen by `method` for `bits`), method, bits, samples.
Histograms (of x over [min, max] and of |x| over [0, absmax], `bins` bins) are too big for text and
stay in `meta["histogram"]` / `meta["abs_histogram"]` (lists per node output; dicts by input name on
the graph). `qcc.calibration.calibration_of(graph, value)` reads a record back.

Data: `ctx.config["calib"]`, a dict with "x" (float32, samples along axis 0) for a single-input
graph, else one array per input name; "y" (labels) is ignored. The first `samples` samples are used,
run in batches of `batch_size` (a graph with a fixed batch dimension B runs in batches of B).

Exactness: two passes over the data. The first accumulates count, min, max, mean and M2 (float64,
Chan's merge); the second fills histograms over the now known [min, max], so histograms, percentiles
and ranges do not depend on the batch size, and mean / std only up to float64 rounding. The range
math (minmax, percentile, MSE, TensorRT's KL) is in qcc.calibration, documented there. The second
pass reuses the first pass's activations when they fit in KEEP_BYTES, instead of running the model again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from qcc.calibration import (
    METHODS,
    Histogram,
    Moments,
    ValueStatistics,
    batch_ranges,
    calibration_data,
    sample_count,
    summarize,
)
from qcc.errors import PassError, QccError
from qcc.interp import run
from qcc.ir.graph import Graph, Value
from qcc.pass_manager import Pass, PassContext, PassResult
from qcc.progress import track

__all__ = ["CalibratePass"]

KEEP_BYTES = 1 << 30


@dataclass(frozen=True)
class CalibratePass(Pass):
    """Record per-value activation statistics and a clip range from calibration data."""

    name = "calibrate"
    method: Literal["minmax", "percentile", "mse", "kl"] = "minmax"
    bits: int = 8
    percentile: float = 99.99
    samples: int | None = None
    batch_size: int = 64
    bins: int = 2048

    def __post_init__(self):
        if self.method not in METHODS:
            raise QccError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 1 <= self.bits <= 16:
            raise QccError(f"bits must be between 1 and 16, got {self.bits}")
        if not 50.0 < self.percentile <= 100.0:
            raise QccError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.samples is not None and self.samples < 1:
            raise QccError(f"samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise QccError(f"batch-size must be at least 1, got {self.batch_size}")
        if self.bins < 1:
            raise QccError(f"bins must be at least 1, got {self.bins}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = calibration_data(graph, ctx.config.get("calib"))
        count = sample_count(data)
        if self.samples is not None:
            count = min(count, self.samples)
        batches = batch_ranges(graph, count, self.batch_size)
        values = _activations(graph)
        moments = {id(v): Moments() for v in values}
        kept: list[dict[str, np.ndarray]] | None = []  # the activations, while they fit KEEP_BYTES
        for i, batch in enumerate(self._walk(graph, data, batches, ctx, "statistics")):
            for v in values:
                self._check_finite(v, batch[v.name], i, len(batches), ctx)
                moments[id(v)].add(batch[v.name])
            if kept is not None:
                kept.append({v.name: batch[v.name] for v in values})
                if sum(a.nbytes for b in kept for a in b.values()) > KEEP_BYTES:
                    kept = None
        hists = {id(v): Histogram.over(moments[id(v)].min, moments[id(v)].max, self.bins) for v in values}
        abs_hists = {id(v): Histogram.over(0.0, moments[id(v)].absmax, self.bins) for v in values}
        for batch in kept if kept is not None else self._walk(graph, data, batches, ctx, "histograms"):
            for v in values:
                hists[id(v)].add(batch[v.name])
                abs_hists[id(v)].add(np.abs(batch[v.name]))
        stats = {id(v): ValueStatistics(moments[id(v)], hists[id(v)], abs_hists[id(v)]) for v in values}
        return PassResult(self._store(graph, stats, count))

    # ------------------------------------------------------------------------------ running
    def _walk(self, graph: Graph, data: dict[str, np.ndarray], batches: list[tuple[int, int]],
              ctx: PassContext, phase: str):
        """Every value's array, one batch at a time."""
        bars = track(batches, f"calibrate: {phase}", enabled=ctx.config.get("progress"))
        for i, (start, stop) in enumerate(bars):
            if ctx.progress is not None:
                ctx.progress(f"calibrate: {phase}, batch {i + 1}/{len(batches)} (samples {start}..{stop - 1})")
            inputs = {name: array[start:stop] for name, array in data.items()}
            yield run(graph, inputs, mode="float", keep_all=True)

    def _check_finite(self, value: Value, array: np.ndarray, batch: int, batches: int, ctx: PassContext) -> None:
        if np.all(np.isfinite(array)):
            return
        kind = "nan" if np.any(np.isnan(array)) else "inf"
        where = f"batch {batch + 1}/{batches}"
        node = value.producer
        if node is None:
            raise PassError(self.name, f"calibration input '{value.name}' contains {kind} ({where})",
                            ran_before=tuple(ctx.history))
        raise PassError(self.name, f"activation '{value.name}' ({node.op}) is {kind} on calibration data "
                        f"({where})", node=node.name, ran_before=tuple(ctx.history))

    # ------------------------------------------------------------------------------ storing
    def _record(self, stats: ValueStatistics, samples: int) -> dict[str, Any]:
        return summarize(stats, method=self.method, bits=self.bits, samples=samples,
                         percentile=self.percentile)

    def _store(self, graph: Graph, stats: dict[int, ValueStatistics], samples: int) -> bool:
        changed = False
        for node in graph.nodes:
            records = [self._record(stats[id(o)], samples) for o in node.outputs]
            changed |= node.attrs.get("calibration") != records
            node.attrs["calibration"] = records
            node.meta["histogram"] = [stats[id(o)].histogram for o in node.outputs]
            node.meta["abs_histogram"] = [stats[id(o)].abs_histogram for o in node.outputs]
        if graph.inputs:
            records = {v.name: self._record(stats[id(v)], samples) for v in graph.inputs}
            changed |= graph.attrs.get("calibration") != records
            graph.attrs["calibration"] = records
            graph.meta["histogram"] = {v.name: stats[id(v)].histogram for v in graph.inputs}
            graph.meta["abs_histogram"] = {v.name: stats[id(v)].abs_histogram for v in graph.inputs}
        return changed


def _activations(graph: Graph) -> list[Value]:
    """Graph inputs and node outputs (constants have no activation statistics)."""
    return list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]
