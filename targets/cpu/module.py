"""The whole quantized graph as ONE TVM module: Relax functions calling pre-scheduled TIR.

Why Relax (tvm.relax.BlockBuilder + call_tir): the bit-serial kernels (qcc.targets.cpu.kernels
conv_primfunc / dense_primfunc) and our fused elementwise chains (lower_expr) are scheduled TIR
PrimFuncs; Relax links them into one IRModule with its static memory planner and VM calling
convention, compiled once by `tvm.compile` for the host CPU and exported as OUTDIR/model.so, loaded
back by `tvm.relax.VirtualMachine`. The default Relax pipeline fuses nothing and leaves the
PrimFuncs' schedules alone, so the plan of calls is exactly the one written here; a home-made list
of TIR calls would only re-implement the VM's argument passing and buffer reuse.

What runs where (all exact per qcc.integer, the spec):
- in the module: input quantization (per-tensor uniform inputs), every Conv / Gemm the bit-serial
  kernels take (qcc.targets.cpu.layers.plan_layer; the float bias is folded at compile time into
  the kernel's int64 correction term as round_half_even(b / (sx sw)); a pixel-vector conv whose
  offset codes fit a byte gets them as uint8, so the producer writes and the kernel's packing reads a
  quarter of the bytes), ReLU / Clip on codes,
  requantization, thresholds, bipolar signs, MaxPool, GlobalAveragePool, residual Add / Sub / Mul
  with the reference's fixed-point alignment, Identity / Flatten / Reshape / (Un)Squeeze, and the
  dequantized float outputs. Scales and zero points are static: the builder reads them from one
  reference run (`qcc.integer` rules on a zero input), so the module holds only integer arithmetic
  plus the final float64 products of QTensor.real.
- on the host (reference code, named in metadata.json "host_nodes"): float islands (any node the
  integer rules compute in float), nodes whose values are cropped, ops without a module rule
  (Concat, Pad, Transpose, AveragePool, Softmax, ...), and requantizations whose operands could
  exceed |q - z| < 2^32 (the int64 product M0 (q - z) would no longer be exact; value bounds are
  tracked through the graph to decide). Each host node splits the module into segments, Relax
  functions seg0, seg1, ... of the same model.so, called in order by the saved plan.

The module is built for one sample (batch 1, the latency case); `CompiledModel` runs a batch N > 1
sample by sample. Artifacts: model.so, params.npz (packed weights, corrections, per-channel
multipliers: the functions' trailing arguments), metadata.json (plan, kernels, host nodes),
model.qir.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.integer import IntegerSemantics, QTensor, constant_value, to_float
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.quant import Bipolar, Thresholds, Uniform
from qcc.numerics import bias_to_accumulator, integer_thresholds, quantize_multiplier
from qcc.targets.cpu import lower_expr as lx

__all__ = ["build_module", "explain_lowering",
           "CompiledModel", "load", "static_metadata", "sample_shape", "MODULE_FILE", "PARAMS_FILE",
           "METADATA_FILE", "QIR_FILE"]

MODULE_FILE = "model.so"
PARAMS_FILE = "params.npz"
METADATA_FILE = "metadata.json"
QIR_FILE = "model.qir"
_EXACT_LIMIT = 1 << 32  # |q - z| below this keeps (q - z) * M0 (M0 < 2^31) inside int64
_RESHAPES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


# ------------------------------------------------------------------------------ static metadata

class _MetaSemantics(IntegerSemantics):
    """The reference, also recording each value's exact result before its annotation."""

    def __init__(self):
        super().__init__()
        self.raw: dict[str, object] = {}

    def value(self, value: Value, array):
        self.raw[value.name] = array
        return super().value(value, array)


def sample_shape(v: Value) -> tuple[int, ...]:
    """A graph input's shape for one sample (batch 1)."""
    shape = list(v.type.shape)
    if not shape or shape[0] not in (1,) and not isinstance(shape[0], str):
        raise QccError(f"cpu target: input '{v.name}' must have a symbolic or unit batch dimension, "
                       f"got {list(v.type.shape)}")
    if any(not isinstance(d, int) for d in shape[1:]):
        raise QccError(f"cpu target: input '{v.name}' needs fixed non-batch dimensions, got {list(v.type.shape)}")
    return (1, *shape[1:])


def static_metadata(graph: Graph) -> tuple[dict, dict]:
    """(post, raw): every value's reference runtime after / before its annotation, on a zero sample.

    Scales and zero points of the integer semantics depend on the graph only, never on the data.
    """
    from qcc.interp import run

    sem = _MetaSemantics()
    zeros = {v.name: np.zeros(sample_shape(v), v.type.dtype) for v in graph.inputs}
    post = run(graph, zeros, mode=sem, keep_all=True, dequantize=False)
    return post, sem.raw


