"""Projecting a policy onto the hardware bounds with the cost model alone, in the manner of HAQ's budget
adjustment: from the last layer backwards, each layer lowers by one step the knob that most reduces the violated
bounds, one pass after another, until the priced policy meets every hardware bound or no knob can be lowered.

The DDPG strategy adjusts each episode's policy this way; the engine projects warm starts (``warm_start:
[uniform_w4a4]`` under ``energy <= 0.5 * uniform_int8`` starts from W4A4 lowered just enough to fit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from picojoule.passes import FIELD_BY_NAME, OWNER
from picojoule.search.constraints import ConstraintProgram
from picojoule.spaces.space import Knob, Space

#: N policies' choice-index vectors (N, D) -> their total metrics, each an (N,) array
Costing = Callable[[np.ndarray], dict[str, np.ndarray]]


def knob_capacity(knob: Knob, space: Space) -> np.ndarray:
    """The capacity of each of ``knob``'s choices, as its compression pass rates them (bits, keep ratio, rank with
    0 = no split counted as full rank, 1 - sparsity): the projector lowers knobs towards less capacity."""
    field, layer = FIELD_BY_NAME[knob.kind], space.graph[knob.layer]
    return np.asarray([OWNER[knob.kind].capacity(field, layer, c) for c in knob.choices], dtype=float)


class Projector:
    """Lowers a vector's knobs onto the hardware constraints of ``program`` (their ``bounds``); ``cost`` prices
    vectors."""

    def __init__(self, space: Space, program: ConstraintProgram, bounds: Mapping[str, float], cost: Costing):
        self.space, self.program, self.bounds, self.cost = space, program, bounds, cost
        self.lower = []  # per knob: the index of the next lower-capacity choice of each choice (-1: none)
        for knob in space.knobs:
            cap = knob_capacity(knob, space)
            order, lower = np.argsort(cap, kind="stable"), np.full(len(cap), -1)
            lower[order[1:]] = order[:-1]
            self.lower.append(lower)
        layers = sorted({k.layer for k in space.knobs}, key=space.graph.index)
        self.rows = [[d for d, k in enumerate(space.knobs) if k.layer == name] for name in reversed(layers)]

    def violations(self, vecs: np.ndarray) -> np.ndarray:
        """Hardware violations (N, C), <= 0 where a bound holds."""
        violations = self.program.violations(self.cost(vecs), self.bounds, hardware_only=True)
        return np.stack(list(violations.values()), axis=1)

    def __call__(self, vec: np.ndarray) -> np.ndarray:
        """``vec`` lowered, last layer first, until it meets the bounds or every knob is at its minimum."""
        if not self.program.hardware:
            return vec
        current = self.violations(vec[None])[0]
        while (current > 0).any():
            dims = np.asarray([d for d in range(len(vec)) if self.lower[d][vec[d]] >= 0], dtype=np.int64)
            if not len(dims):
                break
            lowered = np.repeat(vec[None], len(dims), 0)
            lowered[np.arange(len(dims)), dims] = [self.lower[d][vec[d]] for d in dims]
            saving = dict(zip(dims.tolist(), (current - self.violations(lowered))[:, current > 0].sum(1)))
            helps = max(saving.values()) > 0  # if no single step helps, step on towards the minimum anyway
            chain, step = [], vec.copy()
            for row in self.rows:
                gains = [(saving[d], d) for d in row if d in saving and (saving[d] > 0 or not helps)]
                if gains:
                    d = max(gains)[1]
                    step = step.copy()
                    step[d] = self.lower[d][step[d]]
                    chain.append(step)
            violations = self.violations(np.stack(chain))
            ok = np.flatnonzero((violations <= 0).all(1))
            i = ok[0] if len(ok) else len(chain) - 1
            vec, current = chain[i], violations[i]
        return vec
