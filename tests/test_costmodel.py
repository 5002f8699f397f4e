"""Cost models: known answers worked by hand for one conv layer, monotonicity properties, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from picojoule.graph import build_graph
from picojoule.hwmodels.carbon import co2e_grams, footprint_grams
from picojoule.hwmodels.costs import price, report
from picojoule.hwmodels.target import load_target, target_names
from picojoule.policy import PolicyBatch
from picojoule.policy import LayerPolicy, Policy

# One conv layer: 16 -> 32 channels, 3x3, stride 1, 8x8 output. MACs = 8*8*32*16*9, W = 32*16*9.
MACS, WEIGHTS, IN_ELEMS, OUT_ELEMS = 294_912, 4_608, 1_024, 2_048


@pytest.fixture(scope="module")
def conv_graph():
    return build_graph(torch.nn.Conv2d(16, 32, 3, padding=1, bias=False), torch.randn(1, 16, 8, 8), name="conv")


@pytest.fixture(scope="module")
def r20():
    return build_graph("resnet20")


def test_conv_layer_counts(conv_graph):
    (layer,) = conv_graph.layers
    assert (layer.macs, layer.weights, layer.in_elems, layer.out_elems) == (MACS, WEIGHTS, [IN_ELEMS], OUT_ELEMS)


def test_roofline_known_answer_a100(conv_graph):
    """W8A8 on A100 (int8 tensor cores): worked by hand from a100.yaml's figures."""
    res = price(conv_graph, "a100", Policy.uniform(8, 8), model="roofline")
    read_bits = (WEIGHTS + IN_ELEMS) * 8  # 45,056
    write_bits = OUT_ELEMS * 8  # 16,384
    t_compute = MACS / (3.12e14 * 0.6)  # int8 mode, conv efficiency 0.6: 1.575e-9 s
    t_hbm = (read_bits + write_bits) / 8 / 1.555e12  # 4.939e-9 s: the slowest level
    latency = max(t_compute, t_hbm) + 4.0e-6  # plus the per-layer launch overhead
    assert res.latency_s[0, 0] == pytest.approx(latency, rel=1e-9)
    assert res.bound_names[res.bound[0, 0]] == "hbm2"
    e = dict(zip(res.components, res.energy_j[0, 0]))
    assert e["compute"] == pytest.approx(MACS * 0.35e-12, rel=1e-9)  # 103.2 nJ
    assert e["hbm2"] == pytest.approx((read_bits + write_bits) * 4.5e-12, rel=1e-9)  # 277 pJ
    assert e["l2"] == pytest.approx((read_bits + write_bits) * 1.0e-12, rel=1e-9)
    assert e["static"] == pytest.approx(latency * 60.0, rel=1e-9)


def test_eyeriss_known_answer(conv_graph):
    """16-bit on Eyeriss, row-stationary counts worked by hand (see picojoule/hwmodels/eyeriss.py).

    RF: 294,912 MACs x (16 w + 16 i + 2 x 16 psum) bits = 18,874,368 bits.
    NoC: weights reused Q=8 in the RF -> 36,864; inputs reused S=3 -> 98,304; psums accumulate
    S x min(C, 2080 / 48) = 3 x 16 -> 6,144 deliveries: 141,312 x 16 = 2,260,992 bits.
    GLB: weights broadcast to min(P=8, 14) PEs -> 4,608; inputs reused over min(R=3, 12) rows ->
    32,768; psums -> 2,048: 39,424 x 16 = 630,784 bits. DRAM: all fits in 108 KB: once each,
    90,112 bits read + 32,768 written.
    """
    res = price(conv_graph, "eyeriss", Policy.uniform(16, 16), model="eyeriss")
    e = dict(zip(res.components, res.energy_j[0, 0] * 1e12))  # pJ
    assert e["compute"] == pytest.approx(MACS * 1.2, rel=1e-9)
    assert e["rf"] == pytest.approx(18_874_368 * 0.075, rel=1e-9)
    assert e["noc"] == pytest.approx(2_260_992 * 0.15, rel=1e-9)
    assert e["glb"] == pytest.approx(630_784 * 0.45, rel=1e-9)
    assert e["dram"] == pytest.approx(122_880 * 15.0, rel=1e-9)
    # GLB-bound: 630,784 bits / 8 / 6.4 GB/s = 12.32 us > compute 294,912 / (33.6e9 x 0.9) = 9.75 us
    assert res.bound_names[res.bound[0, 0]] == "glb"
    assert res.latency_s[0, 0] == pytest.approx(630_784 / 8 / 6.4e9 + 1e-6, rel=1e-9)
    assert e["static"] == pytest.approx(res.latency_s[0, 0] * 0.03 * 1e12, rel=1e-9)