# ------------------------------------------------------------------------------ segments

@dataclass(eq=False)
class _Slot:
    """A stored tensor inside a segment: a function input (name), or the result of call `index`."""

    kind: str
    name: str = ""
    index: int = -1


@dataclass(eq=False)
class _Call:
    func: object  # PrimFunc, or None for a reshape
    args: list  # _Slot or ndarray
    shape: tuple[int, ...]
    dtype: str


@dataclass(eq=False)
class _Segment:
    index: int
    inputs: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    calls: list[_Call] = field(default_factory=list)
    outputs: list[tuple[str, str, _Slot]] = field(default_factory=list)  # (value, "codes"/"float", slot)
    env: dict[str, lx.Lazy] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"seg{self.index}"


def _vec(a, shape: tuple[int, ...]) -> np.ndarray | None:
    """A per-tensor or axis-1 per-channel parameter as a length-C vector (None: other layouts)."""
    a = np.asarray(a)
    channels = shape[1] if len(shape) > 1 else 1
    if a.size == 1:
        return np.full(channels, a.reshape(()).item())
    if len(shape) < 2 or a.size != channels or a.ndim > len(shape):
        return None
    expected = tuple(channels if k == 1 else 1 for k in range(len(shape)))
    return a.reshape(-1) if (1,) * (len(shape) - a.ndim) + a.shape == expected else None


def _multipliers(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(m)) for m in np.asarray(ratio).reshape(-1)]
    m0 = np.array([p[0] for p in pairs], np.int64).reshape(np.shape(ratio))
    n = np.array([p[1] for p in pairs], np.int64).reshape(np.shape(ratio))
    return m0, n


def _span(lazy: lx.Lazy, zero_point) -> int:
    """max |q - z| over the value's bounds."""
    zp = np.asarray(zero_point)
    return max(abs(lazy.bounds[0] - int(zp.max())), abs(lazy.bounds[1] - int(zp.min())))


