"""The search space: default knobs per target, overrides, pins, and the vector <-> policy maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from picojoule.errors import PicojouleError
from picojoule.graph import build_graph
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.target import load_target
from picojoule.hwmodels.workload import policy_batch
from picojoule.policy import KNOBS
from picojoule.spaces.space import DEFAULT_KEEP, Space

TARGETS = ("eyeriss", "a100", "edge-npu")


@pytest.fixture(scope="module")
def graph():
    return build_graph("resnet20")


@pytest.fixture(scope="module")
def toy():
    """conv 3->8 (own group), conv 8->8 and a depthwise conv sharing a group, pool, linear 8->10."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))
    return build_graph(model, torch.zeros(1, 3, 8, 8), name="toy")


def _knob(space: Space, name: str):
    return next((k for k in space.knobs if k.name == name), None)


def _sample_policies(space: Space, n: int, seed: int = 0):
    idx = space.sample(np.random.default_rng(seed), n)
    return idx, [space.decode(v) for v in idx]


# -- sizes --------------------------------------------------------------------------------------------


def test_toy_size_by_hand(toy):
    space = Space.build(toy, load_target("a100"))
    # pinned: '0' (its group only has it: keep 1) and '7'. Free: '2' and depthwise '4' w/a bits {4, 8, 16};
    # group 1 keep (7 choices); rank of '2' (8x8x3x3, full rank 8): 0 and {1, 2, 4} (r * 80 < 576); a100's 2:4
    # sparse tensor cores: sparsity {0, 0.5} on '2' and '4'
    assert [k.name for k in space.knobs] == ["2.w_bits", "2.a_bits", "2.keep", "2.rank", "2.sparsity", "4.w_bits",
                                             "4.a_bits", "4.sparsity"]
    assert _knob(space, "2.sparsity").choices == (0.0, 0.5)
    assert _knob(space, "2.rank").choices == (0, 1, 2, 4)
    assert _knob(space, "2.keep").columns == (toy.index("2"), toy.index("4"))
    assert space.size == 3**4 * 7 * 4 * 2**2 == 9072
    assert space.log10_size == pytest.approx(math.log10(9072))


def test_narrowed_resnet20_size_by_hand(graph):
    overrides = {"defaults": {"w_bits": [4, 8], "a_bits": [8], "keep": [0.5, 1.0], "rank_fractions": [0.5]},
                 "layers": {"layer[23].*": {"exclude": True}}}
    space = Space.build(graph, load_target("a100"), overrides)
    # free: the 6 layer1 convs, each w_bits {4, 8}, rank {0, 8} and sparsity {0, 0.5}; groups 0-3 keep {0.5, 1}; the excluded
    # layers fix groups 4-11 (group 5 and 9 hold only excluded layers; the rest are theirs alone)
    assert space.dim == 6 * 3 + 4
    assert space.size == 2**22
    assert space.log10_size == pytest.approx(22 * math.log10(2))


def test_default_sizes(graph):
    # 18 free convs: bits^2 each, 4 ranks each ({1/8, 1/4, 1/2} of the full rank all save MACs), sparsity (eyeriss
    # gates zeros: 4 unstructured levels; a100: dense or 2:4); 12 groups x 7
    eyeriss, a100 = Space.build(graph, load_target("eyeriss")), Space.build(graph, load_target("a100"))
    assert eyeriss.size == 8**36 * 7**12 * 4**18 * 4**18
    assert a100.size == 3**36 * 7**12 * 4**18 * 2**18
    assert round(eyeriss.log10_size, 1) == 64.3 and round(a100.log10_size, 1) == 43.6
    assert "84 knobs" in a100.describe() and "conv1, linear" in a100.describe()
    v100 = Space.build(graph, load_target("v100"))  # no zero skipping or gating: no sparsity knob
    assert "sparsity" not in {k.kind for k in v100.knobs}


def test_default_bits_per_target(graph):
    bits = {t: _knob(Space.build(graph, load_target(t)), "layer1.0.conv1.w_bits") for t in TARGETS}
    assert bits["eyeriss"].choices == (2, 3, 4, 5, 6, 7, 8, 16)
    assert bits["a100"].choices == (4, 8, 16)
    assert bits["edge-npu"] is None  # only 8-bit: a fixed value, not a knob
    space = Space.build(graph, load_target("edge-npu"))
    assert {k.kind for k in space.knobs} == {"keep", "rank"}
    for policy in _sample_policies(space, 20)[1]:
        assert all(lp.w_bits == lp.a_bits == 8 for lp in policy.layers.values())


def test_rank_choices_save_macs(graph):
    space = Space.build(graph, load_target("a100"), {"pin_first_last": False})
    assert _knob(space, "layer1.0.conv1.rank").choices == (0, 2, 4, 8)
    assert _knob(space, "layer3.0.conv1.rank").choices == (0, 8, 16, 32)
    assert _knob(space, "linear.rank").choices == (0, 1, 2, 5)  # full rank 10: 5 * (64 + 10) < 640
    full = Space.build(graph, load_target("a100"), {"defaults": {"rank_fractions": [1.0]}})
    assert not any(k.kind == "rank" for k in full.knobs)  # a full-rank split never saves MACs