def test_eyeriss_bits_scale_energy(conv_graph):
    """Precision-scalable Eyeriss: W8A8 MACs cost a quarter of W16A16's, and traffic about half."""
    e16, e8 = (price(conv_graph, "eyeriss", Policy.uniform(b, b), model="eyeriss").energy_j[0, 0] for b in (16, 8))
    assert e8[0] == pytest.approx(e16[0] / 4)
    assert e8[-2] == pytest.approx(e16[-2] / 2)  # DRAM


def test_edge_npu_pads_to_int8(r20):
    """An int8-only datapath charges 4-bit weights as 8-bit."""
    e4, e8 = (price(r20, "edge-npu", Policy.uniform(b, b)).total_energy_j[0] for b in (4, 8))
    assert e4 == pytest.approx(e8)


def test_pruning_and_rank_change_macs_exactly(r20):
    base = r20.macs
    # keep 0.5 of layer1.0.conv1 (a singleton group): it and layer1.0.conv2's inputs halve
    pol = Policy(layers={"layer1.0.conv1": LayerPolicy(keep=0.5)})
    macs = price(r20, "a100", pol).macs[0]
    conv1, conv2 = r20.index("layer1.0.conv1"), r20.index("layer1.0.conv2")
    assert macs[conv1] == r20.layers[conv1].macs / 2 and macs[conv2] == r20.layers[conv2].macs / 2
    assert macs.sum() == base - r20.layers[conv1].macs
    # rank 8 on layer3.0.conv2 (64 -> 64, 3x3, 8x8 out): 64 * 8 * (64*9 + 64) MACs
    pol = Policy(layers={"layer3.0.conv2": LayerPolicy(rank=8)})
    assert price(r20, "a100", pol).macs[0, r20.index("layer3.0.conv2")] == 64 * 8 * (64 * 9 + 64)


def test_residual_group_prunes_together(r20):
    """The stage-1 residual group is anchored at conv1: its keep shrinks every member and consumer."""
    pol = Policy(layers={"conv1": LayerPolicy(keep=0.5)})
    macs = price(r20, "a100", pol).macs[0]
    for name in ("conv1", "layer1.0.conv2", "layer1.2.conv2", "layer1.0.conv1", "layer2.0.conv1"):
        assert macs[r20.index(name)] == r20[name].macs / 2, name


def test_batch_equals_single(r20):
    rng = np.random.default_rng(0)
    policies = [
        Policy(LayerPolicy(int(rng.integers(2, 9)), int(rng.integers(2, 9)), float(rng.uniform(0.3, 1))))
        for _ in range(5)
    ]
    for model in ("roofline", "eyeriss"):
        batch = price(r20, "eyeriss", policies, model=model)
        for i, p in enumerate(policies):
            single = price(r20, "eyeriss", p, model=model)
            np.testing.assert_allclose(batch.energy_j[i], single.energy_j[0])
            np.testing.assert_allclose(batch.latency_s[i], single.latency_s[0])


knob = st.sampled_from


