"""Verilog-2005 for a plan: one module per stage and a streaming top level (valid/ready handshakes).

A matrix-vector unit (dense layers, and convolutions behind their window generator) takes one input
vector per transfer (a window, or a pixel), folds the matrix into ceil(in/SIMD) x ceil(out/PE)
steps and streams its weights from a ROM initialised with $readmemh (one word per step: PE x SIMD
centred codes). The pipeline per step: ROM read (synchronous, so Yosys maps it to block RAM), then
SIMD-wide dot products into PE accumulators (bias preloaded; a register is only as wide as the final
sum's range, partial sums wrap modulo 2^width harmlessly: see plan._Builder.take_range) and, on the
last step of an output group, the per-channel post-ops (Relu, requantization with a half-to-even rounding shift,
comparator-chain thresholds, sign) into the output vector. All of it sits in one clocked block, so
Icarus evaluates the arithmetic only when a step fires. The output vector is presented with
out_valid until out_ready takes it; then the next input is accepted.

Bipolar layers (+-1 weights on a +-1 stream) store one bit per weight and compute each SIMD slice
as 2 * popcount(xnor(w, x)) - SIMD: no multipliers. In a padded convolution the window generator
fills padded positions with the pad value 0 (codes +1 = 01, -1 = 11, pad = 00), so the code's low
bit is a valid mask and the slice is 2 * popcount(xnor & valid) - popcount(valid): a padded position
counts 0, as in the reference. Each xnor is a 1-bit net: written inside a wider sum, Verilog would
first zero-extend the operands of ~^ and the extended zeros would XNOR to ones.

The clocked processes are written for simulation speed as well as synthesis (Icarus pays for every
variable a process reads on every clock edge): each module's conditions are nets, and an idle
module's process tests a single `act` net. Codebook weights are stored as their integer
centroid values (precomputed, not index + lookup): the multiplier is the same either way, and for
the <= 8-bit centroids qcc produces, a per-lane K-entry lookup mux costs more LUTs than the ROM bits
an index would save (log2 K vs the centroid width).

Per-channel parameters that are equal on every channel become constants; the others are small
ROMs (memory files) indexed by the output channel. All arithmetic is signed two's complement.
Window generators, pooling, global average pooling, residual adds and forks are in
qcc.targets.fpga.rtl_stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.targets.fpga.plan import ConvLayer, DenseLayer, ForkLayer, Plan, signed_bits
from qcc.targets.fpga.rtl_common import Params, chain, clog2, lit, pack_words, write_mem
from qcc.targets.fpga.rtl_stream import fork_module, stream_module, swg_module

__all__ = ["check_folding", "emit_design", "RtlFiles", "pack_words", "mvu_module", "wrap_signed"]


@dataclass(frozen=True)
class RtlFiles:
    verilog: tuple[Path, ...]
    memories: tuple[Path, ...]
    top: str


def check_folding(layer: DenseLayer) -> None:
    """PE must divide the output channels and SIMD the inputs (a clear error naming the layer otherwise)."""
    what_in = "window inputs (kh*kw*cin)" if isinstance(layer, ConvLayer) else "inputs"
    for what, fold, dim, label in (("PE", layer.pe, layer.n_out, "output channels"),
                                   ("SIMD", layer.simd, layer.n_in, what_in)):
        if not isinstance(fold, int) or isinstance(fold, bool) or fold < 1 or dim % fold:
            raise QccError(f"fpga target: layer '{layer.name}': {what}={fold} does not divide its {dim} {label}")


def wrap_signed(values: np.ndarray, width: int) -> np.ndarray:
    """Values modulo 2^width as signed width-bit numbers. The accumulator computes modulo 2^acc_width
    (plan._Builder.take_range): a bias outside the final sum's range is preloaded as its residue."""
    half = 1 << (width - 1)
    return (np.asarray(values, dtype=object) + half) % (2 * half) - half


def _weight_rom(layer: DenseLayer) -> tuple[np.ndarray, int]:
    """ROM words [NF*SF, PE*SIMD]: address nf*SF + sf, lane (pe, s) = weights[nf*PE + pe, sf*SIMD + s]."""
    pe, simd = layer.pe, layer.simd
    nf, sf = layer.n_out // pe, layer.n_in // simd
    w = layer.weights.reshape(nf, pe, sf, simd).transpose(0, 2, 1, 3).reshape(nf * sf, pe * simd)
    if layer.bipolar:
        return (w > 0).astype(np.int64), 1
    return w, layer.weight_width