class _Lowering:
    """Walks the graph, lowering nodes into segments and leaving the rest to the host."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.post, self.raw = static_metadata(graph)
        self.steps: list = []  # _Segment or host node name
        self.host_nodes: list[str] = []
        self.kernels: list[dict] = []
        self.stored: dict[str, tuple[tuple[int, ...], str, tuple[int, int]]] = {}  # crossing values
        self.uses = {v.name: len(v.uses) + (1 if v in graph.outputs else 0) for v in graph.values()}
        self.seg = _Segment(0)
        self.position = 0

    # ---- slots and materialization
    def _call(self, func, args: list, shape, dtype: str) -> _Slot:
        self.seg.calls.append(_Call(func, args, tuple(shape), dtype))
        return _Slot("call", index=len(self.seg.calls) - 1)

    def _store(self, lazy: lx.Lazy) -> _Slot:
        func, leaves = lazy.prim_func()
        return self._call(func, [leaf.source for leaf in leaves], lazy.shape, lazy.dtype)

    def _stored_lazy(self, lazy: lx.Lazy) -> lx.Lazy:
        if len(lazy.leaves) == 1 and _is_plain(lazy):
            return lazy
        return lx.Lazy.stored(self._store(lazy), lazy.shape, lazy.dtype, lazy.bounds)

    def operand(self, v: Value) -> lx.Lazy | None:
        """The value as a chain in the current segment (a new segment input if it comes from outside)."""
        if v.name in self.seg.env:
            return self.seg.env[v.name]
        if v.is_constant:
            return None
        if v in self.graph.inputs:
            return self._graph_input(v)
        if v.name not in self.stored:
            return None
        shape, dtype, bounds = self.stored[v.name]
        self.seg.inputs.append((v.name, shape, dtype))
        lazy = lx.Lazy.stored(_Slot("input", v.name), shape, dtype, bounds)
        self.seg.env[v.name] = lazy
        return lazy

    def _graph_input(self, v: Value) -> lx.Lazy | None:
        spec = v.quant
        shape = sample_shape(v)
        if v.name in self.stored:  # quantized on the host (non-uniform annotation)
            shape, dtype, bounds = self.stored[v.name]
            self.seg.inputs.append((v.name, shape, dtype))
            lazy = lx.Lazy.stored(_Slot("input", v.name), shape, dtype, bounds)
        elif isinstance(spec, Uniform) and np.size(spec.scale) == 1 and v.type.dtype == "float32":
            self.seg.inputs.append((v.name, shape, "float32"))
            x = lx.Lazy.stored(_Slot("input", v.name), shape, "float32", (0, 0))
            lazy = lx.quantize_input(x, float(np.asarray(spec.scale).reshape(())),
                                     int(np.asarray(spec.zero_point).reshape(())), spec.qmin, spec.qmax)
            if self.uses[v.name] > 1:
                lazy = self._stored_lazy(lazy)
        else:
            return None
        self.seg.env[v.name] = lazy
        return lazy

    # ---- the walk
    def run(self) -> None:
        for v in self.graph.inputs:
            if v.quant is not None and not (isinstance(v.quant, Uniform) and np.size(v.quant.scale) == 1):
                self.stored[v.name] = (sample_shape(v), "int64", _code_bounds(v))
                self.host_nodes.append(f"<quantize input {v.name}>")
        for position, node in enumerate(self.graph.nodes):
            self.position = position
            outs = self._lower(node)
            if outs is None:
                self._close()
                self.steps.append(node.name)
                self.host_nodes.append(node.name)
                for v in node.outputs:
                    self.stored[v.name] = (_sample(self.post[v.name]), "int64", _code_bounds(v))
                continue
            for v, lazy in zip(node.outputs, outs):
                if self.uses[v.name] > 1:
                    lazy = self._stored_lazy(lazy)
                self.seg.env[v.name] = lazy
        self.position = len(self.graph.nodes)
        self._close()

    def _needed_later(self, name: str) -> bool:
        later = {id(n) for n in self.graph.nodes[self.position:]}
        return any(id(node) in later for node, _ in self.graph.value(name).uses)

    def _close(self) -> None:
        seg = self.seg
        outputs = {v.name for v in self.graph.outputs}
        for name, lazy in list(seg.env.items()):
            if any(name == i[0] for i in seg.inputs):
                continue
            if self._needed_later(name):
                stored = self._stored_lazy(lazy)
                slot = stored.leaves[0].source
                seg.outputs.append((name, "codes", slot))
                self.stored[name] = (lazy.shape, lazy.dtype, lazy.bounds)
            if name in outputs:
                self._float_output(name, lazy)
        if seg.calls:
            self.steps.append(seg)
        self.seg = _Segment(seg.index + 1)

    def _float_output(self, name: str, lazy: lx.Lazy) -> None:
        q = self.post[name]
        if not isinstance(q, QTensor):
            return
        z, s = _vec(q.zero_point, lazy.shape), _vec(q.scale, lazy.shape)
        if z is None or s is None:
            raise QccError(f"cpu target: output '{name}' has a per-channel scale off axis 1")
        slot = self._store(lx.dequantize(lazy, z, s))
        self.seg.outputs.append((name, "float", slot))

    # ---- node rules
    def _lower(self, node: Node) -> list[lx.Lazy] | None:
        if len(node.outputs) != 1:
            return None
        out = node.outputs[0]
        if not isinstance(self.post.get(out.name), QTensor):
            return None
        if any(v is not None and v.region is not None and not v.region.empty for v in [*node.inputs, out]):
            return None
        if isinstance(self.raw.get(out.name), QTensor):
            result = self._exact(node)
        else:
            result = self._float_move(node) if node.op in _RESHAPES else None
        if result is None:
            return None
        return None if (ann := self._annotate(out, result)) is None else [ann]

    def _exact(self, node: Node) -> lx.Lazy | None:
        op = node.op
        if op in ("Conv", "Gemm"):
            return self._mac(node)
        x_v = node.inputs[0]
        if x_v is None or not isinstance(self.post.get(x_v.name), QTensor):
            return None
        if op in ("Add", "Sub", "Mul"):
            return self._binary(node)
        x = self.operand(x_v)
        if x is None:
            return None
        xq = self.post[x_v.name]
        shape = _sample(self.raw[node.outputs[0].name])
        if op == "Identity":
            return x
        if op == "Relu":
            z = _vec(xq.zero_point, x.shape)
            return None if z is None else lx.relu(x, z)
        if op == "Clip":
            return self._clip(node, x, xq)
        if op == "MaxPool":
            if len(x.shape) != 4:
                return None
            func, leaves = lx.max_pool(x, node.attrs, shape)
            return lx.Lazy.stored(self._call(func, [lf.source for lf in leaves], shape, x.dtype), shape, x.dtype,
                                  x.bounds)
        if op == "GlobalAveragePool":
            z = _vec(xq.zero_point, x.shape)
            if z is None or len(x.shape) != 4:
                return None
            func, leaves = lx.global_sum(x, z)
            bound = _span(x, z) * x.shape[2] * x.shape[3]
            return lx.Lazy.stored(self._call(func, [lf.source for lf in leaves], shape, "int64"), shape, "int64",
                                  (-bound, bound))
        if op in _RESHAPES:
            stored = self._stored_lazy(x)
            slot = self._call(None, [stored.leaves[0].source], shape, x.dtype)
            return lx.Lazy.stored(slot, shape, x.dtype, x.bounds)
        return None

    def _float_move(self, node: Node) -> lx.Lazy | None:
        """A reshape the reference runs as a float island (per-channel codes): dequantize, move."""
        x_v = node.inputs[0]
        xq = self.post.get(x_v.name)
        x = self.operand(x_v) if isinstance(xq, QTensor) else None
        if x is None:
            return None
        z, s = _vec(xq.zero_point, x.shape), _vec(xq.scale, x.shape)
        if z is None or s is None:
            return None
        stored = self._stored_lazy(lx.dequantize(x, z, s))
        shape = _sample(self.raw[node.outputs[0].name])
        slot = self._call(None, [stored.leaves[0].source], shape, "float32")
        return lx.Lazy.stored(slot, shape, "float32", (0, 0))

    def _clip(self, node: Node, x: lx.Lazy, xq: QTensor) -> lx.Lazy | None:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            lo = np.float64(node.attrs["min"]) / xq.scale
            hi = np.float64(node.attrs["max"]) / xq.scale
        if not all(np.all(np.isinf(b) | (b == np.rint(b))) for b in (lo, hi)):
            return None
        lo = np.nan_to_num(xq.zero_point + lo, neginf=-(2.0**62), posinf=2.0**62).astype(np.int64)
        hi = np.nan_to_num(xq.zero_point + hi, neginf=-(2.0**62), posinf=2.0**62).astype(np.int64)
        lo_v, hi_v = _vec(lo, x.shape), _vec(hi, x.shape)
        return None if lo_v is None or hi_v is None else lx.clip(x, lo_v, hi_v)

    def _binary(self, node: Node) -> lx.Lazy | None:
        a_v, b_v = node.inputs[0], node.inputs[1]
        aq, bq = self.post.get(a_v.name), self.post.get(b_v.name)
        if b_v.is_constant or not isinstance(bq, QTensor):
            return None
        a, b = self.operand(a_v), self.operand(b_v)
        if a is None or b is None or a.shape != b.shape:
            return None
        za, zb = _vec(aq.zero_point, a.shape), _vec(bq.zero_point, b.shape)
        if za is None or zb is None:
            return None
        if node.op == "Mul":
            bound = _span(a, za) * _span(b, zb)
            return None if bound >= 2**62 else lx.combine(lx.align(a, za, bound=_span(a, za)),
                                                          lx.align(b, zb, bound=_span(b, zb)), "Mul", bound)
        scale = np.minimum(aq.scale, bq.scale)
        sides = []
        for lazy, q, z in ((a, aq, za), (b, bq, zb)):
            ratio = np.broadcast_to(q.scale / scale, np.shape(scale))
            span = _span(lazy, z)
            if np.all(ratio == 1.0):
                sides.append(lx.align(lazy, z, bound=span))
                continue
            m0, n = _multipliers(ratio)
            m0_v, n_v = _vec(m0, lazy.shape), _vec(n, lazy.shape)
            if m0_v is None or n_v is None or span >= _EXACT_LIMIT or np.any(n_v < 0):
                return None
            sides.append(lx.align(lazy, z, m0_v, n_v, bound=math.ceil(span * float(np.max(ratio))) + 1))
        bound = sides[0].bounds[1] + sides[1].bounds[1]
        return lx.combine(sides[0], sides[1], node.op, bound)

    def _mac(self, node: Node) -> lx.Lazy | None:
        from qcc.targets.cpu.kernels import ConvSpec, conv_primfunc, default_conv_schedule, dense_primfunc
        from qcc.targets.cpu.layers import plan_layer

        plan = plan_layer(node)
        if plan is None or node.inputs[0].is_constant:
            return None
        x = self.operand(node.inputs[0])
        xq = self.post.get(node.inputs[0].name)
        if x is None or not isinstance(xq, QTensor) or not xq.per_tensor:
            return None
        spec = plan.spec
        conv = isinstance(spec, ConvSpec)
        if (conv and x.shape != (1, spec.c, spec.h, spec.w)) or (not conv and x.shape != (1, spec.k)):
            return None
        out = _sample(self.raw[node.outputs[0].name])
        bias_acc = self._bias(node, xq, out[1])
        if bias_acc is None:
            return None
        corr = plan.corr.copy()
        corr[: out[1]] += bias_acc.reshape((-1, 1, 1) if conv else (-1,))
        wq = constant_value(node.inputs[1])
        x_span = _span(x, xq.zero_point)
        w_abs = np.abs(wq.centred()).reshape(wq.q.shape[0], -1).sum(axis=1) if conv or node.attrs["transB"] \
            else np.abs(wq.centred()).sum(axis=0)
        bound = int(w_abs.max(initial=0)) * x_span + int(np.abs(bias_acc).max(initial=0))
        use_int8 = _prefer_int8(spec, wq.centred(), bound)
        # The pixel-vector conv reads its activations as bytes when the offset codes fit: the producer's
        # requantize writes uint8 and the kernel's packing reads a quarter of the memory.
        narrow = conv and not use_int8 and default_conv_schedule(spec).pixels \
            and 0 <= x.bounds[0] - plan.qmin and x.bounds[1] - plan.qmin < 256
        xin = self._stored_lazy(lx.offset_codes(x, plan.qmin, "uint8" if narrow else "int32"))
        if use_int8:
            func, wp, corr, stored, dtype = _int8_call(spec, conv, wq.centred(), node, corr)
        else:
            func = conv_primfunc(spec, x_dtype="uint8" if narrow else "int32") if conv else dense_primfunc(spec)
            wp, dtype = plan.wp, "int64"
            stored = (1, spec.co_pad, *spec.out_hw) if conv else (1, spec.n_pad)
        slot = self._call(func, [xin.leaves[0].source, wp, corr], stored, dtype)
        kind = "int8" if use_int8 else "bitserial"
        self.kernels.append({"node": node.name, "kernel": f"{kind}-{'conv' if conv else 'dense'}",
                             "a_bits": spec.a_bits, "w_bits": spec.w_bits, "bipolar": spec.bipolar})
        return lx.Lazy.stored(slot, stored, dtype, (-bound, bound), shape=out)

    def _bias(self, node: Node, xq: QTensor, channels: int) -> np.ndarray | None:
        """round_half_even(b / (sx sw)) per output channel, as qcc.integer computes it (zeros: no bias)."""
        if len(node.inputs) < 3 or node.inputs[2] is None:
            return np.zeros(channels, np.int64)
        w = constant_value(node.inputs[1])
        axis = 0 if node.op == "Conv" or node.attrs["transB"] else w.q.ndim - 1
        w_scale = np.asarray(w.scale)
        w_scale = np.full(channels, w_scale.reshape(())) if w_scale.size == 1 else \
            np.moveaxis(np.broadcast_to(w_scale, w_scale.shape), axis, 0).reshape(channels, -1)[:, 0]
        acc_scale = float(xq.scale.reshape(())) * w_scale.astype(np.float64)
        b = to_float(constant_value(node.inputs[2]) if node.inputs[2].is_constant else None, np.float64)
        if b is None:
            return None
        b = np.asarray(b).reshape(-1)
        if b.size not in (1, channels):
            return None
        return bias_to_accumulator(np.broadcast_to(b, (channels,)), acc_scale)

    def _annotate(self, out: Value, lazy: lx.Lazy) -> lx.Lazy | None:
        spec, raw, post = out.quant, self.raw[out.name], self.post[out.name]
        if spec is None:
            return lazy
        if lazy.dtype == "float32":  # a float island's result: the annotation quantizes it
            if not (isinstance(spec, Uniform) and np.size(spec.scale) == 1):
                return None
            return lx.quantize_input(lazy, float(np.asarray(spec.scale).reshape(())),
                                     int(np.asarray(spec.zero_point).reshape(())), spec.qmin, spec.qmax)
        z_in = _vec(raw.zero_point, lazy.shape)
        if z_in is None:
            return None
        if isinstance(spec, Uniform):
            ratio = np.broadcast_to(raw.scale / post.scale, np.broadcast_shapes(raw.scale.shape, post.scale.shape))
            m0, n = _multipliers(ratio)
            m0_v, n_v, z_out = _vec(m0, lazy.shape), _vec(n, lazy.shape), _vec(post.zero_point, lazy.shape)
            if m0_v is None or n_v is None or z_out is None or np.any(n_v < 0) or _span(lazy, z_in) >= _EXACT_LIMIT:
                return None
            return lx.requantize(lazy, z_in, m0_v, n_v, z_out, spec.qmin, spec.qmax)
        if isinstance(spec, Bipolar):
            return lx.bipolar(lazy, z_in)
        if isinstance(spec, Thresholds):
            table = _threshold_table(spec, raw, lazy.shape)
            return None if table is None else lx.thresholds(lazy, table)
        return None


# Per-core peak of 1-bit AND+POPCNT MACs per cycle on this host class (issue 6); the int8 rate comes
# from qcc.targets.cpu.tuning (VNNI when the host has it, else the exact int32 multiply-add kernel).
_BITSERIAL_MACS = 324.0
_INT8_FALLBACK = False


def _prefer_int8(spec, wc: np.ndarray, bound: int) -> bool:
    """Whether the int8 (VNNI) kernel is exact here and cheaper than the bit-serial one (peak-rate model)."""
    from qcc.targets.cpu.int8 import int8_weights_fit
    from qcc.targets.cpu.kernels import ConvSpec
    from qcc.targets.cpu.tuning import int8_rate

    conv = isinstance(spec, ConvSpec)
    if spec.bipolar or spec.a_bits > 8 or not int8_weights_fit(wc) or bound >= 2**31 or (conv and spec.group != 1):
        return False
    reduction = spec.cg * spec.kh * spec.kw if conv else spec.k
    bitserial = spec.a_bits * spec.w_bits * 64 * (spec.words * (spec.kh * spec.kw if conv else 1)) / _BITSERIAL_MACS
    int8 = 4 * -(-(spec.cg if conv else spec.k) // 4) * (spec.kh * spec.kw if conv else 1) / int8_rate()
    return reduction > 0 and int8 < bitserial


def _int8_call(spec, conv: bool, wc: np.ndarray, node: Node, corr: np.ndarray):
    """(PrimFunc, packed weights, int32 correction, stored shape, dtype) of the int8 kernel."""
    from qcc.targets.cpu import int8

    if conv:
        func, wp = int8.int8_conv_primfunc(spec, fallback=_INT8_FALLBACK), int8.pack_int8_conv_weights(wc)
        stored = (1, -(-spec.co // 16) * 16, *spec.out_hw)
    else:
        wm = wc if node.attrs["transB"] else wc.T
        func, wp = int8.int8_dense_primfunc(spec, fallback=_INT8_FALLBACK), int8.pack_int8_dense_weights(wm)
        stored = (1, -(-spec.n // 16) * 16)
    return func, wp, int8.int8_correction(corr), stored, "int32"


def _is_plain(lazy: lx.Lazy) -> bool:
    """Whether the chain is just its single stored tensor, read as is."""
    from tvm import te

    probe = tuple(te.var(f"i{k}") for k in range(len(lazy.shape)))
    expr = lazy.fn(probe)
    if not hasattr(expr, "producer") or tuple(int(d) for d in expr.producer.shape) != lazy.shape:
        return False
    return all(a.same_as(b) for a, b in zip(expr.indices, probe))


def _threshold_table(spec: Thresholds, raw: QTensor, shape) -> np.ndarray | None:
    """The [C, T] integer threshold table qcc.integer uses (None: axis other than 1)."""
    if spec.axis != 1 or len(shape) < 2:
        return None
    channels = shape[1]
    scale, zp = _vec(raw.scale, shape), _vec(raw.zero_point, shape)
    if scale is None or zp is None:
        return None
    if len(spec.thresholds) == 1:
        return np.stack([integer_thresholds(spec, scale[c], zp[c])[0] for c in range(channels)])
    return integer_thresholds(spec, scale, zp)


def _code_bounds(v: Value) -> tuple[int, int]:
    """The range of a host-computed value's codes, from its annotation (wide when it has none)."""
    spec = v.quant
    if isinstance(spec, Uniform):
        return spec.qmin, spec.qmax
    if isinstance(spec, Thresholds):
        return 0, 2**spec.bits - 1
    if isinstance(spec, Bipolar):
        return -1, 1
    return -(2**62), 2**62


