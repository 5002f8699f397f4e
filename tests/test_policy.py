"""Policy documents (YAML/JSON, version), validation against a graph, and the HAQ/AMC/Torch-Pruning formats."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from picojoule.errors import PicojouleError
from picojoule.graph import build_graph
from picojoule.hwmodels.target import load_target
from picojoule.spaces.formats import (
    from_amc,
    from_haq,
    from_torch_pruning,
    to_amc,
    to_haq,
    to_torch_pruning,
    validate_policy,
)
from picojoule.policy import POLICY_VERSION, LayerPolicy, Policy
from picojoule.spaces.space import Space


@pytest.fixture(scope="module")
def graph():
    return build_graph("resnet20")


@pytest.fixture(scope="module")
def policies(graph):
    """Sampled policies of the a100 space, first/last layers free, layer2.1's convs excluded (float)."""
    overrides = {"pin_first_last": False, "layers": {"layer2.1.*": {"exclude": True}}}
    space = Space.build(graph, load_target("a100"), overrides)
    return [space.decode(v) for v in space.sample(np.random.default_rng(0), 10)]


def _one_line_error(fn, *args, match: str) -> str:
    with pytest.raises(PicojouleError) as err:
        fn(*args)
    text = str(err.value)
    assert "\n" not in text and match in text, text
    return text


# -- documents ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_load_round_trip(tmp_path, policies, suffix):
    for i, policy in enumerate(policies):
        policy.meta["provenance"] = {"tool": "test", "seed": i}
        path = tmp_path / f"p{i}{suffix}"
        policy.save(path)
        loaded = Policy.load(path)
        assert loaded == policy
        assert loaded.provenance == {"tool": "test", "seed": i}


def test_document_has_version_and_layer_overrides(tmp_path):
    policy = Policy(LayerPolicy(w_bits=8, a_bits=8), {"conv1": LayerPolicy(w_bits=8, a_bits=8),
                                                      "linear": LayerPolicy(w_bits=4, a_bits=8, rank=5)})
    path = tmp_path / "p.yaml"
    policy.save(path)
    data = yaml.safe_load(path.read_text())
    assert data["version"] == POLICY_VERSION == 1
    assert data["layers"] == {"conv1": {}, "linear": {"w_bits": 4, "rank": 5}}
    assert Policy.load(path) == policy


@pytest.mark.parametrize("version,match", [(2, "field 'version': policy format 2 is newer"),
                                           ("one", "field 'version': expected a positive integer"),
                                           (0, "field 'version': expected a positive integer")])
def test_bad_version(tmp_path, version, match):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"version": version, "default": {"w_bits": 8}}))
    text = _one_line_error(Policy.load, path, match=match)
    assert text.startswith(str(path))


def test_missing_version_reads_as_current():
    assert Policy.from_dict({"default": {"w_bits": 8}}).default.w_bits == 8


# -- validation ---------------------------------------------------------------------------------------


def test_valid_policies_pass(graph, policies):
    for policy in policies:
        validate_policy(policy, graph)
    validate_policy(Policy.uniform(8, 8, keep=0.5), graph)


BAD_POLICIES = [
    ({"layer9.conv1": LayerPolicy()}, "layer 'layer9.conv1' is not in model 'resnet20'"),
    ({"conv1": LayerPolicy(w_bits=0)}, "layer 'conv1': field 'w_bits': expected an integer in 1..32"),
    ({"conv1": LayerPolicy(a_bits=40)}, "layer 'conv1': field 'a_bits': expected an integer in 1..32"),
    ({"conv1": LayerPolicy(keep=0.0)}, "layer 'conv1': field 'keep': expected a number in (0, 1]"),
    ({"conv1": LayerPolicy(keep=1.5)}, "layer 'conv1': field 'keep': expected a number in (0, 1]"),
    ({"layer1.0.conv1": LayerPolicy(rank=17)}, "layer 'layer1.0.conv1': field 'rank': a split at rank 17 would not shrink the layer (16 x 144); expected 0 or 1..14"),
    ({"adaptive_avg_pool2d": LayerPolicy(rank=2)}, "layer 'adaptive_avg_pool2d': field 'rank': a pool layer cannot"),
    ({"conv1": LayerPolicy(keep=0.5), "layer1.0.conv2": LayerPolicy(keep=0.5), "layer1.1.conv2": LayerPolicy(keep=0.75),
      "layer1.2.conv2": LayerPolicy(keep=0.5)},
     "layer 'layer1.1.conv2': field 'keep': expected 0.5 like 'conv1' (same pruning group), got 0.75"),
]


@pytest.mark.parametrize("layers,match", BAD_POLICIES)
def test_validation_errors(graph, layers, match):
    text = _one_line_error(validate_policy, Policy(LayerPolicy(), layers), graph, "run.yaml", match=match)
    assert text.startswith("run.yaml: ")


def test_default_rank_beyond_a_layer(graph):
    _one_line_error(validate_policy, Policy(LayerPolicy(rank=12)), graph, "p",
                    match="layer 'conv1' (from default): field 'rank': a split at rank 12 would not shrink the layer "
                          "(16 x 27); expected 0 or 1..10")


# -- formats ------------------------------------------------------------------------------------------


def _knobs(policy: Policy, graph, fields: tuple[str, ...]) -> list[tuple]:
    return [tuple(getattr(policy.for_layer(layer.name), f) for f in fields) for layer in graph.compute_layers()]


