"""The ILP strategy, in the manner of HAWQ-V3: each proposal solves the integer program of
:mod:`picojoule.search.ilp` (one option per layer block, the least summed sensitivity under the hardware bounds),
re-checked with the full cost model.

Proposals walk a ladder of budgets (``scales``: fractions of each hardware bound, so the front fills out below the
bound too) and exclude every policy tried before, so each proposal is the next-best distinct policy at its
budget. A search with no hardware bound sweeps the budgets over the hardware objectives instead (fractions of the
least compressed policy's cost).

Once ``learn_after`` trials have a measured accuracy, the scores are learned: the measured accuracy drops are
regressed on the one-hot choices with the sensitivity as the prior (``drop ~ a * sum(sensitivity) + sum(beta)``,
ridge on ``beta``, ``a >= 0``), so choices that cost more accuracy than their one-layer sensitivity said are
avoided from then on. The sensitivity itself comes from the context (computed once per model and data, cached in
the run directory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from picojoule.errors import PicojouleError
from picojoule.search.ilp import MEASURES, ILPPlanner, Solution, sensitivity_scores
from picojoule.search.journal import knob_params
from picojoule.search.metrics import METRICS
from picojoule.search.strategies.base import Handle, Strategy, StrategyContext

#: the attribute a proposal carries: how the ILP found it
ILP_ATTR = "ilp"


class ILPOptions(BaseModel):
    """``strategy_options`` of ``ilp``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measure: str = Field("loss", description=f"sensitivity column to minimise: {', '.join(MEASURES)}")
    scales: list[float] = Field(default_factory=lambda: [1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6],
                                min_length=1, description="budget ladder: fractions of each hardware bound")
    joint_limit: int = Field(64, ge=1, description="most joint options of one layer's knobs in one block")
    refits: int = Field(4, ge=0, description="re-linearisations of a solution that breaks a bound")
    learn_after: int | None = Field(8, ge=2, description="measured trials before the scores are learned (null: never)")
    ridge: float = Field(1.0, gt=0, description="ridge penalty of the learned per-choice corrections")
    time_limit: float = Field(10.0, gt=0, description="seconds per solve")

    @classmethod
    def parse(cls, options: Mapping[str, Any], where: str) -> ILPOptions:
        try:
            opts = cls.model_validate(dict(options))
        except ValidationError as e:
            first = e.errors()[0]
            msg = "unknown option" if first["type"] == "extra_forbidden" else first["msg"]
            raise PicojouleError(f"{where}: ilp option '{'.'.join(map(str, first['loc']))}': {msg}") from None
        if opts.measure not in MEASURES:
            raise PicojouleError(f"{where}: ilp option 'measure': expected one of {', '.join(MEASURES)}, "
                                 f"got '{opts.measure}'")
        if any(not 0 < s <= 1 for s in opts.scales):
            raise PicojouleError(f"{where}: ilp option 'scales': expected fractions in (0, 1], got {opts.scales}")
        return opts


def planner_for(context: StrategyContext, joint_limit: int = 64, refits: int = 4) -> ILPPlanner:
    """The context's program as an ILP; without a hardware bound the caps are the hardware objectives, at the least
    compressed policy's cost (the ladder then sweeps fractions of it)."""
    planner = ILPPlanner(context.space, context.program, context.bounds, context.cost, joint_limit, refits)
    if not planner.caps:
        top = context.cost(planner.top[None])
        planner.caps = {f"{o.metric} (objective)": (o.metric, float(top[o.metric][0])) for o in context.objectives
                        if not METRICS[o.metric].needs_accuracy and not o.maximise}
        if not planner.caps:
            raise PicojouleError(f"{context.where}: ilp needs a hardware bound or a hardware objective to spend")
    return planner


def seed_solutions(context: StrategyContext, sensitivity: Any, scales: Sequence[float] = (1.0, 0.9, 0.8),
                   measure: str = "loss") -> list[Solution]:
    """The ILP's solutions at ``scales`` of the bounds, distinct (the ``ilp`` warm start of other strategies)."""
    planner = planner_for(context)
    planner.check_feasible(f"{context.where.rsplit(':', 1)[0]}: field 'constraints'")
    scores = sensitivity_scores(context.space, sensitivity, measure)
    out: list[Solution] = []
    for scale in scales:
        sol = planner.solve(scores, scale, [s.vec for s in out])
        if sol is not None:
            out.append(sol)
    return out


