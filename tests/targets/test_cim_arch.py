"""The CIM architecture: ISAAC defaults, their tile roll-up, TOML loading and validation."""

from __future__ import annotations

import pytest

from qcc.errors import QccError
from qcc.targets.cim.arch import (
    ISAAC,
    Arch,
    NonIdeal,
    adc_scale,
    arch_to_toml,
    layer_adc_bits,
    load_arch,
    lossless_adc_bits,
    tile_rollup,
)


def test_isaac_tile_rollup_matches_published_totals():
    r = tile_rollup(ISAAC)
    assert r.total_power_mw == pytest.approx(330, rel=0.01)
    assert r.total_area_mm2 == pytest.approx(0.372, rel=0.01)
    assert r.adc_power_share == pytest.approx(0.58, abs=0.01)
    assert ISAAC.adc_energy_pj == pytest.approx(2.0 / 1.28)  # 2 mW per ADC at 1.28 GS/s


def test_isaac_lossless_rule():
    assert lossless_adc_bits(128, 1, 2) == 9
    assert lossless_adc_bits(128, 1, 2, flip=True) == 8
    assert lossless_adc_bits(128, 2, 2) == 11
    # the rule never undercounts the largest column sum
    for rows in (1, 3, 64, 100, 128):
        for d in (1, 2, 3):
            for c in (1, 2, 4):
                assert 2 ** lossless_adc_bits(rows, d, c) > rows * (2**d - 1) * (2**c - 1)


def test_load_arch_round_trip_and_partial(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text(arch_to_toml(ISAAC))
    assert load_arch(p) == ISAAC
    p.write_text("rows = 64\ncols = 32\nadc_bits = 7\n")
    a = load_arch(p)
    assert (a.rows, a.cols, a.adc_bits, a.bits_per_cell) == (64, 32, 7, 2)


@pytest.mark.parametrize("text, key", [
    ("rows = 0\n", "rows"),
    ("acc_bits = 1\n", "acc_bits must be from 2 to 64"),
    ("acc_bits = 65\n", "acc_bits must be from 2 to 64"),
    ("adc_energy_pj = -1.0\n", "adc_energy_pj"),
    ("colums = 4\n", "colums"),
    ("adc_bits = 6\n", "adc_bits"),
    ("lossless = 1\n", "lossless"),
    ("signed_encoding = \"twos\"\n", "signed_encoding"),
    ("rows = [\n", "malformed"),
    ("[mapping]\nreplication = \"fast\"\n", "mapping.replication"),
    ("[mapping]\nmax_crossbars = 99999\n", "max_crossbars = 99999 exceeds the chip's 16128"),
    ("[mapping]\nmax_crossbars = -1\n", "mapping.max_crossbars"),
    ("[mapping]\nrows = 4\n", "mapping.rows"),
    ("mapping = 3\n", r"\[mapping\] must be a table"),
    ("[nonideal]\nsigma = 0.1\n", "nonideal.sigma"),
    ("[nonideal]\nconductance_sigma = -0.1\n", "nonideal.conductance_sigma"),
    ("[nonideal]\nstuck_at_zero = 0.7\nstuck_at_one = 0.4\n", "at most 1"),
    ("[nonideal]\nseed = 1.5\n", "nonideal.seed"),
    ("[nonideal]\nadc_bits = 6\n", "nonideal.adc_bits .*lossless = false"),
])
def test_bad_arch_files_name_the_key(tmp_path, text, key):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(QccError, match=key):
        load_arch(p)


def test_mapping_and_nonideal_tables_round_trip(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text("rows = 64\n[mapping]\nreplication = \"balance\"\nmax_crossbars = 500\n"
                 "[nonideal]\nconductance_sigma = 0.05\nstuck_at_zero = 0.001\nseed = 7\n")
    a = load_arch(p)
    assert (a.rows, a.replication, a.max_crossbars, a.replication_limit) == (64, "balance", 500, 500)
    assert a.nonideal == NonIdeal(conductance_sigma=0.05, stuck_at_zero=0.001, seed=7) and a.nonideal.enabled
    assert not ISAAC.nonideal.enabled and ISAAC.replication_limit == ISAAC.crossbars
    p.write_text(arch_to_toml(a))
    assert load_arch(p) == a


def test_missing_arch_file(tmp_path):
    with pytest.raises(QccError, match="does not exist"):
        load_arch(tmp_path / "nope.toml")


def test_lossy_adc_allowed_when_asked():
    assert Arch(adc_bits=4, lossless=False).adc_bits == 4
    with pytest.raises(QccError, match="too narrow"):
        Arch(adc_bits=4)


def test_layer_adc_bits_by_hand():
    assert layer_adc_bits(128, 1, 2) == 9  # 128 * 1 * 3 = 384
    assert layer_adc_bits(128, 1, 2, flip=True) == 8  # 1 * (128 * 3 // 2) = 192
    assert layer_adc_bits(9, 1, 2) == 5 and layer_adc_bits(9, 1, 2, flip=True) == 4  # 27; 13
    assert layer_adc_bits(128, 1, 1, flip=True) == 7  # 1-bit levels: 64
    assert layer_adc_bits(1, 1, 1, flip=True) == 1


def test_layer_adc_bits_is_lossless_and_never_wider_than_isaac():
    for rows in (1, 2, 3, 9, 64, 100, 128, 256):
        for d in (1, 2, 3):
            for c in (1, 2, 4):
                plain, flip = layer_adc_bits(rows, d, c), layer_adc_bits(rows, d, c, flip=True)
                v, m = 2**d - 1, 2**c - 1
                assert 2**plain > rows * v * m and 2**flip > v * (rows * m // 2)
                assert plain <= lossless_adc_bits(rows, d, c) and flip <= lossless_adc_bits(rows, d, c, flip=True)
                assert flip <= plain


def test_adc_scale_follows_walden():
    assert adc_scale(ISAAC, 8) == 1 and adc_scale(ISAAC, 6) == 0.25 and adc_scale(ISAAC, 9) == 2
    assert adc_scale(Arch(adc_ref_bits=6, adc_bits=10), 6) == 1