def mvu_module(layer: DenseLayer, mod: str, directory: Path) -> tuple[str, list[Path]]:
    """The matrix-vector unit of a dense or convolution layer as module `mod`."""
    check_folding(layer)
    pe, simd = layer.pe, layer.simd
    nf, sf = layer.n_out // pe, layer.n_in // simd
    aw, accw, ow = layer.in_width, layer.acc_width, layer.out_width
    xw = signed_bits(layer.in_lo - layer.in_zp, layer.in_hi - layer.in_zp)
    rom, ww = _weight_rom(layer)
    wfile = write_mem(directory / f"{mod}_w.mem", rom, ww)
    params = Params(mod, directory, layer.n_out)
    depth, nfw, sfw = nf * sf, clog2(nf + 1), clog2(sf + 1)
    chw = clog2(layer.n_out + 1) + 1
    post_decls, lane_code = [], []
    for p in range(pe):
        bias = params.get("bias", wrap_signed(layer.bias, accw), accw, f"ch_{p}")
        d, s, final, _, _ = chain(layer.post, f"sum_{p}", layer.acc_lo, layer.acc_hi, params, f"l{p}", f"ch_{p}")
        post_decls += d
        lane_code.append((p, bias, s, final))
    lines = [
        f"// {layer.kind} layer '{layer.name}': {layer.n_in} -> {layer.n_out}, PE={pe}, SIMD={simd}"
        + (", XNOR-popcount" if layer.bipolar else ""),
        f"module {mod} (",
        "  input wire clk, input wire rst,",
        f"  input wire in_valid, output wire in_ready, input wire [{layer.n_in * aw - 1}:0] in_data,",
        f"  output reg out_valid, input wire out_ready, output reg [{layer.n_out * ow - 1}:0] out_data);",
        f"  reg [{pe * simd * ww - 1}:0] wrom [0:{depth - 1}];",
        f"  initial $readmemh(\"{wfile.name}\", wrom);",
        f"  reg [{layer.n_in * aw - 1}:0] xbuf;",
        "  reg busy, issuing;",
        f"  reg [{nfw - 1}:0] s1_nf;",
        f"  reg [{sfw - 1}:0] s1_sf;",
        f"  reg [{clog2(depth + 1) - 1}:0] addr;",
        f"  reg [{pe * simd * ww - 1}:0] wword;",
        "  reg s1_v;",
        f"  reg signed [{accw - 1}:0] " + ", ".join(f"acc_{p}" for p in range(pe)) + ";",
        f"  reg signed [{accw - 1}:0] " + ", ".join(f"sum_{p}" for p in range(pe)) + ";",
        f"  reg [{clog2(simd + 1)}:0] pc, pv;",
        "  integer i;",
        *[f"  wire [{chw - 1}:0] ch_{p} = s1_nf * {pe} + {p};" for p in range(pe)],
        *_element_nets(layer, ww, aw, xw),
        "__PARAMS__",
        *post_decls,
        "  assign in_ready = !busy;",
        "  // conditions as nets: Icarus re-evaluates a net when an operand changes, while a process reads",
        "  // every variable it tests on every clock edge",
        f"  wire s1_first = (s1_sf == 0), s1_last = (s1_sf == {sf - 1}), s1_final = s1_last && (s1_nf == {nf - 1});",
        f"  wire a_end = (addr == {depth - 1});",
        "  wire start = in_valid && !busy, oxfer = out_valid && out_ready;",
        "  wire act = rst || oxfer || start || s1_v || issuing;  // an idle unit's process tests one net",
        "  always @(posedge clk) if (issuing) wword <= wrom[addr];",
        "  always @(posedge clk) if (act) begin",
        "    if (rst) begin",
        "      busy <= 0; issuing <= 0; s1_v <= 0; out_valid <= 0; addr <= 0;",
        "    end else begin",
        "      if (oxfer) begin out_valid <= 0; busy <= 0; end",
        "      if (start) begin",
        "        xbuf <= in_data; busy <= 1; issuing <= 1; addr <= 0; s1_nf <= 0; s1_sf <= 0;",
        "      end",
        "      // stage 2 (the word of step (s1_nf, s1_sf) was read): SIMD dot products into the accumulators;",
        "      // post-ops after a group's last step",
        "      if (s1_v) begin",
        "        s1_v <= 0;",
    ]
    for p, bias, _, _ in lane_code:
        lines.append(f"        sum_{p} = s1_first ? {bias} : acc_{p};")
        if layer.bipolar:
            lines += _popcount_lines(layer, p)
        else:  # in the process, not as nets: a net sum of SIMD products re-evaluates per changed operand
            for s0 in range(0, simd, 8):
                terms = " + ".join(f"w_{p}_{s} * xc_{s}" for s in range(s0, min(simd, s0 + 8)))
                lines.append(f"        sum_{p} = sum_{p} + {terms};")
        lines.append(f"        acc_{p} <= sum_{p};")
    lines.append("        if (s1_last) begin")
    for p, _, stmts, final in lane_code:
        lines += ["    " + s for s in stmts]
        lines.append(f"          out_data[ch_{p}*{ow} +: {ow}] <= {final};")
    lines += ["          if (s1_final) out_valid <= 1;",
              "          s1_sf <= 0; s1_nf <= s1_nf + 1;",
              "        end",
              "        else s1_sf <= s1_sf + 1;",
              "      end",
              "      // stage 1: the ROM word at addr = nf * SF + sf is read (stage 2 counts the same steps)",
              "      if (issuing) begin",
              "        s1_v <= 1; addr <= addr + 1;",
              "        if (a_end) issuing <= 0;",
              "      end",
              "    end",
              "  end",
              "endmodule",
              ""]
    text = "\n".join(lines).replace("__PARAMS__", "\n".join(params.decls))
    return text, [wfile, *params.files]


