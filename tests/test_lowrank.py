"""Low-rank factorisation: exactness at full rank, energy, MAC formula and errors."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from picojoule.errors import PicojouleError
from picojoule.spaces.lowrank import apply_lowrank, factorize, lowrank_macs, max_useful_rank

@pytest.fixture(scope="module")
def real_conv(resnet20_state: dict) -> nn.Conv2d:
    """resnet20's layer3.0.conv2 (64 -> 64, 3x3) with its pretrained weights."""
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    conv.weight.data.copy_(resnet20_state["layer3.0.conv2.weight"])
    return conv


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of every Conv2d/Linear in one forward of a single sample, counted with forward hooks."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += out[0].numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += out[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(24, 16),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.Conv2d(6, 20, (3, 5), padding=(1, 2), dilation=1, bias=False),
        nn.Conv2d(4, 8, 3, padding=2, dilation=2, padding_mode="reflect"),
    ],
    ids=["linear", "conv-stride2", "conv-3x5-nobias", "conv-dilated-reflect"],
)
def test_full_rank_reproduces_output(layer: nn.Module) -> None:
    torch.manual_seed(0)
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    pair, energy = factorize(layer, full)
    x = torch.randn(2, 24) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 17, 15)
    assert torch.allclose(pair(x), layer(x), atol=1e-5)
    assert energy == pytest.approx(1.0)
    assert (pair[1].bias is None) == (layer.bias is None)


def test_energy_and_accuracy_increase_with_rank(real_conv: nn.Conv2d) -> None:
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = real_conv(x)
    energies, errors = [], []
    for rank in (1, 4, 8, 16, 32, 48, 64):
        pair, energy = factorize(real_conv, rank)
        energies.append(energy)
        errors.append(((pair(x) - ref).norm() / ref.norm()).item())
    assert all(a < b for a, b in zip(energies, energies[1:])), energies
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert energies[-1] == pytest.approx(1.0) and errors[-1] < 1e-5
    s = torch.linalg.svdvals(real_conv.weight.detach().reshape(64, -1).double())
    assert energies[3] == pytest.approx((s[:16] ** 2).sum().item() / (s**2).sum().item(), rel=1e-9)


@pytest.mark.parametrize(("stride", "k", "padding"), [(1, 3, 1), (2, 3, 1), (1, 1, 0), (2, 5, 2)])
def test_split_macs_match_formula(stride: int, k: int, padding: int) -> None:
    conv = nn.Conv2d(16, 32, k, stride=stride, padding=padding)
    x = torch.randn(1, 16, 32, 32)
    out_h, out_w = conv(x).shape[-2:]
    pair, _ = factorize(conv, 6)
    assert count_macs(pair, x) == lowrank_macs(32, 16, k, 6, out_h, out_w)
    assert count_macs(conv, x) == out_h * out_w * 32 * 16 * k * k


def test_linear_split_macs_match_formula() -> None:
    pair, _ = factorize(nn.Linear(64, 10), 5)
    assert count_macs(pair, torch.randn(1, 64)) == lowrank_macs(10, 64, 1, 5) == 5 * (64 + 10)


@given(out=st.integers(1, 96), in_=st.integers(1, 96), k=st.sampled_from([1, 3, 5]))
def test_max_useful_rank_is_the_last_saving_rank(out: int, in_: int, k: int) -> None:
    r = max_useful_rank(out, in_, k)
    original = out * in_ * k * k
    saving = [rank for rank in range(1, min(out, in_ * k * k) + 1) if lowrank_macs(out, in_, k, rank) < original]
    assert r == (max(saving) if saving else 0)


def test_apply_lowrank_renames_and_keeps_function() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    x = torch.randn(2, 3, 4, 4)
    ref = model(x)
    energy = apply_lowrank(model, {"0": 8, "3": 5})
    names = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert names == {"0.0", "0.1", "3.0", "3.1"}
    assert model[0][0].out_channels == 8 and model[3][0].out_features == 5
    assert energy == pytest.approx({"0": 1.0, "3": 1.0})
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_nested_names_are_replaced() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 2))
    energy = apply_lowrank(model, {"0.0": 2})
    assert isinstance(model[0][0], nn.Sequential) and energy["0.0"] < 1.0
    assert model.get_submodule("0.0.1").in_features == 2


@pytest.mark.parametrize(
    ("layer", "rank", "match"),
    [
        (nn.Conv2d(8, 8, 3, groups=8), 2, r"layer 'x': groups must be 1"),
        (nn.Conv2d(8, 16, 3, groups=2), 2, r"layer 'x': groups must be 1"),
        (nn.Conv2d(8, 16, 3), 0, r"layer 'x': rank must be an int in 1\.\.16, got 0"),
        (nn.Conv2d(2, 32, 3), 19, r"layer 'x': rank must be an int in 1\.\.18, got 19"),
        (nn.Linear(4, 6), 2.0, r"layer 'x': rank must be an int"),
        (nn.BatchNorm2d(4), 1, r"layer 'x': expected a Conv2d or Linear"),
    ],
)
def test_factorize_errors(layer: nn.Module, rank: int, match: str) -> None:
    with pytest.raises(PicojouleError, match=match):
        factorize(layer, rank, name="x")  # type: ignore[arg-type]


def test_apply_lowrank_checks_everything_before_changing() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    with pytest.raises(PicojouleError, match=r"layer '2': rank must be an int in 1\.\.4, got 5"):
        apply_lowrank(model, {"0": 2, "2": 5})
    with pytest.raises(PicojouleError, match=r"layer '1' \(ranks key\): expected a Conv2d or Linear"):
        apply_lowrank(model, {"0": 2, "1": 2})
    with pytest.raises(PicojouleError, match=r"layer 'zzz' \(ranks key\): no such module"):
        apply_lowrank(model, {"zzz": 2})
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
