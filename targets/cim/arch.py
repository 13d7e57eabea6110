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
With `lossless = true` an architecture whose ADC is narrower than that is rejected. Per layer,
`layer_adc_bits` applies the same bound to the layer's actual ranges (rows in one crossbar, input
slice and cell levels, which are narrower than the hardware's for low-precision layers).

ADC cost versus resolution: the ADC figures (`adc_energy_pj`, `adc_power_mw`, `adc_area_mm2`) are
quoted at `adc_ref_bits` (ISAAC: 8 bits at 1.28 GS/s). At b bits a conversion costs
2^(b - adc_ref_bits) times as much energy, Walden's figure of merit (R. H. Walden, "Analog-to-digital
converter survey and analysis", IEEE JSAC 17(4), 1999: P = FOM * 2^ENOB * f_s, so energy per
conversion = FOM * 2^ENOB at a fixed FOM); the area scales the same way, a first-order rule for a
SAR ADC whose capacitive DAC has 2^b unit capacitors (ISAAC's ADC is a SAR, Kull et al., ISSCC 2013).

Digital accumulator (`acc_bits`, default 32): the shift-and-add units add the ADC reads, the row
tiles' partial sums, the digital offset corrections and the bias into an output register of
`acc_bits` bits, two's complement, which wraps when a sum does not fit. The exact accumulator of a
layer needs about log2(rows) + a_bits + w_bits bits (qcc.ranges proves the exact figure):
ISAAC and PUMA (Ankit et al., ASPLOS 2019) carry 16-bit fixed-point values between layers, and
ISAAC's full-precision 16-bit x 16-bit dot product over one 128-row crossbar already needs 39 bits,
so a fixed register width is a design choice the compiler has to check, not a given. qcc's
default is 32 bits, the int32 accumulator of 8-bit integer inference (gemmlowp, TFLite, ONNX
Runtime): it holds every 8-bit layer of up to about 2^15 rows (by qcc.ranges the 8-bit example
needs at most 21 bits in its MAC layers and 25 in its global average pool, the 8-bit ResNet-18 of
bench/resnet_onnx.py 26 and 31), while 16-bit layers need a wider register (`acc_bits = 48`: the
example at 16 bits needs up to 41 and reaches 35 on real images).
`qcc compile` refuses a model whose accumulators can exceed it (CimTarget.accumulator_bits) unless
`--allow-overflow`; the simulator then wraps as the register would (simulate.py). At most 64.

An architecture file is TOML with the field names below at top level (any subset; the rest keep
their defaults), e.g. `rows = 64`, `adc_bits = 6`, `lossless = false`, and two optional tables:
- `[mapping]`: `replication = "none" | "balance"` (ISAAC's weight replication for throughput: copy
  the slow, many-position layers until the layer pipeline is balanced) and `max_crossbars` (the
  crossbars replication may fill; 0 = the whole chip);
- `[nonideal]`: analog non-idealities for the simulator (NonIdeal: `conductance_sigma`,
  `stuck_at_zero`, `stuck_at_one`, `seed`); the cost model ignores them.
A lossy ADC is `adc_bits = 6` with `lossless = false` (it changes the cost and the simulation).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qcc.errors import QccError

__all__ = ["Arch", "NonIdeal", "ISAAC", "load_arch", "lossless_adc_bits", "layer_adc_bits", "adc_scale", "tile_rollup",
           "TileRollup", "arch_to_toml"]

_ENCODINGS = ("offset", "differential")
_REPLICATION = ("none", "balance")
_MAPPING_KEYS = ("replication", "max_crossbars")


@dataclass(frozen=True)
class NonIdeal:
    """Analog non-idealities of the simulated crossbars (all off by default: the simulator is bit-exact).

    conductance_sigma: each programmed cell's conductance is level * (1 + sigma * N(0, 1)), drawn once
    per cell (device-to-device programming variation), clipped at 0. stuck_at_zero / stuck_at_one:
    the probability that a cell is stuck at level 0 / at the largest level 2^bits_per_cell - 1.
    seed: the random draws are a function of (seed, layer name, replica) only, so a compiled
    folder reproduces them.
    """

    conductance_sigma: float = 0.0
    stuck_at_zero: float = 0.0
    stuck_at_one: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("conductance_sigma", "stuck_at_zero", "stuck_at_one"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0:
                raise QccError(f"architecture: nonideal.{name} must be a finite number >= 0, got {value!r}")
        if self.stuck_at_zero + self.stuck_at_one > 1:
            raise QccError("architecture: nonideal.stuck_at_zero + nonideal.stuck_at_one must be at most 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise QccError(f"architecture: nonideal.seed must be an integer >= 0, got {self.seed!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.conductance_sigma or self.stuck_at_zero or self.stuck_at_one)


@dataclass(frozen=True)
class Arch:
    """A crossbar accelerator (defaults: ISAAC). Powers in mW, areas in mm², times in ns."""

    rows: int = 128
    cols: int = 128
    bits_per_cell: int = 2
    dac_bits: int = 1
    adc_bits: int = 8
    adc_rate_gsps: float = 1.28
    adc_energy_pj: float = 1.5625  # per conversion at adc_ref_bits: 2 mW / 1.28 GS/s
    adc_ref_bits: int = 8  # the resolution the ADC energy, power and area figures are quoted for
    flip_encoding: bool = True  # ISAAC's column flip: one ADC bit fewer
    acc_bits: int = 32  # the digital shift-and-add / output register (two's complement, wraps)
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
    # [mapping]: weight replication for throughput (ISAAC), within max_crossbars (0 = the chip)
    replication: Literal["none", "balance"] = "none"
    max_crossbars: int = 0
    # [nonideal]: simulator non-idealities
    nonideal: NonIdeal = NonIdeal()

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

    @property
    def replication_limit(self) -> int:
        """The crossbars replication may fill (max_crossbars, or the whole chip)."""
        return self.max_crossbars or self.crossbars


def lossless_adc_bits(rows: int, dac_bits: int, bits_per_cell: int, flip: bool = False) -> int:
    """ISAAC's rule: log2(rows) + dac_bits + bits_per_cell, minus 1 when either is 1, minus 1 for flip."""
    bits = math.ceil(math.log2(max(rows, 1))) + dac_bits + bits_per_cell
    if dac_bits == 1 or bits_per_cell == 1:
        bits -= 1
    if flip:
        bits -= 1
    return max(bits, 1)


def layer_adc_bits(rows: int, in_bits: int, level_bits: int, flip: bool = False) -> int:
    """The narrowest lossless ADC for `rows` products of an `in_bits` input slice and a `level_bits` level.

    The largest column sum is rows * (2^in_bits - 1) * (2^level_bits - 1) = R * V * M. With ISAAC's
    flip encoding a column whose levels sum to more than R * M / 2 stores M - level instead (the
    digital side takes the sum back from M * sum(inputs)), so every column sums at most
    floor(R * M / 2) levels and V times that. Never wider than `lossless_adc_bits`.
    """
    v, m = (1 << in_bits) - 1, (1 << level_bits) - 1
    peak = v * (rows * m // 2) if flip else rows * v * m
    return max(int(peak).bit_length(), 1)


def adc_scale(arch: Arch, bits: int) -> float:
    """Energy (and area) of a `bits`-bit ADC relative to the quoted one: 2^(bits - adc_ref_bits) (Walden)."""
    return 2.0 ** (bits - arch.adc_ref_bits)


_INT_FIELDS = ("rows", "cols", "bits_per_cell", "dac_bits", "adc_bits", "adc_ref_bits", "acc_bits", "crossbars_per_ima",
               "adcs_per_ima", "imas_per_tile", "tiles", "tiles_per_router")


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
        elif f.name == "replication":
            if value not in _REPLICATION:
                raise QccError(f"architecture: mapping.replication must be one of {', '.join(_REPLICATION)}, "
                               f"got {value!r}")
        elif f.name == "nonideal":
            if not isinstance(value, NonIdeal):
                raise QccError(f"architecture: nonideal must be a table of non-idealities, got {value!r}")
        elif f.name == "max_crossbars":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise QccError(f"architecture: mapping.max_crossbars must be an integer >= 0, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise QccError(f"architecture: {f.name} must be a finite number >= 0, got {value!r}")
    for name in ("adc_rate_gsps", "clock_ghz", "read_ns"):
        if getattr(arch, name) <= 0:
            raise QccError(f"architecture: {name} must be > 0, got {getattr(arch, name)!r}")
    if not 2 <= arch.acc_bits <= 64:
        raise QccError(f"architecture: acc_bits must be from 2 to 64 (a two's complement register), "
                       f"got {arch.acc_bits}")
    if arch.bits_per_cell > 8 or arch.dac_bits > 8:
        raise QccError("architecture: bits_per_cell and dac_bits must be at most 8")
    if arch.max_crossbars > arch.crossbars:
        raise QccError(f"architecture: mapping.max_crossbars = {arch.max_crossbars} exceeds the chip's "
                       f"{arch.crossbars} crossbars")
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
    try:
        return Arch(**_arch_fields(doc))
    except QccError as e:
        raise QccError(f"{path}: {e}") from None


def _table(doc: dict, key: str) -> dict:
    table = doc.pop(key, {})
    if not isinstance(table, dict):
        raise QccError(f"architecture: [{key}] must be a table")
    return table


def _arch_fields(doc: dict) -> dict:
    """The Arch keyword arguments of a TOML document: top-level fields, [mapping] and [nonideal]."""
    doc = dict(doc)
    mapping, nonideal = _table(doc, "mapping"), _table(doc, "nonideal")
    top = {f.name for f in dataclasses.fields(Arch)} - set(_MAPPING_KEYS) - {"nonideal"}
    checks = ((doc, top, ""), (mapping, set(_MAPPING_KEYS), "mapping."),
              (nonideal, {f.name for f in dataclasses.fields(NonIdeal)}, "nonideal."))
    for table, known, prefix in checks:
        unknown = sorted(set(table) - known)
        if unknown:
            hint = " (a lossy ADC is the top-level adc_bits with lossless = false)" \
                if prefix and "adc_bits" in unknown else ""
            raise QccError(f"unknown architecture key(s) {', '.join(prefix + k for k in unknown)}{hint}")
    return {**doc, **mapping, "nonideal": NonIdeal(**nonideal)}


def arch_to_toml(arch: Arch) -> str:
    """The TOML text of `arch` (every field), which load_arch reads back to an equal Arch."""
    lines = ["# qcc CIM architecture (defaults: ISAAC, ISCA 2016)"]
    lines += [f"{f.name} = {_toml(getattr(arch, f.name))}" for f in dataclasses.fields(arch)
              if f.name not in _MAPPING_KEYS and f.name != "nonideal"]
    lines += ["", "[mapping]", *(f"{k} = {_toml(getattr(arch, k))}" for k in _MAPPING_KEYS)]
    lines += ["", "[nonideal]", *(f"{f.name} = {_toml(getattr(arch.nonideal, f.name))}"
                                  for f in dataclasses.fields(NonIdeal))]
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


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