@settings(max_examples=60, deadline=None)
@given(
    target=st.sampled_from(target_names()),
    model=st.sampled_from(["roofline", "eyeriss"]),
    layer=st.integers(0, 29),
    w=st.integers(1, 32), a=st.integers(1, 32), keep=st.floats(0.05, 1.0), rank=st.integers(0, 64),
    which=st.sampled_from(["w_bits", "a_bits", "keep", "rank"]),
    frac=st.floats(0.0, 1.0),
)
def test_fewer_bits_keep_rank_never_raise_compute_energy(r20, target, model, layer, w, a, keep, rank, which, frac):
    """Lowering one knob of one layer never raises that layer's compute energy (nor its MACs)."""
    n = len(r20)
    hi = PolicyBatch.uniform(1, n, w_bits=w, a_bits=a, keep=keep, rank=rank)
    lo = PolicyBatch(**{k: v.copy() for k, v in hi.arrays.items()})
    value = getattr(hi, which)[0, layer]
    lowered = {"keep": max(value * frac, 0.01), "rank": int(value * frac) if value > 0 else 0}.get(
        which, max(1, int(value * frac))
    )
    if which == "rank" and lowered == 0:
        lowered = 1 if value > 0 else 0  # rank 0 means "no split", which is not a lower rank
    getattr(lo, which)[0, layer] = lowered
    t = load_target(target)
    r_hi, r_lo = price(r20, t, hi, model=model), price(r20, t, lo, model=model)
    assert r_lo.energy_j[0, layer, 0] <= r_hi.energy_j[0, layer, 0] * (1 + 1e-12)
    if which in ("keep", "rank"):
        assert r_lo.macs[0, layer] <= r_hi.macs[0, layer]


@settings(max_examples=30, deadline=None)
@given(target=st.sampled_from(target_names()), model=st.sampled_from(["roofline", "eyeriss"]),
       bits=st.integers(2, 16))
def test_uniform_fewer_bits_never_raise_total_energy(r20, target, model, bits):
    e = [price(r20, target, Policy.uniform(b, b), model=model).total_energy_j[0] for b in (bits, bits + 1)]
    assert e[0] <= e[1] * (1 + 1e-12)


def test_report_json_shape(r20):
    rep = report(r20, price(r20, "a100", Policy.uniform(8, 8), model="eyeriss"))
    assert set(rep) >= {"model", "target", "total", "layers"}
    assert set(rep["total"]) >= {"macs", "params", "latency_s", "energy_j", "co2e_g"}
    row = rep["layers"][0]
    assert set(row) >= {"name", "op", "macs", "latency_s", "energy_j", "energy_breakdown_j", "bound"}
    assert rep["total"]["macs"] == 40_551_040 and rep["total"]["params"] == 269_722
    assert sum(r["energy_j"] for r in rep["layers"]) == pytest.approx(rep["total"]["energy_j"])
    assert rep["total"]["co2e_g"] == pytest.approx(co2e_grams(rep["total"]["energy_j"]))


def test_carbon_formula():
    # 1 kWh at PUE 1.5 and 400 g/kWh is 600 g; 1e6 queries of 3.6 J are 1 kWh more
    assert co2e_grams(3.6e6, pue=1.5, grid_g_per_kwh=400) == pytest.approx(600)
    assert footprint_grams(3.6, 1e6, training_kwh=1.0, pue=1.5, grid_g_per_kwh=400) == pytest.approx(1200)


def test_unknown_cost_model(r20):
    from picojoule.errors import PicojouleError

    with pytest.raises(PicojouleError, match="unknown cost model"):
        price(r20, "a100", None, model="timeloop")


def test_residual_adds_run_at_their_readers_width(r20):
    """A W4A4 policy that leaves non-compute layers at the float default still prices the residual
    adds' traffic at the 4-bit width of the conv that reads them."""
    compute_only = Policy(layers={c.name: LayerPolicy(4, 4) for c in r20.compute_layers()})
    everything = Policy.uniform(4, 4)
    a, b = (price(r20, "eyeriss", p, model="eyeriss") for p in (compute_only, everything))
    add = next(i for i, layer in enumerate(r20.layers) if layer.op == "add")
    np.testing.assert_allclose(a.energy_j[0, add], b.energy_j[0, add])
    assert a.total_energy_j[0] == pytest.approx(b.total_energy_j[0])
