"""Target schema v2 and the operand-aware hierarchy cost model: what each level holds, the dataflow's unrolling,
utilisation, and the defects of the v1 Eyeriss-style model that it fixes (issue 12)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from picojoule.errors import PicojouleError
from picojoule.graph import build_graph
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.target import load_target, load_target_file, target_from_dict, target_names
from picojoule.policy import Policy

MIRRORS = Path(__file__).resolve().parents[1] / "experiments" / "zigzag_targets"
W8A8 = Policy.uniform(8, 8)


def _conv(cin, cout, k, stride, hw, groups=1, name="conv"):
    return build_graph(torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
                       torch.randn(1, cin, hw, hw), name=name)


def _mirror(name):
    return load_target_file(MIRRORS / f"{name}.yaml")


def _level(result, name):
    return result.components.index(name)


@pytest.mark.parametrize("name", ["eyeriss_like", "tpu_like", "edge_tpu_like"])
def test_mirrors_load_with_roles_operands_and_dataflow(name):
    t = _mirror(name)
    assert t.dataflow is not None and t.dataflow.num_pes == t.num_pes
    assert t.roles[-1] == "dram" and t.dram.held == ("W", "I", "O")
    assert any(len(m.held) < 3 for m in t.memory[:-1])  # some level holds only part of the operands


def test_v1_files_keep_loading_with_roles_by_position():
    t = load_target("eyeriss")
    assert t.dataflow is None
    assert t.roles == ("rf", "noc", "glb", "dram")
    assert all(m.held == ("W", "I", "O") for m in t.memory)
    assert set(target_names()) >= {"eyeriss", "a100", "edge-npu"}


# ---------------------------------------------------------------------------------------------
# Bad v2 input: one line naming the file and the field


def _error(mutate) -> str:
    data = yaml.safe_load((MIRRORS / "edge_tpu_like.yaml").read_text())
    mutate(data)
    with pytest.raises(PicojouleError) as info:
        target_from_dict(data, "hw.yaml")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("hw.yaml: field '")
    return msg


def test_level_holding_no_operand_is_refused():
    assert "field 'memory.0'" in _error(lambda d: d["memory"][0].__setitem__("operands", []))


def test_dram_must_hold_every_operand():
    assert "must hold every operand" in _error(lambda d: d["memory"][-1].__setitem__("operands", ["W", "I"]))


def test_spans_must_cover_the_array():
    msg = _error(lambda d: d["memory"][0].__setitem__("spans", [1]))
    assert "field 'memory.0.spans'" in msg and "1024" in msg


def test_unknown_loop_dimension_and_dataflow():
    assert "dataflow.unroll.0.dims.0" in _error(lambda d: d["dataflow"]["unroll"][0].__setitem__("dims", ["Q"]))
    assert "dataflow.kind" in _error(lambda d: d["dataflow"].__setitem__("kind", "input-stationary"))


def test_swapped_or_empty_range():
    for lo, hi in ((4096, 1024), (4096, 4096)):
        msg = _error(lambda d: d.__setitem__("parameters", {"glb_bytes": {"range": [lo, hi]}}))
        assert "field 'parameters.glb_bytes'" in msg and "swapped" in msg


def test_parameter_the_dataflow_cannot_use():
    msg = _error(lambda d: d.__setitem__("parameters", {"pe_rows": {"choices": [8, 16]}}))
    assert "field 'parameters.pe_rows'" in msg and "4 array dimensions" in msg
    msg = _error(lambda d: d.__setitem__("parameters", {"array": {"choices": [[8, 8]]}}))
    assert "field 'parameters.array'" in msg and "4 dimensions" in msg
    assert "unknown parameter 'glb_byte'" in _error(lambda d: d.__setitem__("parameters", {"glb_byte": {"choices": [1]}}))


# ---------------------------------------------------------------------------------------------
# The v1 model's defects, fixed


def test_strided_1x1_conv_reads_a_quarter_of_its_input():
    """A stride-2 1x1 conv touches one input pixel in four: DRAM input traffic is a quarter of stride 1's."""
    t = _mirror("eyeriss_like")
    s1, s2 = (price(_conv(64, 64, 1, s, 16), t, W8A8, model="hierarchy") for s in (1, 2))
    dram = _level(s1, "dram")
    # the input dominates DRAM traffic of s2 (its output is a quarter); compare energies minus the outputs
    out1, out2 = 64 * 16 * 16 * 8, 64 * 8 * 8 * 8
    w = 64 * 64 * 8
    in1 = s1.energy_j[0, 0, dram] / 15.625e-12 - out1 - w
    in2 = s2.energy_j[0, 0, dram] / 15.625e-12 - out2 - w
    assert in1 == pytest.approx(64 * 16 * 16 * 8, rel=1e-6)
    assert in2 == pytest.approx(in1 / 4, rel=1e-6)


