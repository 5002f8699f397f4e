"""The sourced scaling rules (picojoule.hwmodels.scaling): anchors, monotonicity, node scaling, vectorisation,
argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from picojoule.errors import PicojouleError
from picojoule.hwmodels import scaling as s

KB = 1024


# --- anchors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity, pj_64b", [(8 * KB, 10.0), (32 * KB, 20.0), (1024 * KB, 100.0)])
def test_sram_reproduces_horowitz_within_5_percent(capacity, pj_64b):
    """Horowitz ISSCC 2014, 45 nm, one 64-bit access (the fit is within 2.2% of each)."""
    assert s.sram_read_energy_pj_per_bit(capacity, 45, 64) * 64 == pytest.approx(pj_64b, rel=0.05)


def test_sram_fit_parameters_are_the_stated_ones():
    assert s.SRAM_E0_PJ == pytest.approx(10.16, abs=0.01)
    assert s.SRAM_CAPACITY_EXP == pytest.approx(0.4726, abs=1e-4)


def test_sram_write_is_the_stated_ratio_of_read():
    read = s.sram_read_energy_pj_per_bit(64 * KB, 28, 32)
    assert s.sram_write_energy_pj_per_bit(64 * KB, 28, 32) == pytest.approx(1.3 * read)
    assert s.sram_write_energy_pj_per_bit(64 * KB, 28, 32, write_ratio=0.8) == pytest.approx(0.8 * read)


@pytest.mark.parametrize("capacity, cacti_pj_per_bit", [(32 * KB, 0.266), (128 * KB, 0.586), (1024 * KB, 1.206)])
def test_sram_rule_within_2x_of_cacti(capacity, cacti_pj_per_bit):
    """CACTI 7 (ZigZag's binary), 45 nm, 64-bit, itrs-hp: a cross-check, not an anchor."""
    ratio = s.sram_read_energy_pj_per_bit(capacity, 45) / cacti_pj_per_bit
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize("w, a, acc, pj", [(8, 8, 8, 0.2 + 0.03), (32, 32, 32, 3.1 + 0.1), (8, 8, 32, 0.2 + 0.1),
                                           (32, 32, 8, 3.1 + 0.03)])
def test_int_mac_reproduces_horowitz(w, a, acc, pj):
    assert s.mac_energy_pj(w, a, 45, acc_bits=acc) == pytest.approx(pj, rel=0.01)


@pytest.mark.parametrize("bits, acc, pj", [(16, 16, 1.1 + 0.4), (32, 32, 3.7 + 0.9), (16, 32, 1.1 + 0.9)])
def test_fp_mac_reproduces_horowitz(bits, acc, pj):
    assert s.mac_energy_pj(bits, bits, 45, kind="fp", acc_bits=acc) == pytest.approx(pj, rel=1e-9)


@pytest.mark.parametrize("w, acc, um2", [(8, 8, 282 + 36), (32, 32, 3495 + 137), (8, 32, 282 + 137)])
def test_mac_area_reproduces_horowitz(w, acc, um2):
    assert s.mac_area_mm2(w, w, 45, acc_bits=acc) * 1e6 == pytest.approx(um2, rel=0.01)


def test_adder_area_rule_predicts_horowitz_16_bit_add_within_10_percent():
    """Horowitz quotes 67 um^2 for a 16-bit add; the rule through the 8/32-bit points gives 70."""
    add16 = s.mac_area_mm2(1, 1, 45, acc_bits=16) - s.mac_area_mm2(1, 1, 45, acc_bits=1)
    assert add16 * 1e6 == pytest.approx(67, rel=0.10)


def test_register_file_anchor_is_one_mac_per_16_bit_access():
    """Chen et al., ISCA 2016: a 16-bit access to the 0.5 KB RF costs 1x a 16-bit MAC (65 nm)."""
    per_access = s.register_file_energy_pj_per_bit(512, 65, 16) * 16
    assert per_access == pytest.approx(s.mac_energy_pj(16, 16, 65, acc_bits=16), rel=1e-6)


@pytest.mark.parametrize("word", [8, 16, 64, 128])
def test_register_file_meets_sram_at_the_crossover(word):
    below, above = s.register_file_energy_pj_per_bit(np.array([8 * KB - 1e-3, 8 * KB + 1e-3]), 45, word)
    assert below == pytest.approx(above, rel=1e-5)
    assert s.register_file_energy_pj_per_bit(64 * KB, 45, word) == pytest.approx(
        s.sram_read_energy_pj_per_bit(64 * KB, 45, word))


def test_bitfusion_overheads_are_the_repository_ratios():
    """BitFusion results/systolic_array_synth.csv, one PE: fused (min 2 b) / fixed dynamic power and area."""
    assert s.BITFUSION_ENERGY_OVERHEAD[8] == pytest.approx(279960 / 148845)
    assert s.BITFUSION_AREA_OVERHEAD[8] == pytest.approx(1733.129989 / 687.6072)
    assert s.mac_energy_pj(8, 8, 45, kind="bitfusion") == pytest.approx(
        s.BITFUSION_ENERGY_OVERHEAD[8] * s.mac_energy_pj(8, 8, 45, acc_bits=16))


def test_eyeriss_cross_check_within_stated_bounds():
    """eyeriss.yaml at 65 nm: RF 0.075 pJ/bit, MAC int16 1.2 pJ, GLB 0.45 pJ/bit. The RF and MAC rules land within
    25%; a monolithic 108 KB SRAM costs about 2x the GLB's 6x-MAC figure (Eyeriss banks its buffer)."""
    assert s.register_file_energy_pj_per_bit(520, 65) == pytest.approx(0.075, rel=0.25)
    assert s.mac_energy_pj(16, 16, 65, acc_bits=16) == pytest.approx(1.2, rel=0.25)
    assert 1.0 < s.sram_read_energy_pj_per_bit(108 * KB, 65) / 0.45 < 3.0


# --- monotonicity ---------------------------------------------------------------------------------------------------


CAPACITIES = np.geomspace(16, 64 * 1024 * KB, 60)


@pytest.mark.parametrize("rule", [s.sram_read_energy_pj_per_bit, s.sram_write_energy_pj_per_bit,
                                  s.register_file_energy_pj_per_bit, s.sram_area_mm2, s.register_file_area_mm2])
def test_memory_rules_increase_with_capacity(rule):
    assert np.all(np.diff(rule(CAPACITIES, 45)) > 0)


def test_per_bit_energy_falls_with_word_width_and_access_energy_rises():
    words = np.array([8, 16, 32, 64, 128, 256])
    per_bit = s.sram_read_energy_pj_per_bit(32 * KB, 45, words)
    assert np.all(np.diff(per_bit) < 0)
    assert np.all(np.diff(per_bit * words) > 0)


@pytest.mark.parametrize("kind", ["int", "bitserial"])
def test_mac_energy_and_area_increase_with_bits(kind):
    bits = np.arange(1, 17)
    for rule in (s.mac_energy_pj, s.mac_area_mm2):
        assert np.all(np.diff(rule(bits, 8, 45, kind=kind, acc_bits=32)) >= 0)
        assert np.all(np.diff(rule(8, bits, 45, kind=kind, acc_bits=32)) >= 0)
    assert np.all(np.diff(s.mac_energy_pj(bits, bits, 45, kind=kind, acc_bits=32)) > 0)
    assert np.all(np.diff(s.mac_energy_pj(8, 8, 45, kind=kind, acc_bits=np.array([8, 16, 24, 32]))) > 0)


def test_bitfusion_energy_never_falls_as_bits_rise():
    bits = np.arange(1, 9)
    assert np.all(np.diff(s.mac_energy_pj(bits, bits, 45, kind="bitfusion")) >= 0)


@pytest.mark.parametrize("kind", ["bitfusion", "bitserial"])
def test_precision_scalable_4x4_costs_less_than_8x8(kind):
    assert s.mac_energy_pj(4, 4, 45, kind=kind) < s.mac_energy_pj(8, 8, 45, kind=kind)
    assert s.mac_energy_pj(2, 2, 45, kind=kind) < s.mac_energy_pj(4, 4, 45, kind=kind)


def test_bitfusion_pays_its_overhead_at_full_width_and_wins_below():
    fixed8 = s.mac_energy_pj(8, 8, 45, acc_bits=16)
    assert s.mac_energy_pj(8, 8, 45, kind="bitfusion") > fixed8
    assert s.mac_energy_pj(4, 4, 45, kind="bitfusion") < fixed8
    assert s.mac_area_mm2(4, 4, 45, kind="bitfusion") > s.mac_area_mm2(8, 8, 45, acc_bits=16)


def test_odd_widths_pad_to_bitfusion_bricks():
    assert s.mac_energy_pj(3, 3, 45, kind="bitfusion") == s.mac_energy_pj(4, 4, 45, kind="bitfusion")
    assert s.mac_energy_pj(1, 1, 45, kind="bitfusion") == s.mac_energy_pj(2, 2, 45, kind="bitfusion")


# --- technology scaling ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", ["energy", "area", "sram_area"])
def test_technology_scale_45_to_45_is_identity(quantity):
    assert s.technology_scale(3.7, 45, 45, quantity) == pytest.approx(3.7, rel=1e-12)


@pytest.mark.parametrize("quantity", ["energy", "area", "sram_area"])
def test_technology_scale_45_to_7_lowers_and_round_trips(quantity):
    down = s.technology_scale(1.0, 45, 7, quantity)
    assert 0 < down < 1
    assert s.technology_scale(down, 7, 45, quantity) == pytest.approx(1.0, rel=1e-12)


def test_technology_scale_monotone_in_node():
    nodes = np.array([7, 10, 14, 16, 20, 22, 28, 32, 40, 45, 65, 90, 130])
    for quantity in ("energy", "area"):
        assert np.all(np.diff(s.technology_scale(1.0, 45, nodes, quantity)) > 0)
    assert np.all(np.diff(s.technology_scale(1.0, 45, nodes[nodes <= 90], "sram_area")) > 0)


def test_stillmaker_factors_agree_with_cacti_energy_ratios():
    """CACTI 7 SRAM read energy (8 KB, 64-bit, itrs-hp) relative to 45 nm: 90 nm 3.01, 65 nm 1.67, 32 nm 0.55."""
    for node, cacti in [(90, 3.01), (65, 1.67), (32, 0.55)]:
        assert s.technology_scale(1.0, 45, node) == pytest.approx(cacti, rel=0.10)


def test_rules_scale_with_node():
    for rule in (s.sram_read_energy_pj_per_bit, s.register_file_energy_pj_per_bit):
        assert rule(8 * KB, 7) < rule(8 * KB, 45) < rule(8 * KB, 65)
    assert s.mac_energy_pj(8, 8, 7) < s.mac_energy_pj(8, 8, 45)
    assert s.mac_area_mm2(8, 8, 7) < s.mac_area_mm2(8, 8, 45)
    assert s.sram_area_mm2(8 * KB, 7) < s.sram_area_mm2(8 * KB, 45)


# --- vectorisation --------------------------------------------------------------------------------------------------


def test_rules_vectorise_and_match_scalar_calls():
    caps = np.array([[64, 512], [8 * KB, 256 * KB]])
    for rule in (s.sram_read_energy_pj_per_bit, s.sram_write_energy_pj_per_bit, s.register_file_energy_pj_per_bit,
                 s.sram_area_mm2, s.register_file_area_mm2):
        out = rule(caps, 28)
        assert isinstance(out, np.ndarray) and out.shape == caps.shape
        assert out[1, 0] == pytest.approx(rule(int(caps[1, 0]), 28))
    nodes = np.array([7, 22, 45, 65])
    assert s.sram_read_energy_pj_per_bit(4 * KB, nodes).shape == (4,)
    bits = np.array([2, 4, 8])
    for kind in ("int", "bitfusion", "bitserial"):
        e = s.mac_energy_pj(bits, bits[:, None], 16, kind=kind)
        assert e.shape == (3, 3)
        assert e[2, 1] == pytest.approx(s.mac_energy_pj(4, 8, 16, kind=kind))
        assert s.mac_area_mm2(bits, 8, 16, kind=kind).shape == (3,)
    assert s.mac_energy_pj(np.array([16, 32]), np.array([16, 32]), 45, kind="fp").tolist() == pytest.approx([1.5, 4.6])
    assert s.static_power_w(np.array([1.0, 2.0]), 45).shape == (2,)
    assert s.technology_scale(np.ones(3), 45, np.array([7, 45, 90])).shape == (3,)


def test_scalar_arguments_give_floats():
    assert type(s.sram_read_energy_pj_per_bit(8 * KB, 45)) is float
    assert type(s.mac_energy_pj(8, 8, 45)) is float
    assert type(s.sram_area_mm2(8 * KB, 45)) is float
    assert type(s.technology_scale(1.0, 45, 7)) is float


# --- DRAM, leakage, sources -----------------------------------------------------------------------------------------


def test_dram_kinds_carry_sources_and_ranges():
    for name, kind in s.DRAM_KINDS.items():
        assert kind.low <= kind.pj_per_bit <= kind.high
        assert len(kind.source) > 20
        assert s.dram_energy_pj_per_bit(name.upper()) == kind.pj_per_bit
    assert s.dram_energy_pj_per_bit("hbm2") < s.dram_energy_pj_per_bit("lpddr4") < s.dram_energy_pj_per_bit("ddr4")


def test_static_power_is_linear_in_area_and_ordered_by_device():
    one = s.static_power_w(1.0, 45)
    assert s.static_power_w(3.0, 45) == pytest.approx(3 * one)
    assert s.static_power_w(1.0, 45, "lstp") < s.static_power_w(1.0, 45, "lop") < s.static_power_w(1.0, 45, "hp")


RULES = {
    "sram_read_energy": s.sram_read_energy_pj_per_bit,
    "sram_write_energy": s.sram_write_energy_pj_per_bit,
    "register_file_energy": s.register_file_energy_pj_per_bit,
    "sram_area": s.sram_area_mm2,
    "register_file_area": s.register_file_area_mm2,
    "mac_energy": s.mac_energy_pj,
    "mac_area": s.mac_area_mm2,
    "technology_scale": s.technology_scale,
    "dram_energy": s.dram_energy_pj_per_bit,
    "static_power": s.static_power_w,
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_has_a_source(name):
    assert set(s.SOURCES) == set(RULES)
    assert len(s.SOURCES[name]) > 30
    assert s.source(f"scaling.{name}") == s.source(name) == s.SOURCES[name]
    assert RULES[name].__doc__ and len(RULES[name].__doc__) > 200


# --- argument errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: s.sram_read_energy_pj_per_bit(0, 45), "capacity_bytes: expected a positive capacity in bytes, got 0"),
    (lambda: s.sram_area_mm2(-8, 45), "capacity_bytes: expected a positive capacity in bytes, got -8"),
    (lambda: s.register_file_energy_pj_per_bit(np.array([64, -1]), 45), "capacity_bytes: expected a positive "
                                                                        "capacity in bytes, got -1"),
    (lambda: s.sram_read_energy_pj_per_bit(8 * KB, 45, word_bits=0), "word_bits: expected a positive whole number "
                                                                     "of bits, got 0"),
    (lambda: s.mac_energy_pj(0, 8, 45), "w_bits: expected a positive whole number of bits, got 0"),
    (lambda: s.mac_energy_pj(8, -4, 45), "a_bits: expected a positive whole number of bits, got -4"),
    (lambda: s.mac_area_mm2(4.5, 8, 45), "w_bits: expected a positive whole number of bits, got 4.5"),
    (lambda: s.mac_energy_pj(8, 8, 0), "technology_nm: expected a positive technology node in nm, got 0"),
    (lambda: s.sram_read_energy_pj_per_bit(8 * KB, -7), "technology_nm: expected a positive technology node in nm, "
                                                        "got -7"),
    (lambda: s.technology_scale(1.0, 45, 3), "technology_nm: expected 7..130 nm (the range of the Stillmaker & Baas "
                                             "table), got 3"),
    (lambda: s.sram_area_mm2(8 * KB, 130), "technology_nm: expected 5..90 nm (the range of the SRAM bit-cell "
                                           "table), got 130"),
    (lambda: s.static_power_w(1.0, 7), "technology_nm: expected 22..90 nm (the range of the CACTI 7 leakage "
                                       "table), got 7"),
    (lambda: s.static_power_w(0.0, 45), "area_mm2: expected a positive area in mm^2, got 0"),
    (lambda: s.technology_scale(1.0, 45, 7, "power"), "quantity: expected one of energy, area, sram_area, "
                                                      "got 'power'"),
    (lambda: s.mac_energy_pj(8, 8, 45, kind="analog"), "kind: expected one of int, fp, bitfusion, bitserial, "
                                                       "got 'analog'"),
    (lambda: s.mac_energy_pj(8, 8, 45, kind="fp"), "w_bits, a_bits: expected equal widths of 16 or 32 for "
                                                   "kind='fp'"),
    (lambda: s.mac_energy_pj(16, 16, 45, kind="bitfusion"), "w_bits, a_bits: expected at most max_bits = 8 for "
                                                            "kind='bitfusion', got 16"),
    (lambda: s.mac_energy_pj(4, 4, 45, kind="bitfusion", max_bits=6), "max_bits: expected one of [2, 4, 8, 16]"),
    (lambda: s.dram_energy_pj_per_bit("sram"), "kind: expected one of lpddr4, ddr4"),
    (lambda: s.source("scaling.nothing"), "rule: expected one of sram_read_energy"),
])
def test_bad_arguments_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError) as info:
        call()
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text
    assert isinstance(info.value, PicojouleError)
