"""The object API below search: pj.LayerGraph.from_torch / from_onnx, pj.load_target, pj.cost, pj.Space and
pj.compress with a torch DataLoader, on the pretrained ResNet-20 and real CIFAR-10 images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import picojoule as pj
from picojoule.compilers.export import export_onnx
from picojoule.data import load_npz
from picojoule.search.evaluate import accuracy
from picojoule.zoo import build_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def resnet20(shared_data: Path):
    model, example = build_model("resnet20", shared_data / "models" / "resnet20_cifar10.th")
    return model, example


@pytest.fixture(scope="module")
def cifar(shared_data: Path):
    path = shared_data / "cifar10" / "lossless_subset.npz"
    return load_npz(path, "test"), load_npz(path, "train")


def test_import_is_cheap_and_lazy() -> None:
    code = ("import sys, picojoule as pj; assert 'torch' not in sys.modules, 'torch imported'; "
            "pj.load_target; assert 'torch' not in sys.modules; print(sorted(dir(pj))[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pj.nope  # noqa: B018


def test_graph_target_cost_space(resnet20, tmp_path: Path) -> None:
    model, example = resnet20
    graph = pj.LayerGraph.from_torch(model, example, name="resnet20")
    assert graph.macs == 40_551_040 and "resnet20" in repr(graph)
    target = pj.load_target("eyeriss")
    assert pj.load_target(target) is target
    policy = {"default": {"w_bits": 4, "a_bits": 8}, "layers": {"conv1": {"w_bits": 8}, "linear": {"w_bits": 8}}}
    report = pj.cost(graph, target, policy, cost_model="eyeriss")
    fp32 = pj.cost(graph, "eyeriss", None, cost_model="eyeriss")
    assert report.total["macs"] == fp32.total["macs"] == graph.macs
    assert report.total["energy_j"] < fp32.total["energy_j"]
    assert len(report.layers) == len(graph) and report.layers[0]["name"] == graph.layers[0].name
    assert sum(row["energy_j"] for row in report.layers) == pytest.approx(report.total["energy_j"])
    frame = report.to_dataframe()
    assert len(frame) == len(graph) and "energy_compute_j" in frame.columns
    assert "CostReport(resnet20 on eyeriss" in repr(report) and len(repr(report)) < 300
    space = pj.Space(graph, target, overrides={"defaults": {"keep": [0.5, 1.0]}})
    assert {len(k.choices) for k in space.knobs if k.kind == "keep"} == {2}
    # the same graph from ONNX prices the same MACs
    path = tmp_path / "r20.onnx"
    export_onnx(model.eval(), example, path, dynamic_batch=False)
    assert pj.cost(pj.LayerGraph.from_onnx(path), "a100").total["macs"] == graph.macs
    with pytest.raises(pj.PicojouleError, match="expected an .onnx file"):
        pj.LayerGraph.from_onnx(tmp_path / "r20.yaml")
    with pytest.raises(pj.PicojouleError, match="unknown cost model 'zigzag'"):
        pj.cost(graph, target, policy, cost_model="zigzag")


def test_compress_with_a_dataloader(resnet20, cifar) -> None:
    model, example = resnet20
    test, train = cifar
    x = torch.cat([xb for xb, _ in train.batches(128, shuffle=True, seed=0)][:4])
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=128)
    policy = pj.Policy.from_dict({"default": {"w_bits": 8, "a_bits": 8, "keep": 0.875}})
    compressed, info = pj.compress(model, example, policy, calib_data=loader, return_info=True)
    assert info.channels and info.needs_calibration and not compressed.training
    assert accuracy(compressed, test) > 0.75  # W8A8 with 1/8 of the channels pruned, BN re-estimated, no fine-tune
    w8a8 = pj.compress(model, example, {"default": {"w_bits": 8, "a_bits": 8}}, calib_data=loader)
    assert accuracy(w8a8, test) == pytest.approx(0.9164, abs=0.01)  # FP32 91.64% (shared/data README)
    graph = pj.LayerGraph.from_torch(model, example)
    assert info.macs == pj.cost(graph, "a100", policy).total["macs"]
    with pytest.raises(pj.PicojouleError, match="compress: field 'calib_data': needed to re-estimate BatchNorm"):
        pj.compress(model, example, policy)
