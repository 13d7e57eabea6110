"""Damage models and run the command line on them: the shared engine of tests/fuzz/test_fuzz_cli.py
(a few hundred hypothesis cases in CI) and bench/bench_fuzz.py (10,000 seeded cases).

A case is (kind, seed, command): `damage(kind, seed, seeds)` writes a damaged copy of a valid model
(the bundled example as ONNX, as QDQ ONNX, and as float and quantized .qir) and `run_case` runs one
of `qcc show`, `qcc run`, `qcc opt -p canonicalize,fold-bn`, `qcc compile --target cim` on it,
in-process through qcc.cli.main with stdout / stderr captured, in a fresh folder. `problems`
returns what is wrong with the outcome: a traceback or an internal error, an exit code other than
0 / 2, a failure whose stderr is not exactly one 'qcc: error:' line, or files left behind in the
output location of a failed command.

Damage kinds (seeded, deterministic):
- ONNX bytes: random byte flips, truncation, spliced garbage;
- ONNX protobuf: a missing initializer, an initializer whose dims disagree with its data or whose
  data has a wrong (consistent) shape or dtype, an unknown op or domain, a cycle, absurd attribute
  values (negative kernel, zero stride, huge pads, group 0, NaN epsilon, ...), bad opset versions,
  wrong input rank / dims / dtype, a dangling node input, a removed node or graph output;
- .qir: character edits, line edits, absurd numbers in place of numbers, a damaged weights .npz.
"""

from __future__ import annotations

import contextlib
import io
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcc.cli import main

__all__ = ["ONNX_KINDS", "QIR_KINDS", "KINDS", "COMMANDS", "Seeds", "make_seeds", "damage", "Outcome",
           "run_case", "problems"]

COMMANDS = ("show", "run", "opt", "compile")

# ------------------------------------------------------------------------------ seeds


@dataclass(frozen=True)
class Seeds:
    """The valid models damage starts from, plus the data files the commands need."""

    folder: Path
    onnx: Path  # the bundled example
    qdq: Path  # the example quantized (w8a8) and exported as QDQ ONNX
    qir: Path  # canonicalize,fold-bn as .qir (+ .npz)
    qir_quant: Path  # quantized .qir (+ .npz)
    inputs: Path  # 2 samples for `qcc run`
    calib: Path  # 8 samples for `qcc compile`


def make_seeds(folder: Path) -> Seeds:
    from qcc.examples import MODEL, load_split

    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_split("calib")
    np.savez(folder / "inputs.npz", x=x[:2])
    np.savez(folder / "calib.npz", x=x[:8], y=y[:8])
    onnx_path = folder / "model.onnx"
    shutil.copyfile(MODEL, onnx_path)
    quiet = ["-q"]
    _check(main(["opt", str(MODEL), "-p", "canonicalize,fold-bn", "-o", str(folder / "float.qir"), *quiet]))
    quant = "canonicalize,fold-bn,calibrate,quantize{w_bits=8,a_bits=8}"
    calib = ["--calib", str(folder / "calib.npz")]
    _check(main(["opt", str(MODEL), "-p", quant, "-o", str(folder / "quant.qir"), *calib, *quiet]))
    _check(main(["opt", str(MODEL), "-p", quant, "-o", str(folder / "qdq.onnx"), "--onnx-format", "qdq",
                 *calib, *quiet]))
    return Seeds(folder, onnx_path, folder / "qdq.onnx", folder / "float.qir", folder / "quant.qir",
                 folder / "inputs.npz", folder / "calib.npz")


def _check(rc: int) -> None:
    if rc != 0:
        raise RuntimeError(f"making the fuzz seeds failed (exit {rc})")


# ------------------------------------------------------------------------------ ONNX damage

_ABSURD_INTS = [-1, 0, -(2**31), 2**31, 2**62, -(2**62), 10**9, 7, -7]
_ABSURD_FLOATS = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1e38, -1e-45]
_UNKNOWN_OPS = ["FooBar", "Conv2D", "", "LSTM", "Loop", "If", "NonMaxSuppression", "conv", "Scan", "Einsum"]


