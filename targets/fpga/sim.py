"""Testbench generation and the Icarus Verilog runner: many frames in one simulation.

The testbench reads every input frame from a memory file, drives them through the top level's
valid/ready input (with a pseudo-random stall pattern on out_ready, so back-pressure is exercised),
writes each output vector as one hex line and stops after the last frame (or at a cycle limit).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.targets.fpga.plan import Plan
from qcc.targets.fpga.rtl import pack_words

__all__ = ["emit_testbench", "simulate_codes", "require_tool", "unpack_words"]


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise QccError(f"fpga target: '{name}' was not found on PATH; install it (e.g. apt-get install {package})")
    return path


def emit_testbench(plan: Plan, path: Path) -> Path:
    first, last = plan.layers[0], plan.layers[-1]
    inw, outw = first.n_in * first.in_width, last.n_out * last.out_width
    text = f"""// qcc testbench: streams NFR frames from +in=FILE, writes outputs to +out=FILE (one hex line each)
`timescale 1ns/1ps
module tb;
  parameter NFR = 1;
  parameter STALL = 1;
  parameter MAXCYCLES = 100000000;
  reg clk = 0, rst = 1;
  always #5 clk = ~clk;
  reg in_valid = 0, out_ready = 0;
  reg [{inw - 1}:0] in_data = 0;
  wire in_ready, out_valid;
  wire [{outw - 1}:0] out_data;
  reg [{inw - 1}:0] frames [0:NFR-1];
  reg [8*1024-1:0] in_file, out_file;
  integer fi = 0, fo = 0, f, cycles = 0, seed = 7;
  qcc_top dut (.clk(clk), .rst(rst), .in_valid(in_valid), .in_ready(in_ready), .in_data(in_data),
               .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data));
  initial begin
    if (!$value$plusargs("in=%s", in_file) || !$value$plusargs("out=%s", out_file)) begin
      $display("ERROR: +in=FILE and +out=FILE are required"); $finish;
    end
    $readmemh(in_file, frames);
    f = $fopen(out_file, "w");
    #22 rst = 0;
  end
  always @(negedge clk) begin
    in_valid <= (fi < NFR) && !rst;
    in_data <= frames[fi < NFR ? fi : 0];
    out_ready <= STALL ? ($random(seed) & 3) != 0 : 1;
  end
  always @(posedge clk) if (!rst) begin
    cycles = cycles + 1;
    if (in_valid && in_ready) fi = fi + 1;
    if (out_valid && out_ready) begin
      $fdisplay(f, "%h", out_data);
      fo = fo + 1;
      if (fo == NFR) begin $fclose(f); $display("CYCLES %0d", cycles); $finish; end
    end
    if (cycles > MAXCYCLES) begin $display("ERROR: timeout after %0d cycles", cycles); $finish; end
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


def simulate_codes(plan: Plan, rtl_files: list[Path], testbench: Path, codes: np.ndarray,
                   *, stall: bool = True) -> tuple[np.ndarray, int]:
    """Run Icarus on [frames, n_in] input codes; returns ([frames, n_out] output codes, cycles)."""
    iverilog = require_tool("iverilog", "iverilog")
    vvp = require_tool("vvp", "iverilog")
    first, last = plan.layers[0], plan.layers[-1]
    frames = codes.shape[0]
    if frames == 0:
        return np.zeros((0, last.n_out), np.int64), 0
    rtl_dir = rtl_files[0].parent
    with tempfile.TemporaryDirectory(prefix="qcc-fpga-sim-") as tmp:
        tmp = Path(tmp)
        in_mem, out_mem, exe = tmp / "inputs.mem", tmp / "outputs.mem", tmp / "sim.vvp"
        in_mem.write_text("\n".join(pack_words(codes, first.in_width)) + "\n")
        cmd = [iverilog, "-g2005", "-o", str(exe), f"-Ptb.NFR={frames}", f"-Ptb.STALL={int(stall)}",
               str(testbench), *map(str, rtl_files)]
        _run(cmd, rtl_dir, "iverilog")
        out = _run([vvp, "-n", str(exe), f"+in={in_mem}", f"+out={out_mem}"], rtl_dir, "vvp")
        if "ERROR" in out:
            raise QccError(f"fpga simulation failed: {out.strip().splitlines()[-1]}")
        lines = [ln for ln in out_mem.read_text().split() if ln]
    if len(lines) != frames:
        raise QccError(f"fpga simulation returned {len(lines)} frames, expected {frames}")
    cycles = next((int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("CYCLES")), 0)
    return unpack_words(lines, last.n_out, last.out_width), cycles


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise QccError(f"fpga target: {what} failed: {detail[0] if detail else 'exit ' + str(proc.returncode)}")
    return proc.stdout
