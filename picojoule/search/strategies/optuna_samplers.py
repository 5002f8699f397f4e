"""Optuna's samplers behind the Strategy interface: NSGA-II, TPE (multivariate), GP and random.

Constraints reach every sampler through ``trial.set_constraint`` (NSGA-II's constrained domination,
TPE's and GP's feasibility models); knob indices are integer params, so TPE and GP see the order of
bit-widths, keep ratios and ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna

from picojoule.errors import PicojouleError
from picojoule.search.strategies.base import Handle, Strategy, StrategyContext

#: NSGA-II's population when the config gives none (Optuna's 50 suits budgets of thousands, not hundreds)
DEFAULT_POPULATION = 20


#: the option that asks for a sensitivity prior (:mod:`picojoule.search.strategies.priors`); not a sampler argument
PRIOR_OPTION = "prior"
PRIOR_STRATEGIES = ("nsga2", "tpe")


def make_sampler(name: str, seed: int, options: Mapping[str, Any], where: str) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of strategy ``name``; bad ``options`` give a one-line error naming ``where``."""
    opts = dict(options)
    prior = opts.pop(PRIOR_OPTION, None)
    if prior is not None and (prior != "sensitivity" or name not in PRIOR_STRATEGIES):
        raise PicojouleError(f"{where}: option 'prior': expected 'sensitivity' (for {' or '.join(PRIOR_STRATEGIES)}), "
                             f"got {prior!r} for {name}")
    try:
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **{"population_size": DEFAULT_POPULATION, **opts})
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **{"multivariate": True, **opts})
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, **opts)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **opts)
    except (TypeError, ValueError) as e:
        raise PicojouleError(f"{where}: {str(e).splitlines()[0]}") from None
    raise PicojouleError(f"{where}: unknown strategy '{name}'")


class OptunaStrategy(Strategy):
    """ask/tell on a study whose sampler proposes the vectors."""

    def __init__(self, context: StrategyContext):
        super().__init__(context)
        c = context
        # resumed: a fresh stream (the seed's own stream would propose the first session's vectors again)
        seed = c.seed + len(c.study.trials) if c.resume else c.seed
        self.study.sampler = make_sampler(c.name, seed, c.options, c.where)
        if c.options.get(PRIOR_OPTION):
            from picojoule.search.strategies.ilp import seed_solutions
            from picojoule.search.strategies.priors import PRIOR_SCALES, PriorSampler, choice_prior, install_prior

            if c.sensitivity is None:
                raise PicojouleError(f"{c.where}: option 'prior': needs a per-layer sensitivity: give labelled "
                                     "training data (data.train) or pass sensitivity= to picojoule.search")
            solutions = seed_solutions(c, c.sensitivity(), PRIOR_SCALES)
            self.prior = choice_prior(self.space, [s.vec for s in solutions])
            install_prior(self.study.sampler, PriorSampler(self.prior, seed))

    def ask(self) -> tuple[Handle, np.ndarray]:
        return self.record()

    def tell(self, handle: Handle, objectives: Sequence[float], constraints: Mapping[str, float],
             failed: bool = False, attrs: Mapping[str, Any] | None = None) -> None:
        self.finish(handle, objectives, constraints, failed, attrs)
