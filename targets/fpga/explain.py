"""`qcc compile --target fpga --explain`: per node, the RTL block it became and why.

The FPGA target's lowering is the plan (qcc.targets.fpga.plan) with its folding; this module reads
that plan back per graph node: a Gemm / MatMul / Conv is a matrix-vector unit (MVAU, behind a
sliding-window generator for a convolution) with PE x SIMD lanes, XNOR-popcount or multipliers, an
accumulator sized from the exact worst-case range, and its post-ops (relu, requantization, threshold
comparators, sign); MaxPool, GlobalAveragePool and Add / Sub are stream stages, a residual join fed
by a fork whose FIFO covers the other branch's buffering; Relu and annotations fuse into the unit
that produces their input; Flatten / Reshape / Identity are views of the stream. The accumulator
width is set next to qcc.ranges' required_bits for the same layer (the range-analysis pass).
"""

from __future__ import annotations

from collections.abc import Mapping

from qcc.ir.graph import Graph
from qcc.ir.quant import Bipolar, Codebook
from qcc.targets.fpga.cost import _dsp_count, _in_bram, shape_of_layer
from qcc.targets.fpga.plan import (
    AddLayer,
    ConvLayer,
    DenseLayer,
    ForkLayer,
    GapLayer,
    MapLayer,
    Plan,
    PoolLayer,
    PostOp,
    signed_bits,
)

__all__ = ["explain_plan", "accumulator_bits"]


def accumulator_bits(plan: Plan) -> dict[str, int]:
    """{layer: accumulator width in bits} of every matrix-vector unit of a planned design."""
    return {layer.name: layer.acc_width for layer in plan.layers}


def explain_plan(graph: Graph, plan: Plan, reasons: Mapping[str, str], device: str) -> dict[str, tuple[str, str]]:
    """{node name: (RTL block, why)} for every node of `graph` lowered by `plan`."""
    required = {name: record.bits for name, record in plan.ranges.items()}  # the analysis the plan sized from
    stages = {st.name: st for st in plan.stages or plan.layers}
    forks = [st for st in plan.stages if isinstance(st, ForkLayer)]
    producer_of = {}  # hardware stream name -> stage writing it
    for st in plan.stages:
        for d in (st.dsts if isinstance(st, ForkLayer) else (st.dst,)):
            producer_of[d] = st
    owner: dict[str, object] = {}  # graph value name -> the stage computing it
    chains: dict[str, str] = {}  # unannotated value inside a float BN chain -> the chain's BatchNormalization
    out: dict[str, tuple[str, str]] = {}
    for node in graph.nodes:
        st = stages.get(node.name)
        if st is not None:
            what, why = _stage(node, st, plan, forks, reasons, device, required)
        else:
            st = owner.get(node.inputs[0].name) if node.inputs else None
            what, why = _fused(node, st, chains)
        fork = next((f for f in forks if f.src and producer_of.get(f.src[0]) is st), None) if st is not None else None
        if fork is not None and len(node.outputs[0].uses) > 1:  # the value read by several stages: the fork's
            what += f"; stream forked to {len(fork.dsts)} readers (FIFOs {'/'.join(map(str, fork.fifo_depths))} px)"
        for value in node.outputs:
            owner[value.name] = st
        out[node.name] = (what, why)
    return out


# ------------------------------------------------------------------------------ stages

def _stage(node, st, plan: Plan, forks, reasons, device, required) -> tuple[str, str]:
    if isinstance(st, DenseLayer):
        return _mvau(node, st, reasons.get(st.name, ""), device, required.get(st.name))
    if isinstance(st, PoolLayer):
        (kh, kw), sy = st.kernel, st.strides[0]
        what = (f"MaxPool {kh}x{kw}/{sy}: window generator ({st.window_rows}-row line buffer) + {st.channels}-channel "
                f"max{_posts(st.post)}")
        return what, (f"a pooling window over the pixel stream, padded with the lowest code; max per channel on "
                      f"codes (same scale in and out); {st.cycles} cycles per frame")
    if isinstance(st, GapLayer):
        h, w = st.in_hw
        what = f"GlobalAveragePool: {st.channels} channel sums, acc {st.acc_width} bits{_posts(st.post)}"
        return what, (f"the exact sum of q - zp over {h}x{w} pixels, range [{st.acc_lo}, {st.acc_hi}]; the 1/{h * w} "
                      "goes into the next requantization's multiplier")
    if isinstance(st, AddLayer):
        return _join(node, st, forks, required.get(st.name))
    if isinstance(st, MapLayer):
        return (f"post-op stage:{_posts(st.post, lead='')}",
                "its input is also read by another stage, so the post-ops cannot join the producing unit")
    return f"{type(st).__name__} stage", ""


def _mvau(node, layer: DenseLayer, folding_why: str, device: str, ranges_bits: int | None) -> tuple[str, str]:
    shape = shape_of_layer(layer)
    if layer.bipolar:
        core = "XNOR-popcount"
    else:
        xw = shape.x_bits
        on = "DSP" if _dsp_count(shape.w_bits, xw, device) else "LUT"
        core = f"{shape.w_bits}x{xw}-bit {on} multipliers"
    rom = f"weights {shape.rom_depth}x{shape.rom_width} in {'BRAM' if _in_bram(shape, device) else 'LUT ROM'}"
    what = f"MVAU pe={layer.pe} simd={layer.simd}, {core}, acc {layer.acc_width} bits{_posts(layer.post)}, {rom}"
    if isinstance(layer, ConvLayer) and layer.windowed:
        kh, kw = layer.kernel
        what = f"SWG {kh}x{kw} line buffer ({layer.window_rows} rows x {layer.in_shape[2]} px) + " + what
    why = [f"folding: {folding_why}" if folding_why else "", _core_why(node, layer, shape, device),
           _acc_why(layer, ranges_bits), f"{layer.cycles} cycles per frame"]
    return what, "; ".join(w for w in why if w)


