"""A prior over each knob's choices from the sensitivity, for Optuna's samplers (``strategy_options: {prior:
sensitivity}``).

The prior is what the sensitivity-guided ILP chooses: the ILP's solutions on a ladder of budgets
(:func:`~picojoule.search.strategies.ilp.seed_solutions`) are counted per knob, and each choice's probability is
``(1 - mix) * its share of those solutions + mix / n_choices`` (``mix`` keeps every choice reachable). It replaces
the sampler's uniform independent draws: NSGA-II's first generation and its mutations (a sensitivity-weighted
mutation: a mutated knob takes choices the sensitivity favours under the bound), and TPE's start-up trials and
its independent fall-backs. What the samplers learn from the trials themselves is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, IntDistribution

from picojoule.spaces.space import Space

#: the budget ladder the prior's ILP solutions are drawn on (fractions of each hardware bound)
PRIOR_SCALES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def choice_prior(space: Space, vecs: Sequence[np.ndarray], mix: float = 0.3) -> dict[str, np.ndarray]:
    """Per knob name, the probability of each choice: the share of ``vecs`` that take it, mixed with uniform."""
    stack = np.asarray(vecs, dtype=np.int64).reshape(-1, space.dim)
    out = {}
    for d, knob in enumerate(space.knobs):
        n = len(knob.choices)
        counts = np.bincount(stack[:, d], minlength=n).astype(float) if len(stack) else np.zeros(n)
        share = counts / counts.sum() if counts.sum() else np.full(n, 1.0 / n)
        out[knob.name] = (1 - mix) * share + mix / n
    return out


class PriorSampler(optuna.samplers.BaseSampler):
    """Independent draws of knob params from :func:`choice_prior` (any other param: uniform)."""

    def __init__(self, prior: dict[str, np.ndarray], seed: int | None = None):
        self.prior = prior
        self._rng = np.random.default_rng(seed)
        self._uniform = optuna.samplers.RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._uniform.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: Any, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        p = self.prior.get(param_name)
        if p is None or not isinstance(param_distribution, IntDistribution) or \
                param_distribution.high - param_distribution.low + 1 != len(p):
            return self._uniform.sample_independent(study, trial, param_name, param_distribution)
        return int(param_distribution.low + self._rng.choice(len(p), p=p))


def install_prior(sampler: optuna.samplers.BaseSampler, prior: PriorSampler) -> bool:
    """Put ``prior`` where ``sampler`` (NSGA-II, TPE) draws uniformly; False if it has no such place."""
    if not hasattr(sampler, "_random_sampler"):
        return False
    sampler._random_sampler = prior  # optuna 5.0: NSGA-II's mutation and first generation, TPE's start-up
    return True
