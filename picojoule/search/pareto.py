"""Pareto fronts of the feasible trials, over the objectives in their stated directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from picojoule.search.config import Objective
from picojoule.search.journal import TrialRecord


def losses(record: TrialRecord, objectives: Sequence[Objective]) -> np.ndarray:
    """The record's objective values, each turned into a loss (maximised ones negated)."""
    return np.asarray([-record.metrics[o.metric] if o.maximise else record.metrics[o.metric] for o in objectives])


def eligible(record: TrialRecord, needs_accuracy: bool) -> bool:
    """Feasible, complete, and (when accuracy matters) measured in full (the last fidelity rung)."""
    return record.feasible and (not needs_accuracy or (record.evaluated and record.full_fidelity))


def pareto_front(records: Sequence[TrialRecord], objectives: Sequence[Objective],
                 needs_accuracy: bool) -> list[TrialRecord]:
    """The non-dominated eligible records, one per distinct policy (its first trial), in trial order."""
    seen: set[tuple[int, ...]] = set()
    pool = []
    for r in records:
        if eligible(r, needs_accuracy) and r.key not in seen:
            seen.add(r.key)
            pool.append(r)
    if not pool:
        return []
    x = np.stack([losses(r, objectives) for r in pool])  # (n, k)
    dominated = np.zeros(len(pool), dtype=bool)
    for start in range(0, len(pool), 512):  # blocks of rows keep memory at 512 x n x k
        block = x[start:start + 512, None, :]
        dominated |= ((block <= x[None]).all(-1) & (block < x[None]).any(-1)).any(0)
    return [r for r, d in zip(pool, dominated) if not d]


class RunningFront:
    """A front kept up to date one record at a time (for the progress bar)."""

    def __init__(self, objectives: Sequence[Objective], needs_accuracy: bool):
        self.objectives, self.needs_accuracy = list(objectives), needs_accuracy
        self.members: list[tuple[np.ndarray, TrialRecord]] = []

    def add(self, record: TrialRecord) -> None:
        if not eligible(record, self.needs_accuracy):
            return
        x = losses(record, self.objectives)
        if any((y <= x).all() and ((y < x).any() or (y == x).all()) for y, _ in self.members):
            return
        self.members = [(y, r) for y, r in self.members if not ((x <= y).all() and (x < y).any())]
        self.members.append((x, record))

    def __len__(self) -> int:
        return len(self.members)

    def best(self, i: int = 0) -> float | None:
        """The best value of objective ``i`` on the front (None when it is empty)."""
        if not self.members:
            return None
        values = [r.metrics[self.objectives[i].metric] for _, r in self.members]
        return max(values) if self.objectives[i].maximise else min(values)
