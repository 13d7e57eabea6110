"""Testbench generation and the Icarus Verilog runner: many frames in one simulation.

The design streams pixels (all channels of one position per transfer, raster order). The testbench
reads every input pixel of every frame from one memory file, drives them through the top level's
valid/ready input (with a pseudo-random stall pattern on out_ready, so back-pressure is exercised),
writes each output pixel as one hex line and stops after the last one (or at a cycle limit). The
host converts between the graph's C x H x W order and the pixel stream.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.targets.fpga.plan import Plan
from qcc.targets.fpga.rtl_common import pack_words

__all__ = ["emit_testbench", "simulate_codes", "require_tool", "unpack_words"]


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise QccError(f"fpga target: '{name}' was not found on PATH; install it (e.g. apt-get install {package})")
    return path


def emit_testbench(plan: Plan, path: Path) -> Path:
    """A testbench streaming NIN input pixels from +in=FILE and writing NOUT output pixels to +out=FILE."""
    i, o = plan.in_info, plan.out_info
    inw, outw = i.channels * i.width, o.channels * o.width
    text = f"""// qcc testbench: NFR input pixels from +in=FILE, NOUT output pixels to +out=FILE (one hex line each)
// Per clock edge it does as little as it can (each variable a process reads costs Icarus a lookup):
// transfers are tested on two nets, the stall pattern is an LFSR (a $random call per cycle cost more
// than the design), and a watchdog process checks progress every IDLE cycles instead of every cycle.
`timescale 1ns/1ps
module tb;
  parameter NFR = 1;
  parameter NOUT = 1;
  parameter STALL = 1;
  parameter MAXCYCLES = 1000000000;
  parameter IDLE = 2000000;
  reg clk = 0, rst = 1;
  reg [15:0] lfsr = 16'hace1;
  always #5 clk = ~clk;
  reg in_valid = 0;
  reg [{inw - 1}:0] in_data = 0;
  wire in_ready, out_valid;
  wire out_ready = STALL ? (lfsr[1:0] != 2'd0) : 1'b1;
  wire [{outw - 1}:0] out_data;
  wire in_x = in_valid && in_ready, out_x = out_valid && out_ready;
  reg [{inw - 1}:0] frames [0:NFR-1];
  reg [8*1024-1:0] in_file, out_file;
  integer fi = 0, fo = 0, f, seen = -1;
  qcc_top dut (.clk(clk), .rst(rst), .in_valid(in_valid), .in_ready(in_ready), .in_data(in_data),
               .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data));
  initial begin
    if (!$value$plusargs("in=%s", in_file) || !$value$plusargs("out=%s", out_file)) begin
      $display("ERROR: +in=FILE and +out=FILE are required"); $finish;
    end
    $readmemh(in_file, frames);
    f = $fopen(out_file, "w");
    #22 rst = 0;
    in_data = frames[0];
    in_valid = 1;
  end
  initial begin : watchdog
    forever begin
      #(10 * IDLE);
      if (fo == seen) begin $display("ERROR: no output for %0d cycles (deadlock?)", IDLE); $finish; end
      if ($time / 10 > MAXCYCLES) begin $display("ERROR: timeout after %0d cycles", MAXCYCLES); $finish; end
      seen = fo;
    end
  end
  always @(posedge clk) if (out_valid || in_x) begin
    if (STALL && out_valid) lfsr <= {{lfsr[14:0], lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]}};
    if (in_x) begin
      fi = fi + 1;
      if (fi < NFR) in_data <= frames[fi];
      else in_valid <= 0;
    end
    if (out_x) begin
      $fdisplay(f, "%h", out_data);
      fo = fo + 1;
      if (fo == NOUT) begin $fclose(f); $display("CYCLES %0d", ($time - 15) / 10); $finish; end
    end
  end
endmodule
"""
    path.write_text(text)
    return path


def unpack_words(lines: list[str], count: int, width: int) -> np.ndarray:
    """Hex words into [frames, count] signed integers (element j at bits [j*width +: width])."""
    out = np.zeros((len(lines), count), np.int64)
    mask, sign = (1 << width) - 1, 1 << (width - 1)
    for r, line in enumerate(lines):
        if "x" in line.lower() or "z" in line.lower():
            raise QccError("fpga simulation produced undefined (x/z) outputs")
        word = int(line, 16)
        for j in range(count):
            v = (word >> (j * width)) & mask
            out[r, j] = v - (1 << width) if v & sign else v
    return out


def _to_pixels(codes: np.ndarray, channels: int, pixels: int) -> np.ndarray:
    """[frames, C*H*W] in graph (CHW) order -> [frames*H*W, C] pixel rows."""
    return codes.reshape(codes.shape[0], channels, pixels).transpose(0, 2, 1).reshape(-1, channels)


def simulate_codes(plan: Plan, rtl_files: list[Path], testbench: Path, codes: np.ndarray,
                   *, stall: bool = True) -> tuple[np.ndarray, int]:
    """Run Icarus on [frames, C*H*W] input codes (graph order); returns ([frames, outputs], cycles)."""
    iverilog = require_tool("iverilog", "iverilog")
    vvp = require_tool("vvp", "iverilog")
    i, o = plan.in_info, plan.out_info
    frames = codes.shape[0]
    if frames == 0:
        return np.zeros((0, o.channels * o.pixels), np.int64), 0
    if codes.shape[1] != i.channels * i.pixels:
        raise QccError(f"fpga simulation: frames of {codes.shape[1]} codes, the design takes {i.channels * i.pixels}")
    rtl_dir = rtl_files[0].parent
    with tempfile.TemporaryDirectory(prefix="qcc-fpga-sim-") as tmp:
        tmp = Path(tmp)
        in_mem, out_mem, exe = tmp / "inputs.mem", tmp / "outputs.mem", tmp / "sim.vvp"
        in_mem.write_text("\n".join(pack_words(_to_pixels(codes, i.channels, i.pixels), i.width)) + "\n")
        nin, nout = frames * i.pixels, frames * o.pixels
        cmd = [iverilog, "-g2005", "-o", str(exe), f"-Ptb.NFR={nin}", f"-Ptb.NOUT={nout}",
               f"-Ptb.STALL={int(stall)}", str(testbench), *map(str, rtl_files)]
        _run(cmd, rtl_dir, "iverilog")
        out = _run([vvp, "-n", str(exe), f"+in={in_mem}", f"+out={out_mem}"], rtl_dir, "vvp")
        if "ERROR" in out:
            raise QccError(f"fpga simulation failed: {out.strip().splitlines()[-1]}")
        lines = [ln for ln in out_mem.read_text().split() if ln]
    if len(lines) != nout:
        raise QccError(f"fpga simulation returned {len(lines)} output pixels, expected {nout}")
    cycles = next((int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("CYCLES")), 0)
    pix = unpack_words(lines, o.channels, o.width).reshape(frames, o.pixels, o.channels)
    return pix.transpose(0, 2, 1).reshape(frames, -1), cycles


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise QccError(f"fpga target: {what} failed: {detail[0] if detail else 'exit ' + str(proc.returncode)}")
    return proc.stdout
