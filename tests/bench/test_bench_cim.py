"""Smoke test of bench/bench_cim.py: seed 004's oracle crop choice, and the energy rows on a few images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from qcc.examples import MODEL, load_split
from qcc.frontend.onnx import import_model
from qcc.pass_manager import PassContext, run_pipeline

_PATH = Path(__file__).resolve().parents[2] / "bench" / "bench_cim.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_cim", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup():
    from qcc.targets.cim import CimTarget

    (xc, yc), (xe, ye) = load_split("calib"), load_split("eval")
    data = ((xc[:32], yc[:32]), (xe[:24], ye[:24]))
    g = import_model(MODEL)
    run_pipeline(g, "canonicalize,fold-bn,calibrate", PassContext(config={"calib": {"x": xc, "y": yc}}))
    return g, CimTarget(), data


def test_oracle_choice_is_the_cheapest_correct_cut(bench):
    correct = np.array([[True, True, False, True],  # the cheapest correct cut: 3
                        [True, False, False, False],  # only uncropped is correct
                        [False, True, True, True]])  # wrong uncropped: stays uncropped
    energy = np.array([10.0, 8.0, 5.0, 6.0])
    assert bench.oracle_choice(correct, energy).tolist() == [3, 0, 0]


def test_uniform_and_cropped_rows(bench, setup):
    base, target, data = setup
    graph, row = bench._uniform(base, 8, target, data)
    assert row["sim_equals_int"] and row["energy_pj"] > 0 and 0 <= row["adc_share"] <= 1
    assert set(row["layers"]) == {"/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/conv4/Conv", "/fc/Gemm"}
    assert sum(row["energy_parts_pj"].values()) == pytest.approx(row["energy_pj"])
    crops = bench._cropped(graph, target, data, {"fraction": 0.125}, "test")
    oracle = crops["oracle"]
    assert oracle["top1"] == pytest.approx(row["top1"])  # the oracle never loses an image
    assert oracle["energy_pj"] <= row["energy_pj"]
    assert sum(oracle["images_by_cut_edges"]) == len(data[1][1])