def _sample(runtime) -> tuple[int, ...]:
    shape = runtime.q.shape if isinstance(runtime, QTensor) else np.shape(runtime)
    return tuple(int(d) for d in shape)


# ------------------------------------------------------------------------------ Relax assembly

def _relax_module(steps: list) -> tuple[object, dict[str, np.ndarray], list[dict]]:
    """(IRModule, params by key, plan) for the segments of a lowering."""
    from tvm import relax

    bb = relax.BlockBuilder()
    params: dict[str, np.ndarray] = {}
    plan: list[dict] = []
    funcs: dict[int, object] = {}
    for step in steps:
        if isinstance(step, str):
            plan.append({"kind": "host", "node": step})
            continue
        keys = []
        with bb.function(step.name):
            inputs = [relax.Var(name, relax.TensorType(shape, dtype)) for name, shape, dtype in step.inputs]
            pvars, results = [], []
            with bb.dataflow():
                for call in step.calls:
                    args = []
                    for a in call.args:
                        if isinstance(a, np.ndarray):
                            key = f"{step.name}_p{len(pvars)}"
                            var = relax.Var(key, relax.TensorType(a.shape, str(a.dtype)))
                            pvars.append(var)
                            params[key] = np.ascontiguousarray(a)
                            keys.append(key)
                            args.append(var)
                        elif a.kind == "input":
                            args.append(inputs[[i[0] for i in step.inputs].index(a.name)])
                        else:
                            args.append(results[a.index])
                    if call.func is None:
                        results.append(bb.emit(relax.op.reshape(args[0], call.shape)))
                        continue
                    gv = funcs.get(id(call.func))
                    if gv is None:
                        gv = bb.add_func(call.func.with_attr("global_symbol", f"f{len(funcs)}"), f"f{len(funcs)}")
                        funcs[id(call.func)] = gv
                    results.append(bb.emit(relax.call_tir(gv, args, relax.TensorType(call.shape, call.dtype))))
                outs = [inputs[[i[0] for i in step.inputs].index(s.name)] if s.kind == "input" else results[s.index]
                        for _, _, s in step.outputs]
                gv_out = bb.emit_output(relax.Tuple(outs))
            bb.emit_func_output(gv_out, params=[*inputs, *pvars])
        plan.append({"kind": "module", "function": step.name, "inputs": [i[0] for i in step.inputs],
                     "params": keys, "outputs": [[name, kind] for name, kind, _ in step.outputs]})
    return bb.get(), params, plan


