"""Verilog for the weightless stream stages: window generator, MaxPool, GlobalAveragePool, Add, map, fork.

Sliding-window generator (convolutions and pooling): input pixels (raster order, all channels per
transfer) are written to a line buffer of R rows x W pixels (R a power of two above the kernel
height, so the row slot is the row's low bits; or the whole map when smaller). Windows are gathered
one pixel per cycle (a synchronous read, block-RAM friendly) in (ky, kx) order, each slot holding
the pixel's C codes, so the window vector is ordered (ky, kx, c) as the weight ROM expects; positions
outside the map read the pad value (the input zero point for convolutions, the lowest code for
max pooling). An input pixel is accepted only when its row slot is no longer needed by the current
output row (row < oy*stride - pad + R); a new frame starts once every window of the last is out.

Pool, GAP, Add and map stages share one post-op unit: a core result per pixel is latched in a
`pre` register, then `pe` channels per cycle go through the per-channel post-op chain (and, for an
Add, each operand's alignment chain first) into the output pixel.

Fork: one input stream written into one FIFO per consumer (depths from the plan: the other branch's
buffering, so a residual block does not deadlock); the input is taken when every FIFO has room.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.targets.fpga.plan import ConvLayer, ForkLayer, StreamLayer, signed_bits
from qcc.targets.fpga.rtl_common import Params, chain, clog2, pack_words

__all__ = ["swg_module", "stream_module", "fork_module"]


def _swg_geometry(st) -> dict:
    if isinstance(st, ConvLayer):
        c, h, w = st.in_shape
        return dict(c=c, h=h, w=w, kernel=st.kernel, strides=st.strides, pads=st.pads, pad=st.pad_value,
                    iw=signed_bits(st.stream_lo, st.stream_hi), ow=st.in_width, rows=st.window_rows,
                    out_hw=st.out_hw)
    return dict(c=st.channels, h=st.in_hw[0], w=st.in_hw[1], kernel=st.kernel, strides=st.strides, pads=st.pads,
                pad=st.in_lo, iw=st.in_width, ow=st.in_width, rows=st.window_rows, out_hw=st.out_hw)


def swg_module(st, mod: str) -> str:
    """The sliding-window generator of a ConvLayer or PoolLayer as module `mod`."""
    g = _swg_geometry(st)
    c, h, w, iw, ow, rows = g["c"], g["h"], g["w"], g["iw"], g["ow"], g["rows"]
    (kh, kw), (sh, sw), (pt, pl, _pb, _pr) = g["kernel"], g["strides"], g["pads"]
    oh, owd = g["out_hw"]
    kk = kh * kw
    cb = signed_bits(-max(g["pads"]) - 1, max(h, w) + max(kh, kw) + max(sh, sw) * max(oh, owd) + rows + 2) + 1
    ab = clog2(rows * w)
    kb = clog2(kk + 1)
    pow2 = rows & (rows - 1) == 0 and rows < h
    rb = max(1, (rows - 1).bit_length())

    def row_slot(y: str) -> str:
        return f"{y}[{rb - 1}:0]" if pow2 else y

    padvec = f"{c * ow}'h{pack_words(np.full((1, c), g['pad']), ow)[0]}"
    if iw == ow:
        ext = "rd_data"
        ext_decl = []
    else:
        parts = [f"{{{{{ow - iw}{{rd_data[{ch * iw + iw - 1}]}}}}, rd_data[{ch * iw} +: {iw}]}}"
                 for ch in reversed(range(c))]
        ext = "rd_ext"
        ext_decl = [f"  wire [{c * ow - 1}:0] rd_ext = {{{', '.join(parts)}}};"]
    last_win = f"(ox == {owd - 1}) && (oy == {oh - 1})"
    lines = [
        f"// sliding-window generator for '{st.name}': {c}x{h}x{w}, kernel {kh}x{kw}, stride {sh}x{sw}, "
        f"pads {list(g['pads'])}, {rows} buffered rows",
        f"module {mod} (",
        "  input wire clk, input wire rst,",
        f"  input wire in_valid, output wire in_ready, input wire [{c * iw - 1}:0] in_data,",
        f"  output reg out_valid, input wire out_ready, output reg [{kk * c * ow - 1}:0] out_data);",
        f"  reg [{c * iw - 1}:0] mem [0:{rows * w - 1}];",
        f"  reg signed [{cb - 1}:0] iy, ix, oy, ox, ky, kx;",
        f"  reg [{kb - 1}:0] slot, rd_slot;",
        "  reg gathering, odone, rd_v, rd_pad, rd_last;",
        f"  reg [{c * iw - 1}:0] rd_data;",
        f"  wire signed [{cb - 1}:0] ry = oy * {sh} - {pt} + ky;",
        f"  wire signed [{cb - 1}:0] rx = ox * {sw} - {pl} + kx;",
        f"  wire pad = (ry < 0) || (ry >= {h}) || (rx < 0) || (rx >= {w});",
        "  wire avail = pad || (ry < iy) || ((ry == iy) && (rx < ix));",
        (f"  wire in_ok = (iy < {h}) && (odone || (iy < oy * {sh} - {pt} + {rows}));" if pow2
         else f"  wire in_ok = (iy < {h});  // the whole map is buffered: no row slot is reused"),
        f"  wire [{ab - 1}:0] waddr = {row_slot('iy')} * {w} + ix;",
        f"  wire [{ab - 1}:0] raddr = {row_slot('ry')} * {w} + rx;",
        *ext_decl,
        "  assign in_ready = in_ok;",
        "  // conditions as nets: Icarus re-evaluates a net on change, a process reads each operand every cycle",
        "  wire wr = in_valid && in_ok, rd = gathering && avail, oxfer = out_valid && out_ready;",
        f"  wire wrap = odone && (iy == {h});",
        "  wire mact = wr || rd, act = rst || wr || rd || rd_v || oxfer || wrap;  // idle: one net tested",
        "  always @(posedge clk) if (mact) begin",
        "    if (wr) mem[waddr] <= in_data;",
        "    if (rd) rd_data <= mem[raddr];",
        "  end",
        "  always @(posedge clk) if (act) begin",
        "    if (rst) begin",
        "      iy <= 0; ix <= 0; oy <= 0; ox <= 0; ky <= 0; kx <= 0; slot <= 0;",
        "      gathering <= 1; odone <= 0; rd_v <= 0; out_valid <= 0;",
        "    end else begin",
        "      if (wr) begin",
        f"        if (ix == {w - 1}) begin ix <= 0; iy <= iy + 1; end else ix <= ix + 1;",
        "      end",
        "      if (rd_v) begin",
        "        rd_v <= 0;",
        f"        out_data[rd_slot*{c * ow} +: {c * ow}] <= rd_pad ? {padvec} : {ext};",
        "        if (rd_last) out_valid <= 1;",
        "      end",
        "      if (rd) begin",
        f"        rd_v <= 1; rd_pad <= pad; rd_slot <= slot; rd_last <= (slot == {kk - 1});",
        f"        if (slot == {kk - 1}) begin gathering <= 0; slot <= 0; kx <= 0; ky <= 0; end",
        "        else begin",
        "          slot <= slot + 1;",
        f"          if (kx == {kw - 1}) begin kx <= 0; ky <= ky + 1; end else kx <= kx + 1;",
        "        end",
        "      end",
        "      if (oxfer) begin",
        "        out_valid <= 0;",
        f"        if ({last_win}) odone <= 1;",
        "        else begin",
        "          gathering <= 1;",
        f"          if (ox == {owd - 1}) begin ox <= 0; oy <= oy + 1; end else ox <= ox + 1;",
        "        end",
        "      end",
        "      if (wrap) begin",
        "        iy <= 0; ix <= 0; oy <= 0; ox <= 0; odone <= 0; gathering <= 1;",
        "      end",
        "    end",
        "  end",
        "endmodule",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ post-op unit stages

def _header(st: StreamLayer, mod: str, ow: int) -> list[str]:
    c = st.channels
    if st.kind == "add":
        (alo, ahi), (blo, bhi) = st.in_ranges
        ins = [f"  input wire a_valid, output wire a_ready, input wire [{c * signed_bits(alo, ahi) - 1}:0] a_data,",
               f"  input wire b_valid, output wire b_ready, input wire [{c * signed_bits(blo, bhi) - 1}:0] b_data,"]
    else:
        kk = st.kernel[0] * st.kernel[1] if st.kind == "maxpool" else 1
        ins = [f"  input wire in_valid, output wire in_ready, input wire [{kk * c * st.in_width - 1}:0] in_data,"]
    return [f"// {st.kind} stage '{st.name}': {c} channels, {st.in_hw[0]}x{st.in_hw[1]} -> "
            f"{st.out_hw[0]}x{st.out_hw[1]}, {st.lanes} post-op lanes",
            f"module {mod} (",
            "  input wire clk, input wire rst,",
            *ins,
            f"  output reg out_valid, input wire out_ready, output reg [{c * ow - 1}:0] out_data);"]


def _core(st: StreamLayer, params: Params) -> tuple[list[str], list[str], list[str]]:
    """Declarations, the fire condition / ready assigns, and the statements latching `pre`."""
    c = st.channels
    if st.kind == "add":
        (alo, ahi), (blo, bhi) = st.in_ranges
        aw, bw = signed_bits(alo, ahi), signed_bits(blo, bhi)
        decls = [f"  reg [{c * aw - 1}:0] pre_a;", f"  reg [{c * bw - 1}:0] pre_b;",
                 "  wire fire = a_valid && b_valid && take;"]
        assigns = ["  assign a_ready = b_valid && take;", "  assign b_ready = a_valid && take;"]
        return decls, assigns, ["        pre_a <= a_data; pre_b <= b_data;"]
    iw = st.in_width
    if st.kind == "map":
        decls = [f"  reg [{c * iw - 1}:0] pre;", "  wire fire = in_valid && take;"]
        return decls, ["  assign in_ready = take;"], ["        pre <= in_data;"]
    if st.kind == "maxpool":
        kk = st.kernel[0] * st.kernel[1]
        decls = [f"  reg [{c * iw - 1}:0] pre;", "  wire fire = in_valid && take;",
                 f"  reg signed [{iw - 1}:0] mx, el;", "  integer ch, k;"]
        stmts = [f"        for (ch = 0; ch < {c}; ch = ch + 1) begin",
                 f"          mx = in_data[ch*{iw} +: {iw}];",
                 f"          for (k = 1; k < {kk}; k = k + 1) begin",
                 f"            el = in_data[(k*{c} + ch)*{iw} +: {iw}];",
                 "            if (el > mx) mx = el;",
                 "          end",
                 f"          pre[ch*{iw} +: {iw}] <= mx;",
                 "        end"]
        return decls, ["  assign in_ready = take;"], stmts
    if st.kind == "gap":
        return _gap_core(st, params)
    raise QccError(f"fpga target: no RTL for stage kind '{st.kind}'")


def _gap_core(st: StreamLayer, params: Params):
    c, iw, accw = st.channels, st.in_width, st.acc_width
    pixels = st.in_hw[0] * st.in_hw[1]
    zp = params.get("zp", st.zp, signed_bits(int(st.zp.min()), int(st.zp.max())), "ch")
    decls = [f"  reg [{c * accw - 1}:0] pre, sums;", f"  reg [{clog2(pixels + 1)}:0] pix;",
             f"  reg signed [{accw - 1}:0] tot;", f"  reg signed [{iw - 1}:0] xg;", "  integer ch;",
             f"  wire lastpix = (pix == {pixels - 1});", "  wire fire = in_valid && lastpix && take;",
             "  wire gin = in_valid && (!lastpix || take);"]
    assigns = ["  assign in_ready = !lastpix || take;"]
    stmts = ["      if (gin) begin",
             f"        for (ch = 0; ch < {c}; ch = ch + 1) begin",
             f"          xg = in_data[ch*{iw} +: {iw}];",
             f"          tot = (pix == 0 ? 0 : $signed(sums[ch*{accw} +: {accw}])) + (xg - {zp});",
             f"          sums[ch*{accw} +: {accw}] <= tot;",
             f"          if (lastpix) pre[ch*{accw} +: {accw}] <= tot;",
             "        end",
             "        pix <= lastpix ? 0 : pix + 1;",
             "      end"]
    return decls, assigns, stmts


def _lanes(st: StreamLayer, params: Params) -> tuple[list[str], list[str], int]:
    """Per-lane declarations and statements: the channel's value through its chains into out_data."""
    decls, stmts = [], []
    ow = st.out_width
    for p in range(st.lanes):
        chan = f"ch_{p}"
        if st.kind == "add":
            parts = []
            for side, ops, (lo, hi) in (("a", st.align[0], st.in_ranges[0]), ("b", st.align[1], st.in_ranges[1])):
                w = signed_bits(lo, hi)
                x = f"{side}{p}_x"
                decls.append(f"  reg signed [{w - 1}:0] {x};")
                stmts.append(f"        {x} = pre_{side}[{chan}*{w} +: {w}];")
                d, s, final, _, _ = chain(list(ops), x, lo, hi, params, f"{side}{p}", chan)
                decls += d
                stmts += ["    " + line for line in s]
                parts.append(final)
            v = f"v{p}"
            decls.append(f"  reg signed [{st.acc_width - 1}:0] {v};")
            stmts.append(f"        {v} = {parts[0]} {'-' if st.subtract else '+'} {parts[1]};")
        else:
            w = st.acc_width if st.kind == "gap" else st.in_width
            v = f"v{p}"
            decls.append(f"  reg signed [{w - 1}:0] {v};")
            stmts.append(f"        {v} = pre[{chan}*{w} +: {w}];")
        d, s, final, _, _ = chain(st.post, v, st.acc_lo, st.acc_hi, params, f"m{p}", chan)
        decls += d
        stmts += ["    " + line for line in s]
        stmts.append(f"        out_data[{chan}*{ow} +: {ow}] <= {final};")
    return decls, stmts, ow


