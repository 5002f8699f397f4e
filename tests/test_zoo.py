"""Model zoo: exact architectures (parameter counts, names, shapes), tracing, weight loading, accuracy."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from picojoule.errors import PicojouleError
from picojoule.zoo import CIFAR_MEAN, CIFAR_STD, ZOO, ZOO_NAMES, PadShortcut, build_model

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"

PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet56": 853_018,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "bert_base": 85_054_464,
    # GPT-2 small's 124,439,808 and an untied 768 x 50257 LM head
    "gpt2_prefill": 163_037_184,
    "gpt2_decode": 163_037_184,
}
OUTPUT_SHAPES = {
    **dict.fromkeys(["resnet20", "resnet32", "resnet56"], (1, 10)),
    **dict.fromkeys(["resnet18", "resnet50", "mobilenet_v2"], (1, 1000)),
    "bert_base": (1, 128, 768),
    "gpt2_prefill": (1, 512, 50257),
    "gpt2_decode": (1, 1, 50257),
}
# Module names the upstream checkpoints use (torchvision / akamaster / HF BERT).
SAMPLE_KEYS = {
    "resnet20": ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer3.2.bn2.bias", "linear.bias"],
    "resnet18": ["conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean", "fc.weight"],
    "resnet50": ["layer1.0.conv3.weight", "layer1.0.downsample.1.weight", "layer4.2.bn3.bias", "fc.bias"],
    "mobilenet_v2": ["features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.1.weight",
                     "features.2.conv.3.running_var", "features.18.1.weight", "classifier.1.weight"],
    "bert_base": ["encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.output.dense.bias",
                  "encoder.layer.5.attention.output.LayerNorm.weight", "encoder.layer.11.intermediate.dense.weight",
                  "encoder.layer.11.output.dense.bias", "encoder.layer.11.output.LayerNorm.bias"],
}


@cache
def built(name: str) -> tuple[nn.Module, torch.Tensor]:
    """Build each randomly initialised zoo model once per session."""
    return build_model(name)


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (the shared/ folder beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def cifar_test(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1017 lossless CIFAR-10 test images, normalised NCHW, and their labels."""
    data = np.load(shared_data / "cifar10" / "lossless_subset.npz")
    x = torch.from_numpy(data["x_test"]).float().div(255).permute(0, 3, 1, 2)
    x = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return x.contiguous(), torch.from_numpy(data["y_test"]).long()


def test_registry_lists_every_model() -> None:
    assert set(ZOO_NAMES) == set(PARAMS)
    assert all(entry.description and entry.input_shape[0] == 1 for entry in ZOO.values())


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_output_shape_and_eval_mode(name: str) -> None:
    model, x = built(name)
    args = x if isinstance(x, tuple) else (x,)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert tuple(args[0].shape) == ZOO[name].input_shape
    assert not model.training
    with torch.no_grad():
        assert tuple(model(*args).shape) == OUTPUT_SHAPES[name]


@pytest.mark.parametrize("name", list(SAMPLE_KEYS))
def test_module_names_match_upstream_checkpoints(name: str) -> None:
    keys = built(name)[0].state_dict().keys()
    assert set(SAMPLE_KEYS[name]) <= keys


def test_bert_layer_size() -> None:
    layer = built("bert_base")[0].encoder.layer[0]
    assert len(built("bert_base")[0].encoder.layer) == 12
    assert sum(p.numel() for p in layer.parameters()) == 7_087_872


# resnet32/56 are resnet20 made deeper: traced only in the slow run.
EXPORT_CASES = [pytest.param(n, marks=pytest.mark.slow) if n in ("resnet32", "resnet56", "gpt2_prefill") else n
                for n in PARAMS]


@pytest.mark.parametrize("name", EXPORT_CASES)
def test_torch_export_traces_and_matches_eager(name: str) -> None:
    model, x = built(name)
    args = x if isinstance(x, tuple) else (x,)
    exported = torch.export.export(model, args)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(*args), model(*args), rtol=1e-4, atol=1e-4)