def _byte_flips(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] = rng.randrange(256) if rng.random() < 0.5 else out[i] ^ (1 << rng.randrange(8))
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _splice(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    if rng.random() < 0.5:
        return data[:i] + junk + data[i:]
    return data[:i] + junk + data[i + len(junk):]


def _missing_initializer(m: onnx.ModelProto, rng: random.Random) -> None:
    inits = m.graph.initializer
    del inits[rng.randrange(len(inits))]


def _initializer_dims(m: onnx.ModelProto, rng: random.Random) -> None:
    t = rng.choice(list(m.graph.initializer))
    dims = list(t.dims)
    choice = rng.randrange(4)
    if choice == 0 and dims:
        dims.pop(rng.randrange(len(dims)))
    elif choice == 1:
        dims.insert(rng.randrange(len(dims) + 1), rng.choice([1, 2, 3]))
    elif choice == 2 and dims:
        dims[rng.randrange(len(dims))] = rng.choice([0, 1, 2, 3, 1000, 2**31])
    else:
        dims = dims[::-1]
    if dims == list(t.dims):
        dims.append(2)
    del t.dims[:]
    t.dims.extend(dims)


def _initializer_data(m: onnx.ModelProto, rng: random.Random) -> None:
    """Replace an initializer by a consistent tensor of a wrong shape or dtype."""
    inits = m.graph.initializer
    i = rng.randrange(len(inits))
    old = numpy_helper.to_array(inits[i])
    shape = list(old.shape)
    if rng.random() < 0.5 and shape:
        k = rng.randrange(len(shape))
        shape[k] = max(0, shape[k] + rng.choice([-1, 1, 5]))
    elif rng.random() < 0.5:
        shape = shape[:-1] if shape else [2]
    dtype = rng.choice([np.float32, np.float32, np.float64, np.int64, np.int8, np.float16, np.bool_])
    data = np.random.default_rng(rng.randrange(2**32)).normal(0, 1, shape)
    new = numpy_helper.from_array(data.astype(dtype), inits[i].name)
    inits[i].CopyFrom(new)


def _unknown_op(m: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice(list(m.graph.node))
    if rng.random() < 0.7:
        node.op_type = rng.choice(_UNKNOWN_OPS)
    else:
        node.domain = rng.choice(["com.evil", "ai.onnx.ml", "qonnx.custom_op.general", "com.microsoft"])


def _cycle(m: onnx.ModelProto, rng: random.Random) -> None:
    nodes = list(m.graph.node)
    i = rng.randrange(len(nodes))
    j = rng.randrange(i, len(nodes))
    src = nodes[j]
    if not nodes[i].input:
        nodes[i].input.append(src.output[0])
        return
    nodes[i].input[rng.randrange(len(nodes[i].input))] = src.output[0]
    if rng.random() < 0.3:  # also shuffle the order, so the file is not topologically sorted
        order = nodes[:]
        rng.shuffle(order)
        del m.graph.node[:]
        m.graph.node.extend(order)


def _absurd_attribute(m: onnx.ModelProto, rng: random.Random) -> None:
    nodes = [n for n in m.graph.node if n.attribute] or list(m.graph.node)
    node = rng.choice(nodes)
    if not node.attribute or rng.random() < 0.15:
        name = rng.choice(["kernel_shape", "strides", "pads", "axis", "group", "bogus", "perm", "auto_pad"])
        node.attribute.append(helper.make_attribute(name, rng.choice([[-1, 0], 3, "SAME_UPPER", 1.5])))
        return
    attr = rng.choice(list(node.attribute))
    kind = rng.randrange(6)
    if attr.type == onnx.AttributeProto.INTS and kind < 4:
        values = list(attr.ints) or [1]
        if kind == 0:
            values[rng.randrange(len(values))] = rng.choice(_ABSURD_INTS)
        elif kind == 1:
            values = [rng.choice(_ABSURD_INTS)] * len(values)
        elif kind == 2:
            values = values[: rng.randrange(len(values) + 1)] if rng.random() < 0.5 else values + [1, 1, 1]
        else:
            values = [rng.choice(_ABSURD_INTS) for _ in range(rng.randint(0, 6))]
        new = helper.make_attribute(attr.name, values) if values else \
            helper.make_attribute(attr.name, [], attr_type=onnx.AttributeProto.INTS)
    elif attr.type == onnx.AttributeProto.INT and kind < 4:
        new = helper.make_attribute(attr.name, rng.choice(_ABSURD_INTS))
    elif attr.type == onnx.AttributeProto.FLOAT and kind < 4:
        new = helper.make_attribute(attr.name, rng.choice(_ABSURD_FLOATS))
    else:  # the wrong type altogether
        new = helper.make_attribute(attr.name, rng.choice([1.5, "x", [1.0, 2.0], -3, [3, 3], b"\xff"]))
    attr.CopyFrom(new)


def _bad_opset(m: onnx.ModelProto, rng: random.Random) -> None:
    choice = rng.randrange(4)
    if choice == 0:
        del m.opset_import[:]
    elif choice == 1:
        m.opset_import[0].version = rng.choice([-1, 0, 1, 5, 10, 22, 23, 99, 2**40])
    elif choice == 2:
        m.opset_import[0].domain = rng.choice(["ai.onnx.ml", "com.evil", "ai.onnx"])
    else:
        m.opset_import.append(helper.make_opsetid("", rng.choice([7, 13, 21])))
    if rng.random() < 0.3:
        m.ir_version = rng.choice([0, 1, 3, 99, -1])


def _input_rank(m: onnx.ModelProto, rng: random.Random) -> None:
    inp = m.graph.input[0]
    tt = inp.type.tensor_type
    dims = [(d.dim_param or d.dim_value) for d in tt.shape.dim]
    choice = rng.randrange(6)
    if choice == 0 and dims:
        dims.pop(rng.randrange(len(dims)))
    elif choice == 1:
        dims.insert(rng.randrange(len(dims) + 1), rng.choice([1, 3]))
    elif choice == 2:
        dims = []
    elif choice == 3 and dims:
        dims[rng.randrange(len(dims))] = rng.choice([0, -1, 2, 10**6, "H"])
    elif choice == 4:
        tt.elem_type = rng.choice([TensorProto.INT64, TensorProto.STRING, TensorProto.INT8, 0, TensorProto.BOOL])
        return
    else:
        inp.type.ClearField("tensor_type")
        return
    tt.shape.ClearField("dim")
    for d in dims:
        dim = tt.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def _dangling(m: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice([n for n in m.graph.node if n.input])
    node.input[rng.randrange(len(node.input))] = rng.choice(["nowhere", "", "input ", "logits"])


def _drop(m: onnx.ModelProto, rng: random.Random) -> None:
    if rng.random() < 0.6:
        del m.graph.node[rng.randrange(len(m.graph.node))]
    elif rng.random() < 0.5:
        del m.graph.output[:]
    else:
        m.graph.output[0].name = rng.choice(["nothing", "input", "/conv1/Conv_output_0"])


_BYTE_DAMAGE: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "onnx-bytes-flip": _byte_flips, "onnx-bytes-truncate": _truncate, "onnx-bytes-splice": _splice,
}
_PROTO_DAMAGE: dict[str, Callable[[onnx.ModelProto, random.Random], None]] = {
    "onnx-missing-initializer": _missing_initializer, "onnx-initializer-dims": _initializer_dims,
    "onnx-initializer-data": _initializer_data, "onnx-unknown-op": _unknown_op, "onnx-cycle": _cycle,
    "onnx-absurd-attribute": _absurd_attribute, "onnx-bad-opset": _bad_opset, "onnx-input-rank": _input_rank,
    "onnx-dangling-input": _dangling, "onnx-drop": _drop,
}

# ------------------------------------------------------------------------------ .qir damage

_QIR_CHARS = list('{}[]()%:,="#.-+e ') + list("0123456789") + ["\n", "\t", "x", "N", "f32", "quant", "é", "\x00"]
_ABSURD_NUMBERS = ["1e400", "-1e400", "nan", "inf", "-0", "99999999999999999999", "-3", "0", "0.5", "1e-320",
                   "2147483648", "-9223372036854775809"]


def _qir_chars(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(len(chars))
        op = rng.randrange(3)
        if op == 0:
            chars[i] = rng.choice(_QIR_CHARS)
        elif op == 1:
            del chars[i]
        else:
            chars.insert(i, rng.choice(_QIR_CHARS))
    return "".join(chars)


def _qir_lines(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    op = rng.randrange(4)
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(j, lines[i])
    elif op == 2:
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
    return "\n".join(lines)


def _qir_numbers(text: str, rng: random.Random) -> str:
    import re

    spans = [m.span() for m in re.finditer(r"-?\d+(\.\d+)?(e-?\d+)?", text)]
    for _ in range(rng.randint(1, 3)):
        a, b = rng.choice(spans)
        text = text[:a] + rng.choice(_ABSURD_NUMBERS) + text[b:]
        spans = [m.span() for m in re.finditer(r"-?\d+(\.\d+)?(e-?\d+)?", text)]
    return text


_TEXT_DAMAGE: dict[str, Callable[[str, random.Random], str]] = {
    "qir-chars": _qir_chars, "qir-lines": _qir_lines, "qir-numbers": _qir_numbers,
}


def _damage_npz(src: Path, dst: Path, rng: random.Random) -> None:
    with np.load(src) as data:
        arrays = dict(data)
    keys = sorted(arrays)
    op = rng.randrange(4)
    key = rng.choice(keys)
    if op == 0:
        del arrays[key]
    elif op == 1:
        arrays[key] = arrays[key].reshape(-1)[: max(0, arrays[key].size - 1)]
    elif op == 2:
        arrays[key] = arrays[key].astype(rng.choice([np.int64, np.float64, np.bool_, np.complex64]))
    else:
        dst.write_bytes(_byte_flips(src.read_bytes(), rng) if rng.random() < 0.5 else _truncate(src.read_bytes(), rng))
        return
    np.savez(dst, **arrays)


ONNX_KINDS = tuple(_BYTE_DAMAGE) + tuple(_PROTO_DAMAGE)
QIR_KINDS = tuple(_TEXT_DAMAGE) + ("qir-npz",)
KINDS = ONNX_KINDS + QIR_KINDS


def damage(kind: str, seed: int, seeds: Seeds, folder: Path) -> Path:
    """Write a damaged model of `kind` (deterministic in `seed`) into `folder`; return its path."""
    rng = random.Random(f"{kind}:{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ONNX_KINDS:
        src = seeds.onnx if rng.random() < 0.6 else seeds.qdq
        dst = folder / "model.onnx"
        if kind in _BYTE_DAMAGE:
            dst.write_bytes(_BYTE_DAMAGE[kind](src.read_bytes(), rng))
            return dst
        m = onnx.load(src)
        _PROTO_DAMAGE[kind](m, rng)
        dst.write_bytes(m.SerializeToString())
        return dst
    src = seeds.qir if rng.random() < 0.5 else seeds.qir_quant
    dst = folder / "model.qir"
    if kind == "qir-npz":
        shutil.copyfile(src, dst)
        _damage_npz(src.with_suffix(".npz"), dst.with_suffix(".npz"), rng)
        return dst
    dst.write_text(_TEXT_DAMAGE[kind](src.read_text(), rng))
    shutil.copyfile(src.with_suffix(".npz"), dst.with_suffix(".npz"))
    return dst


# ------------------------------------------------------------------------------ running


@dataclass(frozen=True)
class Outcome:
    command: str
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    output: Path | None  # where the command writes (file or folder), if anywhere
    before: frozenset[str]  # names in the case folder before the run
    after: frozenset[str]


_IGNORED_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def argv_for(command: str, model: Path, seeds: Seeds, folder: Path) -> tuple[list[str], Path | None]:
    """The command line of `command` on `model`, writing into `folder`."""
    if command == "show":
        return ["show", str(model)], None
    if command == "run":
        out = folder / "out.npz"
        return ["run", str(model), str(seeds.inputs), "-o", str(out)], out
    if command == "opt":
        out = folder / "opt.qir"
        return ["opt", str(model), "-p", "canonicalize,fold-bn", "-o", str(out), "-q"], out
    out = folder / "compiled"
    return ["compile", str(model), "--target", "cim", "--calib", str(seeds.calib), "-o", str(out), "-q"], out


def run_case(command: str, model: Path, seeds: Seeds, folder: Path) -> Outcome:
    """Run one command in-process with captured stdout / stderr (warnings shown as to a user, every time)."""
    argv, output = argv_for(command, model, seeds, folder)
    before = frozenset(p.name for p in folder.iterdir())
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")  # what a user sees, every time, minus Python's default ignores
        for category in _IGNORED_BY_DEFAULT:
            warnings.filterwarnings("ignore", category=category)
        try:
            rc = main(argv)
        except SystemExit as e:  # main must never exit by itself
            rc = 1000 + (e.code if isinstance(e.code, int) else 1)
    seconds = time.perf_counter() - start
    after = frozenset(p.name for p in folder.iterdir())
    return Outcome(command, tuple(argv), rc, out.getvalue(), err.getvalue(), seconds, output, before, after)


def problems(o: Outcome) -> list[str]:
    """What is wrong with an outcome (empty: fine)."""
    found = []
    text = o.stdout + o.stderr
    if "Traceback" in text or "internal error" in text:
        found.append("traceback")
    if o.rc not in (0, 2):
        found.append(f"exit code {o.rc}")
    if o.rc == 2:
        lines = o.stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("qcc: error:"):
            found.append(f"stderr is not one 'qcc: error:' line ({len(lines)} lines)")
        left = o.after - o.before
        if left:
            found.append(f"left behind: {', '.join(sorted(left))}")
    return found


def outcome_kind(o: Outcome) -> str:
    """'ok', 'user-error', or 'bad' for the counts."""
    if problems(o):
        return "bad"
    return "ok" if o.rc == 0 else "user-error"
