"""The search loop: ask, price, (maybe) evaluate, tell; then, if the search is stored, write the run directory.

:func:`run_problem` is the one core: :func:`picojoule.search` (objects) and :func:`run_search` (a config file or
mapping) both build a :class:`~picojoule.search.problem.Problem` and call it.

Two stages per trial. Every proposed policy is priced by the vectorised cost model (microseconds); one
that breaks a hardware constraint is told infeasible at once, with the accuracy it was never measured at
taken as 0 (so an accuracy constraint counts as broken too). Only policies that meet every hardware bound
go to the accuracy stage (apply, calibrate, optionally re-estimate BatchNorm and fine-tune, measure on the
validation split), in this process or on Ray actors.

A policy tried before is neither measured nor counted again: the strategy is told the first trial's result (so
it learns), the trial is stored with ``duplicate_of`` and the strategy is asked again; after
:data:`REPEAT_PATIENCE` repeats in a row the engine queues an untried policy drawn at random (``drawn``), and a
search that has tried every policy of the space stops. After the search the Pareto front (so every winner) and
the baselines are measured once each on the test split (:func:`measure_test`); what selects is the validation
accuracy, what is reported beside it the test accuracy.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from picojoule.errors import PicojouleError
from picojoule.search.baselines import REPORT_BASELINES, baseline_policy
from picojoule.search.config import ILP_WARM_START, SearchConfig, SearchSettings, resolve_config
from picojoule.search.constraints import all_hold
from picojoule.search.executors import Executor, SerialExecutor, safe_evaluate
from picojoule.search.final_finetune import finetune_winners, finetuned_model
from picojoule.search.final_finetune import summary_lines as finetune_summary
from picojoule.search.report import front_lines
from picojoule.search.journal import (TEST_ACCURACY, TrialRecord, knob_params, open_study, quiet_optuna,
                                      read_records, recover_interrupted)
from picojoule.search.metrics import METRICS, accuracy_metrics, format_value
from picojoule.search.pareto import RunningFront, pareto_front
from picojoule.search.problem import Evaluator, Job, Problem, build_problem
from picojoule.search.projection import Projector
from picojoule.search.rundir import check_run_dir, run_lock, saved_config_path, write_config
from picojoule.search.strategies import Strategy, StrategyContext, make_sampler, make_strategy
from picojoule.policy import Policy
from picojoule.yamlfile import read_yaml

Callback = Callable[[TrialRecord], None]
#: repeats of tried policies in a row after which the engine queues an untried policy drawn at random
REPEAT_PATIENCE = 8


@dataclass(repr=False)
class SearchResult:
    """A finished (or resumed and finished) search, as its study holds it.

    ``front`` are the feasible Pareto-front trials (each with ``.policy`` and ``.metrics``); :meth:`best` picks
    one by a metric, :meth:`to_dataframe` gives every trial, ``print(result)`` a short summary. A search with an
    ``evaluate`` callable reports what it returns as ``accuracy`` (``metric_name`` is its name for display)."""

    run_dir: Path | None  # None: the search ran in memory and wrote nothing
    problem: Problem
    records: list[TrialRecord]
    front: list[TrialRecord]
    baselines: dict[str, dict[str, float]]
    bounds: dict[str, float]
    new_trials: int  # trials this call finished
    evaluations: int  # accuracy evaluations this call ran
    study: Any = None  # the Optuna study (on the run's journal, or in memory)
    outputs: dict[str, Path] = field(default_factory=dict)
    metric_name: str = "accuracy"
    #: a search in memory: the final fine-tune's weights (trial number -> state_dict); stored ones are in pareto/
    finetuned_states: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def config(self) -> SearchSettings:
        return self.problem.config

    @property
    def winners(self) -> dict[str, TrialRecord]:
        """For each objective, the front's best policy (ties: the earliest trial)."""
        return {str(o): self.best(o.metric) for o in self.problem.objectives if self.front}

    @property
    def chosen(self) -> TrialRecord | None:
        """The winner of the first objective: the policy the plots show."""
        return next(iter(self.winners.values()), None)

    def best(self, metric: str) -> TrialRecord:
        """The front's best trial by ``metric`` (in its natural direction; ties: the earliest trial); its
        ``.policy`` is the policy."""
        if metric not in METRICS:
            raise PicojouleError(f"best: unknown metric '{metric}' (expected one of {', '.join(METRICS)})")
        if not self.front:
            raise PicojouleError("best: no feasible policy was found: loosen the constraints or give more trials")
        sign = -1.0 if METRICS[metric].maximise else 1.0
        return min(self.front, key=lambda r: (sign * r.metrics.get(metric, math.nan), r.number))

    def policy(self, record: TrialRecord) -> Policy:
        """The record's policy, with where it came from and what it scored."""
        policy = self.problem.space.decode(record.vec)
        policy.meta.update({
            "provenance": {"tool": "picojoule", "run": str(self.run_dir) if self.run_dir else None,
                           "trial": record.number, "strategy": self.config.strategy, "seed": self.config.seed,
                           "cost_model": self.config.cost_model},
            "metrics": {k: v for k, v in record.metrics.items() if not math.isnan(v)},
        })
        return policy

    def finetuned_model(self, record: TrialRecord | int) -> Any:
        """A winner's model after the final fine-tune (``final_finetune``): its policy applied, the fine-tuned
        weights loaded."""
        return finetuned_model(self, record if isinstance(record, int) else record.number)

    def to_dataframe(self) -> Any:
        """A pandas DataFrame, one row per trial: state, feasibility, every metric (SI units), the constraint
        violations and the knob values (as in trials.csv)."""
        import pandas as pd

        from picojoule.search.report import trial_rows

        return pd.DataFrame(list(trial_rows(self))).set_index("trial")

    def summary(self) -> str:
        """A few lines: trials, feasible, front size, the best per objective, the baselines."""
        counted = [r for r in self.records if r.counted]
        feasible = sum(r.feasible for r in counted)
        failed = sum(r.state == "fail" for r in counted)
        name = self._name
        where = f"run directory {self.run_dir}" if self.run_dir else "in memory"
        lines = [f"SearchResult: {self.problem.graph.name} on {self.problem.target.name} ({self.config.strategy}, "
                 f"{self.config.cost_model} cost model, {where})",
                 f"  {len(counted)} trials: {feasible} feasible, {len(counted) - feasible - failed} infeasible, "
                 f"{failed} failed; Pareto front: {len(self.front)}; {self.repeats_line()}"]
        if self.config.needs_accuracy:
            lines.append(f"  {self.metric_name}: {self.splits_line()}")
            if self.images:
                lines.append(f"  {self.budget_line()}")
            if self.config.evaluation.predictor is not None:
                lines.append(f"  {self.predictor_line()}")
        for label, r in self.winners.items():
            o = label.split()[-1]
            lines.append(f"  best {name(o)}: {format_value(o, r.metrics.get(o, math.nan))} (trial {r.number}; "
                         + ", ".join(f"{name(m)} {format_value(m, r.metrics.get(m, math.nan))}"
                                     for m in self._shown() if m != o) + ")")
        lines += front_lines(self)
        lines += finetune_summary(self)
        if not self.front:
            lines.append("  no feasible policy: loosen the constraints or give more trials")
        for b, metrics in self.baselines.items():
            lines.append(f"  baseline {b}: " + ", ".join(f"{name(m)} {format_value(m, metrics.get(m, math.nan))}"
                                                       for m in self._shown()))
        return "\n".join(lines)

    def _shown(self) -> list[str]:
        objectives = [o.metric for o in self.problem.objectives]
        shown = list(dict.fromkeys([*objectives, *(c.metric for c in self.problem.program)]))
        return [*shown, TEST_ACCURACY] if self.tested and "accuracy" in shown else shown

    def _name(self, metric: str) -> str:
        if not self.config.needs_accuracy or metric not in ("accuracy", TEST_ACCURACY):
            return metric
        return f"{self.metric_name} ({'test' if metric == TEST_ACCURACY else 'validation'})"

    @property
    def tested(self) -> bool:
        """Whether the front and baselines were measured on the test split after the search."""
        return TEST_ACCURACY in self.baselines.get("fp32", {})

    def splits_line(self) -> str:
        """What selects (validation) and what reports (test), with the images behind each."""
        splits = self.problem.splits()
        val, test = splits.get("validation", {}), splits.get("test", {})
        return (f"selected on validation ({val.get('source', 'the evaluate callable')}), reported on test "
                f"({test.get('source', 'not measured')})")

    @property
    def images(self) -> int:
        """Validation images the search's accuracy measurements read (every rung of every counted trial)."""
        return sum(r.images for r in self.records if r.counted)

    def budget_line(self) -> str:
        """The accuracy budget spent: images, measurements per fidelity rung, fine-tune steps."""
        measured = [r for r in self.records if r.counted and r.fidelity]
        rungs = self.config.evaluation.rungs
        reached = [sum(r.fidelity["rung"] >= k for r in measured) for k in range(len(rungs))]
        steps = sum(r.fidelity.get("finetune_steps", 0) for r in measured)
        ladder = ", ".join(f"{n} at {rung.images or 'all'} images" + (f" + {rung.finetune_steps} fine-tune steps"
                                                                        if rung.finetune_steps else "")
                           for n, rung in zip(reached, rungs))
        return (f"budget: {self.images} validation images over {len(measured)} measured policies ({ladder})"
                + (f"; {steps} fine-tune steps" if steps else ""))

    def predictor_line(self) -> str:
        """How many candidates the accuracy predictor kept from being measured, and how well it ranks."""
        screened = sum(r.screened is not None for r in self.records if r.counted)
        check = self.study.user_attrs.get("predictor") if self.study is not None else None
        quality = (f"held-out Spearman {check['spearman']:.2f} over n = {check['n']} first-rung measurements "
                   f"({check['folds']}-fold; the sensitivity proxy alone: "
                   f"{check['proxy_spearman']:.2f})" if check and "proxy_spearman" in check
                   else f"held-out Spearman {check['spearman']:.2f} over n = {check['n']} ({check['folds']}-fold)"
                   if check else "too few measurements for a held-out check")
        return f"predictor ({self.config.evaluation.predictor.model}): {screened} candidates screened out; {quality}"

    def repeats_line(self) -> str:
        """How many proposals repeated a tried policy (told from the journal, not counted) and how many policies
        the engine drew at random instead."""
        repeats = sum(r.duplicate_of is not None for r in self.records)
        drawn = sum(r.drawn is not None for r in self.records)
        line = f"{repeats} repeated proposals not counted, {drawn} drawn at random after {REPEAT_PATIENCE} repeats"
        if self.config.repair:
            line += f", {sum(r.repaired for r in self.records)} infeasible proposals lowered onto the bounds (repair)"
        return line

    def __str__(self) -> str:
        return self.summary()

    __repr__ = __str__