def test_1x1_conv_inputs_are_reused_across_output_channels():
    """With K unrolled over 14 PEs, one buffer read of an input serves 14 output channels: the shared buffer's
    input reads are far fewer than one per MAC (v1 charged every MAC's input at the buffer)."""
    t = _mirror("eyeriss_like")
    g = _conv(64, 128, 1, 1, 16)
    res = price(g, t, W8A8, model="hierarchy")
    macs = 64 * 128 * 16 * 16
    glb_bits = res.energy_j[0, 0, _level(res, "sram_io")] / 0.26e-12
    assert glb_bits < macs * 8 / 10


def test_utilisation_follows_the_layer_shape():
    """conv1 with 3 input channels on a 14 x 12 (K x C) array uses 3 of 12 rows: 4x the cycles of a full one."""
    t = _mirror("eyeriss_like")
    few, full = (price(_conv(c, 14, 3, 1, 8), t, W8A8, model="hierarchy") for c in (3, 12))
    macs_few, macs_full = 14 * 3 * 9 * 64, 14 * 12 * 9 * 64
    assert few.latency_s[0, 0] / macs_few == pytest.approx(4 * full.latency_s[0, 0] / macs_full, rel=0.05)


def test_depthwise_maps_onto_few_pes_of_a_k_by_c_array():
    t = _mirror("eyeriss_like")
    dw = price(_conv(32, 32, 3, 1, 8, groups=32), t, W8A8, model="hierarchy")
    dense = price(_conv(12, 14, 3, 1, 8), t, W8A8, model="hierarchy")
    per_mac_dw = dw.latency_s[0, 0] / (32 * 9 * 64)
    per_mac_dense = dense.latency_s[0, 0] / (14 * 12 * 9 * 64)
    assert per_mac_dw > 50 * per_mac_dense  # one PE of 168 (K = C = 1 per group)


def test_register_file_energy_per_mac_depends_on_the_layer():
    """Equal-MAC layers of different shapes differ in RF energy per MAC (v1: one fixed rate)."""
    t = _mirror("eyeriss_like")
    wide = price(_conv(64, 64, 3, 1, 8), t, W8A8, model="hierarchy")  # weight-heavy
    big = price(_conv(16, 16, 3, 1, 32), t, W8A8, model="hierarchy")  # activation-heavy, same MACs
    rf = [_level(wide, n) for n in ("rf_i", "rf_w", "rf_o")]
    e_wide, e_big = (r.energy_j[0, 0, rf].sum() for r in (wide, big))
    assert abs(e_wide / e_big - 1) > 0.02


def test_bypassed_level_sees_no_traffic_of_an_operand_it_does_not_hold():
    """eyeriss_like's sram_w holds only weights: a pooling layer (inputs and outputs only) costs nothing there."""
    t = _mirror("eyeriss_like")
    g = build_graph(torch.nn.MaxPool2d(2), torch.randn(1, 8, 8, 8), name="pool")
    res = price(g, t, W8A8, model="hierarchy")
    assert res.energy_j[0, 0, _level(res, "sram_w")] == 0.0
    assert res.energy_j[0, 0, _level(res, "sram_io")] > 0.0


def test_on_chip_write_energy_counts():
    data = yaml.safe_load((MIRRORS / "eyeriss_like.yaml").read_text())
    cheap = copy.deepcopy(data)
    for m in cheap["memory"]:
        m["write_energy_pj_per_bit"] = m["read_energy_pj_per_bit"] * 0.5
    g = _conv(16, 16, 3, 1, 16)
    e, e_cheap = (price(g, target_from_dict(d, "t"), W8A8, model="hierarchy").total_energy_j[0] for d in (data, cheap))
    assert e_cheap < e


def test_batch_equals_one_at_a_time():
    r20 = build_graph("resnet20")
    rng = np.random.default_rng(0)
    names = [layer.name for layer in r20.compute_layers()]
    policies = [Policy.from_dict({"default": {"w_bits": int(rng.choice([2, 4, 8])), "a_bits": 8},
                                  "layers": {n: {"keep": float(rng.choice([0.5, 1.0]))} for n in names[1:6]}})
                for _ in range(5)]
    for t in (_mirror("edge_tpu_like"), load_target("eyeriss")):
        batch = price(r20, t, policies, model="hierarchy")
        for i, p in enumerate(policies):
            one = price(r20, t, p, model="hierarchy")
            np.testing.assert_allclose(batch.energy_j[i], one.energy_j[0], rtol=1e-12)
            np.testing.assert_allclose(batch.latency_s[i], one.latency_s[0], rtol=1e-12)