def explain_lowering(graph: Graph) -> dict[str, tuple[str, str]]:
    """Per node: what the module makes of it and why (for `qcc compile --explain`), without compiling."""
    lowering = _Lowering(graph)
    lowering.run()
    out: dict[str, tuple[str, str]] = {}
    for node in graph.nodes:
        if node.name in lowering.host_nodes:
            out[node.name] = ("host (reference integer code)",
                              "no exact TIR rule for this node here (float island, crop or unsupported op)")
        else:
            out[node.name] = ("fused TIR in model.so", "element-wise / pooling rule applied on codes")
    for k in lowering.kernels:
        kind, _, op = k["kernel"].partition("-")
        if kind == "int8":
            pairs = k["a_bits"] * k["w_bits"]
            what, why = f"int8 {op} (int32 accumulation)", (f"a{k['a_bits']} x w{k['w_bits']}: {pairs} bit-plane "
                                                           "pairs cost more than int8 MACs (peak-rate model)")
        elif k["bipolar"]:
            what, why = f"XNOR-popcount {op}", "bipolar activations and weights"
        else:
            what, why = (f"bit-serial {op} (AND+popcount)", f"a{k['a_bits']} x w{k['w_bits']}: "
                         f"{k['a_bits'] * k['w_bits']} bit-plane pairs are cheaper than int8 MACs (peak-rate model)")
        out[k["node"]] = (what, why)
    return out