def test_bert_fx_trace_shows_batched_matmuls() -> None:
    graph = torch.fx.symbolic_trace(built("bert_base")[0]).graph
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert targets.count(torch.matmul) == 24  # QK^T and attention.V in each of 12 layers
    assert targets.count(torch.softmax) == 12


def test_option_a_shortcuts_are_named_modules() -> None:
    model = built("resnet20")[0]
    pads = {name: m for name, m in model.named_modules() if isinstance(m, PadShortcut)}
    assert sorted(pads) == ["layer2.0.shortcut", "layer3.0.shortcut"]
    assert (pads["layer3.0.shortcut"].in_planes, pads["layer3.0.shortcut"].out_planes) == (32, 64)
    assert pads["layer3.0.shortcut"].stride == 2
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    x = torch.randn(2, 16, 32, 32)
    reference = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 32 // 4, 32 // 4))  # akamaster's lambda for planes=32
    torch.testing.assert_close(pads["layer2.0.shortcut"](x), reference, rtol=0, atol=0)


def test_builds_are_deterministic_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    (a, xa), (b, xb) = build_model("resnet20"), build_model("resnet20")
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(xa, xb)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(PicojouleError, match="resnet20.*bert_base") as info:
        build_model("resnet21")
    assert "resnet21" in str(info.value)


def test_state_dict_round_trip(tmp_path: Path) -> None:
    source = build_model("mobilenet_v2")[0]
    with torch.no_grad():
        source.classifier[1].bias.fill_(0.5)
    path = tmp_path / "mnv2.pt"
    torch.save(source.state_dict(), path)
    loaded, _ = build_model("mobilenet_v2", path)
    assert torch.equal(loaded.classifier[1].bias, source.classifier[1].bias)


def _one_line_error_naming(path: Path, name: str = "resnet20") -> str:
    with pytest.raises(PicojouleError) as info:
        build_model(name, path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_weight_file(tmp_path: Path) -> None:
    assert "not found" in _one_line_error_naming(tmp_path / "nope.th")


def test_unreadable_weight_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.th"
    path.write_bytes(b"this is not a checkpoint")
    assert "cannot read" in _one_line_error_naming(path)


def test_weight_file_with_wrong_keys(tmp_path: Path) -> None:
    path = tmp_path / "wrong.th"
    torch.save({"best_prec1": 0.0, "state_dict": {"module.conv9.weight": torch.zeros(1)}}, path)
    message = _one_line_error_naming(path)
    assert "conv9.weight" in message and "missing" in message


def test_weight_file_for_another_depth(tmp_path: Path) -> None:
    path = tmp_path / "resnet20.pt"
    torch.save(build_model("resnet20")[0].state_dict(), path)
    assert "layer1.3" in _one_line_error_naming(path, "resnet32")  # resnet32 has 5 blocks per stage


def test_weight_file_with_wrong_shapes(tmp_path: Path) -> None:
    state = build_model("resnet20")[0].state_dict()
    state["linear.weight"] = torch.zeros(100, 64)
    path = tmp_path / "cifar100.pt"
    torch.save(state, path)
    assert "linear.weight" in _one_line_error_naming(path)


def _top1(name: str, shared_data: Path, cifar_test: tuple[torch.Tensor, torch.Tensor]) -> float:
    model, _ = build_model(name, shared_data / "models" / f"{name}_cifar10.th")
    x, y = cifar_test
    with torch.inference_mode():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in x.split(256)])
    return (predictions == y).float().mean().item() * 100


def test_resnet20_pretrained_accuracy(shared_data: Path, cifar_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert _top1("resnet20", shared_data, cifar_test) == pytest.approx(91.64, abs=0.2)


@pytest.mark.slow
def test_resnet56_pretrained_accuracy(shared_data: Path, cifar_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert _top1("resnet56", shared_data, cifar_test) == pytest.approx(92.72, abs=0.2)
