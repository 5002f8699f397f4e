"""Low-rank factorisation of Conv2d/Linear layers by truncated SVD.

A Linear ``(out, in)`` of rank r becomes ``Linear(in -> r, no bias)`` then ``Linear(r -> out, original bias)``.
A Conv2d ``(out, in, kh, kw)`` (groups == 1) is reshaped to ``(out, in*kh*kw)`` and becomes a ``kh x kw`` conv
``in -> r`` with the original stride/padding/dilation (no bias) followed by a ``1 x 1`` conv ``r -> out`` with the
original bias. ``sqrt(sigma)`` is split evenly between the two factors.

MAC count of the split, with ``H x W`` the layer's output size (1 x 1 for a Linear, per token for sequences)::

    k x k conv in -> r :  H * W * in * kh * kw * r
    1 x 1 conv r -> out:  H * W * r * out
    total              :  H * W * r * (in * kh * kw + out)     (original: H * W * out * in * kh * kw)

``lowrank_macs`` computes exactly this; cost models must use the same formula.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn

from picojoule.errors import PicojouleError
from picojoule.spaces.quantize import get_layer, replace_layer

__all__ = ["apply_lowrank", "factorize", "lowrank_macs", "max_useful_rank"]


def _kernel_area(k: int | tuple[int, ...]) -> int:
    return k * k if isinstance(k, int) else math.prod(k)


def lowrank_macs(out: int, in_: int, k: int | tuple[int, int], rank: int, out_h: int = 1, out_w: int = 1) -> int:
    """MACs of the rank-``rank`` split of a ``k x k`` conv ``in_ -> out`` with an ``out_h x out_w`` output."""
    return out_h * out_w * rank * (in_ * _kernel_area(k) + out)


def max_useful_rank(out: int, in_: int, k: int | tuple[int, int] = 1) -> int:
    """The largest rank r with ``r * (in_*k*k + out) < out * in_*k*k`` (the split saves MACs); 0 if none does."""
    fan_in = in_ * _kernel_area(k)
    return (out * fan_in - 1) // (fan_in + out)


def factorize(module: nn.Conv2d | nn.Linear, rank: int, name: str = "module") -> tuple[nn.Sequential, float]:
    """Split ``module`` into two layers of rank ``rank``; returns them and the retained spectral energy
    ``sum_{i<rank} sigma_i^2 / sum_i sigma_i^2``. ``name`` labels the layer in error messages."""
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise PicojouleError(f"layer '{name}': expected a Conv2d or Linear to factorise, got {type(module).__name__}")
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise PicojouleError(f"layer '{name}': groups must be 1 for low-rank factorisation, got {module.groups}")
    weight = module.weight.detach()
    matrix = weight.reshape(weight.shape[0], -1)
    full = min(matrix.shape)
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= rank <= full:
        raise PicojouleError(f"layer '{name}': rank must be an int in 1..{full}, got {rank!r}")

    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    rank = int(rank)
    root = s[:rank].sqrt()
    first_w, second_w = root[:, None] * vh[:rank], u[:, :rank] * root
    total = s.pow(2).sum()
    energy = (s[:rank].pow(2).sum() / total).item() if total > 0 else 1.0

    opts = {"device": weight.device, "dtype": weight.dtype}
    has_bias = module.bias is not None
    if isinstance(module, nn.Linear):
        first: nn.Module = nn.Linear(module.in_features, rank, bias=False, **opts)
        second: nn.Module = nn.Linear(rank, module.out_features, bias=has_bias, **opts)
    else:
        first = nn.Conv2d(module.in_channels, rank, module.kernel_size, module.stride,  # type: ignore[arg-type]
                          module.padding, module.dilation, bias=False, padding_mode=module.padding_mode, **opts)
        second = nn.Conv2d(rank, module.out_channels, 1, bias=has_bias, **opts)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if has_bias:
            second.bias.copy_(module.bias)
    pair = nn.Sequential(first, second)
    pair.train(module.training)
    return pair, energy


def apply_lowrank(model: nn.Module, ranks: Mapping[str, int]) -> dict[str, float]:
    """Replace each named layer of ``model`` in place by its rank-``ranks[name]`` split (``name.0``, ``name.1``);
    returns the retained energy per layer. All names and ranks are checked before anything changes."""
    if "" in ranks:
        raise PicojouleError("layer '' (ranks key): cannot factorise the model's root module in place")
    splits = {name: factorize(get_layer(model, name, "ranks key"), rank, name) for name, rank in ranks.items()}
    for name, (pair, _) in splits.items():
        replace_layer(model, name, pair)
    return {name: energy for name, (_, energy) in splits.items()}