def stream_module(st: StreamLayer, mod: str, directory: Path) -> tuple[str, list[Path]]:
    """A pool / GAP / add / map stage (core, then the post-op unit) as module `mod`."""
    c, lanes = st.channels, st.lanes
    if lanes < 1 or c % lanes:
        raise QccError(f"fpga target: layer '{st.name}': PE={lanes} does not divide its {c} channels")
    groups = c // lanes
    params = Params(mod, directory, c)
    gb = clog2(groups + 1)
    lane_decls, lane_stmts, ow = _lanes(st, params)
    core_decls, assigns, latch = _core(st, params)
    gap = st.kind == "gap"
    lines = [
        *_header(st, mod, ow),
        "  reg have;",
        f"  reg [{gb - 1}:0] g;",
        "  wire ofree = !out_valid || out_ready;",
        f"  wire last = (g == {groups - 1});",
        "  wire take = !have || (last && ofree);",
        "  wire step = have && ofree, oxfer = out_valid && out_ready;",
        *[f"  wire [{clog2(c + 1)}:0] ch_{p} = g * {lanes} + {p};" for p in range(lanes)],
        "  integer i;",
        *core_decls,
        "__PARAMS__",
        *lane_decls,
        *assigns,
        "  wire act = rst || oxfer || step || fire" + (" || gin;" if gap else ";") + "  // idle: one net tested",
        "  always @(posedge clk) if (act) begin",
        "    if (rst) begin",
        "      have <= 0; g <= 0; out_valid <= 0;" + (" pix <= 0;" if gap else ""),
        "    end else begin",
        "      if (oxfer) out_valid <= 0;",
        "      if (step) begin",
        *lane_stmts,
        "        if (last) begin have <= 0; g <= 0; out_valid <= 1; end else g <= g + 1;",
        "      end",
    ]
    if gap:
        lines += latch + ["      if (fire) have <= 1;"]
    else:
        lines += ["      if (fire) begin", *latch, "        have <= 1;", "      end"]
    lines += ["    end", "  end", "endmodule", ""]
    text = "\n".join(lines).replace("__PARAMS__", "\n".join(params.decls))
    return text, list(params.files)


