"""Search strategies behind one interface (:class:`~picojoule.search.strategies.base.Strategy`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from picojoule.search.journal import open_study
from picojoule.search.strategies.base import Handle, Strategy
from picojoule.search.strategies.ddpg import DDPGOptions, DDPGStrategy
from picojoule.search.strategies.optuna_samplers import OptunaStrategy
from picojoule.search.strategies.optuna_samplers import make_sampler as optuna_sampler
from picojoule.spaces.space import Space

#: strategy name -> class; the Optuna ones share a class and differ by sampler
STRATEGIES: dict[str, type[Strategy]] = {"nsga2": OptunaStrategy, "tpe": OptunaStrategy, "gp": OptunaStrategy,
                                          "random": OptunaStrategy, "ddpg": DDPGStrategy}

__all__ = ["STRATEGIES", "DDPGStrategy", "Handle", "OptunaStrategy", "Strategy", "make_sampler", "make_strategy"]


def make_sampler(name: str, seed: int, options: dict[str, Any], where: str) -> optuna.samplers.BaseSampler:
    """The study's sampler; bad ``options`` give a one-line error naming ``where``. DDPG proposes its own
    vectors (its study's sampler is never consulted), so for it this only checks the options."""
    if name == "ddpg":
        DDPGOptions.parse(options, where)
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna_sampler(name, seed, options, where)


def make_strategy(name: str, space: Space, run_dir: Path, directions: list[str], seed: int,
                  options: dict[str, Any], resume: bool = False, where: str = "strategy_options") -> Strategy:
    """Strategy ``name`` on the run's journal (created, or loaded to resume)."""
    study = open_study(run_dir, directions, make_sampler(name, seed, options, where), resume)
    if name == "ddpg":  # the agent also needs the run's cost model and bounds; it replays the journal itself
        return DDPGStrategy.for_run(space, study, run_dir, seed, options, where)
    if resume:  # a fresh stream: the seed's own stream would propose the first session's vectors again
        study.sampler = make_sampler(name, seed + len(study.trials), options, where)
    return STRATEGIES[name](space, study)
