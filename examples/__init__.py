"""qcc.examples: the bundled example model and its data, so every command has something real to run.

The files are a small residual CNN trained on scikit-learn's 8x8 digits (`digits_cnn.onnx`,
BatchNormalization kept) and two splits in qcc's data format, a `.npz` with `x` float32 NCHW
[N, 1, 8, 8] in [0, 1] and `y` int64 labels: `digits_calib.npz` (calibration, never trained on) and
`digits_eval.npz` (held-out test set). `train_digits.py` beside them is the recipe that made them
(it needs torch and scikit-learn; nothing here does). Paths resolve next to this file, so they work
from an installed, non-editable qcc too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from qcc.errors import QccError, ShapeError

__all__ = ["MODEL", "CALIB", "EVAL", "SPLITS", "load_split", "accuracy"]

_HERE = Path(__file__).resolve().parent

MODEL: Path = _HERE / "digits_cnn.onnx"
CALIB: Path = _HERE / "digits_calib.npz"
EVAL: Path = _HERE / "digits_eval.npz"
SPLITS: dict[str, Path] = {"calib": CALIB, "eval": EVAL}


def load_split(name: Literal["calib", "eval"]) -> tuple[np.ndarray, np.ndarray]:
    """Return `(x, y)` of a bundled split: x float32 [N, 1, 8, 8], y int64 [N]."""
    path = SPLITS.get(name)
    if path is None:
        raise QccError(f"unknown example split '{name}'; choose one of: {', '.join(SPLITS)}")
    with np.load(path) as data:
        return data["x"], data["y"]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of `logits` [N, C] against integer `labels` [N]."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ShapeError(f"accuracy needs logits [N, C] and labels [N], got {logits.shape} and {labels.shape}")
    if labels.size == 0:
        raise ShapeError("accuracy of an empty batch is undefined")
    return float(np.mean(np.argmax(logits, axis=1) == labels))
