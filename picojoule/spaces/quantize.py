"""Quantization simulation: fake-quantized Conv2d/Linear with MSE-chosen clipping ranges.

Weights are quantized per output channel, symmetric (zero point 0), on the full signed grid
``[-2**(b-1), 2**(b-1) - 1]`` with ``scale = clip / (2**(b-1) - 1)``; the clip is a ratio of the channel's
``max|w|`` chosen by grid search to minimise the MSE. The ratio stays fixed after init and the scale is
recomputed from the current weights on every forward, so it follows the weights during fine-tuning.

A layer's input activation (its ``a_bits``, HAQ's convention) is quantized per tensor with a range chosen by
MSE over a uniform sample of calibration values: unsigned ``[0, 2**b - 1]`` (zero point 0, the lower end of the
asymmetric range pinned to 0) when every observed value was non-negative, e.g. after ReLU, signed symmetric
otherwise. A bit-width of 32 or None leaves that tensor in float.

Both use ``torch.fake_quantize_per_{channel,tensor}_affine``: they give the straight-through estimator
(gradient 1 inside the clip range, 0 outside) and map to ONNX QuantizeLinear/DequantizeLinear. Found with
torch 2.13: the ops accept any ``quant_min <= zero_point <= quant_max`` within int32 and match a reference
round/clamp exactly for every range of 2..16 bits (float32 rounding shows from 24 bits; the per-channel op
rejects unsigned 32 bits), so no custom autograd function is needed. ONNX export (TorchScript and dynamo
exporters alike) accepts only ``(0, 127)``, ``(0, 255)`` and ``(-128, 127)``: only 8 bits exports, and the
narrow weight range ``(-127, 127)`` does not, which is why weights use the full signed grid. A W8A8 model
exports with both exporters (6 Q/DQ pairs for 3 layers) and onnxruntime matches the fake-quant forward.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from picojoule.errors import PicojouleError

__all__ = [
    "ActivationQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "calibrate_activations",
    "get_layer",
    "quantization_error",
    "quantize_model",
    "quantize_weight_mse",
]

MIN_BITS, MAX_BITS = 2, 16
FLOAT_BITS = 32
WEIGHT_CLIP_RATIOS = torch.linspace(0.3, 1.0, 100)
ACT_CLIP_RATIOS = torch.linspace(0.05, 1.0, 100)  # activation maxima are extreme values: search lower
ACT_SAMPLE_SIZE = 2**16  # calibration values kept per layer (a uniform sample of all values seen)
_MIN_SCALE = 1e-12
_SEARCH_CHUNK = 2**22  # elements per vectorised step of the clip search


def _check_bits(name: str, field: str, bits: Any) -> int | None:
    """Return ``bits`` as an int in 2..16, or None for 32/None (float); else raise naming layer and field."""
    if bits is None or (isinstance(bits, numbers.Integral) and bits == FLOAT_BITS):
        return None
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not MIN_BITS <= bits <= MAX_BITS:
        raise PicojouleError(
            f"layer '{name}': {field} must be an int in {MIN_BITS}..{MAX_BITS} "
            f"or {FLOAT_BITS}/None (float), got {bits!r}"
        )
    return int(bits)


def _qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer grid of a ``bits``-wide signed or unsigned tensor."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _search_clip_ratio(x: torch.Tensor, amax: torch.Tensor, qmin: int, qmax: int, ratios: torch.Tensor) -> torch.Tensor:
    """Per row of ``x`` (C, N), the ratio of ``amax`` (C,) whose clip ``ratio * amax`` minimises the MSE."""
    x = x.detach().float()[None]
    amax = amax.detach().float().to(x.device)[None, :, None]
    ratios = ratios.to(x.device)
    chunk = max(1, _SEARCH_CHUNK // x.numel())  # ratios tried at once, vectorised with the channels
    errors = []
    for part in ratios.split(chunk):
        scale = (part[:, None, None] * amax / qmax).clamp_min(_MIN_SCALE)
        sq = torch.div(x, scale).round_().clamp_(qmin, qmax).mul_(scale).sub_(x).pow_(2)
        errors.append(sq.mean(dim=2))
    return ratios[torch.cat(errors).argmin(dim=0)]  # first (smallest) ratio on ties


def _fake_quant_weight(w: torch.Tensor, ratio: torch.Tensor, bits: int, per_channel: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric fake quantization of ``w`` with clip ``ratio * max|w|`` per output channel (dim 0) or per tensor."""
    qmin, qmax = _qrange(bits, signed=True)
    rows = w.detach().reshape(w.shape[0] if per_channel else 1, -1)
    scale = (ratio.to(rows.device) * rows.abs().amax(dim=1) / qmax).float().clamp_min(_MIN_SCALE)
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    if per_channel:
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, qmin, qmax), scale
    return torch.fake_quantize_per_tensor_affine(w, scale[0], zero[0], qmin, qmax), scale[0]


