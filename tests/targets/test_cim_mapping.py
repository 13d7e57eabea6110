"""CIM mapping and cost model: hand-checked counts on small layers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcc.errors import QccError
from qcc.ir.graph import Graph
from qcc.ir.quant import Codebook, Region, Uniform
from qcc.ir.types import TensorType
from qcc.targets.cim.arch import ISAAC, Arch
from qcc.targets.cim.cost import graph_cost
from qcc.targets.cim.mapping import map_graph, mapping_to_json


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


def test_model_larger_than_chip_is_a_clear_error():
    with pytest.raises(QccError, match="largest layer 'conv'"):
        map_graph(conv_graph(cin=64, cout=64, w_bits=8), Arch(rows=16, cols=16, tiles=1, adc_bits=5))
