"""Reading ONNX models safely.

Why a module of its own: everything a file can do wrong (not being a model at all, a truncated
protobuf, an opset qcc does not speak, weights in external files that point outside the model's
folder) must end in one clear `ModelImportError` line, never a protobuf or checker traceback, before
the converter looks at a single node. External data is read here, by hand, after each path is
confined to the model's folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from qcc.errors import ModelImportError

__all__ = ["OPSET_MIN", "OPSET_MAX", "DEFAULT_DOMAINS", "QONNX_DOMAINS", "load_proto", "default_opset"]

OPSET_MIN, OPSET_MAX = 11, 21
DEFAULT_DOMAINS = ("", "ai.onnx")
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


def load_proto(source: ModelSource, base_dir: str | os.PathLike | None = None, *,
               check: bool = True) -> onnx.ModelProto:
    """A validated ModelProto with all external data read in (the caller's proto is not changed)."""
    path = None
    if isinstance(source, onnx.ModelProto):
        proto, what = source, "<ModelProto>"
    elif isinstance(source, bytes | bytearray):
        proto, what = _parse(bytes(source), "<bytes>"), "<bytes>"
    else:
        path = Path(source)
        proto, what = _parse(_read(path), str(path)), str(path)
        if base_dir is None:
            base_dir = path.resolve().parent
    _check_structure(proto, what)
    default_opset(proto)  # raises on an unsupported opset, before the checker can say it less clearly
    external = [t for t in _tensors(proto.graph) if t.data_location == TensorProto.EXTERNAL]
    for tensor in external:  # confine every path before anything reads a byte
        _external_file(tensor, base_dir)
    if check and path is not None:
        _run_checker(str(path), what)  # from the file: finds its external data, works past 2 GB
    if external:
        proto = _copy(proto)
        _load_external_data(proto, Path(base_dir))
    if check and path is None:
        _run_checker(proto, what)
    return proto


def default_opset(proto: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain; ModelImportError outside 11..21."""
    versions = [o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise ModelImportError("the model imports no opset of the default ONNX domain; "
                               f"qcc imports opsets {OPSET_MIN} to {OPSET_MAX}")
    version = max(versions)
    if not OPSET_MIN <= version <= OPSET_MAX:
        raise ModelImportError(f"the model uses ONNX opset {version}; qcc imports opsets "
                               f"{OPSET_MIN} to {OPSET_MAX} (convert it with onnx.version_converter)")
    return version


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelImportError(f"model file '{path}' not found") from None
    except OSError as e:
        raise ModelImportError(f"cannot read model file '{path}': {e.strerror or e}") from None


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    if not data:
        raise ModelImportError(f"not a valid ONNX model: '{what}' is empty")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError, and RuntimeWarning-ish errors on garbage
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelImportError(f"not a valid ONNX model: '{what}' cannot be decoded ({reason}; "
                               "truncated or not an .onnx file?)") from None
    return proto


def _check_structure(proto: onnx.ModelProto, what: str) -> None:
    """Bytes that happen to decode as a protobuf are still not a model without these."""
    if proto.ir_version <= 0:
        raise ModelImportError(f"not a valid ONNX model: '{what}' has no IR version "
                               "(truncated or not an .onnx file?)")
    if not proto.HasField("graph") or not proto.graph.output:
        raise ModelImportError(f"not a valid ONNX model: '{what}' has no graph with outputs "
                               "(truncated or not an .onnx file?)")
    if not all(isinstance(s, str) for s in _names(proto.graph)):
        raise ModelImportError(f"not a valid ONNX model: '{what}' has names that are not UTF-8 text "
                               "(corrupted?)")


def _names(graph: onnx.GraphProto) -> Iterator:
    """Every string the converter reads as a name (protobuf gives bytes for invalid UTF-8)."""
    yield graph.name
    for vi in (*graph.input, *graph.output):
        yield vi.name
        yield from (d.dim_param for d in vi.type.tensor_type.shape.dim)
    for t in graph.initializer:
        yield t.name
    for node in graph.node:
        yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
        yield from (a.name for a in node.attribute)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor stored in a graph: initializers and tensor attributes (subgraphs included)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _load_external_data(proto: onnx.ModelProto, base: Path) -> None:
    for tensor in _tensors(proto.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            _load_tensor(tensor, base)


def _external_file(tensor: TensorProto, base_dir) -> tuple[Path, int, int | None]:
    """The confined file path, offset and length of one externally stored tensor."""
    if base_dir is None:
        raise ModelImportError(f"tensor '{tensor.name}' keeps its data in an external file, but the model "
                               "was given without its folder; import it from its path or pass base_dir")
    base = Path(base_dir)
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    name = tensor.name
    if not location:
        raise ModelImportError(f"external data of tensor '{name}' names no file (location is empty)")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or Path(location).drive:
        raise ModelImportError(f"external data file '{location}' of tensor '{name}' is an absolute path; "
                               "it must be relative to the model's folder")
    if ".." in Path(location.replace("\\", "/")).parts:
        raise ModelImportError(f"external data file '{location}' of tensor '{name}' escapes the model's "
                               "folder ('..' is not allowed)")
    root = base.resolve()
    path = (root / location).resolve()
    if root != path and root not in path.parents:
        raise ModelImportError(f"external data file '{location}' of tensor '{name}' resolves outside the "
                               f"model's folder (to '{path}'; a symlink?)")
    if not path.is_file():
        raise ModelImportError(f"external data file '{location}' of tensor '{name}' not found in "
                               f"'{root}'")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelImportError(f"external data of tensor '{name}' has a non-integer offset or "
                               "length") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelImportError(f"external data of tensor '{name}' has a negative offset or length")
    return path, offset, length


def _load_tensor(tensor: TensorProto, base: Path) -> None:
    path, offset, length = _external_file(tensor, base)
    location = {e.key: e.value for e in tensor.external_data}["location"]
    size = path.stat().st_size
    want = _nbytes(tensor)
    if length is None:
        length = size - offset if want is None else want
    if offset + length > size:
        raise ModelImportError(f"external data file '{location}' is too short for tensor '{tensor.name}' "
                               f"(needs bytes {offset} to {offset + length}, the file has {size})")
    if want is not None and want != length:
        raise ModelImportError(f"external data of tensor '{tensor.name}' is {length} bytes, but its "
                               f"shape and type need {want}")
    with open(path, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


def _nbytes(tensor: TensorProto) -> int | None:
    """Bytes of a fixed-size tensor's raw data, or None when it cannot be known (strings, 4-bit)."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except Exception:
        return None
    if dtype.kind in "OUS" or tensor.data_type in _PACKED_TYPES:
        return None
    return int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize


_PACKED_TYPES = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)}


# Checker complaints about models onnxruntime runs: QONNX exporters often omit their domain's opset,
# and hand-written models their outputs' shapes. The converter checks what it needs itself.
_TOLERATED = ("No opset import for domain", "Field 'shape' of 'type' is required but missing")


def _run_checker(model: onnx.ModelProto | str, what: str) -> None:
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        line = next((s.strip() for s in str(e).splitlines() if s.strip()), type(e).__name__)
        if line.startswith(_TOLERATED):
            return
        raise ModelImportError(f"not a valid ONNX model: '{what}' fails the ONNX checker: {line}") from None
