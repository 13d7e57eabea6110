"""The CIM architecture description: what the mapper, the cost model and the simulator assume.

Defaults are ISAAC (Shafiee et al., ISCA 2016, as used by seed 004; DESIGN.md §5): 128x128
crossbars of 2-bit cells, 1-bit DACs (inputs fed bit-serially, one bit per 100 ns read), one 8-bit
SAR ADC per crossbar at 1.28 GS/s (2 mW, 1.5625 pJ per conversion), 8 crossbars per IMA, 12 IMAs
per tile, 168 tiles, 1.2 GHz digital clock, and ISAAC's Table 6 power and area per component (IMA:
ADC, DAC, S+H, crossbar, shift-and-add, input/output registers; tile: eDRAM, bus, router shared by
4 tiles, sigmoid, shift-and-add, max-pool, output register). `tile_rollup` adds them up: 329.8 mW,
0.372 mm² per tile, ADCs 58 % of the power, ISAAC's published totals.

ADC resolution for lossless read-out (ISAAC's rule): a column sums `rows` products of a
`dac_bits` input slice and a `bits_per_cell` cell, so it needs log2(rows) + dac_bits +
bits_per_cell bits, one fewer when either is 1 bit; ISAAC's column flip encoding saves one more.
With `lossless = true` an architecture whose ADC is narrower than that is rejected.

An architecture file is TOML with the field names below at top level (any subset; the rest keep
their defaults), e.g. `rows = 64`, `adc_bits = 6`, `lossless = false`.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qcc.errors import QccError

__all__ = ["Arch", "ISAAC", "load_arch", "lossless_adc_bits", "tile_rollup", "TileRollup", "arch_to_toml"]

_ENCODINGS = ("offset", "differential")


@dataclass(frozen=True)
class Arch:
    """A crossbar accelerator (defaults: ISAAC). Powers in mW, areas in mm², times in ns."""

    rows: int = 128
    cols: int = 128
    bits_per_cell: int = 2
    dac_bits: int = 1
    adc_bits: int = 8
    adc_rate_gsps: float = 1.28
    adc_energy_pj: float = 1.5625  # per conversion: 2 mW / 1.28 GS/s
    flip_encoding: bool = True  # ISAAC's column flip: one ADC bit fewer
    lossless: bool = True
    signed_encoding: Literal["offset", "differential"] = "offset"
    crossbars_per_ima: int = 8
    adcs_per_ima: int = 8
    imas_per_tile: int = 12
    tiles: int = 168
    clock_ghz: float = 1.2
    read_ns: float = 100.0
    # per-IMA power (mW) and area (mm²), ISAAC Table 6
    adc_power_mw: float = 16.0
    adc_area_mm2: float = 0.0096
    dac_power_mw: float = 4.0
    dac_area_mm2: float = 0.00017
    sh_power_mw: float = 0.01
    sh_area_mm2: float = 0.00004
    xbar_power_mw: float = 2.4
    xbar_area_mm2: float = 0.0002
    shift_add_power_mw: float = 0.2
    shift_add_area_mm2: float = 0.00024
    ir_power_mw: float = 1.24
    ir_area_mm2: float = 0.0021
    or_power_mw: float = 0.23
    or_area_mm2: float = 0.00077
    # per-tile power (mW) and area (mm²)
    edram_power_mw: float = 20.7
    edram_area_mm2: float = 0.083
    bus_power_mw: float = 7.0
    bus_area_mm2: float = 0.090
    router_power_mw: float = 42.0
    router_area_mm2: float = 0.151
    tiles_per_router: int = 4
    tile_other_power_mw: float = 2.65  # sigmoid 0.52, shift-add 0.05, max-pool 0.4, output register 1.68
    tile_other_area_mm2: float = 0.0041  # 0.0006 + 0.00006 + 0.00024 + 0.0032

    def __post_init__(self):
        _validate(self)

    @property
    def crossbars_per_tile(self) -> int:
        return self.crossbars_per_ima * self.imas_per_tile

    @property
    def crossbars(self) -> int:
        return self.crossbars_per_tile * self.tiles

    @property
    def cells_per_crossbar(self) -> int:
        return self.rows * self.cols


def lossless_adc_bits(rows: int, dac_bits: int, bits_per_cell: int, flip: bool = False) -> int:
    """ISAAC's rule: log2(rows) + dac_bits + bits_per_cell, minus 1 when either is 1, minus 1 for flip."""
    bits = math.ceil(math.log2(max(rows, 1))) + dac_bits + bits_per_cell
    if dac_bits == 1 or bits_per_cell == 1:
        bits -= 1
    if flip:
        bits -= 1
    return max(bits, 1)