def test_haq_round_trip(graph, policies):
    for policy in policies:
        haq = to_haq(policy, graph)
        assert len(haq) == 20 and all(isinstance(b, int) for pair in haq for b in pair)
        back = from_haq(haq, graph)
        assert _knobs(back, graph, ("w_bits", "a_bits")) == _knobs(policy, graph, ("w_bits", "a_bits"))
        assert back.provenance == "haq" and to_haq(back, graph) == haq
        validate_policy(back, graph)


def test_amc_round_trip(graph, policies):
    for policy in policies:
        amc = to_amc(policy, graph)
        assert amc[-1] == 1.0  # the classifier's outputs are the model's: never pruned
        back = from_amc(amc, graph)
        assert _knobs(back, graph, ("keep",)) == _knobs(policy, graph, ("keep",))
        assert back.provenance == "amc" and to_amc(back, graph) == amc
        validate_policy(back, graph)


def test_torch_pruning_round_trip(graph, policies):
    for policy in policies:
        ratios = to_torch_pruning(policy, graph)
        assert list(ratios) == [g.anchor for g in graph.groups]
        assert ratios["conv1"] == pytest.approx(1 - policy.for_layer("conv1").keep)
        back = from_torch_pruning(ratios, graph)
        assert _knobs(back, graph, ("keep",)) == _knobs(policy, graph, ("keep",))
        assert to_torch_pruning(back, graph) == ratios
        validate_policy(back, graph)
    # any member names its group; unlisted groups stay unpruned
    one = from_torch_pruning({"layer3.2.conv2": 0.25}, graph)
    assert one.for_layer("layer3.0.conv2").keep == 0.75 and one.for_layer("layer3.0.conv1").keep == 1.0


def test_format_import_errors(graph):
    haq = [[8, 8]] * 20
    _one_line_error(from_haq, haq[:3], graph, match="haq: expected a list of 20 [w_bits, a_bits] pairs")
    _one_line_error(from_haq, haq[:-1] + [[8]], graph, match="haq: layer 'linear': expected a [w_bits, a_bits] pair")
    _one_line_error(from_haq, [[8, 40]] + haq[1:], graph, match="layer 'conv1': field 'a_bits': expected an integer")
    amc = [1.0] * 20
    _one_line_error(from_amc, amc[:5], graph, match="amc: expected a list of 20 preserve ratios")
    _one_line_error(from_amc, [0.0] + amc[1:], graph,
                    match="amc: layer 'conv1': field 'preserve_ratio': expected a number in (0, 1]")
    _one_line_error(from_amc, amc[:-1] + [0.5], graph, match="layer 'linear': its output channels cannot be pruned")
    _one_line_error(from_amc, [0.5] + amc[1:], graph,  # conv1 and layer1.0.conv2 share group 0
                    match="layer 'layer1.0.conv2': expected keep 0.5 like the other layers of its pruning group 0")
    _one_line_error(from_torch_pruning, {"fc": 0.5}, graph, match="module 'fc' is not a layer of model 'resnet20'")
    _one_line_error(from_torch_pruning, {"conv1": 1.0}, graph,
                    match="layer 'conv1': field 'pruning_ratio': expected a number in [0, 1)")
    _one_line_error(from_torch_pruning, {"conv1": 0.5, "layer1.2.conv2": 0.25}, graph,
                    match="layer 'layer1.2.conv2': expected keep 0.5 like the other layers")
    _one_line_error(from_torch_pruning, [0.5], graph, match="expected a mapping of module name to pruning ratio")


def test_keep_on_any_one_member_sets_the_group():
    """keep given on a non-anchor member (others at the default) prices and validates as the group's."""
    from picojoule.graph import build_graph
    from picojoule.hwmodels.costs import price
    from picojoule.spaces.formats import validate_policy
    from picojoule.policy import LayerPolicy, Policy, group_keeps

    graph = build_graph("resnet20")
    member = Policy(layers={"layer2.1.conv2": LayerPolicy(keep=0.5)})
    anchor = Policy(layers={"layer2.0.conv2": LayerPolicy(keep=0.5)})
    validate_policy(member, graph)
    group = graph["layer2.0.conv2"].group
    assert group_keeps(member, graph)[group] == 0.5
    assert price(graph, "a100", member).total_macs[0] == price(graph, "a100", anchor).total_macs[0] < graph.macs


def test_a_misspelt_section_or_a_field_without_default_is_refused_not_read_as_float32():
    from picojoule.errors import PicojouleError
    from picojoule.policy import Policy

    for doc, says in [({"defaults": {"w_bits": 8}}, "did you mean 'default'"),
                      ({"layer": {"conv1": {"w_bits": 4}}}, "did you mean 'layers'"),
                      ({"w_bits": 8, "a_bits": 8}, "field 'w_bits' at the top level")]:
        with pytest.raises(PicojouleError, match=says) as info:
            Policy.from_dict(doc, "w8a8.yaml")
        assert str(info.value).startswith("w8a8.yaml: ") and "\n" not in str(info.value)
    kept = Policy.from_dict({"model": "resnet20", "provenance": {"strategy": "ilp"}, "default": {"w_bits": 8}})
    assert kept.meta == {"model": "resnet20", "provenance": {"strategy": "ilp"}} and kept.default.w_bits == 8
