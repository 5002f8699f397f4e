"""The compression passes behind one interface: priced equals applied for every pass (MACs, parameters,
non-zeros) on ResNet-20, ResNet-56 and MobileNetV2; real sparsity (unstructured and 2:4) that fine-tuning keeps
and that targets price as they say; the group-keep rule in apply; refused ranks that would not shrink a layer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from picojoule.data import load_npz
from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph, build_graph
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.target import load_target
from picojoule.passes import FIELDS, PASSES, ordered
from picojoule.passes.sparsity import zero_count
from picojoule.policy import KNOBS, LayerPolicy, Policy
from picojoule.search.evaluate import finetune_kd
from picojoule.spaces.apply import apply_policy
from picojoule.spaces.space import Space
from picojoule.zoo import build_model

Model = tuple[nn.Module, torch.Tensor, LayerGraph]
pytestmark = pytest.mark.usefixtures("single_thread")


def _model(name: str, weights: Path | None = None) -> Model:
    model, example = build_model(name, weights)
    return model, example, build_graph(model, example, name=name)


@pytest.fixture(scope="module")
def resnet20(shared_data: Path) -> Model:
    return _model("resnet20", shared_data / "models" / "resnet20_cifar10.th")


@pytest.fixture(scope="module")
def resnet56(shared_data: Path) -> Model:
    return _model("resnet56", shared_data / "models" / "resnet56_cifar10.th")


@pytest.fixture(scope="module")
def mobilenet_v2() -> Model:
    torch.manual_seed(0)
    return _model("mobilenet_v2")


def _policy(default: dict | None = None, **layers: dict) -> Policy:
    base = LayerPolicy(**(default or {}))
    return Policy(base, {n.replace("__", "."): dataclasses.replace(base, **f) for n, f in layers.items()})


#: one policy per pass alone, and all passes together (a non-anchor keep, split + sparse + quantized layers)
POLICIES = {
    "prune": lambda g: _policy({"keep": 0.6}),
    "lowrank": lambda g: _policy(**{_wide(g, 0): {"rank": 8}, _wide(g, 1): {"rank": 5}}),
    "sparsity": lambda g: _policy({"sparsity": 0.37}),
    "sparsity-2:4": lambda g: _policy({"sparsity": 0.5, "sparsity_pattern": "2:4"}),
    "quantize": lambda g: _policy({"w_bits": 4, "a_bits": 8}),
    "all": lambda g: _policy({"keep": 0.75, "w_bits": 6, "a_bits": 8, "sparsity": 0.5, "sparsity_pattern": "2:4"},
                             **{_member(g): {"keep": 0.5}, _wide(g, 0): {"rank": 6, "sparsity": 0.3, "sparsity_pattern": "unstructured"},
                                _wide(g, 1): {"rank": 4}}),
}


def _wide(graph: LayerGraph, i: int) -> str:
    """The i-th rankable layer (from the end) where rank 8 shrinks the layer even after pruning."""
    wide = [layer.name for layer in graph.compute_layers() if layer.rankable and layer.out_channels >= 32
            and layer.kernel[0] * layer.kernel[1] * layer.in_channels >= 64]
    return wide[-1 - i]


def _member(graph: LayerGraph) -> str:
    """A compute layer of a multi-member pruning group that is not the group's anchor."""
    group = next(g for g in graph.groups if len(g.members) > 2)
    return next(m for m in group.members if m != group.anchor)


CASES = [(m, p) for m in ("resnet20", "resnet56", "mobilenet_v2") for p in POLICIES]


