"""Plots for `qcc analyze`: where a person would rather look than read (PNG, deterministic).

- sensitivity_heatmap: layer x bit-width sensitivity (output L2), weights and activations side by side;
- layer_distribution: per-layer MACs and weight memory (seed 000's two bar charts);
- bubble_chart: accuracy against weight memory, bubble area ~ BOPs, Pareto front drawn (seed 000).

matplotlib is imported lazily with the Agg backend, so importing qcc never needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["sensitivity_heatmap", "layer_distribution", "bubble_chart"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "qcc"  # deterministic ids
    return plt


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})


def sensitivity_heatmap(table: Mapping[str, Mapping[str, Any]], path: Path, scheme: str = "uniform") -> None:
    """table: {layer: {"weights"|"activations": {scheme: {bits: output_l2}}}}."""
    import numpy as np

    plt = _pyplot()
    layers = list(table)
    bits = sorted({int(b) for t in table.values() for v in t.values() for b in v.get(scheme, {})})
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.7 * len(bits) * 2, 1.5 + 0.35 * len(layers)), squeeze=False)
    for ax, var in zip(axes[0], ("weights", "activations")):
        grid = np.full((len(layers), len(bits)), np.nan)
        for i, layer in enumerate(layers):
            for j, b in enumerate(bits):
                value = table[layer].get(var, {}).get(scheme, {}).get(str(b))
                if value is not None and value > 0:
                    grid[i, j] = math.log10(value)
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(bits)), [str(b) for b in bits])
        ax.set_yticks(range(len(layers)), layers if var == "weights" else [""] * len(layers))
        ax.set_xlabel("bits")
        ax.set_title(f"{var}: log10 output L2")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"sensitivity ({scheme} quantizer, one variable at a time)")
    _save(fig, path)
    plt.close(fig)


def layer_distribution(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """rows: report layer rows (name, macs, weight_bits_total) of the layers to show."""
    plt = _pyplot()
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.5 + 0.3 * len(rows)))
    for ax, key, label in ((axes[0], "macs", "MACs"), (axes[1], "weight_bits_total", "weight memory (bits)")):
        values = [r[key] for r in rows]
        ax.barh(range(len(rows)), values, color="tab:blue")
        ax.set_yticks(range(len(rows)), names if key == "macs" else [""] * len(rows))
        ax.invert_yaxis()
        total = sum(values) or 1
        for i, v in enumerate(values):
            ax.text(v, i, f" {100 * v / total:.1f} %", va="center", fontsize=8)
        ax.set_xlabel(label)
        ax.set_title(f"{label} per layer")
    _save(fig, path)
    plt.close(fig)


def bubble_chart(points: Sequence[Mapping[str, Any]], path: Path, metric: str = "top-1 accuracy (%)") -> None:
    """points: {label, weight_bits, bops, value, pareto: bool}; value is accuracy (or -L2)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    biggest = max((p["bops"] for p in points), default=1) or 1
    for p in points:
        size = 40 + 1500 * p["bops"] / biggest
        color = "tab:orange" if p.get("pareto") else "tab:blue"
        ax.scatter(p["weight_bits"] / 8e3, p["value"], s=size, alpha=0.5, color=color, edgecolors="k")
        if p.get("label"):
            ax.annotate(p["label"], (p["weight_bits"] / 8e3, p["value"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
    front = sorted((p for p in points if p.get("pareto")), key=lambda p: p["weight_bits"])
    if front:
        ax.plot([p["weight_bits"] / 8e3 for p in front], [p["value"] for p in front], color="tab:orange")
    ax.set_xscale("log")
    ax.set_xlabel("weight memory (kB)")
    ax.set_ylabel(metric)
    ax.set_title("accuracy / memory / BOPs (bubble area ~ BOPs); orange: Pareto front")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