# -- vectors <-> policies -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_encode_decode_round_trip(graph, target):
    space = Space.build(graph, load_target(target))
    idx, policies = _sample_policies(space, 30)
    for vec, policy in zip(idx, policies):
        assert np.array_equal(space.encode(policy), vec)
        assert space.decode(space.encode(policy)) == policy


@pytest.mark.parametrize("target", TARGETS)
def test_decode_batch_equals_stacked_decode(graph, target):
    space = Space.build(graph, load_target(target), {"layers": {"layer2.1.*": {"exclude": True}}})
    idx, policies = _sample_policies(space, 200, seed=1)
    batch, stacked = space.decode_batch(idx), policy_batch(graph, policies)
    for knob in KNOBS:
        assert np.array_equal(getattr(batch, knob), getattr(stacked, knob)), knob


@pytest.mark.parametrize("target", TARGETS)
def test_decoded_policies_price(graph, target):
    space = Space.build(graph, load_target(target))
    idx, policies = _sample_policies(space, 50, seed=2)
    batch = price(graph, target, space.decode_batch(idx))
    one_by_one = price(graph, target, policies)
    assert np.isfinite(batch.total_energy_j).all() and (batch.total_latency_s > 0).all()
    assert np.allclose(batch.total_energy_j, one_by_one.total_energy_j)
    float32 = price(graph, target)
    assert (batch.total_energy_j < float32.total_energy_j).all()


def test_encode_snaps_to_nearest_choice(graph):
    space = Space.build(graph, load_target("a100"))
    policy = space.uniform_policy(w_bits=5, a_bits=12, keep=0.3)
    lp = policy.for_layer("layer2.0.conv1")
    assert (lp.w_bits, lp.a_bits, lp.keep, lp.rank) == (4, 8, 0.25, 0)


def test_decode_rejects_bad_vectors(graph):
    space = Space.build(graph, load_target("a100"))
    with pytest.raises(ValueError):
        space.decode_batch(np.zeros((2, space.dim + 1), dtype=int))
    with pytest.raises(ValueError):
        space.decode_batch(np.zeros(space.dim, dtype=int))  # one vector: use decode
    with pytest.raises(ValueError):
        space.decode(np.full(space.dim, 99))


# -- pins and overrides -------------------------------------------------------------------------------


