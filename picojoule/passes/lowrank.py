"""Low rank: a conv/linear split into two by truncated SVD (the ``rank`` knob; 0 = no split).

A k x k conv C->M at rank r becomes a k x k conv C->r then a 1 x 1 conv r->M (a linear becomes two linears);
the r-channel intermediate is written and read once more. Only ranks that really shrink the layer are allowed:
``r * (C*k*k + M) < M * C*k*k``. Pricing clips the rank to the pruned layer's full rank, as applying does
(:mod:`picojoule.spaces.lowrank`); the exported model holds the two smaller layers.
"""

from __future__ import annotations

import numpy as np

from picojoule.errors import PicojouleError
from picojoule.passes.base import CompressionPass, KnobField, PricingState, is_int

DEFAULT_RANK_FRACTIONS = (0.125, 0.25, 0.5)


def _k_in(layer) -> int:
    return layer.in_channels * layer.kernel[0] * layer.kernel[1]


def shrinks(layer, rank: int) -> bool:
    """Whether a split at ``rank`` has fewer MACs and weights than ``layer`` unsplit."""
    return rank * (_k_in(layer) + layer.out_channels) < layer.out_channels * _k_in(layer)


def rank_choices(layer, fractions) -> tuple[int, ...]:
    """0 (no split) plus the ranks ``round(f * max_rank)`` >= 1 that shrink ``layer``."""
    if not layer.rankable:
        return (0,)
    ranks = {max(1, round(f * layer.max_rank)) for f in fractions}
    return (0, *sorted(r for r in ranks if shrinks(layer, r)))


class LowRankPass(CompressionPass):
    name = "lowrank"
    order = 20
    needs = "a rankable weight"
    fields = (KnobField("rank", 0, lambda v: is_int(v) and v >= 0, "a non-negative integer or null", integer=True,
                        plural="non-negative integers"),)
    override_keys = {"rank_fractions": "keep"}

    def applies(self, layer, target) -> bool:
        return layer.rankable

    def choices(self, layer, target, defaults):
        return {"rank": rank_choices(layer, defaults.get("rank_fractions", DEFAULT_RANK_FRACTIONS))}

    def customise(self, layer, current, values, where) -> None:
        if not layer.rankable:
            return
        if "rank_fractions" in values:
            current["rank"] = rank_choices(layer, values["rank_fractions"])
        if "rank" in values:
            too_big = [r for r in values["rank"] if r > layer.max_rank]
            if too_big:
                raise PicojouleError(f"{where}: key 'rank': {too_big[0]} exceeds layer '{layer.name}' full rank "
                                     f"{layer.max_rank}")
            larger = [r for r in values["rank"] if r and not shrinks(layer, r)]
            if larger:
                raise PicojouleError(f"{where}: key 'rank': {larger[0]} would not shrink layer '{layer.name}' "
                                     f"({layer.out_channels} x {_k_in(layer)})")
            current["rank"] = values["rank"]

    def capacity(self, field, layer, value) -> float:
        return float(layer.max_rank if value == 0 else value)

    def validate(self, policy, graph, source) -> None:
        for layer in graph.layers:
            explicit = layer.name in policy.layers
            rank = policy.for_layer(layer.name).rank
            if not rank or not (explicit or layer.op in ("conv", "linear")):
                continue
            where = f"{source}: layer '{layer.name}'" + ("" if explicit else " (from default)")
            if not layer.rankable:
                raise PicojouleError(f"{where}: field 'rank': a {layer.kind} layer cannot be split; expected 0")
            if not shrinks(layer, rank):
                largest = next((r for r in range(layer.max_rank, 0, -1) if shrinks(layer, r)), 0)
                raise PicojouleError(f"{where}: field 'rank': a split at rank {rank} would not shrink the layer "
                                     f"({layer.out_channels} x {_k_in(layer)}); expected 0 or 1..{largest}")

    def price(self, st: PricingState) -> None:
        ga = st.ga
        if not np.logical_or.reduce(st.pb.rank, axis=None):  # (a ufunc: no Python-level call)
            return
        k_in = st.cin * ga.k_area
        # the rank clipped to the (pruned) layer's full rank; 0 where the layer is not split (factors, not np.where:
        # this is the inner loop of every search)
        rank = np.minimum(st.pb.rank * ga.rankable_factor, np.minimum(st.cout, k_in))
        split = rank > 0
        if not np.logical_or.reduce(split, axis=None):
            return
        st.rank = rank
        st.macs = np.where(split, st.spatial * rank * (k_in + st.cout), st.macs)
        (rows, cols), *_ = st.parts
        st.parts = [(np.where(split, rank, rows), cols), (st.cout * split, rank)]
        st.mid = st.spatial * rank

    def active(self, policy, graph) -> bool:
        return any(policy.for_layer(layer.name).rank > 0 and layer.rankable for layer in graph.compute_layers())

    def apply(self, model, example, policy, graph, info, **options):
        from picojoule.spaces.lowrank import apply_lowrank
        from picojoule.spaces.quantize import get_layer

        for layer in graph.compute_layers():  # the rank clipped to the (pruned) layer's full rank, as priced
            rank = policy.for_layer(layer.name).rank
            if rank > 0 and layer.rankable:
                weight = get_layer(model, layer.name, "policy").weight
                info.ranks[layer.name] = min(rank, weight.shape[0], weight[0].numel())
        info.energy = apply_lowrank(model, info.ranks)
        return model


LOWRANK = LowRankPass()