def _core_why(node, layer: DenseLayer, shape, device: str) -> str:
    w = node.inputs[1].quant if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if layer.bipolar:
        return "bipolar weights and +-1 inputs: XNOR + popcount instead of multipliers"
    if isinstance(w, Bipolar):
        why = ("padding inserts zeros, which are not +-1" if isinstance(layer, ConvLayer) and any(layer.pads)
               else "the input is not a +-1 stream" if not _binary_input(layer)
               else "XNOR convolutions are off in this version (exact multiplier path)")
        return f"bipolar weights on multipliers: {why}"
    scheme = "codebook (integer centroids stored in the ROM: the lookup is done at compile time)" \
        if isinstance(w, Codebook) else f"{layer.weight_bits}-bit weights"
    dsp = _dsp_count(shape.w_bits, shape.x_bits, device)
    where = (f"{dsp} {device} DSP(s) per product" if dsp else
             f"LUT logic on {device} (no DSP for {shape.w_bits}x{shape.x_bits}-bit products)")
    return f"multipliers: {scheme} x {shape.x_bits}-bit centred inputs, {where}"


def _binary_input(layer: DenseLayer) -> bool:
    return layer.in_lo >= -1 and layer.in_hi <= 1 and layer.in_zp == 0


def _acc_why(layer, ranges_bits: int | None) -> str:
    text = (f"acc: worst case [{layer.acc_lo}, {layer.acc_hi}] over input codes [{layer.in_lo}, {layer.in_hi}] "
            f"- {layer.in_zp} -> {layer.acc_width} bits")
    if ranges_bits is None:
        return text
    if ranges_bits == layer.acc_width:
        return text + " (= qcc.ranges required_bits)"
    return (text + f" (qcc.ranges needs {ranges_bits}: no output position sees the whole kernel inside the map, "
            "the unit bounds every tap at full range, sound)")


def _join(node, st: AddLayer, forks, ranges_bits: int | None) -> tuple[str, str]:
    fork, depth = None, None
    for f in forks:
        for d, fifo in zip(f.dsts, f.fifo_depths):
            if d in st.src:
                fork, depth = f, fifo
    op = "Sub" if st.subtract else "Add"
    acc = f"acc {st.acc_width} bits"
    if fork is None:
        what = f"residual join ({op}) of two streams, {acc}{_posts(st.post)}"
        why = "both operands aligned to the smaller scale (rounding shift, exactly qcc.integer), then added"
    else:
        other = [fifo for d, fifo in zip(fork.dsts, fork.fifo_depths) if d not in st.src]
        what = f"residual join ({op}) with fork FIFO depth {depth}, {acc}{_posts(st.post)}"
        why = (f"both operands aligned to the smaller scale (rounding shift, exactly qcc.integer), then added; the "
               f"stream is duplicated by a fork whose FIFO on the short branch ({depth} pixels) covers the other "
               f"branch's buffering (window rows), so the join cannot deadlock"
               + (f" (other FIFOs: {'/'.join(map(str, other))})" if other else ""))
    if ranges_bits is not None:
        why += f"; sum range [{st.acc_lo}, {st.acc_hi}]"
    return what, why


def _fused(node, st, chains: dict[str, str]) -> tuple[str, str]:
    """A node without a stage of its own: a post-op of its producer's stage, or a view of the stream."""
    if st is None:
        return "-", "no hardware of its own"
    value = node.outputs[0]
    bn = node.name if node.op == "BatchNormalization" else chains.get(node.inputs[0].name)
    if bn is not None:
        if value.quant is None:
            chains[value.name] = bn
        if node.op != "BatchNormalization":
            return (f"part of the comparator chain of '{bn}'",
                    "a per-channel monotone op between a float BatchNormalization and its quantizer")
        return (f"post-op of '{st.name}': comparator chain (thresholds per channel)",
                "a float BatchNormalization (+ Relu / Clip) ending in a quantizer is a monotone step function of "
                "the integer input per channel: exact integer thresholds found by bisection on the reference")
    if node.op == "Relu":
        return (f"post-op of '{st.name}': relu (max with the zero point)",
                f"fused into the output lanes of '{st.name}' (nothing else reads its input)")
    if value.quant is not None:
        if isinstance(value.quant, Bipolar):
            return f"post-op of '{st.name}': sign", "a bipolar annotation: the sign of q - zp at the unit's output"
        island = [op for op in st.post if op.kind == "thresholds" and "base" in op.params]
        if island:
            levels = island[-1].params["table"].shape[1]
            return (f"post-op of '{st.name}': threshold table, {levels} comparators per channel",
                    "the reference dequantizes this per-channel value to float and quantizes it again: a "
                    "non-decreasing step function of the code, turned into exact integer thresholds by bisection on "
                    "the reference itself")
        return (f"post-op of '{st.name}': requantize", "the annotation becomes a per-channel integer step (M0 * 2^-n, "
                                                       "rounding shift, zero point, saturation) at the unit's output")
    return ("no hardware: a view of the stream",
            "the codes already stream in the order the next layer reads (one pixel of all channels per transfer)")


def _posts(post: list[PostOp], lead: str = ", ") -> str:
    parts = []
    for op in post:
        if op.kind == "thresholds":
            parts.append(f"thresholds {op.params['table'].shape[1]} comparators")
        elif op.kind == "requant":
            parts.append(f"requantize to {signed_bits(op.lo, op.hi)} bits")
        elif op.kind == "relu":
            parts.append("relu")
        elif op.kind == "bipolar":
            parts.append("sign")
    if not parts:
        return ""
    return (lead or " ") + " + ".join(parts)
