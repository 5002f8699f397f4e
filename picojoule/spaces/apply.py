"""Apply a :class:`Policy` to a torch model: each compression pass in turn (:mod:`picojoule.passes`): structured
pruning, then low-rank splits, then sparsity, then fake quantization.

1. **Pruning.** For every pruning group of the :class:`LayerGraph` whose keep (:func:`group_keeps`: the value its
   members set) is below 1, the ``kept_channels(group.channels, keep)`` most important output channels stay (the
   cost model's rounding rule). Importance is the L1 norm of each output channel's weights summed over the
   group's members (or a seeded random score, as a baseline). Torch-Pruning's DependencyGraph removes the
   channels from every coupled layer (BN, depthwise convs, residual adds, the consumers' inputs).
   Option-A CIFAR ResNets zero-pad channels in their shortcuts; Torch-Pruning would treat that pad as an
   element-wise op and couple the stages it joins. Each :class:`~picojoule.zoo.PadShortcut` is therefore
   replaced by an equivalent :class:`ChannelMapShortcut` (source channel ``src[i]`` goes to output channel
   ``dst[i]``, the rest are zeros) with its own pruner, which keeps input and output channels independent.
   After pruning, every conv/linear must have the channel counts the cost model assumes, or we raise.
2. **Low rank.** Layers with ``rank > 0`` are split by truncated SVD (``apply_lowrank``), the rank clipped
   to the pruned layer's full rank ``min(out, in * kh * kw)`` as the cost model does.
3. **Sparsity.** Layers with ``sparsity > 0`` lose their smallest weights, unstructured or 2:4
   (:mod:`picojoule.passes.sparsity`); both halves of a split layer are sparsified.
4. **Quantization.** Conv/linear layers with ``w_bits`` or ``a_bits`` below 32 become fake-quantized
   (``quantize_model``); both halves ``name.0``/``name.1`` of a split layer take that layer's bits.

Layers whose input activations are quantized must be calibrated before use:
``calibrate_activations(model, batches)`` (it also fits ``evaluate(..., calibrate=...)``).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn import functional as F

from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph, PruningGroup, build_graph
from picojoule.passes import ordered
from picojoule.policy import Policy, group_keeps, kept_channels
from picojoule.spaces.formats import validate_policy
from picojoule.spaces.quantize import get_layer
from picojoule.zoo import PadShortcut

__all__ = ["ApplyInfo", "ChannelMapPruner", "ChannelMapShortcut", "apply_policy", "count_macs_params",
           "count_nonzeros", "prune_model", "replace_pad_shortcuts"]

Importance = Literal["l1", "random"]

class ChannelMapShortcut(nn.Module):
    """Shortcut that subsamples space by ``stride`` and copies input channel ``src[i]`` to output channel
    ``dst[i]``; output channels no source maps to are zero. ``from_pad`` gives an exact PadShortcut twin."""

    src: Tensor
    dst: Tensor

    def __init__(self, in_channels: int, out_channels: int, src: Tensor, dst: Tensor, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.register_buffer("src", torch.as_tensor(src, dtype=torch.long))
        self.register_buffer("dst", torch.as_tensor(dst, dtype=torch.long))

    @classmethod
    def from_pad(cls, pad: PadShortcut) -> ChannelMapShortcut:
        front = (pad.out_planes - pad.in_planes) // 2
        src = torch.arange(pad.in_planes)
        return cls(pad.in_planes, pad.out_planes, src, src + front, pad.stride)

    def table(self) -> Tensor:
        """For each output channel, the input channel it copies, or ``in_channels`` (a zero channel) if none."""
        table = torch.full((self.out_channels,), self.in_channels, dtype=torch.long, device=self.src.device)
        return table.index_copy(0, self.dst, self.src)

    def forward(self, x: Tensor) -> Tensor:
        # one zero channel appended, then a gather with constant indices: exported as Slice, Pad and Gather (no
        # ScatterElements or shape arithmetic), which ONNX Runtime also runs on the integers of an int8 tensor
        x = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, 1))
        return x.index_select(1, self.table())

    def remove_channels(self, idxs: Sequence[int], outputs: bool) -> None:
        """Remove input (``outputs=False``) or output channels ``idxs``: their pairs go, the rest renumber."""
        removed = torch.tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long, device=self.src.device)
        pos = self.dst if outputs else self.src
        keep = ~torch.isin(pos, removed)
        renumbered = pos - torch.searchsorted(removed, pos)  # minus the removed channels before each one
        if outputs:
            self.dst, self.out_channels = renumbered, self.out_channels - len(removed)
        else:
            self.src, self.in_channels = renumbered, self.in_channels - len(removed)
        self.src, self.dst = self.src[keep], self.dst[keep]

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}"

class ChannelMapPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning handler for :class:`ChannelMapShortcut`: input and output channels prune independently
    (prune_in_channels != prune_out_channels, so Torch-Pruning sees no intra-layer coupling)."""

    TARGET_MODULES = (ChannelMapShortcut,)

    def prune_out_channels(self, layer: ChannelMapShortcut, idxs: Sequence[int]) -> nn.Module:
        layer.remove_channels(idxs, outputs=True)
        return layer

    def prune_in_channels(self, layer: ChannelMapShortcut, idxs: Sequence[int]) -> nn.Module:
        layer.remove_channels(idxs, outputs=False)
        return layer

    def get_out_channels(self, layer: ChannelMapShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelMapShortcut) -> int:
        return layer.in_channels