def _element_nets(layer: DenseLayer, ww: int, aw: int, xw: int) -> list[str]:
    """Per-element nets of the current ROM word and input slice (the simulator updates them on change).

    Reading a few-bit net is cheap in Icarus; a variable part-select of a wide vector inside the
    SIMD loop copies the whole vector each time, which made simulation two orders slower.
    """
    pe, simd = layer.pe, layer.simd
    sf = layer.n_in // simd
    slice_ = "xbuf" if sf == 1 else f"xbuf[s1_sf*{simd * aw} +: {simd * aw}]"
    lines = [f"  wire [{simd * aw - 1}:0] xs = {slice_};"]
    for s in range(simd):
        if layer.bipolar:
            lines.append(f"  wire xb_{s} = !xs[{s * aw + aw - 1}];")
            if _masked(layer):  # +1 = ..01, -1 = ..11, a padded 0 = ..00: the low bit marks a real input
                lines.append(f"  wire xv_{s} = xs[{s * aw}];")
        else:
            zp = lit(layer.in_zp, aw + 1)
            lines.append(f"  wire signed [{xw - 1}:0] xc_{s} = $signed(xs[{s * aw} +: {aw}]) - {zp};")
    for p in range(pe):
        for s in range(simd):
            k = p * simd + s
            if layer.bipolar:
                # 1-bit nets: inside a wider expression, ~^ would first zero-extend its operands to the
                # expression's width, and the extended zeros XNOR to ones (each term then added 2^W - 2)
                lines.append(f"  wire wb_{p}_{s} = wword[{k}];")
                lines.append(f"  wire xn_{p}_{s} = wb_{p}_{s} ~^ xb_{s};")
            else:
                lines.append(f"  wire signed [{ww - 1}:0] w_{p}_{s} = wword[{k * ww} +: {ww}];")
    return lines


def _masked(layer: DenseLayer) -> bool:
    """A padded bipolar convolution: window elements may be the pad value 0, which counts for nothing."""
    return layer.bipolar and isinstance(layer, ConvLayer) and any(layer.pads)


def _popcount_lines(layer: DenseLayer, p: int) -> list[str]:
    """Lane p's SIMD slice of +-1 products: 2 * popcount(xnor) - SIMD, or over the valid elements only."""
    simd = layer.simd
    if not _masked(layer):
        terms = " + ".join(f"xn_{p}_{s}" for s in range(simd))
        return [f"        pc = {terms};", f"        sum_{p} = sum_{p} + 2 * $signed({{1'b0, pc}}) - {simd};"]
    terms = " + ".join(f"(xn_{p}_{s} & xv_{s})" for s in range(simd))
    valid = " + ".join(f"xv_{s}" for s in range(simd))
    return [f"        pc = {terms};", f"        pv = {valid};",
            f"        sum_{p} = sum_{p} + 2 * $signed({{1'b0, pc}}) - $signed({{1'b0, pv}});"]


# ------------------------------------------------------------------------------ top level

def _port(stream: str, plan: Plan) -> tuple[str, str, str]:
    if stream == plan.input_stream:
        return "in_valid", "in_ready", "in_data"
    if stream == plan.output_stream:
        return "out_valid", "out_ready", "out_data"
    return f"{stream}_v", f"{stream}_r", f"{stream}_d"


def _bus(plan: Plan, stream: str) -> int:
    info = plan.streams[stream]
    return info.channels * info.width


