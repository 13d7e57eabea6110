"""The FPGA cost model: structure, folding from it (throughput, LUT budget, config), assign-bits, Yosys check."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qcc.errors import QccError
from qcc.ir.graph import Graph
from qcc.ir.quant import Bipolar, Uniform
from qcc.ir.types import TensorType
from qcc.pass_manager import PassContext, run_pipeline
from qcc.targets.fpga import FpgaTarget, choose_folding, folding_from_config, plan_graph
from qcc.targets.fpga.cost import COEFFS, LayerShape, bram_blocks, estimate, shape_of_layer
from qcc.testing.nets import float_mlp


def _mlp(dims=(16, 12, 8, 4), seed=0) -> Graph:
    return float_mlp(dims, seed)


def _calib(n_in: int) -> dict:
    return {"x": np.random.default_rng(1).normal(size=(64, n_in)).astype(np.float32)}


def _quantized(dims=(16, 12, 8, 4), bits=4) -> Graph:
    g = _mlp(dims)
    run_pipeline(g, f"canonicalize,calibrate,quantize{{w_bits={bits},a_bits={bits}}}",
                 PassContext(config={"calib": _calib(dims[0])}))
    return g


# ----------------------------------------------------------------------------------- structure

def test_cycles_bram_and_dsps_follow_the_structure():
    s = LayerShape("l", "Gemm", n_in=64, n_out=32, pe=4, simd=8, w_bits=4, x_bits=5, acc_bits=14)
    assert s.cycles == (64 // 8) * (32 // 4)
    assert s.rom_depth == 64 and s.rom_width == 4 * 8 * 4
    ice, ecp = estimate(s, "ice40"), estimate(s, "ecp5")
    assert ice["dsps"] == 0 and ecp["dsps"] == 4 * 8 + 4 * 2 + 1  # MAC lanes, requant (15 x 32 bits), index
    assert ice["bram_bits"] == bram_blocks(64, 128, "ice40") * 4096 == 8 * 4096
    assert ecp["bram"] == 4 and ecp["cycles"] == 64
    conv = LayerShape("c", "Conv", n_in=36, n_out=8, pixels=25)
    assert conv.cycles == 36 * 8 * 25


def test_luts_grow_with_parallelism_and_bits():
    base = LayerShape("l", "Gemm", n_in=64, n_out=32, w_bits=4, x_bits=5, acc_bits=14)
    for family in COEFFS:
        luts = [estimate(base.folded(pe, simd), family)["luts"] for pe, simd in ((1, 1), (2, 8), (8, 16))]
        assert luts == sorted(luts) and luts[0] > 0
    wide = LayerShape("l", "Gemm", n_in=64, n_out=32, pe=2, simd=8, w_bits=8, x_bits=9, acc_bits=22)
    assert estimate(wide, "ice40")["luts"] > estimate(base.folded(2, 8), "ice40")["luts"]


def test_plan_shapes_cover_every_stage():
    g = _quantized()
    plan = plan_graph(g)
    shapes = [shape_of_layer(st) for st in (plan.stages or plan.layers)]
    assert [s.name for s in shapes] == ["fc0", "fc1", "fc2"]
    assert shapes[0].n_in == 16 and shapes[0].post[-1] == "requant" and shapes[0].acc_bits == plan.layers[0].acc_width
    bip = Graph()
    x = bip.add_input("x", TensorType(("N", 8), "float32"))
    x.quant = Uniform(bits=4, scale=0.2)
    h = x
    for i in range(2):
        w = bip.add_constant(f"w{i}", np.where(np.arange(64).reshape(8, 8) % 3, 0.1, -0.1).astype(np.float32),
                             quant=Bipolar(scale=0.1))
        h = bip.add_node("Gemm", [h, w], attrs={"transB": 1}, name=f"fc{i}").outputs[0]
        if i == 0:
            h.quant = Bipolar(scale=1.0)
    bip.set_outputs([h])
    shapes = [shape_of_layer(layer) for layer in plan_graph(bip).layers]
    assert [s.bipolar for s in shapes] == [False, True]
    assert estimate(shapes[1], "ecp5")["dsps"] <= 1  # XNOR-popcount: no multipliers (one DSP of index arithmetic)


# ----------------------------------------------------------------------------------- folding

def test_cycles_per_frame_is_met_with_the_cheapest_folding():
    g = _quantized()
    for cycles in (1, 16, 40, 1000):
        target = FpgaTarget(cycles_per_frame=cycles, device="ecp5")
        report = target.cost(g)
        assert report.totals["cycles_per_frame"] <= max(cycles, 1)
        plan = target.plan(g)
        for layer in plan.layers:  # no other folding meeting the throughput is cheaper
            shape = shape_of_layer(layer)
            own = estimate(shape, "ecp5")["luts"]
            for pe in (d for d in range(1, layer.n_out + 1) if layer.n_out % d == 0):
                for simd in (d for d in range(1, layer.n_in + 1) if layer.n_in % d == 0):
                    other = shape.folded(pe, simd)
                    if other.cycles <= cycles:
                        assert estimate(other, "ecp5")["luts"] >= own - 1e-6


def test_lut_budget_gives_the_fastest_design_that_fits():
    g = _quantized()
    smallest = FpgaTarget().cost(g).totals["luts"]
    budgets = [smallest * 1.01, smallest * 2, smallest * 5]
    cycles = []
    for budget in budgets:
        totals = FpgaTarget(lut_budget=int(budget)).cost(g).totals
        assert totals["luts"] <= budget
        cycles.append(totals["cycles_per_frame"])
    assert cycles == sorted(cycles, reverse=True) and cycles[-1] < cycles[0]
    with pytest.raises(QccError, match="--lut-budget 10 is below the smallest design's estimated"):
        FpgaTarget(lut_budget=10).cost(g)


def test_folding_from_the_config_file():
    g = _quantized()
    doc = {"layers": {"fc0": {"pe": 4, "simd": 8}, "fc1": {"simd": 3}, "fc2": {"w_bits": 4}}}
    assert folding_from_config(doc) == {"fc0": (4, 8), "fc1": (None, 3)}
    assert folding_from_config({"default": {"pe": 2}}, ["fc0", "fc1"]) == {"fc0": (2, None), "fc1": (2, None)}
    target = FpgaTarget(cycles_per_frame=48)
    target.configure(doc)
    folds = {c.name: (c.fields["pe"], c.fields["simd"]) for c in target.cost(g).layers}
    assert folds["fc0"] == (4, 8) and folds["fc1"][1] == 3
    assert 12 * 8 / (folds["fc1"][0] * 3) <= 48  # the free factor still meets the throughput
    with pytest.raises(QccError, match=r"pe must be a positive integer"):
        folding_from_config({"layers": {"fc0": {"pe": 0}}})


def test_folding_that_does_not_divide_names_the_layer():
    g = _quantized()
    target = FpgaTarget()
    target.configure({"layers": {"fc1": {"pe": 5}}})
    with pytest.raises(QccError, match=r"layer 'fc1': pe=5 \(--config \[layers.\"fc1\"\]\) does not divide its 8 "
                                       r"output channels; legal pe: 1, 2, 4, 8$"):
        target.cost(g)
    target.configure({"default": {"simd": 5}})
    with pytest.raises(QccError, match=r"layer 'fc0': simd=5 \(--config \[default\]\) does not divide its "
                                       r"reduction length 16 \(inputs\); legal simd: 1, 2, 4, 8, 16$"):
        target.cost(g)
    plan = plan_graph(g)
    with pytest.raises(QccError, match="pe / simd set for unknown layer 'fc9'; did you mean .*'fc0'"):
        choose_folding(plan, folding={"fc9": (1, 1)})
    with pytest.raises(QccError, match="'relu0', a Relu node, not a matrix-vector layer"):
        choose_folding(plan, folding={"relu0": (1, 1)}, graph_ops={n.name: n.op for n in g.nodes})


def test_fixed_factors_count_in_the_lut_budget():
    g = _quantized()
    free = FpgaTarget(lut_budget=10**6).cost(g)
    pinned = FpgaTarget(lut_budget=10**6)
    pinned.configure({"layers": {"fc0": {"pe": 1, "simd": 1}}})
    report = pinned.cost(g)
    rows = {c.name: c.fields for c in report.layers}
    assert (rows["fc0"]["pe"], rows["fc0"]["simd"]) == (1, 1)
    assert report.totals["cycles_per_frame"] == 16 * 12 >= free.totals["cycles_per_frame"]


# ----------------------------------------------------------------------------------- assign-bits

def test_assign_bits_uses_the_lut_estimate():
    target = FpgaTarget(cycles_per_frame=16)
    low, high = (target.cost(_quantized((16, 12, 8, 4), bits)).totals["luts"] for bits in (2, 8))
    budget = (low + high) / 2
    g = _mlp()
    ctx = PassContext(config={"calib": _calib(16), "target": target})
    run_pipeline(g, "canonicalize,calibrate,annotate-sensitivity,"
                    f"assign-bits{{target_budget={budget},target_metric=luts,measure=false}},quantize", ctx)
    used = g.attrs["bit_assignment"]["budgets"]["target_budget"]
    assert used["unit"] == "luts" and used["used"] <= budget
    assert target.cost(g).totals["luts"] <= budget * 1.15 < high  # per-layer costs add up to about the whole


def test_partly_quantized_graphs_are_estimated():
    g = _mlp()
    run_pipeline(g, "canonicalize", PassContext())
    report = FpgaTarget(device="xilinx").cost(g)
    assert [c.name for c in report.layers] == ["fc0", "fc1", "fc2"]
    assert all(c.fields["luts"] > 0 for c in report.layers)


# ----------------------------------------------------------------------------------- tools

def test_missing_place_and_route_tool_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(QccError, match="--pnr needs 'nextpnr-ice40'"):
        FpgaTarget(pnr=True)
    with pytest.raises(QccError, match="--pnr supports --device ice40 or ecp5"):
        FpgaTarget(pnr=True, device="xilinx")


def _within(est: float, real: float, tol: float = 0.30) -> bool:
    return abs(est - real) <= tol * real


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="needs yosys")
@pytest.mark.parametrize("device", ["ecp5"])
def test_lut_estimate_within_30_percent_of_yosys(tmp_path, device):
    g = _quantized((16, 12, 8), bits=4)
    target = FpgaTarget(synth=True, device=device, cycles_per_frame=32)
    target.lower(g, tmp_path)
    design = json.loads((tmp_path / "design.json").read_text())
    synth = design["synthesis"]
    report = target.cost(g)
    assert report.totals["luts"] == synth["luts"] and report.totals["est_luts"] == design["cost"]["luts"]
    assert _within(design["cost"]["luts"], synth["luts"]), (design["cost"]["luts"], synth["luts"])
    rows = {c.name: c.fields for c in report.layers}
    assert set(synth["layers"]) == {"fc0", "fc1"} and rows["fc0"]["luts"] == synth["layers"]["fc0"]["luts"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nextpnr-ice40") is None or shutil.which("yosys") is None,
                    reason="needs yosys and nextpnr-ice40")
def test_place_and_route_reports_fmax(tmp_path):
    g = _quantized((8, 4), bits=3)
    target = FpgaTarget(pnr=True, device="ice40")
    target.lower(g, tmp_path)
    totals = target.cost(g).totals
    assert totals["fmax_mhz"] > 1 and (tmp_path / "pnr" / "pnr_report.json").is_file()
