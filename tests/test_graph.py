"""LayerGraph: MACs and parameters of the zoo, pruning groups, and the ONNX path against the torch path."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
import torch_pruning as tp

from picojoule.errors import PicojouleError
from picojoule.graph import build_graph
from picojoule.zoo import build_model

# MACs: conv/linear/matmul multiply-accumulates at batch 1. Params: weights + biases + BN scale/shift.
REFERENCE = {
    "resnet20": (40_551_040, 269_722),  # README of ../shared/data: 40.6 M, 269,722
    "resnet32": (68_862_592, 464_154),  # 68.9 M
    "resnet56": (125_485_696, 853_018),  # 125.5 M
    "resnet18": (1_814_073_344, 11_689_512),  # torchvision: 1.81 GMACs
    "resnet50": (4_089_184_256, 25_557_032),  # 4.09 GMACs
    "mobilenet_v2": (300_774_272, 3_504_872),  # 300 M
    "bert_base": (11_173_625_856, 85_054_464),  # 12 x (4 x 128x768x768 + 2 x 128x768x3072 + 2 x 12x128x128x64)
}


@pytest.fixture(scope="module")
def graphs():
    return {}


def _graph(graphs, name):
    if name not in graphs:
        graphs[name] = build_graph(name)
    return graphs[name]


@pytest.mark.parametrize("name", list(REFERENCE))
def test_zoo_macs_and_params(graphs, name):
    g = _graph(graphs, name)
    assert (g.macs, g.params) == REFERENCE[name]
    assert nx.is_directed_acyclic_graph(g.dag) and nx.is_weakly_connected(g.dag)


def test_resnet20_layers_and_groups(graphs):
    g = _graph(graphs, "resnet20")
    convs = [layer for layer in g.layers if layer.op == "conv"]
    assert len(convs) == 19 and len(g.compute_layers()) == 20
    assert g["conv1"].fused == ["relu"]  # ReLU fused, BN folded
    assert g["layer1.0.conv1"].params == 16 * 16 * 9 + 2 * 16
    # three residual streams (option-A pad shortcuts make them independent) + nine block-inner convs
    members = sorted(tuple(grp.members) for grp in g.groups)
    assert ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2") in members
    assert ("layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2") in members
    assert sum(len(m) == 1 for m in members) == 9 and len(members) == 12
    assert not g["linear"].prunable  # network outputs are fixed


def test_bert_groups(graphs):
    g = _graph(graphs, "bert_base")
    sets = {tuple(grp.members) for grp in g.groups}
    p = "encoder.layer.0."
    assert (p + "attention.self.query", p + "attention.self.key") in sets  # coupled by Q K^T
    assert (p + "attention.self.value",) in sets
    assert (p + "intermediate.dense",) in sets
    assert len(g.groups) == 36  # the 768-wide residual stream touches the input: not prunable
    assert g[p + "attention.output.dense"].in_group == g[p + "attention.self.value"].group


def _tp_groups(model, example):
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {m: n for n, m in model.named_modules()}
    out_handlers = (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels)
    groups = set()
    for group in graph.get_all_groups(root_module_types=[torch.nn.Conv2d, torch.nn.Linear]):
        groups.add(frozenset(names[dep.target.module] for dep, _ in group
                             if dep.handler in out_handlers and isinstance(dep.target.module, (torch.nn.Conv2d,
                                                                                                torch.nn.Linear))))
    return groups


@pytest.mark.parametrize("name,classifier", [("resnet18", "fc"), ("mobilenet_v2", "classifier.1")])
def test_groups_match_torch_pruning(graphs, name, classifier):
    """Our union-find groups equal Torch-Pruning's dependency groups, except the classifier, whose
    outputs (the classes) we never prune."""
    model, x = build_model(name)
    ours = {frozenset(grp.members) for grp in _graph(graphs, name).groups}
    assert ours == _tp_groups(model, x) - {frozenset({classifier})}


@pytest.mark.slow
def test_onnx_file_gives_the_torch_totals(tmp_path, graphs, shared_data):
    """An ONNX file exported from ResNet-20 gives the same layers, MACs and groups as the torch path.
    torch's exporter folds each BN into the conv as a C-element bias (the torch path counts the BN's
    2C scale and shift), so the parameters differ by exactly the BN channel count. (Real weights:
    with a freshly initialised BN the folded bias is zero and the exporter drops it.)"""
    model, x = build_model("resnet20", weights=shared_data / "models" / "resnet20_cifar10.th")
    path = tmp_path / "resnet20.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    og, tg = build_graph(path), _graph(graphs, "resnet20")
    assert [layer.name for layer in og.layers if layer.op in ("conv", "linear")] == \
        [layer.name for layer in tg.compute_layers()]
    assert (og.macs, len(og), len(og.groups)) == (tg.macs, len(tg), len(tg.groups))
    bn_channels = sum(layer.out_channels for layer in tg.layers if layer.op == "conv")
    assert og.params == tg.params - bn_channels
    assert [sorted(g.members) for g in og.groups] == [sorted(g.members) for g in tg.groups]


def test_onnx_errors(tmp_path):
    with pytest.raises(PicojouleError, match="not found"):
        build_graph(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(PicojouleError) as e:
        build_graph(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_untraceable_module_is_a_clear_error():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(PicojouleError, match="torch.export could not trace DataDependent"):
        build_graph(DataDependent(), torch.randn(1, 3))