def _weight_clip_ratio(w: torch.Tensor, bits: int, per_channel: bool = True) -> torch.Tensor:
    """MSE-optimal clip ratios of ``w``: shape (out_channels,) per channel, (1,) per tensor."""
    qmin, qmax = _qrange(bits, signed=True)
    rows = w.detach().reshape(w.shape[0] if per_channel else 1, -1)
    return _search_clip_ratio(rows, rows.abs().amax(dim=1), qmin, qmax, WEIGHT_CLIP_RATIOS)


def quantize_weight_mse(w: torch.Tensor, bits: int, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize-dequantize ``w`` (bits 2..16) symmetrically with MSE-chosen clipping; returns ``(wq, scale)``.

    ``scale`` has one entry per output channel (dim 0) when ``per_channel``, else it is a scalar tensor.
    """
    if _check_bits("quantize_weight_mse", "bits", bits) is None:
        raise PicojouleError(f"quantize_weight_mse: bits must be an int in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return _fake_quant_weight(w, _weight_clip_ratio(w, bits, per_channel), bits, per_channel)


class ActivationQuantizer(nn.Module):
    """Per-tensor fake quantizer of a layer's input, calibrated by observing inputs then choosing an MSE range."""

    def __init__(self, bits: int | None, layer_name: str) -> None:
        super().__init__()
        self.bits = bits
        self.layer_name = layer_name
        self.signed: bool | None = None  # None until calibrated
        self.observing = False
        self.passthrough = False  # inputs pass unquantized and unobserved (e.g. during BN re-estimation)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self._reset_observer()

    @property
    def calibrated(self) -> bool:
        return self.bits is None or self.signed is not None

    @property
    def quant_range(self) -> tuple[int, int]:
        """The integer grid ``(qmin, qmax)``; needs calibration (the sign is observed)."""
        if self.bits is None:
            raise PicojouleError(f"layer '{self.layer_name}': input activation is not quantized (a_bits 32/None)")
        if self.signed is None:
            raise PicojouleError(
                f"layer '{self.layer_name}': input activation is quantized to {self.bits} bits but not calibrated; "
                "call calibrate_activations(model, batches) first"
            )
        return _qrange(self.bits, self.signed)

    def _reset_observer(self) -> None:
        self._min, self._max = float("inf"), float("-inf")
        self._sample = torch.empty(0)
        self._keys = torch.empty(0)
        self._rng = torch.Generator().manual_seed(0)  # the sample, hence the range, is repeatable

    def start_observing(self) -> None:
        """Forget earlier statistics and pass inputs through unquantized while recording them."""
        self._reset_observer()
        self.observing, self.passthrough = True, False

    def stop_observing(self) -> None:
        """Drop the statistics without changing the range."""
        self._reset_observer()
        self.observing = False

    def _observe(self, x: torch.Tensor) -> None:
        """Record min/max and keep a uniform sample: the ACT_SAMPLE_SIZE values with the smallest random keys."""
        values = x.detach().reshape(-1).float()
        if values.numel() == 0:
            return
        self._min = min(self._min, values.min().item())
        self._max = max(self._max, values.max().item())
        keys = torch.rand(values.numel(), generator=self._rng, device="cpu").to(values.device)
        if self._keys.numel() >= ACT_SAMPLE_SIZE:
            keep = keys < self._keys.max()
            values, keys = values[keep], keys[keep]
        values = torch.cat([self._sample.to(values.device), values])
        keys = torch.cat([self._keys.to(keys.device), keys])
        if keys.numel() > ACT_SAMPLE_SIZE:
            keys, idx = torch.topk(keys, ACT_SAMPLE_SIZE, largest=False)
            values = values[idx]
        self._sample, self._keys = values, keys

    def freeze(self) -> bool:
        """Stop observing and fix the range from the statistics; False if this layer saw no input."""
        if self.bits is None or self._sample.numel() == 0:
            self.stop_observing()
            return False
        self.signed = self._min < 0
        qmin, qmax = _qrange(self.bits, self.signed)
        amax = max(abs(self._min), abs(self._max))
        ratio = _search_clip_ratio(self._sample[None], torch.tensor([amax]), qmin, qmax, ACT_CLIP_RATIOS).item()
        self.scale.fill_(max(ratio * amax / qmax, _MIN_SCALE))
        self.zero_point.zero_()
        self.stop_observing()
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits is None or self.passthrough:
            return x
        if self.observing:
            self._observe(x)
            return x
        qmin, qmax = self.quant_range
        if torch.is_grad_enabled() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, qmin, qmax)
        # inference: the same arithmetic as the op (nearbyint(x / scale) + zp, clamp, rescale), 3-4x faster
        # on CPU because it skips the straight-through-estimator mask
        zp = self.zero_point.to(x.dtype)
        return x.mul(1.0 / self.scale).round_().add_(zp).clamp_(qmin, qmax).sub_(zp).mul_(self.scale)

    def get_extra_state(self) -> torch.Tensor:
        """The observed sign as a tensor (-1 uncalibrated, 0 unsigned, 1 signed); a dict breaks jit tracing."""
        return torch.tensor(-1 if self.signed is None else int(self.signed))

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.signed = None if int(state) < 0 else bool(state)

    def extra_repr(self) -> str:
        sign = {None: "uncalibrated", True: "signed", False: "unsigned"}[self.signed]
        return f"bits={self.bits}, {sign}"