# ------------------------------------------------------------------------------------------------- stages


def baselines_of(problem: Problem, study: Any, evaluator: Evaluator | None, progress: bool = False
                 ) -> dict[str, dict[str, float]]:
    """Metrics of the baselines the report and the bounds need; computed once and kept in the study's journal.
    Their accuracy is measured at the top fidelity rung (with its fine-tune): ``progress`` shows it."""
    stored = study.user_attrs.get("baselines")
    if stored:
        return stored
    cfg = problem.config
    names = list(dict.fromkeys([*REPORT_BASELINES, *problem.program.baselines,
                                *(w for w in cfg.warm_start if w != ILP_WARM_START)]))
    policies = [baseline_policy(n, problem.graph) for n in names]
    costs = problem.cost(policies)
    out = {n: {m: float(v[i]) for m, v in costs.items()} for i, n in enumerate(names)}
    if evaluator is not None:
        from tqdm import tqdm

        bar = tqdm(list(zip(names, policies)), desc="baselines", unit="policy", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        for name, policy in bar:
            bar.set_postfix_str(name)
            result, error = safe_evaluate(evaluator, policy)
            if error:
                raise PicojouleError(f"{problem.source}: baseline '{name}' cannot be evaluated: {error}")
            out[name]["accuracy"] = result["accuracy"]
        reference = out["fp32"]["accuracy"]
        for metrics in out.values():
            metrics.update(accuracy_metrics(metrics["accuracy"], reference))
    study.set_user_attr("baselines", out)
    return out


def _executor(problem: Problem) -> tuple[Executor, Evaluator | None]:
    if not problem.config.needs_accuracy:
        return SerialExecutor(None), None
    evaluator = problem.evaluator()
    if problem.config.workers == 0:
        return SerialExecutor(evaluator), evaluator
    from picojoule.search.parallel import RayExecutor

    return RayExecutor(problem, problem.config.workers, problem.config.ray_address), evaluator


def warm_start_trials(problem: Problem, bounds: dict[str, float], context: StrategyContext | None = None
                      ) -> list[tuple[dict[str, int], dict[str, str]]]:
    """The config's warm starts as (params, user attributes): each baseline projected onto the hardware bounds
    (:mod:`~picojoule.search.projection`), so that a budget-constrained search starts from feasible policies near
    them instead of spending trials on baselines the cost model already rules out; ``ilp`` stands for the ILP's
    solutions at 1.0, 0.9 and 0.8 of the bounds (:func:`~picojoule.search.strategies.ilp.seed_solutions`, which
    needs ``context`` with a sensitivity)."""
    project = Projector(problem.space, problem.program, bounds,
                        lambda vecs: problem.cost(problem.space.decode_batch(vecs)))
    out = []
    for name in problem.config.warm_start:
        if name == ILP_WARM_START:
            out.extend(_ilp_seeds(problem, context))
            continue
        vec = problem.space.encode(baseline_policy(name, problem.graph))
        fitted = project(vec)
        label = name if (fitted == vec).all() else f"{name} lowered to the hardware bounds"
        out.append((knob_params(problem.space, fitted), {"warm_start": label}))
    for policy, name in problem.warm_policies:
        vec = problem.space.encode(policy)
        fitted = project(vec)
        label = name if (fitted == vec).all() else f"{name} lowered to the hardware bounds"
        out.append((knob_params(problem.space, fitted), {"warm_start": label}))
    return out


def _ilp_seeds(problem: Problem, context: StrategyContext | None) -> list[tuple[dict[str, int], dict[str, str]]]:
    from picojoule.search.strategies.ilp import seed_solutions

    if context is None or context.sensitivity is None:
        raise PicojouleError(f"{problem.source}: field 'warm_start': 'ilp' needs a per-layer sensitivity: give "
                             "labelled training data (data.train) or pass sensitivity= to picojoule.search")
    return [(knob_params(problem.space, s.vec), {"warm_start": f"ilp at {s.scale:g} x the bounds: {s.describe()}"})
            for s in seed_solutions(context, context.sensitivity())]


# ------------------------------------------------------------------------------------------------- the loop


def jsonable(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metrics as the journal stores them: NaN (not measured) as null."""
    return {k: (None if math.isnan(v) else v) for k, v in metrics.items()}


def score(problem: Problem, bounds: dict[str, float], reference: float, metrics: dict[str, float],
          result: dict | None, predicted: float | None = None) -> tuple[dict[str, float], list[float], dict[str, float]]:
    """(every metric, objective values told, constraint violations) of a priced trial and its accuracy result
    (None: not measured; the strategy is told ``predicted``, or else accuracy 0, so that an accuracy constraint
    counts as broken too)."""
    full = dict(metrics)
    if problem.config.needs_accuracy:
        full.update(accuracy_metrics(result["accuracy"] if result else math.nan, reference))
    told = dict(full)
    if problem.config.needs_accuracy and result is None:
        told.update(accuracy_metrics(0.0 if predicted is None else predicted, reference))
    constraints = {k: float(v) for k, v in problem.program.violations(told, bounds).items()}
    return full, [told[o.metric] for o in problem.objectives], constraints


class Screen:
    """Pre-screening by an accuracy predictor (``evaluation.predictor``, see
    :class:`~picojoule.search.config.PredictorConfig`): fitted on the first-rung accuracies measured so far (with
    the sensitivity proxy among its features when the search has one), it says which candidates a measured policy
    would dominate even at the optimistic end of the prediction."""

    def __init__(self, problem: Problem, context: StrategyContext):
        from picojoule.search.predictor import AccuracyPredictor

        self.cfg = problem.config.evaluation.predictor
        self.space = problem.space
        self.costs = [o.metric for o in problem.objectives if o.metric != "accuracy"]
        sensitivity = context.sensitivity() if context.sensitivity is not None else None
        self.sensitivity = sensitivity
        self.predictor = AccuracyPredictor(problem.space, sensitivity, model=self.cfg.model, seed=problem.config.seed)
        self.vecs: list[np.ndarray] = []
        self.accuracies: list[float] = []
        self.cost_rows: list[list[float]] = []
        self.fitted_at = 0

    def add(self, vec: np.ndarray, metrics: dict[str, float], accuracy: float) -> None:
        """A measured policy's first-rung accuracy."""
        self.vecs.append(np.asarray(vec, dtype=np.int64))
        self.accuracies.append(float(accuracy))
        self.cost_rows.append([float(metrics[m]) for m in self.costs])

    def __call__(self, vec: np.ndarray, metrics: dict[str, float]) -> dict[str, float] | None:
        """``{"predicted", "std", "dominated_by_accuracy"}`` if the candidate is screened out, else None."""
        n = len(self.accuracies)
        if n < self.cfg.after:
            return None
        if not self.predictor.fitted or n - self.fitted_at >= self.cfg.refit_every:
            self.predictor.fit(np.stack(self.vecs), np.asarray(self.accuracies))
            self.fitted_at = n
        if not self.predictor.fitted:
            return None
        mean, std = (float(v[0]) for v in self.predictor.predict(np.asarray(vec)[None]))
        costs = np.asarray(self.cost_rows)
        cheaper = (costs <= np.asarray([metrics[m] for m in self.costs])[None] + 1e-30).all(1) if self.costs \
            else np.ones(n, dtype=bool)
        accs = np.asarray(self.accuracies)
        if not cheaper.any() or accs[cheaper].max() < mean + self.cfg.k * std + self.cfg.margin:
            return None
        return {"predicted": mean, "std": std, "dominated_by_accuracy": float(accs[cheaper].max())}

    def holdout(self) -> dict[str, Any] | None:
        """The predictor's out-of-fold rank correlation on the first-rung measurements (None: too few)."""
        from picojoule.search.predictor import holdout_rank_correlation

        if len(self.accuracies) < max(self.cfg.after, 10):
            return None
        return holdout_rank_correlation(self.space, np.stack(self.vecs), np.asarray(self.accuracies),
                                        self.sensitivity, self.cfg.model, folds=5, seed=0)


class _Loop:
    """One session of asking and telling until the trial budget is spent."""

    def __init__(self, problem: Problem, strategy: Strategy, executor: Executor, baselines: dict, bounds: dict,
                 callbacks: Sequence[Callback], progress: bool):
        self.problem, self.strategy, self.executor = problem, strategy, executor
        self.bounds, self.callbacks, self.progress = bounds, list(callbacks), progress
        self.needs_accuracy = problem.config.needs_accuracy
        self.reference = baselines["fp32"].get("accuracy", math.nan)
        self.front = RunningFront(problem.objectives, self.needs_accuracy)
        self.tried: dict[tuple[int, ...], TrialRecord] = {}  # each counted policy's (first) trial
        self.pending: dict[tuple[int, ...], list[tuple[Any, np.ndarray, dict]]] = {}  # in flight -> its repeats
        self.repeats, self.exhausted = 0, False  # repeats in a row; every policy of the space tried
        self.counts = {"infeasible": 0, "failed": 0}
        self.new_trials = self.evaluations = 0
        self.rungs = problem.config.evaluation.rungs
        self.promote = problem.config.evaluation.fidelity.promote if problem.config.evaluation.fidelity else 1.0
        self.rung_results: list[list[float]] = [[] for _ in self.rungs]  # every accuracy measured at each rung
        self.promotions = [0 for _ in self.rungs]  # how many went on from each rung
        self.ladder: dict[int, dict[str, Any]] = {}  # trial number -> its fidelity so far (while in flight)
        self.images = 0  # validation images measured (this session and the ones before)
        self.live = False  # False while the journal's records are noted, True once this session measures
        self.screen = Screen(problem, strategy.context) if problem.config.evaluation.predictor else None
        # repair: infeasible proposals lowered onto the bounds, measured instead (queued: the lowered vectors waiting)
        self.repair = Projector(problem.space, problem.program, bounds,
                                lambda vecs: problem.cost(problem.space.decode_batch(vecs))) \
            if problem.config.repair and problem.program.hardware and self.needs_accuracy else None
        self.queued: set[tuple[int, ...]] = set()

    def run(self, records: list[TrialRecord]) -> None:
        for r in records:
            self._note(r)
        self.live = True
        self.rng = np.random.default_rng((self.problem.config.seed, len(records)))
        done, total = sum(r.counted for r in records), self.problem.config.trials
        bar = tqdm(total=total, initial=min(done, total), desc=f"search ({self.problem.config.strategy})",
                   unit="trial", disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
        self.bar = bar
        self._postfix()
        ex = self.executor
        try:
            while done < total and not (self.exhausted and ex.in_flight == 0):
                room = 0 if self.exhausted else min(ex.capacity - ex.in_flight, total - done - ex.in_flight)
                if room > 0:
                    done += self._propose(room)
                    if ex.in_flight < ex.capacity and done + ex.in_flight < total and not self.exhausted:
                        continue
                for (handle, vec, metrics), result, error in ex.collect():
                    if result is not None and self._climb(handle, vec, metrics, result):
                        continue  # promoted: measured again at the next rung
                    self.evaluations += 1
                    self._finish(handle, vec, metrics, result, error)
                    done += 1
                    first = self.tried[tuple(int(x) for x in vec)]
                    for repeat in self.pending.pop(first.key, []):  # proposed again while it was measured
                        self._repeat(*repeat, first)
        finally:
            bar.close()

    def _propose(self, k: int) -> int:
        """Ask ``k`` trials, price them together, tell the ones that need no evaluation; returns how many."""
        asked = [self.strategy.ask() for _ in range(k)]
        vecs = np.stack([vec for _, vec in asked])
        costs = self.problem.cost(self.problem.space.decode_batch(vecs))
        hw_ok = np.broadcast_to(all_hold(self.problem.program.violations(costs, self.bounds, hardware_only=True)),
                                (k,))
        told = 0
        for i, (handle, vec) in enumerate(asked):
            metrics = {m: float(v[i]) for m, v in costs.items()}
            key = tuple(int(x) for x in vec)
            if key in self.tried or key in self.pending:
                if key in self.tried:
                    self._repeat(handle, vec, metrics, self.tried[key])
                else:  # its first trial is being measured: told when that one finishes
                    self.pending[key].append((handle, vec, metrics))
                self.repeats += 1
                if self.repeats >= REPEAT_PATIENCE:
                    self._draw_untried()
                continue
            self.repeats = 0
            if self.repair is not None and not hw_ok[i] and self._repair(handle, vec, metrics):
                continue
            if not (self.needs_accuracy and hw_ok[i]):
                self._finish(handle, vec, metrics, None, None)
                told += 1
            elif self.screen is not None and (predicted := self.screen(vec, metrics)) is not None:
                self._finish(handle, vec, metrics, None, None, screened=predicted)
                told += 1
            else:
                self.pending[key] = []
                self.executor.submit((handle, vec, metrics), Job(self.problem.space.decode(vec), 0))
        return told

    def _climb(self, handle: Any, vec: np.ndarray, metrics: dict[str, float], result: dict) -> bool:
        """Note a rung's result; submit the trial to the next rung if it is promoted (True) or else put its
        fidelity into ``result`` (False: the trial is finished with it)."""
        state = self.ladder.setdefault(handle.number, {"rung": -1, "rungs": len(self.rungs), "accuracies": [],
                                                       "images": 0, "finetune_steps": 0, "seconds": 0.0})
        rung = state["rung"] = state["rung"] + 1
        state["accuracies"].append(result["accuracy"])
        state["images"] += result.get("images") or 0
        state["finetune_steps"] += result.get("finetune_steps") or 0
        state["seconds"] += result.get("seconds") or 0.0
        self.images += result.get("images") or 0
        self.rung_results[rung].append(result["accuracy"])
        if rung == 0 and self.screen is not None:
            self.screen.add(vec, metrics, result["accuracy"])
        if rung + 1 < len(self.rungs) and self._promoted(rung, result["accuracy"]):
            self.promotions[rung] += 1
            self.executor.submit((handle, vec, metrics), Job(self.problem.space.decode(vec), rung + 1))
            self._postfix()
            return True
        del self.ladder[handle.number]
        result["seconds"] = state.pop("seconds")
        if len(self.rungs) > 1 or state["images"]:
            result["fidelity"] = state
        return False

    def _promoted(self, rung: int, accuracy: float) -> bool:
        """ASHA's rule, decided on arrival: in the top ``promote`` fraction of the rung's results so far, and
        within the rung's quota of ``max(1, floor(promote x results))`` promotions (the first result always goes
        on). A result above every earlier one at its rung goes on beyond the quota: a strategy that improves
        would otherwise lose its best candidates whenever the quota was spent."""
        values = self.rung_results[rung]
        if accuracy < float(np.quantile(values, 1.0 - self.promote)):
            return False
        quota = max(1, math.floor(self.promote * len(values)))
        record = len(values) > 1 and accuracy > max(values[:-1])
        return self.promotions[rung] < quota or record

    def _repeat(self, handle: Any, vec: np.ndarray, metrics: dict[str, float], first: TrialRecord) -> None:
        """Tell a repeat of a tried policy that trial's result (not counted against the budget)."""
        result = {"accuracy": first.metrics["accuracy"], "cached": True, "fidelity": first.fidelity} \
            if first.evaluated else None
        self._finish(handle, vec, metrics, result, first.error if first.state == "fail" else None, first.number)

    def _repair(self, handle: Any, vec: np.ndarray, metrics: dict[str, float]) -> bool:
        """Lower an infeasible proposal onto the hardware bounds and queue the lowered policy as the next trial;
        tell the proposal infeasible, not counted (True). False where the lowered policy is still infeasible or
        already tried or queued: the proposal is then counted as an infeasible trial, so every proposal either
        spends the budget or leads to a new measured policy."""
        fitted = self.repair(vec)
        key = tuple(int(x) for x in fitted)
        taken = key in self.tried or key in self.pending or key in self.queued
        if taken or (self.repair.violations(fitted[None]) > 0).any():
            return False
        self.queued.add(key)
        self.strategy.study.enqueue_trial(knob_params(self.problem.space, fitted),
                                          user_attrs={"repaired_from": handle.number})
        self._finish(handle, vec, metrics, None, None, repaired=True)
        return True

    def _draw_untried(self) -> None:
        """Queue a policy no trial has tried, drawn at random (the strategy only repeated itself); when none is
        left the search stops."""
        self.repeats = 0
        space = self.problem.space
        sizes = [len(k.choices) for k in space.knobs]
        taken = self.tried.keys() | self.pending.keys()
        vec = next((v for v in (self.rng.integers(0, sizes) for _ in range(100)) if tuple(map(int, v)) not in taken),
                   None)
        if vec is None and math.prod(sizes) <= 1_000_000:  # a small space nearly all tried: pick from what is left
            left = [v for v in np.ndindex(*sizes) if v not in taken]
            vec = np.asarray(left[self.rng.integers(len(left))]) if left else None
            self.exhausted = not left
        if vec is not None:
            self.strategy.study.enqueue_trial(knob_params(space, vec), user_attrs={
                "drawn": f"at random: the strategy proposed {REPEAT_PATIENCE} tried policies in a row"})

    def _finish(self, handle: Any, vec: np.ndarray, metrics: dict[str, float], result: dict | None,
                error: str | None, duplicate_of: int | None = None, screened: dict | None = None,
                repaired: bool = False) -> None:
        """Tell the strategy how the trial went; note it for the bar, the tried policies and the callbacks. A
        ``screened`` trial (not measured) is told its predicted accuracy."""
        full, objectives, constraints = score(self.problem, self.bounds, self.reference, metrics, result,
                                              None if screened is None else screened["predicted"])
        attrs: dict[str, Any] = {"metrics": jsonable(full), "evaluated": result is not None}
        if screened is not None:
            attrs["screened"] = screened
            self.counts["screened"] = self.counts.get("screened", 0) + 1
        if duplicate_of is not None:
            attrs["duplicate_of"] = duplicate_of
        if repaired:
            attrs["repaired"] = True
        if error:
            attrs["error"] = error
            self.strategy.tell(handle, [], {}, failed=True, attrs=attrs)
            record = TrialRecord(handle.number, "fail", vec, full, {}, False, error, duplicate_of=duplicate_of)
        else:
            if result and not result.get("cached"):
                attrs["eval_seconds"] = result["seconds"]
            for key in ("worker_died", "node", "fidelity"):  # measured again on a fresh worker; the Ray node that
                if result and result.get(key):                 # measured it; the rungs it reached
                    attrs[key] = result[key]
            self.strategy.tell(handle, objectives, constraints, attrs=attrs)
            record = TrialRecord(handle.number, "complete", vec, full, constraints, result is not None,
                                 node=attrs.get("node"), duplicate_of=duplicate_of, fidelity=attrs.get("fidelity"),
                                 screened=screened, repaired=repaired,
                                 repaired_from=handle.user_attrs.get("repaired_from"))
        self.new_trials += record.counted
        self._note(record)
        self.bar.update(int(record.counted))
        self._postfix()
        for callback in self.callbacks:
            callback(record)

    def _note(self, record: TrialRecord) -> None:
        if record.counted and record.vec is not None:
            self.tried.setdefault(record.key, record)
        if record.counted and record.fidelity and not self.live:
            for rung, accuracy in enumerate(record.fidelity["accuracies"][:len(self.rung_results)]):
                self.rung_results[rung].append(accuracy)  # a resumed run's rungs (a live one noted them itself)
                if rung:
                    self.promotions[rung - 1] += 1
            self.images += record.images
            if self.screen is not None and record.vec is not None:
                self.screen.add(record.vec, record.metrics, record.fidelity["accuracies"][0])
        if record.counted:
            self.counts["failed"] += record.state == "fail"
            self.counts["infeasible"] += record.state == "complete" and not record.feasible
        self.front.add(record)

    def _postfix(self) -> None:
        if not self.progress:
            return
        first = self.problem.objectives[0]
        best = self.front.best(0)
        extra = {"images": self.images} if self.images else {}
        if len(self.rungs) > 1:
            extra["at rungs"] = "/".join(str(len(v)) for v in self.rung_results)
        self.bar.set_postfix({f"best {first.metric}": format_value(first.metric, best) if best is not None else "—",
                              "front": len(self.front), **self.counts, **extra}, refresh=False)


# ------------------------------------------------------------------------------------------------- entry


def _where(source: str) -> str:
    return f"{source}: field 'strategy_options'"


def check_run(settings: SearchSettings, source: str, run_dir: Path | None, resume: bool) -> str:
    """What can fail before anything is loaded or written: the storage and the strategy options. Returns where
    the options are named in error messages."""
    where = _where(source)
    make_sampler(settings.strategy, settings.seed, settings.strategy_options, where)
    if run_dir is None:
        if resume:
            raise PicojouleError(f"{source}: resume needs the storage (a run directory) of the search to resume")
        if settings.backend == "ray-tune":
            raise PicojouleError(f"{source}: field 'backend': ray-tune keeps its records in a run directory: "
                                 "give storage")
    else:
        check_run_dir(run_dir, settings, resume)
    return where


@quiet_optuna()
def run_search(config: SearchConfig | dict | str | Path | None, out_dir: str | Path, resume: bool = False,
               progress: bool = True, callbacks: Sequence[Callback] = (), **overrides: Any) -> SearchResult:
    """Run (or resume) the search ``config`` states, writing everything to ``out_dir``.

    ``config`` is a YAML path, a mapping or a :class:`SearchConfig`; None resumes with ``out_dir``'s own
    config. ``overrides`` replace config fields (``trials=50``, ``seed=1``, ``workers=2``, ...; a mapping
    merges into a mapping field). On resume only trials, workers and ray_address may differ from the run's
    config. ``callbacks`` are called with each finished trial (native backend only). ``backend: ray-tune`` hands
    the trials to Ray Tune (:mod:`picojoule.search.tune_backend`). The config's model, data and target are
    loaded, accuracy is top-1 on its test split, and the same core as :func:`picojoule.search` runs.
    """
    run_dir = Path(out_dir)
    if config is None:
        if not resume:
            raise PicojouleError("run_search: a config is needed to start a search (None only resumes one)")
        config = saved_config_path(run_dir)
        if "target" not in (read_yaml(config, "search config") or {}):
            raise PicojouleError(f"{run_dir}: this run was started from Python with a model object "
                                 "(picojoule.search): resume it there, with storage and resume=True")
    cfg, source = resolve_config(config, **overrides)
    check_run(cfg, source, run_dir, resume)
    return run_problem(build_problem(cfg, source), run_dir, resume, progress, callbacks)


#: the hardware metrics a resumed run's stored trials must still be priced at (relative tolerance below)
PRICED_METRICS = ("energy", "latency", "size")
PRICING_RTOL = 1e-6


def check_pricing(problem: Problem, records: Sequence[TrialRecord]) -> None:
    """Refuse to resume a run whose stored trials the cost model now prices differently (picojoule upgraded, a
    target file edited): the front would mix two cost models. One line names the first trial that differs."""
    done = [r for r in records if r.state == "complete" and r.vec is not None
            and all(np.isfinite(r.metrics.get(m, np.nan)) for m in PRICED_METRICS)]
    if not done:
        return
    now = problem.cost(problem.space.decode_batch(np.stack([r.vec for r in done])))
    for i, r in enumerate(done):
        for m in PRICED_METRICS:
            then, current = r.metrics[m], float(now[m][i])
            if not np.isclose(then, current, rtol=PRICING_RTOL, atol=0.0):
                raise PicojouleError(
                    f"{problem.source}: resume: trial {r.number} was priced at {m} {then:.6g} when it ran and "
                    f"{current:.6g} now: the cost model or the target changed since this run started; start a new "
                    "run directory (or resume with the picojoule version and target file it was run with)")


@quiet_optuna()
def run_problem(problem: Problem, run_dir: Path | None, resume: bool = False, progress: bool = True,
                callbacks: Sequence[Callback] = (), metric_name: str = "accuracy") -> SearchResult:
    """Search ``problem``: in memory (``run_dir`` None: an Optuna in-memory study, no files, no lock) or in the
    run directory ``run_dir`` (journal, config copy, lock, reports; resumable). Call :func:`check_run` first."""
    where = _where(problem.source)
    if run_dir is None:
        return _search(None, problem, False, progress, callbacks, where, metric_name)
    with run_lock(run_dir):
        write_config(run_dir, problem.config)
        if problem.config.backend == "ray-tune":
            from picojoule.search.tune_backend import run_tune

            return run_tune(run_dir, problem, resume, progress, where)
        return _search(run_dir, problem, resume, progress, callbacks, where, metric_name)


def strategy_context(problem: Problem, study: Any, baselines: dict[str, dict[str, float]] | None = None,
                     resume: bool = False, where: str = "strategy_options",
                     options: dict[str, Any] | None = None, run_dir: Path | None = None,
                     progress: bool = True) -> StrategyContext:
    """What the problem's strategy is built from (``baselines``: cost-only ones if not given); the sensitivity is
    cached in ``run_dir`` unless the config names a cache."""
    cfg = problem.config
    baselines = baselines_of(problem, study, None) if baselines is None else baselines
    return StrategyContext(cfg.strategy, problem.space, study, problem.priced, problem.program, problem.objectives,
                           baselines, problem.program.bounds(baselines), cfg.seed,
                           cfg.strategy_options if options is None else options, resume, where,
                           problem.sensitivity_source(run_dir, progress))


def _search(run_dir: Path | None, problem: Problem, resume: bool, progress: bool, callbacks: Sequence[Callback],
            where: str, metric_name: str = "accuracy") -> SearchResult:
    """The run itself (under the run directory's lock when stored)."""
    cfg = problem.config
    study = open_study(run_dir, [o.direction for o in problem.objectives],
                       make_sampler(cfg.strategy, cfg.seed, cfg.strategy_options, where), resume)
    executor, evaluator = _executor(problem)
    try:
        baselines = baselines_of(problem, study, evaluator, progress)
        bounds = problem.program.bounds(baselines)
        context = strategy_context(problem, study, baselines, resume, where, run_dir=run_dir, progress=progress)
        strategy = make_strategy(context)
        if resume:
            recover_interrupted(study)
            check_pricing(problem, read_records(study, problem.space))
        else:
            for params, attrs in warm_start_trials(problem, bounds, context):
                study.enqueue_trial(params, user_attrs=attrs)
        loop = _Loop(problem, strategy, executor, baselines, bounds, callbacks, progress)
        loop.run(read_records(study, problem.space))
        if loop.screen is not None and (check := loop.screen.holdout()) is not None:
            study.set_user_attr("predictor", check)
    finally:
        executor.close()
    return finish_run(run_dir, problem, study, baselines, bounds, loop.new_trials, loop.evaluations, metric_name,
                      progress)


def measure_test(problem: Problem, study: Any, front: Sequence[TrialRecord], baselines: dict) -> int:
    """Measure on the test split, once each, the front's policies (so every winner) and the baselines that have
    none stored yet; store them in the study (``test_accuracy``) and in each record's metrics. A resumed run keeps
    what earlier sessions measured. Returns how many were measured."""
    if not problem.config.needs_accuracy or problem.data is None:
        return 0
    evaluator = problem.evaluator()
    if not evaluator.has_test:
        return 0
    on_test = partial(evaluator, split="test")
    stored = dict(study.user_attrs.get(TEST_ACCURACY) or {})
    measured = 0
    for r in front:
        if str(r.number) not in stored:
            result, error = safe_evaluate(on_test, problem.space.decode(r.vec))  # type: ignore[arg-type]
            if error:
                continue  # it told a validation accuracy: a test failure is reported as not measured
            stored[str(r.number)] = result["accuracy"]
            measured += 1
        r.metrics[TEST_ACCURACY] = stored[str(r.number)]
    if measured:
        study.set_user_attr(TEST_ACCURACY, stored)
    missing = [n for n, m in baselines.items() if "accuracy" in m and TEST_ACCURACY not in m]
    for name in missing:
        result, error = safe_evaluate(on_test, baseline_policy(name, problem.graph))  # type: ignore[arg-type]
        if error:
            raise PicojouleError(f"{problem.source}: baseline '{name}' cannot be evaluated on the test split: {error}")
        baselines[name][TEST_ACCURACY] = result["accuracy"]
    if missing:
        study.set_user_attr("baselines", baselines)
    return measured + len(missing)


def finish_run(run_dir: Path | None, problem: Problem, study: Any, baselines: dict, bounds: dict, new_trials: int,
               evaluations: int, metric_name: str = "accuracy", progress: bool = False) -> SearchResult:
    """Read every trial back from the study, find the front (each trial with its policy), measure it on the test
    split, fine-tune the winners (``final_finetune``; :mod:`~picojoule.search.final_finetune`) and, if the search
    is stored, write the run directory's outputs."""
    from picojoule.search.report import write_outputs

    records = read_records(study, problem.space)
    front = pareto_front(records, problem.objectives, problem.config.needs_accuracy)
    measure_test(problem, study, front, baselines)
    result = SearchResult(run_dir, problem, records, front, baselines, bounds, new_trials, evaluations, study,
                          metric_name=metric_name)
    for r in front:
        r.policy = result.policy(r)
    finetune_winners(result, progress)
    if run_dir is not None:
        result.outputs = write_outputs(result)
    return result