_INT_FIELDS = ("rows", "cols", "bits_per_cell", "dac_bits", "adc_bits", "crossbars_per_ima", "adcs_per_ima",
               "imas_per_tile", "tiles", "tiles_per_router")


def _validate(arch: Arch) -> None:
    for f in dataclasses.fields(arch):
        value = getattr(arch, f.name)
        if f.name in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise QccError(f"architecture: {f.name} must be a positive integer, got {value!r}")
        elif isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise QccError(f"architecture: {f.name} must be true or false, got {value!r}")
        elif f.name == "signed_encoding":
            if value not in _ENCODINGS:
                raise QccError(f"architecture: signed_encoding must be one of {', '.join(_ENCODINGS)}, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise QccError(f"architecture: {f.name} must be a finite number >= 0, got {value!r}")
    for name in ("adc_rate_gsps", "clock_ghz", "read_ns"):
        if getattr(arch, name) <= 0:
            raise QccError(f"architecture: {name} must be > 0, got {getattr(arch, name)!r}")
    if arch.bits_per_cell > 8 or arch.dac_bits > 8:
        raise QccError("architecture: bits_per_cell and dac_bits must be at most 8")
    need = lossless_adc_bits(arch.rows, arch.dac_bits, arch.bits_per_cell, arch.flip_encoding)
    if arch.lossless and arch.adc_bits < need:
        raise QccError(f"architecture: adc_bits = {arch.adc_bits} is too narrow for lossless read-out of "
                       f"{arch.rows} rows x {arch.dac_bits}-bit inputs x {arch.bits_per_cell}-bit cells "
                       f"(needs {need}); set lossless = false for a lossy ADC")


ISAAC = Arch()


def load_arch(path: str | Path) -> Arch:
    """An Arch from a TOML file (top-level keys = Arch fields); clear errors naming the bad key."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise QccError(f"architecture file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QccError(f"cannot read architecture file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise QccError(f"{path}: malformed TOML: {e}") from None
    known = {f.name for f in dataclasses.fields(Arch)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise QccError(f"{path}: unknown architecture key(s) {', '.join(unknown)}")
    try:
        return Arch(**doc)
    except QccError as e:
        raise QccError(f"{path}: {e}") from None


def arch_to_toml(arch: Arch) -> str:
    """The TOML text of `arch` (every field), which load_arch reads back to an equal Arch."""
    lines = ["# qcc CIM architecture (defaults: ISAAC, ISCA 2016)"]
    for f in dataclasses.fields(arch):
        value = getattr(arch, f.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = f'"{value}"'
        else:
            text = repr(value)
        lines.append(f"{f.name} = {text}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TileRollup:
    """One tile's power (mW) and area (mm²), by component."""

    power_mw: dict[str, float]
    area_mm2: dict[str, float]

    @property
    def total_power_mw(self) -> float:
        return sum(self.power_mw.values())

    @property
    def total_area_mm2(self) -> float:
        return sum(self.area_mm2.values())

    @property
    def adc_power_share(self) -> float:
        return self.power_mw["adc"] / self.total_power_mw


_IMA_PARTS = ("adc", "dac", "sh", "xbar", "shift_add", "ir", "or")


def tile_rollup(arch: Arch) -> TileRollup:
    """Sum the per-IMA and per-tile components into a tile's power and area (ISAAC Table 6)."""
    n = arch.imas_per_tile
    power = {p: n * getattr(arch, f"{p}_power_mw") for p in _IMA_PARTS}
    area = {p: n * getattr(arch, f"{p}_area_mm2") for p in _IMA_PARTS}
    power.update(edram=arch.edram_power_mw, bus=arch.bus_power_mw,
                 router=arch.router_power_mw / arch.tiles_per_router, other=arch.tile_other_power_mw)
    area.update(edram=arch.edram_area_mm2, bus=arch.bus_area_mm2,
                router=arch.router_area_mm2 / arch.tiles_per_router, other=arch.tile_other_area_mm2)
    return TileRollup(power, area)
