"""The CIM cost model: a pure function of a mapping and its architecture (ISAAC-style accounting).

Per layer, with P output positions computed per sample (crops skipped), c = ceil(a_bits / dac_bits)
input reads per position, X crossbars of one copy, r replicas and C used physical columns:
- crossbar reads = P * c * X (every crossbar of the layer reads once per input slice; a replica
  takes its share of the positions, so replication does not change the reads);
- ADC conversions = P * c * C (each used column is converted once per read), so halving the
  activation bits halves the conversions and their energy (seed 004);
- cycles = ceil(P / r) * c read steps of max(read_ns, columns per crossbar / ADC rate) ns each
  (the layer's crossbars and replicas work in parallel); latency is the sum over layers, the
  pipelined latency (ISAAC's layer pipeline) the slowest layer, throughput 1 / pipelined latency;
- energy: ADC conversions * adc_energy_pj * 2^(adc_bits - adc_ref_bits) (the layer's ADC
  resolution, Walden's rule, see arch.py: a 6-bit layer converts at a quarter of ISAAC's 8-bit
  energy; flip encoding saves one bit, half the ADC energy); every other IMA component (DAC, S+H, crossbar,
  shift-and-add, input / output registers) its IMA power / crossbars per IMA * read_ns per crossbar
  read; tile components (eDRAM, bus, router share, other) their tile power / crossbars per tile *
  read_ns per crossbar read. At full utilisation this is exactly the tile power of `tile_rollup`;
- area: the layer's share of tiles (X / crossbars per tile * tile area) with its crossbars' ADC area
  scaled by the same 2^(adc_bits - adc_ref_bits); the total counts whole tiles plus that ADC change;
- ratios: ADC share of energy, TOPS/W = 2 MACs / energy (1 op/pJ = 1 TOPS/W), GOPS/mm² = 2 MACs /
  latency / area.
"""

from __future__ import annotations

import math

from qcc.targets.cim.arch import Arch, adc_scale, tile_rollup
from qcc.targets.cim.mapping import GraphMapping, LayerMapping, read_step_ns

__all__ = ["layer_cost", "graph_cost", "ENERGY_PARTS", "UNITS"]

_IMA_PARTS = ("dac", "sh", "xbar", "shift_add", "ir", "or")
_TILE_PARTS = ("edram", "bus", "router", "other")
ENERGY_PARTS = ("adc", *_IMA_PARTS, *_TILE_PARTS)

UNITS = {"energy_pj": "pJ", "latency_ns": "ns", "latency_pipelined_ns": "ns", "area_mm2": "mm2",
         "tops_per_w": "TOPS/W", "gops_per_mm2": "GOPS/mm2", "utilisation": "fraction", "adc_share": "fraction",
         "throughput_ips": "inferences/s"}


def _per_read_pj(arch: Arch) -> dict[str, float]:
    """Energy of one crossbar read for every component but the ADC (pJ = mW * ns)."""
    tile = tile_rollup(arch).power_mw
    out = {p: getattr(arch, f"{p}_power_mw") / arch.crossbars_per_ima * arch.read_ns for p in _IMA_PARTS}
    out.update({p: tile[p] / arch.crossbars_per_tile * arch.read_ns for p in _TILE_PARTS})
    return out


def _adc_area_change(m: LayerMapping, arch: Arch) -> float:
    """The layer's ADC area at its resolution minus at the quoted one (ADC area per crossbar x scale - 1)."""
    return m.crossbars * arch.adc_area_mm2 / arch.crossbars_per_ima * (adc_scale(arch, m.adc_bits) - 1)


def layer_cost(m: LayerMapping, arch: Arch) -> dict[str, float]:
    """The cost fields of one mapped layer (per sample)."""
    reads_per_position = math.ceil(m.a_bits / arch.dac_bits)
    steps = m.positions * reads_per_position  # read steps of one copy of the layer
    cycles = math.ceil(m.positions / m.replicas) * reads_per_position
    reads = steps * m.base_crossbars
    conversions = steps * m.groups * m.row_tiles * m.phys_cols
    step_ns = read_step_ns(m, arch)
    energy = {p: reads * e for p, e in _per_read_pj(arch).items()}
    energy = {"adc": conversions * arch.adc_energy_pj * adc_scale(arch, m.adc_bits), **energy}
    total = sum(energy.values())
    ops = 2 * m.macs
    latency = cycles * step_ns
    area = m.crossbars / arch.crossbars_per_tile * tile_rollup(arch).total_area_mm2 + _adc_area_change(m, arch)
    fields = {
        "crossbars": m.crossbars, "replicas": m.replicas, "cells_per_weight": m.cells_per_weight,
        "adc_bits": m.adc_bits,
        "utilisation": m.groups * m.rows * m.phys_cols / (m.base_crossbars * arch.cells_per_crossbar),
        "crossbar_reads": reads, "adc_conversions": conversions, "cycles": cycles, "latency_ns": latency,
        "energy_pj": total, "area_mm2": area, "adc_share": energy["adc"] / total if total else 0.0,
        "tops_per_w": ops / total if total else 0.0,
        "gops_per_mm2": ops / latency / area if latency and area else 0.0,
    }
    fields.update({f"energy_{p}_pj": e for p, e in energy.items()})
    return fields


def graph_cost(mapping: GraphMapping) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(per-layer fields by layer name, totals) of a mapped graph."""
    arch = mapping.arch
    layers = {name: layer_cost(m, arch) for name, m in mapping.layers.items()}
    sums = ("crossbars", "crossbar_reads", "adc_conversions", "cycles", "latency_ns", "energy_pj",
            *(f"energy_{p}_pj" for p in ENERGY_PARTS))
    totals = {k: sum(f[k] for f in layers.values()) for k in sums}
    used = sum(m.groups * m.rows * m.phys_cols * m.replicas for m in mapping.layers.values())
    xbars = totals["crossbars"]
    tiles = math.ceil(xbars / arch.crossbars_per_tile)
    ops = sum(2 * m.macs for m in mapping.layers.values())
    energy, latency = totals["energy_pj"], totals["latency_ns"]
    totals.update({
        "utilisation": used / (xbars * arch.cells_per_crossbar) if xbars else 0.0,
        "tiles": tiles,
        "area_mm2": tiles * tile_rollup(arch).total_area_mm2 + sum(_adc_area_change(m, arch)
                                                                   for m in mapping.layers.values()),
        "latency_pipelined_ns": max((f["latency_ns"] for f in layers.values()), default=0.0),
        "adc_share": totals["energy_adc_pj"] / energy if energy else 0.0,
        "tops_per_w": ops / energy if energy else 0.0,
    })
    totals["gops_per_mm2"] = ops / latency / totals["area_mm2"] if latency and tiles else 0.0
    pipelined = totals["latency_pipelined_ns"]
    totals["throughput_ips"] = 1e9 / pipelined if pipelined else 0.0
    return layers, totals
