"""Pricing a scale format (picojoule.hwmodels.scales): the scales, rescales, run-time ranges and rotations of the
LLM recipe for linear layers are charged, by the stated rule, and only where the recipe puts them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import picojoule as pj
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.scales import DEQUANT_OPS, EPILOGUE_OPS, RANGE_OPS, TILE_ROWS, ScaleFormat
from picojoule.hwmodels.target import load_target
from picojoule.hwmodels.workload import graph_arrays, policy_batch, workload
from picojoule.search.config import LinearQuantConfig

TOKENS, D_IN, D_HID = 64, 256, 512


def _graph() -> pj.LayerGraph:
    model = nn.Sequential(nn.Linear(D_IN, D_HID), nn.GELU(), nn.Linear(D_HID, D_IN)).eval()
    return pj.LayerGraph.from_torch(model, torch.randn(1, TOKENS, D_IN))


def _policy(w: int, a: int) -> pj.Policy:
    return pj.Policy.from_dict({"default": {"w_bits": w, "a_bits": a}})


def _wl(graph, target, policy, fmt, batch=1):
    return workload(graph_arrays(graph), target, policy_batch(graph, [policy]), batch, fmt)


def test_no_format_prices_the_bits_alone() -> None:
    graph, target = _graph(), load_target("a100")
    plain = price(graph, target, _policy(4, 4))
    assert _wl(graph, target, _policy(4, 4), None).vector_ops is None
    again = price(graph, target, _policy(4, 4), scales=None)
    assert np.array_equal(plain.latency_s, again.latency_s)


def test_grouped_w4a4_pays_each_groups_rescale_and_its_scale_traffic() -> None:
    """W4A4 with weight and activation groups of 128 on A100: each output's partial sum is rescaled once per 128
    inputs at the target's rescale_ops, plus the run-time ranges in fp16; weights and activations carry 32 bits of
    scale per group; compute time grows by exactly those ops at the fp32 CUDA-core rate and the linear efficiency."""
    graph, target = _graph(), load_target("a100")
    fmt = ScaleFormat(weight_group=128, dynamic=True, act_group=128)
    plain, wl = _wl(graph, target, _policy(4, 4), None), _wl(graph, target, _policy(4, 4), fmt)
    lin = [i for i, layer in enumerate(graph.layers) if layer.op == "linear"]
    assert len(lin) == 2 and target.compute.rescale_ops == 16 and target.compute.vector_fp16_factor == 4
    for j, k in zip(lin, (D_IN, D_HID)):
        macs = TOKENS * k * (D_HID if k == D_IN else D_IN)
        ins = TOKENS * k
        expected = macs / 128 * 16 + ins * RANGE_OPS / 4
        assert wl.vector_ops[0, j] == pytest.approx(expected)
        assert wl.w_bits[0, j] == pytest.approx(4 + 32 / 128) and wl.a_bits[0, j] == pytest.approx(4 + 32 / 128)
    others = [j for j in range(len(graph)) if j not in lin]
    assert np.all(wl.vector_ops[0, others] == 0) and np.array_equal(wl.a_bits[0, others], plain.a_bits[0, others])
    fp32 = target.compute.modes[-1].peak_macs_per_s
    r0, r1 = price(graph, target, _policy(4, 4)), price(graph, target, _policy(4, 4), scales=fmt)
    t_compute0 = wl.macs / (wl.peak_macs_per_s * target.compute.efficiency["linear"])
    for j in lin:
        extra = wl.vector_ops[0, j] / (fp32 * target.compute.efficiency["linear"])
        assert r1.latency_s[0, j] >= t_compute0[0, j] + extra - 1e-15  # compute plus the vector work, not overlapped
        assert r1.latency_s[0, j] > r0.latency_s[0, j]
    assert r1.size_bytes[0] > r0.size_bytes[0]


def test_per_channel_per_token_pays_the_epilogue_only_and_finer_groups_cost_more() -> None:
    graph, target = _graph(), load_target("a100")
    pol = _policy(4, 4)
    per_channel = _wl(graph, target, pol, ScaleFormat(None, True, None))
    j = next(i for i, layer in enumerate(graph.layers) if layer.op == "linear")
    assert per_channel.vector_ops[0, j] == pytest.approx(TOKENS * D_HID * EPILOGUE_OPS + TOKENS * D_IN * RANGE_OPS / 4)
    cost = {g: float(price(graph, target, pol, scales=ScaleFormat(g, True, g), batch=64).total_latency_s[0])
            for g in (None, 128, 64, 32)}
    assert cost[None] < cost[128] < cost[64] < cost[32]
    # a static per-tensor range has no run-time reduction and no activation scale traffic
    static = _wl(graph, target, pol, ScaleFormat(None, False, None))
    assert static.vector_ops[0, j] == pytest.approx(TOKENS * D_HID * EPILOGUE_OPS) and static.a_bits[0, j] == 4


def test_rotation_weight_only_and_float_layers() -> None:
    graph, target = _graph(), load_target("a100")
    j = next(i for i, layer in enumerate(graph.layers) if layer.op == "linear")
    base, rot = ScaleFormat(None, True, None), ScaleFormat(None, True, None, rotate_block=128)
    diff = _wl(graph, target, _policy(4, 4), rot).vector_ops - _wl(graph, target, _policy(4, 4), base).vector_ops
    assert diff[0, j] == pytest.approx(TOKENS * D_IN * np.log2(128) / 4)  # log2(block) fp16 adds per input element
    # weight-only W4A16: each weight dequantized once per tile of rows, no activation ranges
    w416 = _wl(graph, target, _policy(4, 16), rot, batch=4)
    rows = 4 * TOKENS
    assert w416.vector_ops[0, j] == pytest.approx(D_IN * D_HID * np.ceil(rows / TILE_ROWS) * DEQUANT_OPS
                                                  + rows * D_IN * np.log2(128) / 4)
    # float layers carry no scales
    fp = _wl(graph, target, _policy(32, 32), ScaleFormat(128, True, 128, 128))
    assert np.all(fp.vector_ops == 0)


def test_every_cost_model_charges_the_format_and_the_default_target_counts_four_ops() -> None:
    graph = _graph()
    fmt = ScaleFormat(128, True, 128, 128)
    for target, model in (("a100", "roofline"), ("eyeriss", "eyeriss"), ("eyeriss", "hierarchy"),
                          ("a100", "hierarchy")):
        r0 = price(graph, target, _policy(4, 4), model=model)
        r1 = price(graph, target, _policy(4, 4), model=model, scales=fmt)
        assert r1.total_latency_s[0] > r0.total_latency_s[0] and r1.total_energy_j[0] > r0.total_energy_j[0], model
    assert load_target("eyeriss").compute.rescale_ops == 4 and load_target("eyeriss").compute.vector_fp16_factor == 1


def test_the_recipe_config_gives_its_format() -> None:
    cfg = LinearQuantConfig(group_size=64, activations="token", act_group=32, rotate=True, rotate_block=256)
    assert ScaleFormat.of(cfg) == ScaleFormat(64, True, 32, 256)
    assert ScaleFormat.of(LinearQuantConfig(activations="tensor", act_group=32)) == ScaleFormat(128, False, None, None)
    from picojoule.spaces.linear_ptq import LinearQuant

    assert ScaleFormat.of(LinearQuant(group_size=None)) == ScaleFormat(None, True, None, None)


def test_pj_cost_prices_a_recipe_and_names_a_bad_field() -> None:
    from picojoule.errors import PicojouleError

    graph = _graph()
    policy = _policy(4, 4)
    plain = pj.cost(graph, "a100", policy).total["latency_s"]
    recipe = pj.cost(graph, "a100", policy, linear_quant={"group_size": 128, "act_group": 128}).total["latency_s"]
    expected = price(graph, "a100", policy, scales=ScaleFormat(128, True, 128)).total_latency_s[0]
    assert recipe == pytest.approx(expected) and recipe > plain
    with pytest.raises(PicojouleError, match=r"^cost: field 'linear_quant.group_size': expected a power of two"):
        pj.cost(graph, "a100", policy, linear_quant={"group_size": 96})