def _inst(mod: str, inst: str, ins: list[tuple[str, str, str]], outs: list[tuple[str, str, str]],
          in_names: list[str], out_names: list[str]) -> list[str]:
    conns = [".clk(clk)", ".rst(rst)"]
    for (v, r, d), name in zip(ins, in_names):
        conns += [f".{name}_valid({v})", f".{name}_ready({r})", f".{name}_data({d})"]
    for (v, r, d), name in zip(outs, out_names):
        conns += [f".{name}_valid({v})", f".{name}_ready({r})", f".{name}_data({d})"]
    return [f"  {mod} {inst} ({', '.join(conns)});"]


def _stage_modules(plan: Plan, directory: Path) -> tuple[list[tuple[str, str]], list[Path], list[str]]:
    """(module name, text) per module, the memory files, and the top-level body lines."""
    modules: list[tuple[str, str]] = []
    memories: list[Path] = []
    body: list[str] = []
    for i, st in enumerate(plan.stages):
        ins = [_port(s, plan) for s in st.src]
        if isinstance(st, ForkLayer):
            mod = f"qcc_fork{i}"
            modules.append((mod, fork_module(st, mod)))
            outs = [_port(d, plan) for d in st.dsts]
            body += _inst(mod, f"u{i}", ins, outs, ["in"], [f"out{k}" for k in range(len(outs))])
            continue
        out = _port(st.dst, plan)
        window = getattr(st, "windowed", st.kind == "maxpool")
        if window:
            swg = f"qcc_swg{i}"
            modules.append((swg, swg_module(st, swg)))
            w = (f"w{i}_v", f"w{i}_r", f"w{i}_d")
            body.append(f"  wire w{i}_v, w{i}_r;")
            body.append(f"  wire [{_window_bits(st) - 1}:0] w{i}_d;")
            body += _inst(swg, f"g{i}", ins, [w], ["in"], ["out"])
            ins = [w]
        if isinstance(st, DenseLayer):
            mod = f"qcc_{st.kind}{i}"
            text, mems = mvu_module(st, mod, directory)
        else:
            mod = f"qcc_{st.kind}{i}"
            text, mems = stream_module(st, mod, directory)
        modules.append((mod, text))
        memories += mems
        names = ["a", "b"] if len(ins) == 2 else ["in"]
        body += _inst(mod, f"u{i}", ins, [out], names, ["out"])
    return modules, memories, body


def _window_bits(st) -> int:
    if isinstance(st, DenseLayer):
        return st.n_in * st.in_width
    return st.kernel[0] * st.kernel[1] * st.channels * st.in_width


def _top(plan: Plan, body: list[str]) -> str:
    inw, outw = _bus(plan, plan.input_stream), _bus(plan, plan.output_stream)
    lines = ["// qcc dataflow top level: stages chained by valid/ready streams (one pixel per transfer)",
             "module qcc_top (",
             "  input wire clk, input wire rst,",
             f"  input wire in_valid, output wire in_ready, input wire [{inw - 1}:0] in_data,",
             f"  output wire out_valid, input wire out_ready, output wire [{outw - 1}:0] out_data);"]
    for name in plan.streams:
        if name in (plan.input_stream, plan.output_stream):
            continue
        lines.append(f"  wire {name}_v, {name}_r;")
        lines.append(f"  wire [{_bus(plan, name) - 1}:0] {name}_d;")
    lines += body
    lines += ["endmodule", ""]
    return "\n".join(lines)


def _check_widths(plan: Plan) -> None:
    """Every stage reads its input streams at the width their producer writes."""
    for st in plan.stages:
        if isinstance(st, DenseLayer):
            lo, hi = (st.stream_lo, st.stream_hi) if isinstance(st, ConvLayer) else (st.in_lo, st.in_hi)
            expected = [signed_bits(lo, hi)]
        elif st.kind == "add":
            expected = [signed_bits(*r) for r in st.in_ranges]
        else:
            expected = [st.in_width]
        for src, width in zip(st.src, expected):
            if plan.streams[src].width != width:
                raise QccError(f"fpga target: stage '{st.name}' reads stream {src} at {width} bits, "
                               f"its producer writes {plan.streams[src].width}")


def emit_design(plan: Plan, directory: Path) -> RtlFiles:
    """Write rtl/<module>.v for every stage, their memory files and rtl/qcc_top.v into `directory`."""
    for layer in plan.layers:
        check_folding(layer)
    _check_widths(plan)
    directory.mkdir(parents=True, exist_ok=True)
    modules, memories, body = _stage_modules(plan, directory)
    verilog = []
    for mod, text in modules:
        path = directory / f"{mod}.v"
        path.write_text(text)
        verilog.append(path)
    top = directory / "qcc_top.v"
    top.write_text(_top(plan, body))
    verilog.append(top)
    return RtlFiles(tuple(verilog), tuple(memories), "qcc_top")
