"""Synthesis with Yosys (synth_ice40 / synth_ecp5 / synth_xilinx) and the cost model it checks.

Yosys writes a JSON netlist; its `stat -json` resource report is parsed into LUTs, FFs, BRAM
and DSP counts by cell type. The cost model estimates the same figures before synthesis from the
plan alone (per layer): LUTs per MAC lane (an SIMD-wide multiply-add tree), accumulator and
output-register flip-flops, weight ROM bits, and cycles per frame ceil(in/SIMD) * ceil(out/PE).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from qcc.errors import QccError
from qcc.targets.fpga.plan import DenseLayer, signed_bits
from qcc.targets.fpga.sim import require_tool

__all__ = ["DEVICES", "synthesize", "layer_cost", "parse_stat"]

DEVICES = ("ice40", "ecp5", "xilinx")

_LUT = re.compile(r"^(SB_LUT4|LUT\d|TRELLIS_SLICE|LUT)$")
_FF = re.compile(r"^(SB_DFF\w*|TRELLIS_FF|FD\w*|\$_DFF\w*|\$_SDFF\w*)$")
_BRAM = re.compile(r"^(SB_RAM40_4K\w*|DP16KD|PDPW16KD|RAMB\w+)$")
_DSP = re.compile(r"^(SB_MAC16|MULT18X18D|ALU54B|DSP48\w*)$")
_BRAM_BITS = {"SB_RAM40_4K": 4096, "DP16KD": 18432, "PDPW16KD": 18432, "RAMB18E1": 18432, "RAMB36E1": 36864}


def parse_stat(stat: dict) -> dict[str, float]:
    """Resource counts from Yosys `stat -json` output (the top design's cell counts)."""
    design = stat.get("design") or next(iter(stat.get("modules", {}).values()), {})
    cells = design.get("num_cells_by_type", {})
    out = {"luts": 0, "ffs": 0, "bram": 0, "bram_bits": 0, "dsps": 0, "cells": int(design.get("num_cells", 0))}
    for cell, count in cells.items():
        if _LUT.match(cell) or cell.startswith("LUT"):
            out["luts"] += count
        elif _FF.match(cell):
            out["ffs"] += count
        elif _BRAM.match(cell):
            out["bram"] += count
            out["bram_bits"] += count * next((b for k, b in _BRAM_BITS.items() if cell.startswith(k)), 0)
        elif _DSP.match(cell):
            out["dsps"] += count
        elif cell.startswith("TRELLIS_COMB") or cell == "CCU2C":
            out["luts"] += count if cell.startswith("TRELLIS_COMB") else 2 * count
    return out


def synthesize(rtl_dir: Path, verilog: list[Path], top: str, device: str, netlist: Path) -> dict[str, float]:
    """Run Yosys on the design; writes the JSON netlist and returns the resource counts."""
    if device not in DEVICES:
        raise QccError(f"fpga target: unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    yosys = require_tool("yosys", "yosys")
    stat_file = netlist.with_suffix(".stat.json")
    script = "; ".join([
        "read_verilog " + " ".join(str(p) for p in verilog),
        f"synth_{device} -top {top}",
        f"write_json {netlist}",
        f"tee -q -o {stat_file} stat -json",
    ])
    proc = subprocess.run([yosys, "-q", "-p", script], cwd=rtl_dir, capture_output=True, text=True)
    if proc.returncode != 0 or not stat_file.is_file():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise QccError(f"fpga target: yosys failed: {lines[-1] if lines else 'no statistics written'}")
    try:
        stat = json.loads(stat_file.read_text())
    except ValueError as e:
        raise QccError(f"fpga target: yosys statistics unreadable: {e}") from None
    finally:
        stat_file.unlink(missing_ok=True)
    return parse_stat(stat)


def layer_cost(layer: DenseLayer) -> dict[str, float]:
    """Estimated LUTs, FFs, BRAM bits, DSPs and cycles per frame of one matrix-vector unit."""
    lanes = layer.pe * layer.simd
    ww = layer.weight_width
    xw = signed_bits(layer.in_lo - layer.in_zp, layer.in_hi - layer.in_zp)
    accw = layer.acc_width
    mac_luts = lanes * (2 * ww * xw + accw)  # partial products + adder tree, per MAC lane
    mux_luts = layer.simd * layer.in_width * max(1, layer.n_in // layer.simd) // 4  # input slice select
    post_luts = layer.pe * sum(_post_luts(op.kind, accw) for op in layer.post)
    ffs = layer.n_in * layer.in_width + layer.n_out * layer.out_width + layer.pe * accw + 2 * layer.pe * layer.simd * ww
    return {"luts": float(mac_luts + mux_luts + post_luts), "ffs": float(ffs),
            "bram_bits": float(layer.weights.size * ww), "dsps": 0.0, "cycles": float(layer.cycles),
            "pe": float(layer.pe), "simd": float(layer.simd), "acc_bits": float(accw)}


def _post_luts(kind: str, accw: int) -> int:
    if kind == "requant":
        return 48 * (accw + 1) + 6 * (accw + 33)  # 32-bit multiplier by M0, barrel shifters
    if kind == "thresholds":
        return 4 * accw
    return accw