def build_module(graph: Graph, out_dir: Path) -> dict[str, Path]:
    """Lower `graph` into OUTDIR/model.so + params.npz + metadata.json + model.qir; returns the files by role."""
    import tvm

    from qcc.frontend.qir import load as load_qir
    from qcc.frontend.qir import save as save_qir
    from qcc.targets.cpu.kernels import host_target

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_qir(graph, out_dir / QIR_FILE)
    graph = load_qir(out_dir / QIR_FILE)  # the plan names values as the saved graph does
    lowering = _Lowering(graph)
    lowering.run()
    mod, params, plan = _relax_module(lowering.steps)
    files = {"model": out_dir / QIR_FILE, "params": out_dir / PARAMS_FILE, "metadata": out_dir / METADATA_FILE}
    if any(step["kind"] == "module" for step in plan):
        executable = tvm.compile(mod, target=host_target())
        executable.export_library(str(out_dir / MODULE_FILE))
        files["module"] = out_dir / MODULE_FILE
    np.savez(out_dir / PARAMS_FILE, **params)
    meta = {"format": 1, "batch": 1, "target": str(host_target()), "plan": plan,
            "host_nodes": lowering.host_nodes, "kernels": lowering.kernels,
            "outputs": [v.name for v in graph.outputs]}
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return files