class ILPStrategy(Strategy):
    """Proposes the ILP's next-best distinct policy on the budget ladder (see the module doc)."""

    name = "ilp"

    def __init__(self, context: StrategyContext):
        super().__init__(context)
        self.opts = ILPOptions.parse(context.options, context.where)
        if context.sensitivity is None:
            raise PicojouleError(f"{context.where}: ilp needs a per-layer sensitivity: give labelled training data "
                                 "(data.train) or pass sensitivity= to picojoule.search")
        self.planner = planner_for(context, self.opts.joint_limit, self.opts.refits)
        self.planner.check_feasible(f"{context.where.rsplit(':', 1)[0]}: field 'constraints'")
        self.prior = sensitivity_scores(self.space, context.sensitivity(), self.opts.measure)
        self.scores = self.prior
        self.rung = 0
        self.acc_objective = next((i for i, o in enumerate(context.objectives) if o.metric == "accuracy"), None)
        self.reference = context.baselines.get("fp32", {}).get("accuracy")
        self._learned_at = 0

    # -- proposing -------------------------------------------------------------------------------

    def _tried(self) -> list[np.ndarray]:
        return [self.vector(t) for t in self.study.get_trials(deepcopy=False)
                if all(k.name in t.params for k in self.space.knobs)]

    def ask(self) -> tuple[Handle, np.ndarray]:
        """The next queued trial (retry, warm start), else the ILP's next distinct solution on the ladder (a random
        policy once every rung is exhausted)."""
        if not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            self._maybe_learn()
            tried = self._tried()
            scales = self.opts.scales
            for step in range(len(scales)):
                scale = scales[(self.rung + step) % len(scales)]
                sol = self.planner.solve(self.scores, scale, tried, self.opts.time_limit)
                if sol is not None:
                    self.rung = (self.rung + step + 1) % len(scales)
                    note = f"scale {sol.scale:g}: {sol.describe()}"
                    self.study.enqueue_trial(knob_params(self.space, sol.vec), user_attrs={ILP_ATTR: note})
                    break
        return self.record()

    def tell(self, handle: Handle, objectives: Sequence[float], constraints: Mapping[str, float],
             failed: bool = False, attrs: Mapping[str, Any] | None = None) -> None:
        self.finish(handle, objectives, constraints, failed, attrs)

    # -- learning --------------------------------------------------------------------------------

    def measured(self) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (N, D), measured accuracies (N,)) of the evaluated, counted trials."""
        vecs, accs = [], []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            metrics = t.user_attrs.get("metrics") or {}
            if t.user_attrs.get("evaluated") and "duplicate_of" not in t.user_attrs and \
                    metrics.get("accuracy") is not None:
                vecs.append(self.vector(t))
                accs.append(float(metrics["accuracy"]))
        return (np.asarray(vecs, dtype=np.int64).reshape(-1, self.space.dim), np.asarray(accs))

    def _maybe_learn(self) -> None:
        if self.opts.learn_after is None or self.reference is None:
            return
        vecs, accs = self.measured()
        if len(accs) < self.opts.learn_after or len(accs) == self._learned_at:
            return
        self._learned_at = len(accs)
        self.scores = learn_scores(self.prior, vecs, 100.0 * (self.reference - accs), self.opts.ridge)


def learn_scores(prior: Sequence[np.ndarray], vecs: np.ndarray, drops: np.ndarray, ridge: float) -> list[np.ndarray]:
    """Per-choice scores fitted to measured accuracy drops (points): ``drop ~ c + a * sum_d prior[d][v_d] +
    sum_d beta[d][v_d]``, ridge ``ridge`` on ``beta`` (relative to the data's scale), ``a >= 0``; the scores are
    ``a * prior + beta`` shifted so that each knob's least score is 0 (only differences between a knob's choices
    matter to the program)."""
    n, dims = vecs.shape
    sizes = [len(p) for p in prior]
    offsets = np.cumsum([0, *sizes])
    onehot = np.zeros((n, offsets[-1]))
    for d in range(dims):
        onehot[np.arange(n), offsets[d] + vecs[:, d]] = 1
    s = np.stack([prior[d][vecs[:, d]] for d in range(dims)], 1).sum(1)
    x = np.column_stack([np.ones(n), s, onehot])
    penalty = np.full(x.shape[1], ridge * max(float(np.var(drops)), 1e-6) * n / max(offsets[-1], 1))
    penalty[:2] = 1e-9  # intercept and the prior's weight are not shrunk
    coef = np.linalg.solve(x.T @ x + np.diag(penalty), x.T @ drops)
    a = coef[1]
    if a < 0:  # the prior ranks against the data: drop it, keep the corrections
        a = 0.0
        coef = np.linalg.solve(np.delete(x, 1, 1).T @ np.delete(x, 1, 1) + np.diag(np.delete(penalty, 1)),
                               np.delete(x, 1, 1).T @ drops)
        beta = coef[1:]
    else:
        beta = coef[2:]
    out = []
    for d in range(dims):
        score = a * prior[d] + beta[offsets[d]:offsets[d + 1]]
        out.append(score - score.min())
    return out