@pytest.mark.parametrize("model_name,key", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_priced_equals_applied_for_every_pass(request: pytest.FixtureRequest, model_name: str, key: str) -> None:
    model, example, graph = request.getfixturevalue(model_name)
    policy = POLICIES[key](graph)
    _, info = apply_policy(model, example, policy, graph)
    cost = price(graph, "a100", policy)
    assert (info.macs, info.params, info.nonzeros) == (cost.total_macs[0], cost.total_params[0],
                                                       cost.total_nonzeros[0])
    if "sparsity" in key or key == "all":
        assert info.nonzeros < info.params and info.zeros
    else:
        assert info.nonzeros == info.params


def test_every_policy_field_comes_from_a_pass() -> None:
    assert KNOBS == tuple(f.name for f in FIELDS)
    assert [f.name for f in dataclasses.fields(LayerPolicy)] == list(KNOBS)
    assert [p.name for p in ordered()] == ["prune", "lowrank", "sparsity", "quantize"]
    assert {p.name for p in PASSES} == {"prune", "lowrank", "sparsity", "quantize"}


def test_keep_on_a_non_anchor_member_applies(resnet20: Model) -> None:
    """The group-keep rule (a keep set on any member) holds in apply, not only in pricing."""
    model, example, graph = resnet20
    group = next(g for g in graph.groups if len(g.members) > 2)
    member = next(m for m in group.members if m != group.anchor)
    compressed, info = apply_policy(model, example, _policy(**{member: {"keep": 0.5}}), graph)
    assert info.channels == {group.anchor: (group.channels // 2, group.channels)}
    assert compressed.get_submodule(member).out_channels == group.channels // 2
    assert info.macs == price(graph, "a100", _policy(**{member: {"keep": 0.5}})).total_macs[0]


# ------------------------------------------------------------------------------------------------ sparsity


def test_two_four_zeroes_two_of_every_four(resnet20: Model) -> None:
    model, example, graph = resnet20
    compressed, info = apply_policy(model, example, _policy({"sparsity": 0.5, "sparsity_pattern": "2:4"}), graph)
    for name in ("layer1.0.conv1", "linear"):
        w = compressed.get_submodule(name).weight.detach().reshape(compressed.get_submodule(name).weight.shape[0], -1)
        k = w.shape[1] // 4 * 4
        zeros_per_group = (w[:, :k].reshape(w.shape[0], -1, 4) == 0).sum(-1)
        assert (zeros_per_group >= 2).all()
        assert info.zeros[name] == zero_count(w.shape[0], w.shape[1], 0.5, True)
    # the largest two of each group stay: compare with the original weights
    orig = model.get_submodule("layer1.0.conv1").weight.detach().reshape(16, -1)[:, :144].reshape(16, -1, 4).abs()
    kept = compressed.get_submodule("layer1.0.conv1").weight.detach().reshape(16, -1)[:, :144].reshape(16, -1, 4) != 0
    assert torch.equal(kept.sum(-1), torch.full((16, 36), 2))
    assert (orig[kept].reshape(16, 36, 2).min(-1).values >= orig[~kept].reshape(16, 36, 2).max(-1).values).all()


def test_unstructured_zeroes_the_smallest(resnet20: Model) -> None:
    model, example, graph = resnet20
    compressed, info = apply_policy(model, example, _policy(layer2__0__conv1={"sparsity": 0.8}), graph)
    w0 = model.get_submodule("layer2.0.conv1").weight.detach().abs().flatten()
    w1 = compressed.get_submodule("layer2.0.conv1").weight.detach().flatten()
    assert int((w1 == 0).sum()) == info.zeros["layer2.0.conv1"] == round(0.8 * w0.numel())
    assert w0[w1 == 0].max() <= w0[w1 != 0].min()


def test_fine_tuning_keeps_the_zeros(resnet20: Model, shared_data: Path) -> None:
    model, example, graph = resnet20
    train = load_npz(shared_data / "cifar10" / "lossless_subset.npz", "train")
    policy = _policy({"sparsity": 0.5, "sparsity_pattern": "2:4", "w_bits": 8, "a_bits": 32})
    student, info = apply_policy(model, example, policy, graph)
    before = {n: m.weight.detach().clone() for n, m in student.named_modules() if hasattr(m, "weight_mask")}
    finetune_kd(student, model, train.subset(128), steps=3, batch_size=32, seed=0, progress=False)
    for name, module in student.named_modules():
        if name in before:
            w = module.weight.detach()
            assert torch.equal(w == 0, before[name] == 0), name  # the same weights are zero
            assert not torch.equal(w, before[name]), name  # and the others did train


def test_targets_price_sparsity_as_they_say(resnet20: Model) -> None:
    _, _, graph = resnet20
    dense, unstructured = _policy({"w_bits": 8, "a_bits": 8}), _policy({"w_bits": 8, "a_bits": 8, "sparsity": 0.5})
    two_four = _policy({"w_bits": 8, "a_bits": 8, "sparsity": 0.5, "sparsity_pattern": "2:4"})
    cost = {t: price(graph, t, [dense, unstructured, two_four], model="roofline") for t in ("a100", "eyeriss", "v100")}
    compute = {t: c.energy_j[:, :, 0].sum(1) for t, c in cost.items()}
    # eyeriss gates every zero weight: both patterns save compute energy, no time
    assert compute["eyeriss"][1] < 0.6 * compute["eyeriss"][0] and compute["eyeriss"][2] < 0.6 * compute["eyeriss"][0]
    # a100's sparse tensor cores use 2:4 zeros only
    assert compute["a100"][1] == pytest.approx(compute["a100"][0])
    assert compute["a100"][2] < 0.6 * compute["a100"][0]
    # v100 has no sparsity support
    assert np.allclose(compute["v100"], compute["v100"][0])
    assert np.allclose(cost["v100"].total_latency_s, cost["v100"].total_latency_s[0])


def test_space_searches_sparsity_where_the_target_uses_it(resnet20: Model) -> None:
    model, example, graph = resnet20
    a100, eyeriss = Space.build(graph, load_target("a100")), Space.build(graph, load_target("eyeriss"))
    knob = next(k for k in a100.knobs if k.kind == "sparsity")
    assert knob.choices == (0.0, 0.5)
    assert next(k for k in eyeriss.knobs if k.kind == "sparsity").choices == (0.0, 0.25, 0.5, 0.75)
    vec = np.zeros(a100.dim, dtype=np.int64)
    vec[a100.knobs.index(knob)] = 1
    policy = a100.decode(vec)
    lp = policy.for_layer(knob.layer)
    assert (lp.sparsity, lp.sparsity_pattern) == (0.5, "2:4")
    batch = a100.decode_batch(vec[None])
    assert price(graph, "a100", batch).total_nonzeros[0] == price(graph, "a100", policy).total_nonzeros[0]
    _, info = apply_policy(model, example, policy, graph)
    assert set(info.zeros) == {knob.layer}


# -------------------------------------------------------------------------------------------------- errors


def test_rank_that_does_not_shrink_the_layer_is_refused(resnet20: Model) -> None:
    model, example, graph = resnet20
    with pytest.raises(PicojouleError, match=r"layer 'layer1.0.conv1': field 'rank': a split at rank 5000 would "
                                             r"not shrink the layer \(16 x 144\); expected 0 or 1..14") as err:
        apply_policy(model, example, _policy(layer1__0__conv1={"rank": 5000}), graph)
    assert "\n" not in str(err.value)


def test_two_four_needs_half_sparsity(resnet20: Model) -> None:
    model, example, graph = resnet20
    with pytest.raises(PicojouleError, match=r"layer 'linear': field 'sparsity': 2:4 sparsity zeroes half"):
        apply_policy(model, example, _policy(linear={"sparsity": 0.3, "sparsity_pattern": "2:4"}), graph)
    with pytest.raises(PicojouleError, match=r"field 'sparsity_pattern': expected one of unstructured, 2:4"):
        Policy.from_dict({"default": {"sparsity_pattern": "1:4"}})


def test_a_space_override_rank_that_does_not_shrink_is_refused(resnet20: Model) -> None:
    _, _, graph = resnet20
    with pytest.raises(PicojouleError, match=r"key 'rank': 16 would not shrink layer 'layer1.0.conv1'"):
        Space.build(graph, load_target("a100"), {"layers": {"layer1.*": {"rank": [0, 8, 16]}}})