# ------------------------------------------------------------------------------ fork

def fork_module(st: ForkLayer, mod: str) -> str:
    """One input stream copied into a FIFO per output (first-word fall-through, LUT/FF or RAM storage)."""
    width = st.channels * st.in_width
    n = len(st.dsts)
    ports = [f"  output wire out{k}_valid, input wire out{k}_ready, output wire [{width - 1}:0] out{k}_data"
             for k in range(n)]
    lines = [f"// fork of stream '{st.src[0]}' into {n} streams, FIFO depths {list(st.fifo_depths)}",
             f"module {mod} (",
             "  input wire clk, input wire rst,",
             f"  input wire in_valid, output wire in_ready, input wire [{width - 1}:0] in_data,",
             ",\n".join(ports) + ");"]
    room = []
    for k, depth in enumerate(st.fifo_depths):
        ab = clog2(depth)
        lines += [f"  reg [{width - 1}:0] q{k} [0:{depth - 1}];",
                  f"  reg [{ab - 1}:0] wp{k}, rp{k};",
                  f"  reg [{ab}:0] n{k};",
                  f"  assign out{k}_valid = (n{k} != 0);",
                  f"  assign out{k}_data = q{k}[rp{k}];"]
        room.append(f"(n{k} != {depth})")
    lines += [f"  assign in_ready = {' && '.join(room)};",
              "  wire push = in_valid && in_ready;"]
    for k, depth in enumerate(st.fifo_depths):
        ab = clog2(depth)
        wrap = "" if depth == 1 << ab else f" == {depth - 1} ? 0 : wp{k} + 1"
        rwrap = "" if depth == 1 << ab else f" == {depth - 1} ? 0 : rp{k} + 1"
        lines += [f"  wire pop{k} = out{k}_valid && out{k}_ready, act{k} = rst || push || pop{k};",
                  f"  always @(posedge clk) if (act{k}) begin",
                  f"    if (push) q{k}[wp{k}] <= in_data;",
                  "    if (rst) begin",
                  f"      wp{k} <= 0; rp{k} <= 0; n{k} <= 0;",
                  "    end else begin",
                  f"      if (push) wp{k} <= " + (f"wp{k}{wrap};" if wrap else f"wp{k} + 1;"),
                  f"      if (pop{k}) rp{k} <= " + (f"rp{k}{rwrap};" if rwrap else f"rp{k} + 1;"),
                  f"      if (push != pop{k}) n{k} <= push ? n{k} + 1 : n{k} - 1;",
                  "    end",
                  "  end"]
    lines += ["endmodule", ""]
    return "\n".join(lines)

