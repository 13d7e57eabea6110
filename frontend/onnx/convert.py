"""ONNX nodes -> IR nodes, one converter per op that needs more than copying attributes.

The IR conventions (DESIGN.md, qcc.ops.registry): constant operands become attributes (Reshape's
shape, Clip's bounds, Squeeze / Unsqueeze / ReduceMean axes, Pad's pads), auto_pad is resolved to
explicit pads, Softmax has opset-13 semantics, BatchNormalization is inference only, and ReduceMean
over the spatial axes of an NCHW tensor is GlobalAveragePool. Any other op the registry defines is
converted generically when its ONNX attributes are ones the IR op knows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from qcc.frontend.onnx import folding
from qcc.frontend.onnx.importer import Const, Context, Sym, tensor_array
from qcc.ir.graph import Value
from qcc.ir.types import TensorType
from qcc.ops import get_op, has_op

__all__ = ["convert_node", "parse_attrs", "TARGETS"]

Converter = Callable[[Context, onnx.NodeProto, str, dict[str, Any]], None]


def _short_float(value: float) -> float:
    """A float32 attribute as the shortest decimal with the same float32 (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def parse_attrs(cx: Context, node: onnx.NodeProto, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise cx.error(node, name, "subgraphs (control flow) are not supported")
        if attr.type == onnx.AttributeProto.TENSOR:
            out[attr.name] = tensor_array(attr.t)
            continue
        value = onnx.helper.get_attribute_value(attr)
        if attr.type == onnx.AttributeProto.FLOAT:
            value = _short_float(value)
        elif attr.type == onnx.AttributeProto.FLOATS:
            value = [_short_float(v) for v in value]
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list):
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        out[attr.name] = value
    return out


def convert_node(cx: Context, node: onnx.NodeProto, name: str) -> None:
    from qcc.frontend.onnx import quant_import

    if cx.is_qonnx_domain(node) or (cx.is_default_domain(node) and node.op_type in quant_import.HANDLERS):
        handler = quant_import.HANDLERS.get(node.op_type)
        if handler is None:
            raise cx.unsupported(node, name)
        handler(cx, node, name, parse_attrs(cx, node, name))
        return
    if not cx.is_default_domain(node):
        raise cx.unsupported(node, name)
    op = node.op_type
    attrs = parse_attrs(cx, node, name)
    why = _try_fold(cx, node, attrs) if op in folding.FOLDERS else "not foldable"
    if why is None:
        return
    converter = CONVERTERS.get(op)
    target = TARGETS.get(op, op)
    if converter is not None and (target is None or has_op(target)):
        converter(cx, node, name, attrs)
        return
    if converter is None and has_op(op):
        _generic(cx, node, name, attrs)
        return
    if op in folding.FOLDERS:
        runtime = [n for n in node.input if n and cx.array(n) is None]
        if runtime:
            raise cx.error(node, name, f"input '{runtime[0]}' is computed at run time; qcc folds {op} only "
                                       "on constants and shapes")
        raise cx.error(node, name, f"cannot be evaluated at import: {why}")
    raise cx.unsupported(node, name)


# ---------------------------------------------------------------------- folding and aliasing
def _try_fold(cx: Context, node: onnx.NodeProto, attrs: dict[str, Any]) -> str | None:
    """Evaluate the node at import time; None when done, else why not."""
    op = node.op_type
    if op == "Identity":
        cx.bind(node.output[0], cx.entry(node.input[0]))
        return None
    inputs: list[Any] = []
    for i, n in enumerate(node.input):
        e = cx.entry(n)
        if e is None:
            inputs.append(None)
        elif isinstance(e, Const | Sym):
            inputs.append(e.array)
        elif isinstance(e, Value) and i in folding.TYPE_ONLY.get(op, ()):
            inputs.append(folding.Typed(e.type.shape, np.dtype(e.type.dtype)))
        else:
            return f"input '{n}' is computed at run time"
    try:
        results = folding.fold(op, inputs, attrs, cx.opset)
    except folding.NotFoldable as e:
        return str(e) or "not foldable"
    for out, array in zip(node.output, results):
        cx.bind(out, Sym(array) if folding.is_symbolic(array) else Const(array))
    return None


def _dropout(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    training = cx.const(node, name, 2, "training_mode")
    if training is not None and bool(training.reshape(-1)[0]):
        raise cx.error(node, name, "training-mode Dropout is not supported (export the model in eval mode)")
    if len(node.output) > 1 and node.output[1] and cx.consumers[node.output[1]]:
        raise cx.error(node, name, "the Dropout mask output is used; only inference Dropout is supported")
    cx.bind(node.output[0], cx.entry(node.input[0]))


# ---------------------------------------------------------------------- attribute checks
def _take(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any], allowed: set[str],
          ignored: dict[str, Any] | None = None) -> dict[str, Any]:
    """The attributes the IR op takes; ignorable ones must hold their harmless value."""
    ignored = ignored or {}
    out = {}
    for key, value in attrs.items():
        if key in allowed:
            out[key] = value
        elif key in ignored:
            if ignored[key] is not _ANY and value != ignored[key]:
                raise cx.error(node, name, f"attribute {key}={value!r} is not supported "
                                           f"(only {ignored[key]!r})")
        else:
            raise cx.error(node, name, f"attribute '{key}' is not supported by qcc's {node.op_type}")
    return out


_ANY = object()


def _outputs(cx: Context, node: onnx.NodeProto, name: str, n: int, what: str) -> list[str]:
    extra = [o for o in node.output[n:] if o]
    if extra:
        raise cx.error(node, name, f"{what} (output '{extra[0]}') is not supported")
    return list(node.output[:n])


def _generic(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    opdef = get_op(node.op_type, node_name=name)
    kept = _take(cx, node, name, attrs, set(opdef.attrs))
    outs = _outputs(cx, node, name, len(opdef.outputs), "an extra output")
    cx.emit(node.op_type, cx.values(node), kept, name=name, outputs=outs)


# ---------------------------------------------------------------------- convolution and pooling
def _auto_pads(cx: Context, node: onnx.NodeProto, name: str, mode: str, x: TensorType,
               kernel: list[int], strides: list[int], dilations: list[int]) -> list[int] | None:
    """Explicit pads for auto_pad SAME_UPPER / SAME_LOWER / VALID (None for NOTSET)."""
    if mode in ("", "NOTSET"):
        return None
    nsp = len(kernel)
    if mode == "VALID":
        return [0] * (2 * nsp)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise cx.error(node, name, f"unknown auto_pad '{mode}'")
    begins, ends = [], []
    for i in range(nsp):
        size = x.shape[2 + i]
        if not isinstance(size, int):
            raise cx.error(node, name, f"auto_pad {mode} needs a static spatial size, dim {2 + i} is '{size}'")
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


def _spatial(attrs: dict[str, Any], key: str, nsp: int, default: int) -> list[int]:
    return list(attrs.get(key) or [default] * nsp)


def _conv(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    inputs = cx.values(node)
    if len(inputs) < 2:
        raise cx.error(node, name, "needs inputs X and W")
    x, w = inputs[0], inputs[1]
    nsp = w.type.rank - 2
    kept = _take(cx, node, name, attrs, {"group", "kernel_shape", "strides", "dilations", "pads",
                                         "auto_pad"})
    kernel = list(kept.get("kernel_shape") or [int(d) for d in w.type.shape[2:]])
    strides, dilations = _spatial(kept, "strides", nsp, 1), _spatial(kept, "dilations", nsp, 1)
    pads = _auto_pads(cx, node, name, kept.pop("auto_pad", "NOTSET"), x.type, kernel, strides, dilations)
    kept.update(kernel_shape=kernel, strides=strides, dilations=dilations, auto_pad="NOTSET",
                pads=pads if pads is not None else list(kept.get("pads") or [0] * (2 * nsp)))
    cx.emit("Conv", inputs, kept, name=name, outputs=_outputs(cx, node, name, 1, "an extra output"))


def _pool(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    op = node.op_type
    x = cx.value(node.input[0])
    nsp = x.type.rank - 2
    if op == "MaxPool":
        kept = _take(cx, node, name, attrs, {"kernel_shape", "strides", "pads", "dilations", "ceil_mode",
                                             "auto_pad"}, {"storage_order": _ANY})
        outs = _outputs(cx, node, name, 1, "the MaxPool Indices output")
    else:
        kept = _take(cx, node, name, attrs, {"kernel_shape", "strides", "pads", "ceil_mode",
                                             "count_include_pad", "auto_pad"}, {"dilations": [1] * nsp})
        outs = _outputs(cx, node, name, 1, "an extra output")
    if "kernel_shape" not in kept:
        raise cx.error(node, name, "kernel_shape is required")
    kernel = list(kept["kernel_shape"])
    strides = _spatial(kept, "strides", nsp, 1)
    dilations = _spatial(kept, "dilations", nsp, 1)
    pads = _auto_pads(cx, node, name, kept.pop("auto_pad", "NOTSET"), x.type, kernel, strides, dilations)
    kept.update(strides=strides, pads=pads if pads is not None else list(kept.get("pads") or [0] * 2 * nsp))
    if op == "MaxPool":
        kept["dilations"] = dilations
    cx.emit(op, [x], kept, name=name, outputs=outs)


def _batch_norm(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    if attrs.get("training_mode", 0):
        raise cx.error(node, name, "training_mode=1 is not supported (export the model in eval mode)")
    kept = _take(cx, node, name, attrs, {"epsilon"}, {"momentum": _ANY, "training_mode": 0, "spatial": 1})
    outs = _outputs(cx, node, name, 1, "a training output (running mean / variance)")
    cx.emit("BatchNormalization", cx.values(node), kept, name=name, outputs=outs)


# ---------------------------------------------------------------------- operands -> attributes
def _clip(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    if cx.opset < 11:
        lo, hi = attrs.get("min", -math.inf), attrs.get("max", math.inf)
    else:
        _take(cx, node, name, attrs, set())
        lo_a = cx.const(node, name, 1, "the min bound")
        hi_a = cx.const(node, name, 2, "the max bound")
        lo = float(lo_a.reshape(-1)[0]) if lo_a is not None else -math.inf
        hi = float(hi_a.reshape(-1)[0]) if hi_a is not None else math.inf
    from qcc.frontend.onnx.quant_import import absorb_clip

    if absorb_clip(cx, node, lo, hi):
        return
    data = cx.array(node.input[0])
    if data is not None and not folding.is_symbolic(data):
        cx.bind(node.output[0], Const(np.clip(data, lo, hi).astype(data.dtype)))
        return
    cx.emit("Clip", [cx.value(node.input[0])], {"min": lo, "max": hi}, name=name,
            outputs=[node.output[0]])


def _reshape_target(cx: Context, node: onnx.NodeProto, name: str, x: TensorType,
                    target: np.ndarray, allowzero: int) -> list[int]:
    """Resolve a (possibly symbolic) target: a dim copied from the same input axis is 0, one run-time
    dim is -1."""
    out: list[int | None] = []
    for i, e in enumerate(target.reshape(-1).tolist()):
        if isinstance(e, int):
            if allowzero and e == 0:
                raise cx.error(node, name, "allowzero=1 with a zero in the target shape is not supported")
            out.append(e)
        elif isinstance(e, str) and i < x.rank and x.shape[i] == e and not allowzero:
            out.append(0)
        else:
            out.append(None)
    unknown = [i for i, e in enumerate(out) if e is None]
    if not unknown:
        return out  # type: ignore[return-value]
    shown = "[" + ", ".join(str(e) for e in target.reshape(-1).tolist()) + "]"
    if len(unknown) > 1 or -1 in out:
        raise cx.error(node, name, f"target shape {shown} has more than one dim known only at run time")
    out[unknown[0]] = -1
    return out  # type: ignore[return-value]


def _reshape(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    _take(cx, node, name, attrs, set(), {"allowzero": _ANY})
    x = cx.value(node.input[0])
    target = cx.array(node.input[1])
    if target is None:
        raise cx.error(node, name, f"the target shape '{node.input[1]}' is computed at run time from "
                                   "tensor data; qcc needs it at import")
    shape = _reshape_target(cx, node, name, x.type, target, attrs.get("allowzero", 0))
    cx.emit("Reshape", [x], {"shape": shape}, name=name, outputs=[node.output[0]])


def _norm_axes(cx: Context, node: onnx.NodeProto, name: str, axes: list[int], rank: int) -> list[int]:
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise cx.error(node, name, f"axis {a} is out of range for rank {rank}")
        out.append(a + rank if a < 0 else a)
    return sorted(out)


def _axes(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any],
          first_input_opset: int) -> list[int] | None:
    if cx.opset >= first_input_opset:
        _take(cx, node, name, attrs, set(), {"noop_with_empty_axes": _ANY, "keepdims": _ANY})
        a = cx.const(node, name, 1, "axes")
        return None if a is None else [int(v) for v in a.reshape(-1)]
    return list(attrs["axes"]) if "axes" in attrs else None


def _squeeze(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    x = cx.value(node.input[0])
    axes = _axes(cx, node, name, attrs, 13)
    if axes is None:
        if not x.type.is_static:
            raise cx.error(node, name, f"Squeeze without axes on {x.type} needs static dims")
        axes = [i for i, d in enumerate(x.type.shape) if d == 1]
    cx.emit("Squeeze", [x], {"axes": _norm_axes(cx, node, name, axes, x.type.rank)}, name=name,
            outputs=[node.output[0]])


def _unsqueeze(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    x = cx.value(node.input[0])
    axes = _axes(cx, node, name, attrs, 13)
    if axes is None:
        raise cx.error(node, name, "Unsqueeze needs axes")
    axes = _norm_axes(cx, node, name, axes, x.type.rank + len(axes))
    cx.emit("Unsqueeze", [x], {"axes": axes}, name=name, outputs=[node.output[0]])


def _reduce_mean(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    x = cx.value(node.input[0])
    if cx.opset < 18:
        _take(cx, node, name, attrs, {"axes", "keepdims"})
    axes = _axes(cx, node, name, attrs, 18)
    keepdims = int(attrs.get("keepdims", 1))
    if not axes and attrs.get("noop_with_empty_axes", 0):
        cx.bind(node.output[0], x)
        return
    axes = _norm_axes(cx, node, name, axes or [], x.type.rank)
    out = node.output[0]
    if x.type.rank == 4 and axes == [2, 3] and has_op("GlobalAveragePool"):
        if keepdims:
            cx.emit("GlobalAveragePool", [x], {}, name=name, outputs=[out])
            return
        pooled = cx.emit("GlobalAveragePool", [x], {}, name=name, outputs=[f"{out}_pooled"])
        cx.emit("Flatten", [pooled.output], {"axis": 1}, name=cx.graph.fresh_node_name(f"{name}_flatten"),
                outputs=[out])
        return
    cx.emit("ReduceMean", [x], {"axes": axes, "keepdims": keepdims}, name=name, outputs=[out])


def _softmax(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    _take(cx, node, name, attrs, {"axis"})
    x = cx.value(node.input[0])
    rank = x.type.rank
    axis = int(attrs.get("axis", 1 if cx.opset < 13 else -1))
    if not -rank <= axis < rank:
        raise cx.error(node, name, f"axis {axis} is out of range for rank {rank}")
    if cx.opset >= 13 or axis % rank == rank - 1:
        cx.emit("Softmax", [x], {"axis": axis}, name=name, outputs=[node.output[0]])
        return
    # Opset < 13: softmax over all dims from `axis` on, as Flatten -> Softmax(last) -> Reshape back.
    axis %= rank
    back = _reshape_back(cx, node, name, x.type, axis)
    flat = cx.emit("Flatten", [x], {"axis": axis}, name=cx.graph.fresh_node_name(f"{name}_flatten"),
                   outputs=[f"{node.output[0]}_flat"])
    soft = cx.emit("Softmax", [flat.output], {"axis": -1}, name=name, outputs=[f"{node.output[0]}_soft"])
    cx.emit("Reshape", [soft.output], {"shape": back}, name=cx.graph.fresh_node_name(f"{name}_reshape"),
            outputs=[node.output[0]])


def _reshape_back(cx: Context, node: onnx.NodeProto, name: str, x: TensorType, axis: int) -> list[int]:
    shape = [d if isinstance(d, int) else None for d in x.shape]
    if axis == 1 and shape[0] is None:
        shape[0] = 0  # Flatten(axis=1) keeps dim 0 in place
    if sum(d is None for d in shape) > 1:
        raise cx.error(node, name, f"opset-{cx.opset} Softmax over axis {axis} of {x} needs at most one "
                                   "dynamic dim")
    return [-1 if d is None else d for d in shape]


def _pad(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    kept = _take(cx, node, name, attrs, {"mode"})
    x = cx.value(node.input[0])
    pads_a = cx.const(node, name, 1, "pads")
    if pads_a is None:
        raise cx.error(node, name, "pads are required")
    pads = [int(v) for v in pads_a.reshape(-1)]
    value_a = cx.const(node, name, 2, "constant_value")
    axes_a = cx.const(node, name, 3, "axes")
    rank = x.type.rank
    if axes_a is not None:
        axes = _norm_axes(cx, node, name, [int(a) for a in axes_a.reshape(-1)], rank)
        full = [0] * (2 * rank)
        for j, a in enumerate(axes):
            full[a], full[a + rank] = pads[j], pads[j + len(axes)]
        pads = full
    if len(pads) != 2 * rank:
        raise cx.error(node, name, f"{len(pads)} pads do not fit rank {rank}")
    kept.update(pads=pads, mode=kept.get("mode", "constant"),
                value=float(value_a.reshape(-1)[0]) if value_a is not None else 0.0)
    cx.emit("Pad", [x], kept, name=name, outputs=[node.output[0]])


def _transpose(cx: Context, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
    kept = _take(cx, node, name, attrs, {"perm"})
    x = cx.value(node.input[0])
    kept["perm"] = list(kept.get("perm") or reversed(range(x.type.rank)))
    cx.emit("Transpose", [x], kept, name=name, outputs=[node.output[0]])


CONVERTERS: dict[str, Converter] = {
    "Dropout": _dropout,
    "Conv": _conv,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "BatchNormalization": _batch_norm,
    "Clip": _clip,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "ReduceMean": _reduce_mean,
    "Softmax": _softmax,
    "Pad": _pad,
    "Transpose": _transpose,
}

# ONNX op -> the IR op its converter emits (None: nothing, the output aliases an input).
TARGETS: dict[str, str | None] = {"Dropout": None, "Identity": None}
