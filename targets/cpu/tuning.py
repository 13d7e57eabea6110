"""Per-layer kernel choice for the CPU target: a small cost model, optionally overridden by measurement.

Why: bit-serial costs a*w word operations per 64 MACs, so it wins at 1 bit and loses to a good int8
kernel from about 2x2 bits on; the choice must follow each layer's bits and shape, not bit-width alone.

Cost model (cycles per core, peak rates of the issue's model of this CPU class):
- bit-serial: MACs * planes / BITSERIAL_MACS_PER_CYCLE (324 1-bit MAC/cycle: AND + VPOPCNTQ + ADD on
  zmm), planes = a_bits * w_bits (1 for bipolar XNOR layers);
- int8: MACs / INT8_MACS_PER_CYCLE, 120 with VNNI (vpdpbusd); today's exact int8 build has no VNNI
  (see int8.py), measured at about INT8_EXACT_MACS_PER_CYCLE, which is what the model uses then.
The cheapest eligible kernel wins; ties go to bit-serial. Register tiles come from the kernels'
defaults.

Tuning log (JSON, deterministic: sorted keys, fixed indent): {"version": 1, "entries": {layer_key:
{"kernel": "bitserial" | "int8", "px": int, "cob": int, "pixels", "split", "flat": bool (optional, conv:
the pixel-vector kernel, its word passes, flattened-plane vectors), "us": float | null}}}. With a log, the choice
for a logged layer is read from it, so compilation is deterministic given the log; `tune` measures
the candidates of each layer on this host and writes the fastest.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from qcc.targets.cpu.kernels import ConvSchedule, ConvSpec, DenseSpec, conv_schedule_ok, default_conv_schedule

__all__ = ["KernelChoice", "int8_rate", "layer_key", "choose_kernel", "estimate_cycles", "load_log", "save_log", "tune",
           "BITSERIAL_MACS_PER_CYCLE", "INT8_MACS_PER_CYCLE", "INT8_EXACT_MACS_PER_CYCLE", "LOG_VERSION"]

BITSERIAL_MACS_PER_CYCLE = 324.0
INT8_MACS_PER_CYCLE = 120.0
INT8_EXACT_MACS_PER_CYCLE = 3.0
LOG_VERSION = 1


@dataclass(frozen=True)
class KernelChoice:
    """The kernel for one layer: "bitserial" (kernels.py) or "int8" (int8.py), its register tile, and
    where the choice came from ("model", "log" or "measured")."""

    kernel: str
    px: int = 1
    cob: int = 1
    source: str = "model"
    us: float | None = None
    pixels: bool = False  # conv: the pixel-vector kernel (ConvSchedule.pixels)
    split: bool = True  # pixel-vector conv: one channel word per pass (ConvSchedule.split)
    flat: bool = False  # pixel-vector conv: vectors over the flattened output plane (ConvSchedule.flat)


def layer_key(spec: DenseSpec | ConvSpec) -> str:
    """A stable text key of a layer spec (shape, attributes and bits)."""
    if isinstance(spec, DenseSpec):
        return f"dense:m{spec.m}:k{spec.k}:n{spec.n}:a{spec.a_bits}:w{spec.w_bits}:bip{int(spec.bipolar)}"
    return (f"conv:n{spec.n}:c{spec.c}:h{spec.h}:w{spec.w}:co{spec.co}:k{spec.kh}x{spec.kw}:g{spec.group}"
            f":s{spec.strides[0]}x{spec.strides[1]}:p{'x'.join(map(str, spec.pads))}"
            f":d{spec.dilations[0]}x{spec.dilations[1]}:a{spec.a_bits}:w{spec.w_bits}:bip{int(spec.bipolar)}")


def _macs(spec: DenseSpec | ConvSpec) -> int:
    if isinstance(spec, DenseSpec):
        return spec.m * spec.k * spec.n
    oh, ow = spec.out_hw
    return spec.n * spec.co * oh * ow * spec.cg * spec.kh * spec.kw


def _int8_eligible(spec: DenseSpec | ConvSpec) -> bool:
    from qcc.targets.cpu.int8 import int8_accumulator_fits

    if spec.bipolar or spec.a_bits > 8 or spec.w_bits > 8:
        return False
    if isinstance(spec, ConvSpec):
        return spec.group == 1 and int8_accumulator_fits(spec.c * spec.kh * spec.kw)
    return int8_accumulator_fits(spec.k)


def int8_rate() -> float:
    from qcc.targets.cpu.int8 import VNNI_WORKS, has_vnni

    return INT8_MACS_PER_CYCLE if VNNI_WORKS and has_vnni() else INT8_EXACT_MACS_PER_CYCLE


def estimate_cycles(spec: DenseSpec | ConvSpec, kernel: str) -> float:
    """Modelled cycles (one core) of `kernel` on the layer."""
    if kernel == "bitserial":
        planes = 1 if spec.bipolar else spec.a_bits * spec.w_bits
        return _macs(spec) * planes / BITSERIAL_MACS_PER_CYCLE
    return _macs(spec) / int8_rate()


def _default_choice(spec, kernel: str, source: str, us: float | None = None) -> KernelChoice:
    if kernel == "bitserial" and isinstance(spec, ConvSpec):
        tile = default_conv_schedule(spec)
        return KernelChoice("bitserial", tile.px, tile.cob, source, us, tile.pixels, tile.split, tile.flat)
    if kernel == "int8":
        from qcc.targets.cpu.int8 import default_int8_schedule

        tile = default_int8_schedule(spec)
        return KernelChoice("int8", tile.px, tile.cob, source, us)
    return KernelChoice(kernel, 1, 1, source, us)


def choose_kernel(spec: DenseSpec | ConvSpec, log: dict | None = None) -> KernelChoice:
    """The kernel for a layer: the tuning log's entry when it has one, else the cost model's."""
    entry = (log or {}).get("entries", {}).get(layer_key(spec))
    if entry is not None:
        return KernelChoice(entry["kernel"], int(entry["px"]), int(entry["cob"]), "log", entry.get("us"),
                            bool(entry.get("pixels", False)), bool(entry.get("split", True)),
                            bool(entry.get("flat", False)))
    kernels = ["bitserial"] + (["int8"] if _int8_eligible(spec) else [])
    best = min(kernels, key=lambda k: (estimate_cycles(spec, k), k != "bitserial"))
    return _default_choice(spec, best, "model")


def load_log(path: str | Path) -> dict:
    """A tuning log (an empty one when the file does not exist); a QccError when it is malformed."""
    from qcc.errors import QccError

    path = Path(path)
    if not path.exists():
        return {"version": LOG_VERSION, "entries": {}}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise QccError(f"{path}: tuning log is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(doc, dict) or doc.get("version") != LOG_VERSION or not isinstance(doc.get("entries"), dict):
        raise QccError(f"{path}: not a qcc cpu tuning log (version {LOG_VERSION})")
    return doc


def save_log(log: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(log, indent=2, sort_keys=True) + "\n")


def _candidates(spec) -> list[KernelChoice]:
    out = [_default_choice(spec, "bitserial", "measured")]
    if isinstance(spec, ConvSpec):
        planes = 1 if spec.bipolar else spec.a_bits * spec.w_bits
        ow = spec.out_hw[1]
        for px in (1, 2, 4, 7, 8, 14):
            if ow % px == 0 and px * planes * 64 < 1024 and (px, False) != (out[0].px, out[0].pixels):
                out.append(KernelChoice("bitserial", px, 1, "measured"))
        for px, cob, split, flat in itertools.product((1, -(-ow // min(8, ow))), (8, 4, 2), (False, True),
                                                      (False, True)):
            tile = ConvSchedule(px, cob, True, split, flat)  # vector(s) per task, word passes, flat plane
            key = (px, cob, True, split, flat)
            if conv_schedule_ok(spec, tile) and all((c.px, c.cob, c.pixels, c.split, c.flat) != key for c in out):
                out.append(KernelChoice("bitserial", px, cob, "measured", None, True, split, flat))
    if _int8_eligible(spec):
        out.append(_default_choice(spec, "int8", "measured"))
    return out


def _time_choice(spec, choice: KernelChoice, repeat: int) -> float:
    import numpy as np
    import tvm

    from qcc.targets.cpu import int8, kernels

    dev = tvm.cpu()
    dense = isinstance(spec, DenseSpec)
    if choice.kernel == "int8":
        tile = int8.Int8Schedule(choice.px, choice.cob, int8.VNNI_WORKS and int8.has_vnni())
        prim = int8.int8_dense_primfunc(spec, tile) if dense else int8.int8_conv_primfunc(spec, tile)
        lib = int8.build_int8_dense(spec, tile) if dense else int8.build_int8_conv(spec, tile)
    elif dense:
        prim, lib = kernels.dense_primfunc(spec), kernels.build_dense(spec)
    else:
        tile = ConvSchedule(choice.px, choice.cob, choice.pixels, choice.split, choice.flat)
        prim, lib = kernels.conv_primfunc(spec, tile), kernels.build_conv(spec, tile)
    args = []
    for buf in prim.params:  # TVM 0.27: PrimFunc params are the buffers
        args.append(tvm.runtime.tensor(np.zeros([int(d) for d in buf.shape], str(buf.dtype)), dev))
    evaluator = lib.mod.time_evaluator("main", dev, number=max(1, repeat // 5), repeat=5)
    return min(evaluator(*args).results) * 1e6


def tune(specs, path: str | Path | None = None, repeat: int = 20) -> dict:
    """Measure each layer's candidate kernels / tiles on this host and keep the fastest in the log
    (read from and written back to `path` when given). Layers already in the log are kept."""
    log = load_log(path) if path is not None else {"version": LOG_VERSION, "entries": {}}
    for spec in specs:
        key = layer_key(spec)
        if key in log["entries"]:
            continue
        timed = [(_time_choice(spec, c, repeat), c) for c in _candidates(spec)]
        us, best = min(timed, key=lambda tc: tc[0])
        log["entries"][key] = {k: v for k, v in asdict(best).items() if k != "source"} | {"us": round(us, 3)}
    if path is not None:
        save_log(log, path)
    return log
