"""Checking a policy against a model, and the policy formats of other tools.

* HAQ (Wang et al., CVPR 2019): ``[[w_bits, a_bits], ...]``, one pair per compute layer (conv,
  linear) in graph order.
* AMC (He et al., ECCV 2018): ``[preserve_ratio, ...]``, one per compute layer in graph order: the
  keep of the layer's output pruning group, 1.0 where its outputs cannot be pruned.
* Torch-Pruning (Fang et al., CVPR 2023): ``pruning_ratio_dict`` keyed by module name (the layer
  names of a graph built from an nn.Module are its module paths), ``ratio = 1 - keep``, one entry per
  pruning group at its anchor, 0.0 for the unpruned ones. Pass ``pruning_ratio=0`` beside it so no
  group falls back to a global ratio; Torch-Pruning rounds channel counts its own way, so a layer
  may differ by one channel from :func:`picojoule.hwmodels.workload.kept_channels`.

Imports check their input and return a policy whose other fields are float32 defaults, with
``meta['provenance']`` naming the format.
"""

from __future__ import annotations

from typing import Any

from picojoule.errors import PicojouleError
from picojoule.graph import Layer, LayerGraph
from picojoule.passes import PASSES
from picojoule.policy import LayerPolicy, Policy, group_keeps

#: decimal places kept when converting keep <-> pruning ratio (1 - (1 - k) is not always k in floats)
_RATIO_DIGITS = 12


def validate_policy(policy: Policy, graph: LayerGraph, source: str = "policy") -> None:
    """Raise a one-line error for the first problem of ``policy`` on ``graph``: an unknown layer, a value out
    of range, or what a compression pass cannot apply (a rank that does not shrink the layer, different keeps
    inside one pruning group, 2:4 sparsity other than 0.5, ...)."""
    policy.default.check(f"{source}: default")
    for name, lp in policy.layers.items():
        if name not in graph._index:
            raise PicojouleError(f"{source}: layer '{name}' is not in model '{graph.name}'")
        lp.check(f"{source}: layer '{name}'")
    for p in PASSES:
        p.validate(policy, graph, source)


def _group_layers(graph: LayerGraph, group: int) -> list[Layer]:
    """The compute layers whose output channels lie in pruning group ``group``."""
    return [layer for layer in graph.compute_layers() if layer.group == group]


def _group_keep(policy: Policy, graph: LayerGraph, layer: Layer) -> float:
    return group_keeps(policy, graph)[layer.group] if layer.group >= 0 else 1.0


def _per_layer(values: Any, graph: LayerGraph, source: str, what: str) -> list[tuple[Layer, Any]]:
    """Pair a per-compute-layer list with the compute layers, checking its length."""
    layers = graph.compute_layers()
    if not isinstance(values, (list, tuple)) or len(values) != len(layers):
        got = f"{len(values)} entries" if isinstance(values, (list, tuple)) else repr(values)
        raise PicojouleError(f"{source}: expected a list of {len(layers)} {what} (one per compute layer of "
                             f"'{graph.name}'), got {got}")
    return list(zip(layers, values))


def _keeps_to_policy(keeps: dict[int, float], graph: LayerGraph, provenance: str) -> Policy:
    """A policy with each group's keep on all of its compute layers."""
    layers = {layer.name: LayerPolicy(keep=keeps[layer.group]) for g in keeps for layer in _group_layers(graph, g)}
    return Policy(LayerPolicy(), layers, {"model": graph.name, "provenance": provenance})


def _set_group_keep(keeps: dict[int, float], layer: Layer, keep: float, where: str) -> None:
    """Record ``keep`` for ``layer``'s group, refusing an unprunable layer or a second, different keep."""
    if layer.group < 0:
        if keep != 1.0:
            raise PicojouleError(f"{where}: layer '{layer.name}': its output channels cannot be pruned; "
                                 f"expected keep 1.0, got {keep}")
        return
    if keeps.setdefault(layer.group, keep) != keep:
        raise PicojouleError(f"{where}: layer '{layer.name}': expected keep {keeps[layer.group]} like the other "
                             f"layers of its pruning group {layer.group}, got {keep}")


def _number(value: Any, lo_open: float, hi: float, where: str, field: str) -> float:
    """``value`` as a float in (lo_open, hi]; else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo_open < value <= hi:
        raise PicojouleError(f"{where}: field '{field}': expected a number in ({lo_open}, {hi}], got {value!r}")
    return float(value)


# -- HAQ ---------------------------------------------------------------------------------------------


def to_haq(policy: Policy, graph: LayerGraph) -> list[list[int]]:
    """``[[w_bits, a_bits], ...]`` per compute layer in graph order."""
    bits = [policy.for_layer(layer.name) for layer in graph.compute_layers()]
    return [[lp.w_bits, lp.a_bits] for lp in bits]


def from_haq(strategy: Any, graph: LayerGraph, source: str = "haq") -> Policy:
    """A policy from a HAQ strategy; layers not in it stay float32."""
    layers = {}
    for layer, pair in _per_layer(strategy, graph, source, "[w_bits, a_bits] pairs"):
        where = f"{source}: layer '{layer.name}'"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise PicojouleError(f"{where}: expected a [w_bits, a_bits] pair, got {pair!r}")
        lp = LayerPolicy(w_bits=pair[0], a_bits=pair[1])
        lp.check(where)
        layers[layer.name] = lp
    return Policy(LayerPolicy(), layers, {"model": graph.name, "provenance": "haq"})


# -- AMC ---------------------------------------------------------------------------------------------


def to_amc(policy: Policy, graph: LayerGraph) -> list[float]:
    """Preserve ratio per compute layer in graph order: its output group's keep, 1.0 if unprunable."""
    return [_group_keep(policy, graph, layer) for layer in graph.compute_layers()]


def from_amc(ratios: Any, graph: LayerGraph, source: str = "amc") -> Policy:
    """A policy from AMC preserve ratios; the layers of one pruning group must agree."""
    keeps: dict[int, float] = {}
    for layer, ratio in _per_layer(ratios, graph, source, "preserve ratios"):
        keep = _number(ratio, 0, 1, f"{source}: layer '{layer.name}'", "preserve_ratio")
        _set_group_keep(keeps, layer, keep, source)
    return _keeps_to_policy(keeps, graph, "amc")


# -- Torch-Pruning -----------------------------------------------------------------------------------


def to_torch_pruning(policy: Policy, graph: LayerGraph) -> dict[str, float]:
    """``pruning_ratio_dict``: module name of each group's anchor -> ``1 - keep``."""
    return {g.anchor: round(1.0 - policy.for_layer(g.anchor).keep, _RATIO_DIGITS) for g in graph.groups}


def from_torch_pruning(ratios: Any, graph: LayerGraph, source: str = "torch-pruning") -> Policy:
    """A policy from a ``pruning_ratio_dict`` keyed by module name (any layer of a group names it)."""
    if not isinstance(ratios, dict):
        raise PicojouleError(f"{source}: expected a mapping of module name to pruning ratio, got {ratios!r}")
    keeps: dict[int, float] = {}
    for name, ratio in ratios.items():
        if str(name) not in graph._index:
            raise PicojouleError(f"{source}: module '{name}' is not a layer of model '{graph.name}'")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise PicojouleError(f"{source}: layer '{name}': field 'pruning_ratio': expected a number in [0, 1), "
                                 f"got {ratio!r}")
        _set_group_keep(keeps, graph[str(name)], round(1.0 - ratio, _RATIO_DIGITS), source)
    return _keeps_to_policy(keeps, graph, "torch-pruning")
