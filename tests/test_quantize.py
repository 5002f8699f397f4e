"""Quantization simulation: MSE clipping, bit-width monotonicity, calibration, STE and errors."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from picojoule.errors import PicojouleError
from picojoule.spaces.quantize import (
    QuantConv2d,
    QuantLinear,
    calibrate_activations,
    quantization_error,
    quantize_model,
    quantize_weight_mse,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).pow(2).sum() / b.pow(2).sum()).item()


def minmax_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Plain per-channel symmetric quantization with clip = max|w| (reference, no search)."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.reshape(w.shape[0], -1).abs().amax(1).reshape(-1, *[1] * (w.dim() - 1)) / qmax
    return torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale


@pytest.fixture(scope="module")
def real_weight(resnet20_state: dict) -> torch.Tensor:
    return resnet20_state["layer3.0.conv2.weight"].float()


@pytest.fixture(scope="module")
def laplace_weight() -> torch.Tensor:
    """Laplacian weights (64 x 288) with a few 8-sigma outliers, like a trained conv layer."""
    g = torch.Generator().manual_seed(0)
    w = torch.distributions.Laplace(0.0, 0.05).sample((64, 288))
    idx = torch.randint(0, w.numel(), (40,), generator=g)
    w.view(-1)[idx] = 0.4 * torch.sign(torch.randn(40, generator=g))
    return w


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


LAYERS = ("0", "3", "8")


def calibrated(model: nn.Module, bits: tuple[int | None, int | None], n: int = 4) -> nn.Module:
    q = quantize_model(model, {name: bits for name in LAYERS})
    g = torch.Generator().manual_seed(1)
    calibrate_activations(q, [torch.randn(16, 3, 16, 16, generator=g) for _ in range(n)])
    return q


@pytest.mark.parametrize("which", ["real_weight", "laplace_weight"])
def test_mse_clipping_beats_minmax(which: str, request: pytest.FixtureRequest) -> None:
    w = request.getfixturevalue(which)
    for bits in (3, 4):
        assert rel_err(quantize_weight_mse(w, bits)[0], w) < 0.9 * rel_err(minmax_quant(w, bits), w)
    assert rel_err(quantize_weight_mse(w, 8)[0], w) <= rel_err(minmax_quant(w, 8), w) * (1 + 1e-6)


@pytest.mark.parametrize("which", ["real_weight", "laplace_weight"])
def test_error_falls_with_every_bit(which: str, request: pytest.FixtureRequest) -> None:
    w = request.getfixturevalue(which)
    errors = [rel_err(quantize_weight_mse(w, bits)[0], w) for bits in range(2, 17)]
    assert all(b < 0.5 * a for a, b in zip(errors, errors[1:])), errors  # ~4x per bit in theory
    assert errors[-1] < 1e-7  # 16 bits: near lossless


def test_quantized_weights_lie_on_the_grid(real_weight: torch.Tensor) -> None:
    wq, scale = quantize_weight_mse(real_weight, 4)
    assert scale.shape == (real_weight.shape[0],)
    levels = wq / scale.reshape(-1, 1, 1, 1)
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.round().min() >= -8 and levels.round().max() <= 7
    wt, scale_t = quantize_weight_mse(real_weight, 4, per_channel=False)
    assert scale_t.dim() == 0 and len(torch.unique(wt)) <= 16
    assert rel_err(wq, real_weight) < rel_err(wt, real_weight)  # per channel beats per tensor


def test_unsigned_range_after_relu_signed_before() -> None:
    q = calibrated(small_cnn(), (8, 8))
    assert q[0].input_quant.signed and q[0].input_quant.quant_range == (-128, 127)
    assert not q[3].input_quant.signed and q[3].input_quant.quant_range == (0, 255)
    assert int(q[3].input_quant.zero_point) == 0 and float(q[3].input_quant.scale) > 0


def test_w8a8_close_to_float_and_w4a4_worse() -> None:
    model = small_cnn()
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ref = model(x)
    err8 = ((calibrated(model, (8, 8))(x) - ref).norm() / ref.norm()).item()
    err4 = ((calibrated(model, (4, 4))(x) - ref).norm() / ref.norm()).item()
    assert err8 < 0.02
    assert err4 > 2 * err8


def test_float_bits_pass_through() -> None:
    model = small_cnn()
    q = quantize_model(model, {name: (32, None) for name in LAYERS})
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(q(x), model(x))  # no calibration needed either
    assert quantization_error(q) == {"0": 0.0, "3": 0.0, "8": 0.0}


def test_copy_is_quantized_original_untouched() -> None:
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_model(model, {"0": (8, 8), "8": (6, None)})
    assert type(model[0]) is nn.Conv2d and type(model[8]) is nn.Linear
    assert isinstance(q[0], QuantConv2d) and isinstance(q[0], nn.Conv2d)
    assert isinstance(q[8], QuantLinear) and type(q[3]) is nn.Conv2d
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_uncalibrated_activation_raises() -> None:
    q = quantize_model(small_cnn(), {"3": (8, 8)})
    with pytest.raises(PicojouleError, match=r"layer '3'.*not calibrated.*calibrate_activations"):
        q(torch.randn(2, 3, 16, 16))


def test_calibration_respects_max_batches_and_rejects_empty() -> None:
    q = quantize_model(small_cnn(), {"0": (8, 8)}).train()
    stats = q[1].running_mean.clone()
    assert calibrate_activations(q, (torch.randn(2, 3, 8, 8) for _ in range(10)), max_batches=3) == 3
    assert q.training and q[1].training and torch.equal(q[1].running_mean, stats)  # ran in eval, mode restored
    q.eval()
    with pytest.raises(PicojouleError, match="empty"):
        calibrate_activations(q, [])
    with pytest.raises(PicojouleError, match="max_batches"):
        calibrate_activations(q, [torch.randn(2, 3, 8, 8)], max_batches=0)
    q(torch.randn(2, 3, 8, 8))  # the earlier calibration survives the failed calls


def test_state_dict_round_trip_keeps_ranges() -> None:
    q = calibrated(small_cnn(), (6, 6))
    fresh = quantize_model(small_cnn(), {name: (6, 6) for name in LAYERS})
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(8, 3, 16, 16)
    assert torch.equal(fresh(x), q(x))
    assert fresh[3].input_quant.signed is False


def test_ste_gradient_is_identity_inside_clip_zero_outside() -> None:
    torch.manual_seed(0)
    q = quantize_model(nn.Sequential(nn.Linear(64, 32)), {"0": (3, None)})
    layer = q[0]
    layer.quantized_weight().sum().backward()
    scale = layer.w_clip_ratio * layer.weight.detach().abs().amax(1) / 3  # 3 bits: grid -4..3
    levels = (layer.weight.detach() / scale[:, None]).round()
    inside = (levels >= -4) & (levels <= 3)
    assert torch.equal(layer.weight.grad, inside.float())
    assert not inside.all()  # MSE clipping clipped some weights


def test_finetune_step_reduces_loss() -> None:
    model = small_cnn()
    q = calibrated(model, (4, 8))
    q.train()
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    target = model(x).detach()
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.mse_loss(q(x), target)
        loss.backward()
        assert q[0].weight.grad is not None and q[0].weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_quantization_error_matches_weight_error(real_weight: torch.Tensor) -> None:
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    conv.weight.data.copy_(real_weight)
    model = nn.Sequential(conv)
    err4 = quantization_error(quantize_model(model, {"0": (4, None)}))["0"]
    err8 = quantization_error(quantize_model(model, {"0": (8, None)}))["0"]
    assert err4 == pytest.approx(rel_err(quantize_weight_mse(real_weight, 4)[0], real_weight), rel=1e-4)
    assert err8 < err4 / 100


@pytest.mark.parametrize(
    ("bits", "match"),
    [
        ({"nope": (8, 8)}, r"layer 'nope' \(bits key\): no such module"),
        ({"1": (8, 8)}, r"layer '1' \(bits key\): expected a Conv2d or Linear, got BatchNorm2d"),
        ({"0": (1, 8)}, r"layer '0': w_bits must be an int in 2\.\.16"),
        ({"0": (8, 17)}, r"layer '0': a_bits must be an int in 2\.\.16"),
        ({"0": (4.5, 8)}, r"layer '0': w_bits"),
        ({"0": (True, 8)}, r"layer '0': w_bits"),
        ({"0": ("8", 8)}, r"layer '0': w_bits"),
        ({"0": (8,)}, r"layer '0': bits must be a pair"),
    ],
)
def test_bad_names_and_bits_raise(bits: dict, match: str) -> None:
    with pytest.raises(PicojouleError, match=match) as info:
        quantize_model(small_cnn(), bits)
    assert "\n" not in str(info.value)


def test_quantize_weight_mse_rejects_float_bits() -> None:
    with pytest.raises(PicojouleError, match="bits"):
        quantize_weight_mse(torch.randn(4, 4), 32)


def test_inference_fast_path_equals_fake_quantize_op():
    """Under no_grad the activation quantizer skips torch's fake-quant op; the values must be identical."""
    from picojoule.spaces.quantize import ActivationQuantizer

    for bits, signed_input in ((4, True), (8, False), (3, True)):
        q = ActivationQuantizer(bits, "t")
        q.start_observing()
        x = torch.randn(32, 8, 8, 8) * 3
        q(x if signed_input else x.relu())
        q.freeze()
        probe = torch.linspace(-12, 12, 200_001)
        with torch.no_grad():
            fast = q(probe)
        assert torch.equal(fast, q(probe.clone().requires_grad_()).detach())
