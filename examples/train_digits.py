"""Train and export qcc's bundled example: a small residual CNN on scikit-learn's 8x8 digits.

Why this exists: qcc needs one small, real, trained model that every command, test and target can
use without a network connection. This script is the recipe for the committed files
`digits_cnn.onnx`, `digits_calib.npz` and `digits_eval.npz`; CI has neither torch nor scikit-learn,
so it is run by hand (`pip install -e .[torch]; python examples/train_digits.py`) and its outputs are
committed.

Data: `sklearn.datasets.load_digits` (1797 images, bundled with scikit-learn). Pixels are scaled to
float32 in [0, 1] (pixel / 16) and laid out NCHW [N, 1, 8, 8]. A stratified, seeded split holds out
360 test images (the eval split); the remaining 1437 are split again, stratified, into 80 % for
training and 20 % for calibration (the calib split, never trained on).

Model (every Conv is followed by a BatchNormalization that stays in the exported file):

    conv1 3x3 1->16 + BN + ReLU
    conv2 3x3 16->16 + BN + ReLU                      -> skip
    conv3 3x3 16->16 + BN, + skip, ReLU               (residual Add)
    MaxPool 2x2                                       (8x8 -> 4x4)
    conv4 3x3 16->32 + BN + ReLU
    GlobalAveragePool, Flatten, Linear 32->10         (-> "logits")

Export: TorchScript exporter, opset 17, input "input", output "logits", dynamic batch axis "N".
An eval-mode model exported in the default TrainingMode.EVAL is fused (BN folded into Conv), so
we export in TrainingMode.PRESERVE with constant folding off; `_check_export` makes sure all four
BatchNormalization nodes are in the file. The accuracy printed at the end is measured with
onnxruntime on the exported file. Same seed, same torch version: byte-identical outputs.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

__all__ = ["DigitsCNN", "main"]

_SEED = 0
_EVAL_SIZE = 360
_CALIB_FRACTION = 0.2
_EPOCHS = 40
_BATCH = 32
_LR = 3e-3
_MIN_ACCURACY = 0.95
_OPSET = 17


class DigitsCNN(nn.Module):
    """Residual 4-conv CNN for 1x8x8 digit images, 10 logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(16)
        self.relu3 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn4 = nn.BatchNorm2d(32)
        self.relu4 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        skip = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(skip)) + skip)
        x = self.pool(x)
        x = self.relu4(self.bn4(self.conv4(x)))
        x = torch.flatten(self.gap(x), 1)
        return self.fc(x)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def _split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_rest, x_eval, y_rest, y_eval = train_test_split(
        x, y, test_size=_EVAL_SIZE, stratify=y, random_state=_SEED)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=_CALIB_FRACTION, stratify=y_rest, random_state=_SEED)
    return {"train": (x_train, y_train), "calib": (x_calib, y_calib), "eval": (x_eval, y_eval)}


def _train(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=_EPOCHS)
    gen = torch.Generator().manual_seed(_SEED)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(_EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(order), _BATCH):
            idx = order[start:start + _BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if epoch % 10 == 9 or epoch == _EPOCHS - 1:
            print(f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}")
    model.eval()


def _torch_accuracy(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return float((logits.argmax(axis=1) == y).mean())


def _export(model: DigitsCNN, path: Path) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=_OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
    )


def _check_export(path: Path) -> None:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    if ops.count("BatchNormalization") != 4:
        raise SystemExit(f"expected 4 BatchNormalization nodes in {path}, found {ops}")
    if path.stat().st_size >= 1 << 20:
        raise SystemExit(f"{path} is {path.stat().st_size} bytes, over 1 MB")


def _onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x})
    return float((logits.argmax(axis=1) == y).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="directory for digits_cnn.onnx / digits_calib.npz / digits_eval.npz")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    _seed_everything(_SEED)
    splits = _split()
    for name, (x, _) in splits.items():
        print(f"{name:5s} {x.shape[0]:5d} images")

    start = time.perf_counter()
    model = DigitsCNN()
    _train(model, *splits["train"])
    print(f"trained in {time.perf_counter() - start:.1f} s; "
          f"torch eval accuracy {_torch_accuracy(model, *splits['eval']):.4f}")

    model_path = args.out / "digits_cnn.onnx"
    _export(model, model_path)
    _check_export(model_path)
    for name in ("calib", "eval"):
        x, y = splits[name]
        np.savez_compressed(args.out / f"digits_{name}.npz", x=x, y=y)

    accuracy = _onnx_accuracy(model_path, *splits["eval"])
    print(f"wrote {model_path} ({model_path.stat().st_size} bytes)")
    print(f"onnxruntime float accuracy on eval split: {accuracy:.4f}")
    if accuracy < _MIN_ACCURACY:
        print(f"error: accuracy below {_MIN_ACCURACY}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
