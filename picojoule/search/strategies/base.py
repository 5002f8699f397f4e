"""The one interface every search strategy implements.

A strategy proposes choice-index vectors over a :class:`~picojoule.spaces.space.Space` and learns from
what they scored::

    strategy = make_strategy(context)              # a StrategyContext: space, study, pricing, bounds, seed, ...
    handle, vec = strategy.ask()                   # vec: (D,) int, one choice index per knob
    strategy.tell(handle, objectives, constraints)  # objectives in config order; constraints <= 0 hold
    strategy.tell(handle, [], {}, failed=True)      # the evaluation broke

Every strategy records its trials in ``self.study``, an Optuna study on the run's journal, so that reports
and resume work the same for all of them. The Optuna samplers (NSGA-II, TPE, GP, random) are one class,
:class:`~picojoule.search.strategies.optuna_samplers.OptunaStrategy`.

A strategy with its own agent (a DDPG actor-critic in the HAQ/AMC manner: a layer-by-layer episode, a
per-layer state vector, one continuous action per knob mapped to a choice, the budget enforced by
adjusting actions) subclasses :class:`Strategy`: ``ask`` runs an episode to a vector, enqueues it
(``self.study.enqueue_trial(params)``), opens it with ``self.record()`` and returns that trial as the
handle (queued retries and warm starts come first: read the vector back from the trial); ``tell`` turns
the objectives into the agent's reward, updates the agent, then calls ``self.finish(...)``.
Everything a strategy needs comes in its constructor's :class:`StrategyContext` (the engine builds it; nothing is
read from files, so every strategy runs on an in-memory study too). Register it in
``picojoule.search.strategies.STRATEGIES``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from picojoule.search.journal import knob_distributions
from picojoule.spaces.space import Space

if TYPE_CHECKING:
    from picojoule.hwmodels.common import CostResult
    from picojoule.search.config import Objective
    from picojoule.search.constraints import ConstraintProgram

Handle = optuna.trial.Trial
#: N policies -> (each metric as an (N,) array, the per-layer CostResult), as the engine prices them
Pricing = Callable[[Any], "tuple[dict[str, np.ndarray], CostResult]"]


@dataclass
class StrategyContext:
    """What the engine hands a strategy: the problem's space and pricing, the constraints with their bounds, the
    baselines' metrics, and the run's study, seed, options and whether it resumes."""

    name: str  # the registered strategy name
    space: Space
    study: optuna.Study
    price: Pricing
    program: ConstraintProgram
    objectives: list[Objective]
    baselines: dict[str, dict[str, float]]  # metrics of fp32 and every baseline a constraint names
    bounds: dict[str, float]  # each constraint's bound (text -> value)
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    resume: bool = False
    where: str = "strategy_options"  # names the options in error messages
    #: () -> the per-layer Sensitivity of the model on the space (computed once, cached); None: no labelled data
    sensitivity: Callable[[], Any] | None = None

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def cost(self, vecs: np.ndarray) -> dict[str, np.ndarray]:
        """The metrics of (N, D) choice-index vectors."""
        return self.price(self.space.decode_batch(vecs))[0]


class Strategy(ABC):
    """Proposes vectors over ``context.space`` and records every trial in ``context.study``."""

    name: str = ""

    def __init__(self, context: StrategyContext):
        self.context = context
        self.space, self.study = context.space, context.study
        self.distributions = knob_distributions(self.space)

    @abstractmethod
    def ask(self) -> tuple[Handle, np.ndarray]:
        """A new trial's handle and its choice-index vector."""

    @abstractmethod
    def tell(self, handle: Handle, objectives: Sequence[float], constraints: Mapping[str, float],
             failed: bool = False, attrs: Mapping[str, Any] | None = None) -> None:
        """Report a trial's objective values and constraint violations (or its failure); ``attrs`` are stored
        with it (metrics, errors) for the reports."""

    # -- helpers for subclasses -------------------------------------------------------------------

    def vector(self, trial: Handle) -> np.ndarray:
        return np.asarray([trial.params[k.name] for k in self.space.knobs], dtype=np.int64)

    def record(self) -> tuple[Handle, np.ndarray]:
        """Open a trial: the oldest queued one (retry, warm start), else where the study's sampler puts it."""
        trial = self.study.ask(self.distributions)
        return trial, self.vector(trial)

    def finish(self, handle: Handle, objectives: Sequence[float], constraints: Mapping[str, float],
               failed: bool = False, attrs: Mapping[str, Any] | None = None) -> None:
        """Store ``attrs`` and the constraints, then close the trial as complete or failed."""
        for key, value in (attrs or {}).items():
            handle.set_user_attr(key, value)
        if failed:
            self.study.tell(handle, state=TrialState.FAIL)
            return
        for key, value in constraints.items():
            handle.set_constraint(key, float(value))
        self.study.tell(handle, [float(v) for v in objectives])