@dataclass
class ApplyInfo:
    """What :func:`apply_policy` did, and the compressed model's real size (per sample).

    ``channels``: anchor of each pruned group -> (kept, original) channels; ``removed``: the indices of the
    original output channels it lost (ascending). ``ranks``/``energy``: effective rank and retained spectral
    energy of each split layer. ``zeros``: zero weights of each sparsified module. ``quantized``:
    fake-quantized module names. ``macs``/``params``: counted on the compressed model (forward hooks on
    Conv2d/Linear; every parameter, BN included); ``nonzeros``: ``params`` less the zero weights of
    sparsified modules.
    If ``needs_calibration``, run ``calibrate_activations(model, batches)`` before using the model.
    """

    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    removed: dict[str, list[int]] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)
    zeros: dict[str, int] = field(default_factory=dict)
    quantized: list[str] = field(default_factory=list)
    macs: int = 0
    params: int = 0
    nonzeros: int = 0
    needs_calibration: bool = False

def count_macs_params(model: nn.Module, example_input: Tensor) -> tuple[int, int]:
    """MACs per sample of every Conv2d/Linear in one eval-mode forward (forward hooks), and all parameters
    (BN scale and shift included; running statistics are buffers)."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += out.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            macs += out.numel() * module.in_features

    flags = [(m, m.training) for m in model.modules()]
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
        for m, training in flags:
            m.training = training
    return macs // example_input.shape[0], sum(p.numel() for p in model.parameters())

def count_nonzeros(model: nn.Module) -> int:
    """Parameters of ``model`` less the weights that a sparsity mask holds at zero (the compressed model's
    non-zeros as the cost model counts them: a dense weight's own zeros count as non-zeros)."""
    masked = sum(int((m.weight_mask == 0).sum()) for m in model.modules() if hasattr(m, "weight_mask"))
    return sum(p.numel() for p in model.parameters()) - masked


def apply_policy(model: nn.Module, example_input: Tensor, policy: Policy, graph: LayerGraph | None = None,
                 importance: Importance = "l1", seed: int = 0) -> tuple[nn.Module, ApplyInfo]:
    """A compressed copy of ``model`` (``model`` is untouched) and what was done to it.

    ``graph`` is ``model``'s LayerGraph (built from ``example_input`` when None); ``importance`` ranks the
    channels to prune ("l1" magnitude, or "random" under ``seed``). The policy is validated against the graph
    first (one-line error naming the layer and field).
    """
    if importance not in ("l1", "random"):
        raise PicojouleError(f"apply_policy: importance must be 'l1' or 'random', got {importance!r}")
    graph = graph if graph is not None else build_graph(model, example_input)
    validate_policy(policy, graph)
    training, model = model.training, copy.deepcopy(model)
    info, counted = ApplyInfo(), False
    for p in ordered():
        if p.keeps_counts and not counted:  # counted before fake quantization (its quantizers need calibration)
            info.macs, info.params = count_macs_params(model, example_input)
            info.nonzeros, counted = count_nonzeros(model), True
        if p.active(policy, graph):
            model = p.apply(model, example_input, policy, graph, info, importance=importance, seed=seed)
    if not counted:
        info.macs, info.params = count_macs_params(model, example_input)
        info.nonzeros = count_nonzeros(model)
    model.train(training)  # Torch-Pruning's tracing leaves the model in eval mode
    return model, info


# ---------------------------------------------------------------------------------------------- pruning

def replace_pad_shortcuts(model: nn.Module) -> int:
    """Replace each PadShortcut of ``model`` in place by its exact ChannelMapShortcut twin; returns how many."""
    pads = [name for name, module in model.named_modules() if isinstance(module, PadShortcut)]
    for name in pads:
        model.set_submodule(name, ChannelMapShortcut.from_pad(model.get_submodule(name)))
    return len(pads)

def _pruned_groups(policy: Policy, graph: LayerGraph) -> list[tuple[PruningGroup, int]]:
    """(group, channels to keep) for each group whose keep is below 1."""
    kept = [(g, kept_channels(g.channels, k)) for g, k in zip(graph.groups, group_keeps(policy, graph))]
    return [(g, k) for g, k in kept if k < g.channels]

def _channel_scores(members: list[nn.Module], importance: Importance, gen: torch.Generator) -> Tensor:
    """Importance of each output channel: L1 norm of its weights summed over ``members``, or random."""
    channels = members[0].weight.shape[0]
    if importance == "random":
        return torch.rand(channels, generator=gen)
    return sum(m.weight.detach().abs().flatten(1).sum(1).double() for m in members)

def prune_model(model: nn.Module, example_input: Tensor, policy: Policy, graph: LayerGraph,
                importance: Importance = "l1", seed: int = 0) -> dict[str, list[int]]:
    """Prune ``model`` in place; returns anchor -> removed output channels of each pruned group."""
    plan = _pruned_groups(policy, graph)
    if not plan:
        return {}
    replace_pad_shortcuts(model)
    gen = torch.Generator().manual_seed(seed)
    # scores first, on the unpruned weights: pruning one group never renumbers another group's outputs
    drops = {}
    for group, keep in plan:
        members = [get_layer(model, name, "pruning group member") for name in group.members]
        scores = _channel_scores(members, importance, gen)
        drops[group.anchor] = sorted(torch.argsort(scores, stable=True)[: group.channels - keep].tolist())
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input, customized_pruners={ChannelMapShortcut: ChannelMapPruner()},
            verbose=False)
    for anchor, idxs in drops.items():
        module = model.get_submodule(anchor)
        dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels, idxs).prune()
    _check_channels(model, policy, graph)
    return drops

def _check_channels(model: nn.Module, policy: Policy, graph: LayerGraph) -> None:
    """Every conv/linear must have the channel counts the cost model assumes after pruning."""
    keep = dict(zip((g.id for g in graph.groups), group_keeps(policy, graph)))  # the group-keep rule

    def expected(channels: int, group: int) -> int:
        return kept_channels(channels, keep[group]) if group >= 0 else channels

    for layer in graph.compute_layers():
        module = get_layer(model, layer.name, "policy")
        real = (module.out_channels, module.in_channels) if isinstance(module, nn.Conv2d) else (
            module.out_features, module.in_features)
        want = (expected(layer.out_channels, layer.group), expected(layer.in_channels, layer.in_group))
        if real != want:
            raise PicojouleError(f"layer '{layer.name}': pruning left (out, in) channels {real}, the layer graph "
                                 f"expects {want}: Torch-Pruning couples this layer differently")
