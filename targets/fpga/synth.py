"""Synthesis with Yosys (synth_ice40 / synth_ecp5 / synth_xilinx): netlist and resource report.

Yosys keeps the design hierarchy (one module per layer), writes a JSON netlist, and its `stat
-json` report is parsed into LUTs, FFs, BRAM and DSP counts by cell type, for the whole design and
per module. The pre-synthesis estimate of the same figures is qcc.targets.fpga.cost.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from qcc.errors import QccError
from qcc.targets.fpga.cost import estimate, shape_of_layer
from qcc.targets.fpga.plan import DenseLayer
from qcc.targets.fpga.sim import require_tool

__all__ = ["DEVICES", "synthesize", "layer_cost", "parse_stat", "parse_module_stats"]

DEVICES = ("ice40", "ecp5", "xilinx")

_LUT = re.compile(r"^(SB_LUT4|LUT\d|TRELLIS_SLICE|LUT)$")
_FF = re.compile(r"^(SB_DFF\w*|TRELLIS_FF|FD\w*|\$_DFF\w*|\$_SDFF\w*)$")
_BRAM = re.compile(r"^(SB_RAM40_4K\w*|DP16KD|PDPW16KD|RAMB\w+)$")
_DSP = re.compile(r"^(SB_MAC16|MULT18X18D|ALU54B|DSP48\w*)$")
_LUTRAM = {"TRELLIS_DPR16X4": 4, "RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2,
           "RAM64X1S": 1, "RAM32X1S": 1, "RAM128X1D": 4}  # LUTs per distributed-RAM cell
_BRAM_BITS = {"SB_RAM40_4K": 4096, "DP16KD": 18432, "PDPW16KD": 18432, "RAMB18E1": 18432, "RAMB36E1": 36864}


def _counts(cells: dict[str, int], num_cells: int) -> dict[str, float]:
    out = {"luts": 0, "ffs": 0, "bram": 0, "bram_bits": 0, "dsps": 0, "cells": int(num_cells)}
    for cell, count in cells.items():
        if cell.startswith("TRELLIS_COMB"):
            out["luts"] += count
        elif cell == "CCU2C":  # an ECP5 carry cell holds two LUT4s
            out["luts"] += 2 * count
        elif cell in _LUTRAM:
            out["luts"] += _LUTRAM[cell] * count
        elif _LUT.match(cell) or cell.startswith("LUT"):
            out["luts"] += count
        elif _FF.match(cell):
            out["ffs"] += count
        elif _BRAM.match(cell):
            out["bram"] += count
            out["bram_bits"] += count * next((b for k, b in _BRAM_BITS.items() if cell.startswith(k)), 0)
        elif _DSP.match(cell):
            out["dsps"] += count
    return out


def parse_stat(stat: dict) -> dict[str, float]:
    """Resource counts from Yosys `stat -json` output (the whole design, hierarchy included)."""
    design = stat.get("design") or next(iter(stat.get("modules", {}).values()), {})
    return _counts(design.get("num_cells_by_type", {}), design.get("num_cells", 0))


def parse_module_stats(stat: dict) -> dict[str, dict[str, float]]:
    """Per-module resource counts from Yosys `stat -json` (a design synthesized without flattening)."""
    modules = stat.get("modules", {})
    return {name.lstrip("\\"): _counts(m.get("num_cells_by_type", {}), m.get("num_cells", 0))
            for name, m in modules.items()}


def synthesize(rtl_dir: Path, verilog: list[Path], top: str, device: str, netlist: Path,
               *, per_module: bool = False) -> dict:
    """Run Yosys on the design (hierarchy kept); writes the JSON netlist and returns the resource counts.

    With per_module, the result also has "modules": {module name: counts} (one per layer).
    """
    if device not in DEVICES:
        raise QccError(f"fpga target: unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    yosys = require_tool("yosys", "yosys")
    rtl_dir, netlist = Path(rtl_dir).resolve(), Path(netlist).resolve()  # yosys runs in rtl_dir
    verilog = [Path(p).resolve() for p in verilog]
    stat_file = netlist.with_suffix(".stat.json")
    flatten = "" if device == "xilinx" else " -noflatten"  # synth_xilinx keeps the hierarchy by default
    script = "; ".join([
        "read_verilog " + " ".join(str(p) for p in verilog),
        f"synth_{device} -top {top}{flatten}",
        f"write_json {netlist}",
        f"tee -q -o {stat_file} stat -json -top {top}",
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
    result: dict = parse_stat(stat)
    if per_module:
        result["modules"] = {k: v for k, v in parse_module_stats(stat).items() if k != top}
    return result


def layer_cost(layer: DenseLayer, device: str = "ice40") -> dict[str, float]:
    """Estimated LUTs, FFs, BRAM bits, DSPs and cycles per frame of one plan layer (qcc.targets.fpga.cost)."""
    return estimate(shape_of_layer(layer), device)