def test_fewer_bits_cost_less_and_pruning_costs_less():
    r20 = build_graph("resnet20")
    t = load_target("eyeriss")
    e8, e4 = (price(r20, t, Policy.uniform(b, b), model="hierarchy").total_energy_j[0] for b in (8, 4))
    assert e4 < e8
    half = Policy.from_dict({"default": {"w_bits": 8, "a_bits": 8, "keep": 0.5}})
    assert price(r20, t, half, model="hierarchy").total_energy_j[0] < e8


# ---------------------------------------------------------------------------------------------
# Access granularity and loop blocking, by hand (mobilenet_v2 against ZigZag's tpu_like and eyeriss_like)


def test_depthwise_on_a_channel_array_reads_a_whole_sram_word_per_input():
    """tpu_like unrolls K x C (32 x 32) and has no input register: a depthwise layer (K = C = 1 per group) works one
    PE, which reads one 8-bit input from the 2 MB SRAM every MAC; an access there moves at least 64 bits
    (ZigZag's bandwidth_min), so each costs 64 bits, 8x what the value alone would. Likewise each finished output
    leaves the one-psum register for the SRAM as a 64-bit access. Inputs enter from DRAM and outputs leave for it
    in whole tiles (no rounding)."""
    g = _conv(32, 32, 3, 1, 56, groups=32, name="dw")
    t = _mirror("tpu_like")
    r = price(g, t, W8A8, model="hierarchy")
    i = _level(r, "sram_io")
    m = t.memory[i - 1]
    assert m.access_bits == 64
    macs, pixels = 32 * 56 * 56 * 9, 32 * 56 * 56
    assert r.latency_s[0, 0] * t.clock_hz == pytest.approx(macs)  # 1 of 1024 PEs works, one MAC per cycle
    hand = (macs * 64 * m.read_energy_pj_per_bit + pixels * 8 * m.write_pj_per_bit  # inputs: out per MAC, in once
            + pixels * 64 * m.write_pj_per_bit + pixels * 16 * m.read_energy_pj_per_bit)  # outputs: in, out to DRAM
    assert r.energy_j[0, 0, i] * 1e12 == pytest.approx(hand, rel=1e-9)
    # the same layer as a dense conv fills the array: 32 inputs (256 b) per SRAM read, no rounding
    dense = price(_conv(32, 32, 3, 1, 56), t, W8A8, model="hierarchy")
    data = yaml.safe_load((MIRRORS / "tpu_like.yaml").read_text())
    for level in data["memory"]:
        level.pop("access_bits", None)
    plain = price(_conv(32, 32, 3, 1, 56), target_from_dict(data, "tpu_like, any access width"), W8A8,
                  model="hierarchy")
    assert dense.energy_j[0, 0, i] == pytest.approx(plain.energy_j[0, 0, i], rel=1e-9)


def test_pointwise_whose_channels_overflow_the_weight_register_blocks_across_output_channels():
    """eyeriss_like, 1 x 1 conv 576 -> 96 at 14 x 14: each PE gets ceil(96/14) = 7 output and 576/12 = 48 input
    channels, 336 weights for a 64-weight register. Keeping whole output channels (48 weights) reads every input
    7 times; keeping 8 psums and cycling the weights through reads them from the 64 KB SRAM 170 times (sram_w
    bound, 586 k cycles). The blocked tiling keeps 7 output channels x 9 input channels of weights (63), reads
    each input and weight once and spills partial sums once per 9 input channels: compute bound at
    7 x 48 x 196 = 65,856 cycles, each weight read from sram_w once."""
    g = _conv(576, 96, 1, 1, 14, name="pw")
    t = _mirror("eyeriss_like")
    r = price(g, t, W8A8, model="hierarchy")
    assert r.bound_names[r.bound[0, 0]] == "compute"
    assert r.latency_s[0, 0] * t.clock_hz == pytest.approx(7 * 48 * 196)
    i = _level(r, "sram_w")
    m = t.memory[i - 1]
    weights = 576 * 96
    hand = weights * 8 * (m.read_energy_pj_per_bit + m.write_pj_per_bit)
    assert r.energy_j[0, 0, i] * 1e12 == pytest.approx(hand, rel=1e-9)
