"""Structured channel pruning: one ``keep`` ratio per pruning group (AMC's knob).

A group's channels fall together (residual adds, depthwise convs): the graph's pruning groups decide which, and
a policy may set ``keep`` on any member of a group (:func:`picojoule.policy.group_keeps`). Pricing shrinks each
layer's output channels by its group's kept fraction and its input channels by the producing group's, in whole
channels (:func:`picojoule.policy.kept_channels`). Applying removes the least important channels with
Torch-Pruning (:mod:`picojoule.spaces.apply`); the exported model is simply smaller.
"""

from __future__ import annotations

import numpy as np

from picojoule.passes.base import CompressionPass, KnobField, PricingState, is_number

DEFAULT_KEEP = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


class PrunePass(CompressionPass):
    name = "prune"
    order = 10
    needs = "prunable output channels"
    changes_channels = True
    fields = (KnobField("keep", 1.0, lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]", group=True,
                        plural="numbers in (0, 1]"),)

    def applies(self, layer, target) -> bool:
        return layer.group >= 0

    def choices(self, layer, target, defaults):
        return {"keep": defaults.get("keep", DEFAULT_KEEP)}

    def validate(self, policy, graph, source) -> None:
        from picojoule.policy import group_keeps

        group_keeps(policy, graph, source)

    def price(self, st: PricingState) -> None:
        from picojoule.policy import kept_channels

        ga = st.ga
        keep_g = np.ones((st.n, len(ga.anchors) + 1))  # kept fraction of each group's channels (whole channels)
        keep_g[:, :-1] = kept_channels(ga.group_channels, st.pb.keep[:, ga.anchors]) / ga.group_channels
        st.k_out, st.k_in = keep_g[:, ga.group_out], keep_g[:, ga.group_in]
        st.k_a, st.k_b = keep_g[:, ga.group_a], keep_g[:, ga.group_b]
        st.cout = kept_channels(ga.cout, st.k_out)
        st.cin = np.where(ga.depthwise, 1.0, kept_channels(ga.cin, st.k_in))

    def active(self, policy, graph) -> bool:
        from picojoule.policy import group_keeps

        return any(k < 1 for k in group_keeps(policy, graph))

    def apply(self, model, example, policy, graph, info, importance="l1", seed=0, **options):
        from picojoule.spaces.apply import prune_model

        info.removed = prune_model(model, example, policy, graph, importance, seed)
        info.channels = {anchor: (graph[anchor].out_channels - len(idxs), graph[anchor].out_channels)
                         for anchor, idxs in info.removed.items()}
        return model


PRUNE = PrunePass()
