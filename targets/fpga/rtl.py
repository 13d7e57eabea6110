"""Verilog-2005 for a plan: one matrix-vector unit per dense layer and a streaming top level.

A layer module takes one whole input vector per frame (valid/ready), folds the matrix into
ceil(in/SIMD) x ceil(out/PE) steps and streams its weights from a ROM initialised with $readmemh
(one word per step: PE x SIMD centred codes). The pipeline per step: ROM read (synchronous, so
Yosys maps it to block RAM), SIMD-wide dot products into PE accumulators (bias preloaded), and on
the last step of an output group the per-channel post-ops (Relu, requantization with a
half-to-even rounding shift, comparator-chain thresholds, sign) write the output vector. The
output vector is presented with out_valid until out_ready takes it; then the next input is accepted.

Per-channel parameters that are equal on every channel become constants; the others are small
ROMs (memory files) indexed by the output channel. All arithmetic is signed two's complement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.targets.fpga.plan import DenseLayer, Plan, signed_bits

__all__ = ["check_folding", "emit_design", "RtlFiles", "pack_words"]


@dataclass(frozen=True)
class RtlFiles:
    verilog: tuple[Path, ...]
    memories: tuple[Path, ...]
    top: str


def check_folding(layer: DenseLayer) -> None:
    """PE must divide the output channels and SIMD the inputs (a clear error otherwise)."""
    for what, fold, dim, label in (("PE", layer.pe, layer.n_out, "output channels"),
                                   ("SIMD", layer.simd, layer.n_in, "inputs")):
        if not isinstance(fold, int) or fold < 1 or dim % fold:
            raise QccError(f"fpga target: layer '{layer.name}': {what}={fold} does not divide its {dim} {label}")


def pack_words(values: np.ndarray, width: int) -> list[str]:
    """Rows of signed integers as hex words, element j at bits [j*width +: width]."""
    values = np.asarray(values, dtype=object)
    digits = (values.shape[1] * width + 3) // 4
    mask = (1 << width) - 1
    out = []
    for row in values:
        word = 0
        for j, v in enumerate(row):
            word |= (int(v) & mask) << (j * width)
        out.append(f"{word:0{digits}x}")
    return out


def _write_mem(path: Path, rows: np.ndarray, width: int) -> Path:
    path.write_text("\n".join(pack_words(rows, width)) + "\n")
    return path


def _lit(value: int, width: int) -> str:
    if value < 0:
        return f"-{width}'sd{-value}"
    return f"{width}'sd{value}"


class _Params:
    """Per-channel parameters: constants when uniform, else ROMs indexed by the channel."""

    def __init__(self, prefix: str, directory: Path, n_out: int):
        self.prefix, self.directory, self.n_out = prefix, directory, n_out
        self.decls: list[str] = []
        self.files: list[Path] = []
        self._made: set[str] = set()

    def get(self, name: str, values: np.ndarray, width: int, chan: str) -> str:
        values = np.asarray(values, dtype=np.int64).reshape(self.n_out, -1)
        if np.all(values == values[0]):
            if values.shape[1] == 1:
                return _lit(int(values[0, 0]), width)
            word = pack_words(values[:1], width)[0]
            return f"{values.shape[1] * width}'h{word}"
        mem = f"{self.prefix}_{name}"
        if mem not in self._made:
            self._made.add(mem)
            file = _write_mem(self.directory / f"{mem}.mem", values, width)
            self.files.append(file)
            total = values.shape[1] * width
            self.decls += [f"  reg [{total - 1}:0] {mem} [0:{self.n_out - 1}];",
                           f"  initial $readmemh(\"{file.name}\", {mem});"]
        if values.shape[1] == 1:
            return f"$signed({mem}[{chan}])"
        return f"{mem}[{chan}]"


def _post_code(layer: DenseLayer, params: _Params, lane: str) -> tuple[list[str], list[str], str]:
    """Declarations and combinational statements of the post-op chain; returns the final reg name."""
    decls, stmts = [], []
    cur, lo, hi = f"acc_{lane}", layer.acc_lo, layer.acc_hi
    chan = f"ch_{lane}"
    for k, op in enumerate(layer.post):
        width_in = signed_bits(lo, hi)
        out = f"p{k}_{lane}"
        ow = signed_bits(op.lo, op.hi)
        decls.append(f"  reg signed [{ow - 1}:0] {out};")
        if op.kind == "relu":
            zw = signed_bits(int(op.params["zp"].min()), int(op.params["zp"].max()))
            z = params.get(f"relu{k}_zp", op.params["zp"], zw, chan)
            stmts.append(f"    {out} = ({cur} >= {z}) ? {cur} : {z};")
        elif op.kind == "bipolar":
            zw = signed_bits(int(op.params["zp"].min()), int(op.params["zp"].max()))
            z = params.get(f"bip{k}_zp", op.params["zp"], zw, chan)
            stmts.append(f"    {out} = ({cur} >= {z}) ? 2'sd1 : -2'sd1;")
        elif op.kind == "thresholds":
            table = op.params["table"]
            tw = signed_bits(int(table.min()), int(table.max()))
            tab = params.get(f"thr{k}", table, tw, chan)
            tname = f"t{k}_{lane}"
            decls.append(f"  reg [{table.shape[1] * tw - 1}:0] {tname};")
            decls.append(f"  reg signed [{tw - 1}:0] te{k}_{lane};")
            stmts.append(f"    {tname} = {tab};")
            stmts.append(f"    {out} = 0;")
            stmts.append(f"    for (i = 0; i < {table.shape[1]}; i = i + 1) begin")
            stmts.append(f"      te{k}_{lane} = {tname}[i*{tw} +: {tw}];")
            stmts.append(f"      if ({cur} >= te{k}_{lane}) {out} = {out} + 1;")
            stmts.append("    end")
        else:
            d, s = _requant_code(op, params, k, lane, cur, width_in, chan)
            decls += d
            stmts += s
        cur, lo, hi = out, op.lo, op.hi
    return decls, stmts, cur


def _requant_code(op, params: _Params, k: int, lane: str, cur: str, width_in: int, chan: str):
    """clip(zp + round_half_even((v - centre) * M0 / 2^n), qmin, qmax), exactly as qcc.numerics."""
    p = op.params
    cw = signed_bits(int(p["centre"].min()), int(p["centre"].max()))
    dw = max(width_in, cw) + 1  # v - centre
    pw = dw + 32  # (v - centre) * M0 with M0 < 2^31
    nmax = pw - 1  # shifts beyond |product| < 2^(pw-2) give 0
    zw = signed_bits(int(p["zp"].min()), int(p["zp"].max()))
    centre = params.get(f"rq{k}_centre", p["centre"], cw, chan)
    m0 = params.get(f"rq{k}_m0", p["m0"], 32, chan)
    n = params.get(f"rq{k}_n", np.minimum(p["n"], nmax), 8, chan)
    zp = params.get(f"rq{k}_zp", p["zp"], zw, chan)
    rw = pw + 2
    v = f"rq{k}_{lane}"
    decls = [f"  reg signed [{dw - 1}:0] {v}_d;", f"  reg signed [{pw - 1}:0] {v}_p, {v}_fl, {v}_rem, {v}_half;",
             f"  reg signed [7:0] {v}_n;", f"  reg signed [{rw - 1}:0] {v}_r;"]
    out = f"p{k}_{lane}"
    stmts = [
        f"    {v}_d = {cur} - {centre};",
        f"    {v}_n = {n};",
        f"    {v}_p = {v}_d * {m0};",
        f"    if ({v}_n >= {nmax}) {v}_r = 0;",
        f"    else if ({v}_n == 0) {v}_r = {v}_p;",
        "    else begin",
        f"      {v}_fl = {v}_p >>> {v}_n;",
        f"      {v}_rem = {v}_p - ({v}_fl <<< {v}_n);",
        f"      {v}_half = {pw}'sd1 <<< ({v}_n - 1);",
        f"      {v}_r = {v}_fl + ((({v}_rem > {v}_half) || (({v}_rem == {v}_half) && {v}_fl[0])) ? 1 : 0);",
        "    end",
        f"    {v}_r = {v}_r + {zp};",
        f"    if ({v}_r < {op.lo}) {out} = {_lit(op.lo, signed_bits(op.lo, op.hi))};",
        f"    else if ({v}_r > {op.hi}) {out} = {_lit(op.hi, signed_bits(op.lo, op.hi))};",
        f"    else {out} = {v}_r;",
    ]
    return decls, stmts


def _clog2(n: int) -> int:
    return max(1, int(np.ceil(np.log2(max(n, 2)))))


def _layer_module(layer: DenseLayer, index: int, directory: Path) -> tuple[str, list[Path]]:
    check_folding(layer)
    mod = f"qcc_dense{index}"
    pe, simd = layer.pe, layer.simd
    nf, sf = layer.n_out // pe, layer.n_in // simd
    aw, ww, accw, ow = layer.in_width, layer.weight_width, layer.acc_width, layer.out_width
    xw = signed_bits(layer.in_lo - layer.in_zp, layer.in_hi - layer.in_zp)
    # weight ROM: address nf_i * SF + sf_i, lane (pe, s) = weights[nf_i*PE + pe, sf_i*SIMD + s]
    w = layer.weights.reshape(nf, pe, sf, simd).transpose(0, 2, 1, 3).reshape(nf * sf, pe * simd)
    wfile = _write_mem(directory / f"{mod}_w.mem", w, ww)
    params = _Params(mod, directory, layer.n_out)
    depth, nfw, sfw = nf * sf, _clog2(nf + 1), _clog2(sf + 1)
    aw_addr = _clog2(depth + 1)
    lanes = []
    post_decls: list[str] = []
    for p in range(pe):
        d, s, final = _post_code(layer, params, str(p))
        bias = params.get("bias", layer.bias, accw, f"chb_{p}")
        post_decls += d
        lanes.append((p, s, final, bias))
    lines = [
        f"// dense layer '{layer.name}': {layer.n_in} -> {layer.n_out}, PE={pe}, SIMD={simd}",
        f"module {mod} (",
        "  input wire clk, input wire rst,",
        f"  input wire in_valid, output wire in_ready, input wire [{layer.n_in * aw - 1}:0] in_data,",
        f"  output reg out_valid, input wire out_ready, output reg [{layer.n_out * ow - 1}:0] out_data);",
        f"  reg [{pe * simd * ww - 1}:0] wrom [0:{depth - 1}];",
        f"  initial $readmemh(\"{wfile.name}\", wrom);",
        f"  reg [{layer.n_in * aw - 1}:0] xbuf;",
        "  reg busy, issuing;",
        f"  reg [{nfw - 1}:0] nf_i, s1_nf, s2_nf;",
        f"  reg [{sfw - 1}:0] sf_i, s1_sf;",
        f"  reg [{aw_addr - 1}:0] addr;",
        f"  reg [{pe * simd * ww - 1}:0] wword;",
        "  reg s1_v, s1_first, s1_last, s1_final, s2_v, s2_final;",
        f"  reg signed [{accw - 1}:0] " + ", ".join(f"acc_{p}" for p in range(pe)) + ";",
        f"  reg signed [{accw - 1}:0] " + ", ".join(f"sum_{p}" for p in range(pe)) + ";",
        f"  reg signed [{ww - 1}:0] wv;",
        f"  reg signed [{xw - 1}:0] xv;",
        f"  reg signed [{aw - 1}:0] xa;",
        "  integer i, s;",
        *[f"  wire [{nfw + _clog2(pe + 1)}:0] ch_{p} = s2_nf * {pe} + {p};" for p in range(pe)],
        *[f"  wire [{nfw + _clog2(pe + 1)}:0] chb_{p} = s1_nf * {pe} + {p};" for p in range(pe)],
        *params_placeholder(),
        *post_decls,
        "  assign in_ready = !busy;",
        "  always @(posedge clk) wword <= wrom[addr];",
        "  // SIMD dot products",
        "  always @* begin",
    ]
    for p in range(pe):
        lines += [f"    sum_{p} = s1_first ? {lanes[p][3]} : acc_{p};",
                  f"    for (s = 0; s < {simd}; s = s + 1) begin",
                  f"      wv = wword[({p * simd} + s)*{ww} +: {ww}];",
                  f"      xa = xbuf[(s1_sf*{simd} + s)*{aw} +: {aw}];",
                  f"      xv = xa - {_lit(layer.in_zp, aw + 1)};",
                  f"      sum_{p} = sum_{p} + wv * xv;",
                  "    end"]
    lines += ["  end", "  // post-ops on the finished accumulators", "  always @* begin"]
    for _p, stmts, _, _ in lanes:
        lines += stmts
    lines += ["  end",
              "  always @(posedge clk) begin",
              "    if (rst) begin",
              "      busy <= 0; issuing <= 0; s1_v <= 0; s2_v <= 0; out_valid <= 0; addr <= 0;",
              "      nf_i <= 0; sf_i <= 0; s2_final <= 0;",
              "    end else begin",
              "      if (out_valid && out_ready) begin out_valid <= 0; busy <= 0; end",
              "      if (in_valid && !busy) begin",
              "        xbuf <= in_data; busy <= 1; issuing <= 1; nf_i <= 0; sf_i <= 0; addr <= 0;",
              "      end",
              "      // stage 1: the ROM word for (nf_i, sf_i) is read",
              "      s1_v <= issuing; s1_nf <= nf_i; s1_sf <= sf_i;",
              "      s1_first <= (sf_i == 0); s1_last <= (sf_i == " + f"{sf - 1});",
              f"      s1_final <= (nf_i == {nf - 1}) && (sf_i == {sf - 1});",
              "      if (issuing) begin",
              "        addr <= addr + 1;",
              f"        if (sf_i == {sf - 1}) begin sf_i <= 0; nf_i <= nf_i + 1; end else sf_i <= sf_i + 1;",
              f"        if ((nf_i == {nf - 1}) && (sf_i == {sf - 1})) issuing <= 0;",
              "      end",
              "      // stage 2: accumulate",
              "      s2_v <= s1_v && s1_last; s2_nf <= s1_nf; s2_final <= s1_v && s1_final;",
              "      if (s1_v) begin"]
    lines += [f"        acc_{p} <= sum_{p};" for p in range(pe)]
    lines += ["      end",
              "      // stage 3: post-ops into the output vector",
              "      if (s2_v) begin"]
    for p, _, final, _ in lanes:
        lines.append(f"        out_data[ch_{p}*{ow} +: {ow}] <= {final};")
    lines += ["        if (s2_final) out_valid <= 1;",
              "      end",
              "    end",
              "  end",
              "endmodule",
              ""]
    text = "\n".join(lines)
    text = text.replace("__PARAMS__", "\n".join(params.decls))
    return text, [wfile, *params.files]


def params_placeholder() -> list[str]:
    return ["__PARAMS__"]


def _top(plan: Plan) -> str:
    layers = plan.layers
    first, last = layers[0], layers[-1]
    inw, outw = first.n_in * first.in_width, last.n_out * last.out_width
    lines = ["// qcc dataflow top level: dense layers chained by valid/ready",
             "module qcc_top (",
             "  input wire clk, input wire rst,",
             f"  input wire in_valid, output wire in_ready, input wire [{inw - 1}:0] in_data,",
             f"  output wire out_valid, input wire out_ready, output wire [{outw - 1}:0] out_data);"]
    for i, layer in enumerate(layers[:-1]):
        lines.append(f"  wire v{i}, r{i};")
        lines.append(f"  wire [{layer.n_out * layer.out_width - 1}:0] d{i};")
    for i, _ in enumerate(layers):
        iv, ir, idata = ("in_valid", "in_ready", "in_data") if i == 0 else (f"v{i - 1}", f"r{i - 1}", f"d{i - 1}")
        last_one = i == len(layers) - 1
        ov, ordy, odata = ("out_valid", "out_ready", "out_data") if last_one else (f"v{i}", f"r{i}", f"d{i}")
        lines.append(f"  qcc_dense{i} u{i} (.clk(clk), .rst(rst), .in_valid({iv}), .in_ready({ir}), .in_data({idata}),")
        lines.append(f"    .out_valid({ov}), .out_ready({ordy}), .out_data({odata}));")
    lines += ["endmodule", ""]
    return "\n".join(lines)


def _check_widths(plan: Plan) -> None:
    for a, b in zip(plan.layers, plan.layers[1:]):
        if a.out_width != b.in_width or a.n_out != b.n_in:
            raise QccError(f"fpga target: layer '{a.name}' feeds '{b.name}' with {a.n_out}x{a.out_width} bits, "
                           f"which expects {b.n_in}x{b.in_width}")


def emit_design(plan: Plan, directory: Path) -> RtlFiles:
    """Write rtl/qcc_dense<i>.v, their memory files and rtl/qcc_top.v into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for layer in plan.layers:
        check_folding(layer)
    _check_widths(plan)
    verilog, memories = [], []
    for i, layer in enumerate(plan.layers):
        text, mems = _layer_module(layer, i, directory)
        path = directory / f"qcc_dense{i}.v"
        path.write_text(text)
        verilog.append(path)
        memories += mems
    top = directory / "qcc_top.v"
    top.write_text(_top(plan))
    verilog.append(top)
    return RtlFiles(tuple(verilog), tuple(memories), "qcc_top")