class _QuantLayer:
    """Mixin for a Conv2d/Linear subclass: fake-quantized weight (per output channel) and input (per tensor).

    Subclassing keeps parameter names (``conv.weight``) and ``isinstance(m, nn.Conv2d)`` for hooks and cost models.
    """

    weight: nn.Parameter

    def _init_quant(self, name: str, w_bits: int | None, a_bits: int | None) -> None:
        self.layer_name = name
        self.w_bits = w_bits
        self.input_quant = ActivationQuantizer(a_bits, name)
        ratio = _weight_clip_ratio(self.weight, w_bits) if w_bits else torch.ones(self.weight.shape[0])
        self.register_buffer("w_clip_ratio", ratio.to(self.weight.device))  # type: ignore[attr-defined]

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the forward pass uses it (fake-quantized, gradient by STE)."""
        if self.w_bits is None:
            return self.weight
        return _fake_quant_weight(self.weight, self.w_clip_ratio, self.w_bits)[0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}"  # type: ignore[misc]


class QuantConv2d(_QuantLayer, nn.Conv2d):
    """nn.Conv2d with fake-quantized weight and input."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, name: str, w_bits: int | None, a_bits: int | None) -> QuantConv2d:
        """Wrap ``conv``'s own parameters (shared, not copied)."""
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                conv.padding, conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        q.weight, q.bias = conv.weight, conv.bias
        q.train(conv.training)
        q._init_quant(name, w_bits, a_bits)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.quantized_weight(), self.bias)


