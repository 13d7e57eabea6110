"""Inputs that find numeric disagreements: calibration samples, in-range noise, and quantization edges.

A quantized model's input is rounded to its grid (half to even) and saturated at the code range, so
the values where two implementations most often part ways are the rounding ties, the floats just
either side of a tie, and values past saturation. `model_inputs` builds each input as a base (zeros,
a calibration sample, or uniform noise over the representable range) plus a list of edits that put
single elements on such edges. Hypothesis shrinks the edit list and the base towards zeros, so a
counterexample ends up as few non-zero elements as still disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from hypothesis import strategies as st

from qcc.ir.graph import Graph, Value
from qcc.ir.quant import Uniform

__all__ = ["model_inputs", "input_range", "EDGE_KINDS", "BASE_KINDS"]

BASE_KINDS = ("zeros", "calibration", "noise")
EDGE_KINDS = ("grid", "tie", "below_tie", "above_tie", "saturate_low", "saturate_high")


def input_range(value: Value, default: tuple[float, float] = (-2.0, 2.0)) -> tuple[float, float, float]:
    """(low, high, step) of the floats an input's quantizer represents; float inputs use `default`."""
    spec = value.quant
    if isinstance(spec, Uniform) and spec.axis is None:
        scale, zp = float(np.float32(spec.scale)), int(spec.zero_point)
        return (spec.qmin - zp) * scale, (spec.qmax - zp) * scale, scale
    low, high = default
    return low, high, (high - low) / 256.0


def _edge_value(kind: str, position: float, low: float, high: float, step: float) -> np.float32:
    """A float on one of the input quantizer's edges; `position` in [0, 1] picks the grid point."""
    k = round(position * (high - low) / step)
    grid = np.float32(low + k * step)
    tie = np.float32(low + (k + 0.5) * step)
    if kind == "grid":
        return grid
    if kind == "tie":
        return tie
    if kind == "below_tie":
        return np.nextafter(tie, np.float32(-np.inf))
    if kind == "above_tie":
        return np.nextafter(tie, np.float32(np.inf))
    if kind == "saturate_low":
        return np.float32(low - (1 + 4 * position) * step)
    return np.float32(high + (1 + 4 * position) * step)


def _one_input(value: Value, batch: int, calibration: np.ndarray | None, max_edits: int):
    shape = value.type.concrete(batch)
    size = int(np.prod(shape))
    low, high, step = input_range(value)
    bases = ["zeros", "noise"] if calibration is None or len(calibration) == 0 else list(BASE_KINDS)

    @st.composite
    def build(draw):
        base = draw(st.sampled_from(bases))
        if base == "zeros":
            x = np.zeros(shape, np.float32)
        elif base == "calibration":
            rows = [draw(st.integers(0, len(calibration) - 1)) for _ in range(shape[0])]
            x = np.asarray(calibration[rows], np.float32).reshape(shape).copy()
        else:
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            x = rng.uniform(low, high, size=shape).astype(np.float32)
        flat = x.reshape(-1)
        edits = draw(st.lists(st.tuples(st.integers(0, size - 1), st.sampled_from(EDGE_KINDS),
                                        st.floats(0.0, 1.0)), max_size=max_edits))
        for index, kind, position in edits:
            flat[index] = _edge_value(kind, position, low, high, step)
        return (f"{base}+edges" if edits else base), x

    return build()


def model_inputs(graph: Graph, calibration: Mapping[str, np.ndarray] | None = None, *, batch: int = 1,
                 max_edits: int = 16):
    """A strategy of (kind, {input name: float32 array}) for `graph`.

    kind names the first input's base, with "+edges" when elements were put on quantization edges.

    calibration: arrays by input name (or under 'x' for a single-input graph), one sample per row.
    """
    calibration = dict(calibration or {})
    if len(graph.inputs) == 1 and graph.inputs[0].name not in calibration and "x" in calibration:
        calibration[graph.inputs[0].name] = calibration["x"]
    parts = [_one_input(v, batch, calibration.get(v.name), max_edits) for v in graph.inputs]

    @st.composite
    def build(draw):
        drawn = [draw(p) for p in parts]
        return drawn[0][0], {v.name: x for v, (_, x) in zip(graph.inputs, drawn)}

    return build()
