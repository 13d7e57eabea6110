"""The CIM architecture: ISAAC defaults, their tile roll-up, TOML loading and validation."""

from __future__ import annotations

import pytest

from qcc.errors import QccError
from qcc.targets.cim.arch import ISAAC, Arch, arch_to_toml, load_arch, lossless_adc_bits, tile_rollup


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
    ("adc_energy_pj = -1.0\n", "adc_energy_pj"),
    ("colums = 4\n", "colums"),
    ("adc_bits = 6\n", "adc_bits"),
    ("lossless = 1\n", "lossless"),
    ("signed_encoding = \"twos\"\n", "signed_encoding"),
    ("rows = [\n", "malformed"),
])
def test_bad_arch_files_name_the_key(tmp_path, text, key):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(QccError, match=key):
        load_arch(p)


def test_missing_arch_file(tmp_path):
    with pytest.raises(QccError, match="does not exist"):
        load_arch(tmp_path / "nope.toml")


def test_lossy_adc_allowed_when_asked():
    assert Arch(adc_bits=4, lossless=False).adc_bits == 4
    with pytest.raises(QccError, match="too narrow"):
        Arch(adc_bits=4)