class QuantLinear(_QuantLayer, nn.Linear):
    """nn.Linear with fake-quantized weight and input."""

    @classmethod
    def from_float(cls, linear: nn.Linear, name: str, w_bits: int | None, a_bits: int | None) -> QuantLinear:
        """Wrap ``linear``'s own parameters (shared, not copied)."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        q.weight, q.bias = linear.weight, linear.bias
        q.train(linear.training)
        q._init_quant(name, w_bits, a_bits)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_quant(x), self.quantized_weight(), self.bias)


def get_layer(model: nn.Module, name: str, field: str) -> nn.Conv2d | nn.Linear:
    """The Conv2d/Linear named ``name`` in ``model``; ``field`` names the user's input in the error."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise PicojouleError(f"layer '{name}' ({field}): no such module in the model") from None
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise PicojouleError(f"layer '{name}' ({field}): expected a Conv2d or Linear, got {type(module).__name__}")
    return module


def replace_layer(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model``; returns the model (``new`` itself when ``name`` is the root)."""
    if name == "":
        return new
    model.set_submodule(name, new)
    return model


def quantize_model(model: nn.Module, bits: Mapping[str, tuple[int | None, int | None]]) -> nn.Module:
    """A deep copy of ``model`` with each named Conv2d/Linear replaced by its fake-quantized twin.

    ``bits`` maps qualified module names to ``(w_bits, a_bits)``; ``a_bits`` are the bits of the layer's input.
    Layers with quantized inputs need ``calibrate_activations`` before use. The original model is not touched.
    """
    plan = []
    for name, pair in bits.items():
        get_layer(model, name, "bits key")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise PicojouleError(f"layer '{name}': bits must be a pair (w_bits, a_bits), got {pair!r}")
        plan.append((name, _check_bits(name, "w_bits", pair[0]), _check_bits(name, "a_bits", pair[1])))
    model = copy.deepcopy(model)
    for name, w_bits, a_bits in plan:
        layer = model.get_submodule(name)
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        model = replace_layer(model, name, cls.from_float(layer, name, w_bits, a_bits))  # type: ignore[arg-type]
    return model


@contextmanager
def passthrough(model: nn.Module) -> Iterator[None]:
    """Let inputs through every activation quantizer of ``model`` unquantized and unobserved inside the block
    (BatchNorm re-estimation before calibration)."""
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    for q in quantizers:
        q.passthrough = True
    try:
        yield
    finally:
        for q in quantizers:
            q.passthrough = False


def calibrate_activations(model: nn.Module, batches: Iterable[torch.Tensor], max_batches: int | None = None) -> int:
    """Run ``batches`` (tensors, or tuples whose first item is the input) in eval mode with observers on,
    then freeze every input-activation range. Returns the number of batches used."""
    if max_batches is not None and max_batches < 1:
        raise PicojouleError(f"calibrate_activations: max_batches must be >= 1 or None, got {max_batches}")
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer) and m.bits is not None]
    if not quantizers:
        return 0
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for q in quantizers:
        q.start_observing()
    used = 0
    try:
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            used += 1
    except BaseException:
        used = 0  # a failed run leaves the earlier ranges as they were
        raise
    finally:
        for m, training in modes.items():
            m.training = training
        for q in quantizers:
            if used:
                q.freeze()
            else:
                q.stop_observing()
    if used == 0:
        raise PicojouleError("calibrate_activations: batches is empty; expected at least one input tensor")
    return used


@torch.no_grad()
def quantization_error(model: nn.Module) -> dict[str, float]:
    """Relative MSE ``||wq - w||^2 / ||w||^2`` of each quantized layer's weights (0.0 for float weights)."""
    errors = {}
    for name, module in model.named_modules():
        if isinstance(module, _QuantLayer):
            w = module.weight.float()
            err = (module.quantized_weight().float() - w).pow(2).sum() / w.pow(2).sum().clamp_min(1e-30)
            errors[name] = err.item()
    return errors