# ------------------------------------------------------------------------------ running

class CompiledModel:
    """A compiled cpu folder as a callable: model({input: x}) -> {output: float array}, batch N >= 1."""

    def __init__(self, directory: Path, graph: Graph | None = None):
        import tvm
        from tvm import relax

        from qcc.frontend.qir import load as load_qir

        directory = Path(directory)
        try:
            self.metadata = json.loads((directory / METADATA_FILE).read_text())
            with np.load(directory / PARAMS_FILE) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, KeyError) as e:
            raise QccError(f"{directory} has no readable cpu module: {e}") from None
        self.graph = graph if graph is not None else load_qir(directory / QIR_FILE)
        self._dev = tvm.cpu()
        self._params = {k: tvm.runtime.tensor(v, self._dev) for k, v in arrays.items()}
        self._vm = None
        self._funcs: dict = {}
        self._inputs: dict = {}
        if (directory / MODULE_FILE).is_file():
            self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(directory / MODULE_FILE)), self._dev)
        self._values = {v.name: v for v in self.graph.values()}
        self._meta = None
        self._host_sem = IntegerSemantics()

    @property
    def host_nodes(self) -> list[str]:
        return list(self.metadata["host_nodes"])

    def __call__(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        from qcc.interp import check_inputs

        if isinstance(inputs, np.ndarray):
            inputs = {self.graph.inputs[0].name: inputs}
        checked = check_inputs(self.graph, inputs)
        batch = next(iter(checked.values())).shape[0] if checked else 1
        samples = [self.run_sample({k: v[b:b + 1] for k, v in checked.items()}) for b in range(batch)]
        return {name: np.concatenate([s[name] for s in samples], axis=0) for name in self.metadata["outputs"]}

    def run_sample(self, sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One sample (batch 1) through the plan."""
        env: dict[str, np.ndarray] = dict(sample)
        floats: dict[str, np.ndarray] = {}
        for v in self.graph.inputs:
            if v.quant is not None and not (isinstance(v.quant, Uniform) and np.size(v.quant.scale) == 1):
                env[v.name] = self._host_sem.value(v, env[v.name]).q
        for step in self.metadata["plan"]:
            if step["kind"] == "host":
                self._host(step["node"], env, floats)
                continue
            args = [self._input_tensor(step["function"], name, env[name]) for name in step["inputs"]]
            fn = self._funcs.get(step["function"])
            if fn is None:  # looking a function up in the VM costs ~10 us: once per folder
                fn = self._funcs[step["function"]] = self._vm[step["function"]]
            result = fn(*args, *(self._params[k] for k in step["params"]))
            for (name, kind), tensor in zip(step["outputs"], result):
                (env if kind == "codes" else floats)[name] = tensor.numpy()
        out = {}
        for name in self.metadata["outputs"]:
            dtype = self._values[name].type.dtype
            out[name] = np.asarray(floats[name] if name in floats else env[name]).astype(dtype)
        return out

    def _input_tensor(self, function: str, name: str, array: np.ndarray):
        """A device tensor holding `array`, reused across calls (allocating one costs ~15 us, a copy ~5)."""
        import tvm

        array = np.ascontiguousarray(array)
        key = (function, name)
        held = self._inputs.get(key)
        if held is None or tuple(held.shape) != array.shape or str(held.dtype) != str(array.dtype):
            held = self._inputs[key] = tvm.runtime.tensor(array, self._dev)
            return held
        held.copyfrom(array)
        return held

    def _runtime(self, v: Value, env: dict):
        if v.is_constant:
            return constant_value(v)
        meta = self._metadata()[0][v.name]
        if v in self.graph.inputs and v.name not in self._lowered_inputs():
            return self._host_sem.value(v, env[v.name])
        if isinstance(meta, QTensor):
            return QTensor(np.asarray(env[v.name], np.int64), meta.scale, meta.zero_point)
        return env[v.name]

    def _lowered_inputs(self) -> set[str]:
        return {v.name for v in self.graph.inputs if v.quant is not None and
                not (isinstance(v.quant, Uniform) and np.size(v.quant.scale) == 1)}

    def _metadata(self):
        if self._meta is None:
            self._meta = static_metadata(self.graph)
        return self._meta

    def _host(self, name: str, env: dict, floats: dict) -> None:
        node = next(n for n in self.graph.nodes if n.name == name)
        args = [None if v is None else self._runtime(v, env) for v in node.inputs]
        results = self._host_sem.evaluate(node, args)
        for v, r in zip(node.outputs, results):
            r = self._host_sem.value(v, r if hasattr(r, "q") else np.asarray(r))
            if isinstance(r, QTensor):
                env[v.name] = r.q
                floats[v.name] = r.real(np.dtype(v.type.dtype))
            else:
                env[v.name] = floats[v.name] = r


def load(directory: Path) -> CompiledModel:
    """The compiled model in a cpu folder (qcc compile --target cpu -o DIR) as a callable."""
    return CompiledModel(Path(directory))
