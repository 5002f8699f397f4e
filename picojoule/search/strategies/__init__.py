"""Search strategies behind one interface (:class:`~picojoule.search.strategies.base.Strategy`).

:data:`STRATEGIES` is the one registry of strategy names (the config and the CLI read it); the classes are
imported on first use, so that reading the names costs no torch or Optuna import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from picojoule.search.strategies.base import Strategy, StrategyContext

#: strategy name -> "module:class" in this package; the Optuna ones share a class and differ by sampler
STRATEGIES: dict[str, str] = {"nsga2": "optuna_samplers:OptunaStrategy", "tpe": "optuna_samplers:OptunaStrategy",
                              "gp": "optuna_samplers:OptunaStrategy", "random": "optuna_samplers:OptunaStrategy",
                              "ddpg": "ddpg:DDPGStrategy", "ilp": "ilp:ILPStrategy"}
_EXPORTS = {"Handle": "base", "Strategy": "base", "StrategyContext": "base", "OptunaStrategy": "optuna_samplers",
            "DDPGStrategy": "ddpg", "DDPGOptions": "ddpg", "ILPStrategy": "ilp", "ILPOptions": "ilp"}

__all__ = ["STRATEGIES", "DDPGOptions", "DDPGStrategy", "Handle", "ILPOptions", "ILPStrategy", "OptunaStrategy",
           "Strategy", "StrategyContext",
           "make_sampler", "make_strategy", "strategy_class"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as strategy ``name``."""
    module, cls = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def make_sampler(name: str, seed: int, options: dict[str, Any], where: str) -> optuna.samplers.BaseSampler:
    """The study's sampler; bad ``options`` give a one-line error naming ``where``. DDPG proposes its own
    vectors (its study's sampler is never consulted), so for it this only checks the options."""
    import optuna

    from picojoule.search.strategies.optuna_samplers import make_sampler as optuna_sampler

    if name == "ddpg":
        from picojoule.search.strategies.ddpg import DDPGOptions

        DDPGOptions.parse(options, where)
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "ilp":  # proposes its own vectors too; the random sampler only fills in once the ILP is exhausted
        from picojoule.search.strategies.ilp import ILPOptions

        ILPOptions.parse(options, where)
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna_sampler(name, seed, options, where)


def make_strategy(context: StrategyContext) -> Strategy:
    """Strategy ``context.name`` on ``context.study`` (new, or loaded to resume)."""
    return strategy_class(context.name)(context)