def test_first_last_pinned(graph):
    space = Space.build(graph, load_target("eyeriss"))
    keeps = set()
    for policy in _sample_policies(space, 50, seed=3)[1]:
        for name in ("conv1", "linear"):
            lp = policy.for_layer(name)
            assert (lp.w_bits, lp.a_bits, lp.rank) == (8, 8, 0)
        keeps.add(policy.for_layer("conv1").keep)
        assert policy.for_layer("linear").keep == 1.0
    assert len(keeps) > 1  # the stem's group is the residual stream of stage 1: it stays prunable
    assert _knob(space, "conv1.keep").choices == DEFAULT_KEEP
    assert _knob(space, "conv1.keep").columns == tuple(
        graph.index(n) for n in ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"))


def test_pinned_group_only_when_not_shared(toy):
    space = Space.build(toy, load_target("a100"))
    assert _knob(space, "0.keep") is None and space.decode(space.sample(np.random.default_rng(0), 1)[0]).for_layer(
        "0").keep == 1.0
    free = Space.build(toy, load_target("a100"), {"pin_first_last": False})
    assert _knob(free, "0.keep") is not None and _knob(free, "0.w_bits") is not None


def test_uniform_policy_honours_pins(graph):
    for target, want in (("a100", 4), ("edge-npu", 8)):
        policy = Space.build(graph, load_target(target)).uniform_policy(4, 4, keep=0.5)
        assert policy.for_layer("layer2.1.conv1").w_bits == want
        assert policy.for_layer("conv1").w_bits == 8 and policy.for_layer("linear").a_bits == 8
        assert policy.for_layer("layer1.0.conv2").keep == 0.5 and policy.for_layer("linear").keep == 1.0


def test_overrides_narrow_and_widen(graph):
    target = load_target("a100")
    base = Space.build(graph, target)
    space = Space.build(graph, target, {"layers": {
        "layer3.*": {"w_bits": [2, 4], "rank": [0, 16]},
        "layer1.0.conv1": {"pin": {"keep": 1.0, "a_bits": 8}},
        "*": {"w_bits": [4]},  # wildcards leave the pinned conv1/linear alone
        "linear": {"w_bits": [4, 8]},  # an exact name reopens a pinned layer
    }})
    assert space.size < base.size
    assert _knob(space, "layer3.0.conv1.w_bits") is None  # '*' came later: fixed at 4
    assert _knob(space, "layer3.1.conv2.rank").choices == (0, 16)
    assert _knob(space, "layer1.0.conv1.keep") is None and _knob(space, "layer1.0.conv1.a_bits") is None
    assert _knob(space, "linear.w_bits").choices == (4, 8)
    policy = space.decode(space.sample(np.random.default_rng(0), 1)[0])
    assert policy.for_layer("conv1").w_bits == 8 and policy.for_layer("layer2.0.conv1").w_bits == 4
    assert policy.for_layer("layer1.0.conv1").keep == 1.0


def test_exclude(graph):
    space = Space.build(graph, load_target("a100"), {"layers": {"layer2.1.conv2": {"exclude": True}}})
    assert _knob(space, "layer2.0.conv2.keep") is None  # its group (shared with layer2.1.conv2) is unpruned
    for policy in _sample_policies(space, 10)[1]:
        lp = policy.for_layer("layer2.1.conv2")
        assert (lp.w_bits, lp.a_bits, lp.keep, lp.rank) == (32, 32, 1.0, 0)
        assert policy.for_layer("layer2.2.conv2").keep == 1.0
    again = Space.build(graph, load_target("a100"), {"layers": {"layer2.*": {"exclude": True},
                                                               "layer2.0.*": {"exclude": False}}})
    assert again.excluded == [f"layer2.{i}.conv{j}" for i in (1, 2) for j in (1, 2)]


def test_load_overrides_file(graph, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("defaults:\n  w_bits: [8]\n  a_bits: [8]\nlayers:\n  'layer3.*': {exclude: true}\n")
    space = Space.load(graph, load_target("a100"), path)
    assert {k.kind for k in space.knobs} == {"keep", "rank", "sparsity"}
    path.write_text("layers: [oops\n")
    with pytest.raises(PicojouleError, match=r"space.yaml: line \d+ not valid YAML"):
        Space.load(graph, load_target("a100"), path)


BAD_OVERRIDES = [
    ({"pin_first": True}, "unknown key 'pin_first'"),
    ({"pin_first_last": "yes"}, "key 'pin_first_last': expected true or false"),
    ({"defaults": {"bits": [8]}}, "defaults: unknown key 'bits'"),
    ({"defaults": {"w_bits": 8}}, "defaults: key 'w_bits': expected a non-empty list of integers in 1..32"),
    ({"defaults": {"a_bits": [4, 64]}}, "key 'a_bits': expected a non-empty list of integers in 1..32"),
    ({"defaults": {"w_bits": []}}, "key 'w_bits': expected a non-empty list"),
    ({"defaults": {"keep": [0.0, 0.5]}}, "key 'keep': expected a non-empty list of numbers in (0, 1]"),
    ({"defaults": {"keep": [1.5]}}, "key 'keep': expected a non-empty list of numbers in (0, 1]"),
    ({"layers": {"layer9.*": {"w_bits": [4]}}}, "layers['layer9.*']: pattern matches no compute layer"),
    ({"layers": {"add": {"w_bits": [4]}}}, "layers['add']: pattern matches no compute layer"),
    ({"layers": {"layer1.*": {"bits": [4]}}}, "layers['layer1.*']: unknown key 'bits'"),
    ({"layers": {"layer1.*": {"w_bits": [0]}}}, "layers['layer1.*']: key 'w_bits'"),
    ({"layers": {"layer1.*": None}}, "layers['layer1.*']: expected a mapping"),
    ({"layers": {"layer1.*": {"rank": [0, 17]}}}, "key 'rank': 17 exceeds layer 'layer1.0.conv1' full rank 16"),
    ({"layers": {"layer1.*": {"rank": [4], "rank_fractions": [0.5]}}}, "give 'rank' or 'rank_fractions'"),
    ({"layers": {"linear": {"keep": [0.5, 1.0]}}}, "key 'keep': no matched layer has prunable output channels"),
    ({"layers": {"layer1.*": {"pin": {"w_bits": [4]}}}}, "'w_bits' takes a single value"),
    ({"layers": {"layer1.*": {"pin": {"sparsity_pattern": "2:4"}}}}, "key 'pin': unknown key 'sparsity_pattern'"),
    ({"layers": {"layer1.*": {"w_bits": [4], "pin": {"w_bits": 4}}}}, "given both as choices and in 'pin'"),
    ({"layers": {"layer1.*": {"exclude": "yes"}}}, "key 'exclude': expected true or false"),
    ({"layers": ["layer1.*"]}, "key 'layers': expected a mapping"),
    (["w_bits"], "space.yaml: expected a mapping"),
]


@pytest.mark.parametrize("overrides,message", BAD_OVERRIDES)
def test_bad_overrides(graph, overrides, message):
    with pytest.raises(PicojouleError) as err:
        Space.build(graph, load_target("a100"), overrides, source="space.yaml")
    text = str(err.value)
    assert "\n" not in text and text.startswith("space.yaml") and message in text
