"""CIM mapping and cost model: hand-checked counts on small layers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from qcc.errors import QccError
from qcc.ir.graph import Graph
from qcc.ir.quant import Codebook, Region, Uniform
from qcc.ir.types import TensorType
from qcc.targets.cim.arch import ISAAC, Arch, tile_rollup
from qcc.targets.cim.cost import graph_cost
from qcc.targets.cim.mapping import map_graph, mapping_to_json


def example_graph():
    from qcc.examples import MODEL, load_split
    from qcc.frontend import load_model
    from qcc.pass_manager import PassContext, run_pipeline

    g = load_model(MODEL)
    x, y = load_split("calib")
    ctx = PassContext()
    ctx.config["calib"] = {"x": x, "y": y}
    run_pipeline(g, "canonicalize,fold-bn,calibrate,quantize", ctx)
    return g


def conv_graph(cin=3, cout=4, k=3, hw=6, groups=1, w_bits=4, a_bits=4, a_signed=False, seed=0, region=None,
               codebook=False):
    rng = np.random.default_rng(seed)
    g = Graph("t")
    xq = Uniform(bits=a_bits, signed=a_signed, scale=0.5, zero_point=0)
    x = g.add_input("x", TensorType(("N", cin, hw, hw), "float32"), quant=xq)
    if codebook:
        cents = (-3, 0, 2, 5)
        spec = Codebook(bits=2, centroids=cents, centroid_bits=4, centroid_scale=0.25)
        w = rng.choice(cents, size=(cout, cin // groups, k, k)) * 0.25
    else:
        spec = Uniform(bits=w_bits, signed=True, scale=0.125, zero_point=0)
        w = rng.integers(spec.qmin, spec.qmax + 1, size=(cout, cin // groups, k, k)) * 0.125
    wv = g.add_constant("w", w.astype(np.float32), quant=spec)
    pad = k // 2
    node = g.add_node("Conv", [x, wv], attrs={"group": groups, "kernel_shape": [k, k], "strides": [1, 1],
                                               "dilations": [1, 1], "pads": [pad] * 4}, name="conv")
    out = node.outputs[0]
    out.quant = Uniform(bits=8, signed=True, scale=0.3, zero_point=0)
    if region is not None:
        out.region = region
    g.set_outputs([out])
    return g


def test_conv_counts_by_hand():
    # 3x3x16 -> 32 rows, 4-bit weights on 2-bit cells: 2 cells per weight, 32 * 2 = 64 columns
    g = conv_graph(cin=16, cout=32, hw=8, w_bits=4, a_bits=4)
    m = map_graph(g, ISAAC).layers["conv"]
    assert (m.rows, m.cols, m.cells_per_weight, m.phys_cols) == (144, 32, 2, 64)
    assert (m.row_tiles, m.col_tiles, m.crossbars) == (2, 1, 2)
    assert m.adc_bits == 8  # 128 rows, 1-bit DAC, 2-bit cells, flip encoding
    layers, totals = graph_cost(map_graph(g, ISAAC))
    c = layers["conv"]
    assert c["cycles"] == 64 * 4
    assert c["crossbar_reads"] == 64 * 4 * 2
    assert c["adc_conversions"] == 64 * 4 * 2 * 64
    assert c["energy_adc_pj"] == pytest.approx(64 * 4 * 2 * 64 * 1.5625)
    assert c["latency_ns"] == pytest.approx(64 * 4 * 100)
    assert c["utilisation"] == pytest.approx(144 * 64 / (2 * 128 * 128))
    assert totals["tiles"] == 1 and totals["crossbars"] == 2
    assert sum(c[k] for k in c if k.startswith("energy_") and k != "energy_pj") == pytest.approx(c["energy_pj"])


def test_weight_bits_set_columns_like_seed_004():
    for bits, cols in ((16, 8), (10, 5), (8, 4), (1, 1)):
        m = map_graph(conv_graph(w_bits=bits), ISAAC).layers["conv"]
        assert m.cells_per_weight == cols


def test_halving_activation_bits_halves_adc_conversions_and_energy():
    a = graph_cost(map_graph(conv_graph(a_bits=8), ISAAC))[0]["conv"]
    b = graph_cost(map_graph(conv_graph(a_bits=4), ISAAC))[0]["conv"]
    assert b["adc_conversions"] * 2 == a["adc_conversions"]
    assert b["energy_adc_pj"] * 2 == pytest.approx(a["energy_adc_pj"])


def test_differential_pairs_double_columns_and_grouped_conv():
    m = map_graph(conv_graph(w_bits=4), ISAAC, encoding="differential").layers["conv"]
    assert m.pairs == 2 and m.w_bits == 4 and m.phys_cols == 4 * 2 * 2  # |wc| <= 8 needs 4 bits
    m = map_graph(conv_graph(cin=8, cout=8, groups=4, w_bits=2), ISAAC).layers["conv"]
    assert (m.groups, m.rows, m.cols, m.crossbars) == (4, 18, 2, 4)


def test_levels_encode_the_weights():
    g = conv_graph(cin=4, cout=6, w_bits=5, seed=3)
    for enc in ("offset", "differential"):
        m = map_graph(g, Arch(bits_per_cell=3, rows=16, cols=8), encoding=enc).layers["conv"]
        wc = np.rint(g.nodes[0].inputs[1].data / 0.125).astype(np.int64)
        assert np.array_equal(m.weight_matrix()[0], wc.reshape(6, -1).T)
        assert m.levels.max() < 8


def test_crop_skips_positions():
    m = map_graph(conv_graph(hw=8, region=Region(top=2, bottom=0, left=1, right=1)), ISAAC).layers["conv"]
    assert (m.positions, m.total_positions) == (6 * 6, 64)


def test_codebook_layers_store_centroids():
    m = map_graph(conv_graph(codebook=True), ISAAC).layers["conv"]
    assert m.scheme == "codebook" and m.w_bits == 4  # centroids -3..5 span 9 levels
    assert np.all(m.w_offset == -3)


def test_mapping_json_deterministic_and_complete():
    g = conv_graph(cin=16, cout=8, hw=4)
    a, b = mapping_to_json(map_graph(g, ISAAC)), mapping_to_json(map_graph(g, ISAAC))
    assert a == b
    doc = json.loads(a)
    (layer,) = doc["layers"]
    assert [x["rows"] for x in layer["crossbars"]] == [[0, 128], [128, 144]]
    assert len(layer["crossbars"][1]["levels"]) == 16


def test_layer_wider_than_chip_is_a_clear_error():
    with pytest.raises(QccError, match="layer 'conv' needs 576 crossbars, wider than the whole chip"):
        map_graph(conv_graph(cin=64, cout=64, w_bits=8), Arch(rows=16, cols=16, tiles=1, adc_bits=5))


def two_gemms(k=8, n=8, bits=4):
    rng = np.random.default_rng(0)
    g = Graph("t")
    v = g.add_input("x", TensorType(("N", k), "float32"), quant=Uniform(bits=bits, signed=False, scale=0.1))
    for i in range(2):
        spec = Uniform(bits=bits, signed=True, scale=0.1)
        w = g.add_constant(f"w{i}", (rng.integers(spec.qmin, spec.qmax + 1, size=(k, n)) * 0.1).astype(np.float32),
                           quant=spec)
        v = g.add_node("Gemm", [v, w], name=f"fc{i}").outputs[0]
        v.quant = Uniform(bits=bits, signed=False, scale=0.5)
    g.set_outputs([v])
    return g


def test_model_larger_than_chip_is_a_clear_error():
    # each layer: 8 rows x 8 weights x 2 cells = 16 columns on 8x8 crossbars: 2 crossbars; the chip has 3
    arch = Arch(rows=8, cols=8, tiles=1, imas_per_tile=1, crossbars_per_ima=3, adc_bits=5)
    assert map_graph(two_gemms(), arch, check=False).crossbars == 4
    with pytest.raises(QccError, match="the model needs 4 crossbars but the chip has 3 .*largest layer 'fc0'"):
        map_graph(two_gemms(), arch)
    with pytest.raises(QccError, match="wider than the whole chip"):  # replication does not help either
        map_graph(two_gemms(), replace(arch, crossbars_per_ima=1, replication="balance"))


def test_replication_by_hand():
    # 144 rows x 64 columns: 2 crossbars, 64 positions x 4 input bits; up to 10 crossbars: 5 copies,
    # each computing ceil(64 / 5) = 13 positions (4 copies would still need 16, 3 need 22)
    g = conv_graph(cin=16, cout=32, hw=8, w_bits=4, a_bits=4)
    m = map_graph(g, Arch(replication="balance", max_crossbars=10)).layers["conv"]
    assert (m.base_crossbars, m.replicas, m.crossbars) == (2, 5, 10)
    layers, totals = graph_cost(map_graph(g, Arch(replication="balance", max_crossbars=10)))
    plain = graph_cost(map_graph(g, ISAAC))[0]["conv"]
    c = layers["conv"]
    assert c["cycles"] == 13 * 4 and c["latency_ns"] == pytest.approx(13 * 4 * 100)
    assert c["crossbar_reads"] == plain["crossbar_reads"] == 64 * 4 * 2
    assert c["adc_conversions"] == plain["adc_conversions"] and c["energy_pj"] == pytest.approx(plain["energy_pj"])
    assert c["area_mm2"] == pytest.approx(5 * plain["area_mm2"])
    assert totals["crossbars"] == 10 and totals["throughput_ips"] == pytest.approx(1e9 / (52 * 100))
    doc = json.loads(mapping_to_json(map_graph(g, Arch(replication="balance", max_crossbars=10))))
    (layer,) = doc["layers"]
    assert layer["replicas"] == 5 and doc["crossbars"] == 10
    assert [x["ids"] for x in layer["crossbars"]] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_replication_balances_the_example_pipeline():
    from qcc.targets.cim import CimTarget

    g = example_graph()
    plain = CimTarget().cost(g)
    rep = CimTarget(arch=Arch(replication="balance", max_crossbars=200)).cost(g)
    reps = {c.name: c.fields["replicas"] for c in rep.layers}
    first, *_, fc = reps.values()
    assert first > 1 and fc == 1  # the early, many-position layers are copied; the dense layer is not
    assert rep.totals["crossbars"] <= 200
    assert rep.totals["latency_pipelined_ns"] < plain.totals["latency_pipelined_ns"] / 8
    assert rep.totals["throughput_ips"] > 8 * plain.totals["throughput_ips"]
    assert rep.totals["energy_pj"] == pytest.approx(plain.totals["energy_pj"])
    assert rep.totals["adc_conversions"] == plain.totals["adc_conversions"]
    # the whole chip: every layer takes as long as the dense layer (1 position x 8 input bits)
    full = CimTarget(arch=Arch(replication="balance")).cost(g)
    assert {c.fields["cycles"] for c in full.layers} == {8}


def test_adc_energy_and_area_follow_the_layer_resolution():
    # 9 rows (3x3x1), 1-bit DAC, 2-bit cells: largest sum 27 -> 5 bits, 13 with the flip -> 4 bits
    g = conv_graph(cin=1, cout=8, hw=4, w_bits=4, a_bits=4)
    flip = graph_cost(map_graph(g, ISAAC))[0]["conv"]
    plain_arch = Arch(flip_encoding=False, adc_bits=9)
    plain = graph_cost(map_graph(g, plain_arch))[0]["conv"]
    assert (flip["adc_bits"], plain["adc_bits"]) == (4, 5)
    assert flip["adc_conversions"] == plain["adc_conversions"] == 16 * 4 * 16
    assert flip["energy_adc_pj"] == pytest.approx(16 * 4 * 16 * 1.5625 / 16)  # 2^(4 - 8) of ISAAC's 8-bit
    assert plain["energy_adc_pj"] == pytest.approx(2 * flip["energy_adc_pj"])  # flip saves half
    tile_area = tile_rollup(ISAAC).total_area_mm2
    assert flip["area_mm2"] == pytest.approx(tile_area / 96 + 0.0096 / 8 * (1 / 16 - 1))
    _, totals = graph_cost(map_graph(g, ISAAC))
    assert totals["area_mm2"] == pytest.approx(tile_area + 0.0096 / 8 * (1 / 16 - 1))


def test_low_precision_weights_need_a_narrower_adc():
    # 128-row crossbars: 2-bit levels need 8 bits with the flip, 1-bit levels 7 (half the ADC energy)
    wide = graph_cost(map_graph(conv_graph(cin=16, w_bits=2), ISAAC))[0]["conv"]
    narrow = graph_cost(map_graph(conv_graph(cin=16, w_bits=1), ISAAC))[0]["conv"]
    assert (wide["adc_bits"], narrow["adc_bits"]) == (8, 7)
    assert narrow["cells_per_weight"] == wide["cells_per_weight"] == 1
    assert narrow["adc_conversions"] == wide["adc_conversions"]
    assert narrow["energy_adc_pj"] * 2 == pytest.approx(wide["energy_adc_pj"])
