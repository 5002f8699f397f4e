"""The search loop: ask, price, (maybe) evaluate, tell; then write the run directory.

Two stages per trial. Every proposed policy is priced by the vectorised cost model (microseconds); one
that breaks a hardware constraint is told infeasible at once, with the accuracy it was never measured at
taken as 0 (so an accuracy constraint counts as broken too). Only policies that meet every hardware bound
go to the accuracy stage (apply, calibrate, optionally re-estimate BatchNorm and fine-tune, test), in this
process or on Ray actors. A policy measured before is not measured again.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from picojoule.errors import PicojouleError
from picojoule.search.baselines import REPORT_BASELINES, baseline_policy
from picojoule.search.config import SearchConfig, resolve_config
from picojoule.search.constraints import all_hold
from picojoule.search.executors import Executor, SerialExecutor, safe_evaluate
from picojoule.search.journal import TrialRecord, knob_params, quiet_optuna, read_records, recover_interrupted
from picojoule.search.metrics import accuracy_metrics, format_value
from picojoule.search.pareto import RunningFront, pareto_front
from picojoule.search.problem import Evaluator, Problem, build_problem
from picojoule.search.projection import Projector
from picojoule.search.rundir import check_run_dir, run_lock, saved_config_path, write_config
from picojoule.search.strategies import Strategy, make_sampler, make_strategy
from picojoule.spaces.policy import Policy

Callback = Callable[[TrialRecord], None]


@dataclass
class SearchResult:
    """A finished (or resumed and finished) search, as its journal holds it."""

    run_dir: Path
    problem: Problem
    records: list[TrialRecord]
    front: list[TrialRecord]
    baselines: dict[str, dict[str, float]]
    bounds: dict[str, float]
    new_trials: int  # trials this call finished
    evaluations: int  # accuracy evaluations this call ran
    study: Any = None  # the Optuna study on the run's journal
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def config(self) -> SearchConfig:
        return self.problem.config

    @property
    def winners(self) -> dict[str, TrialRecord]:
        """For each objective, the front's best policy (ties: the earliest trial)."""
        out = {}
        for o in self.problem.objectives:
            if self.front:
                key = (lambda r, m=o.metric: -r.metrics[m]) if o.maximise else (lambda r, m=o.metric: r.metrics[m])
                out[str(o)] = min(self.front, key=lambda r: (key(r), r.number))
        return out

    @property
    def chosen(self) -> TrialRecord | None:
        """The winner of the first objective: the policy the plots show."""
        return next(iter(self.winners.values()), None)

    def policy(self, record: TrialRecord) -> Policy:
        """The record's policy, with where it came from and what it scored."""
        policy = self.problem.space.decode(record.vec)
        policy.meta.update({
            "provenance": {"tool": "picojoule", "run": str(self.run_dir), "trial": record.number,
                           "strategy": self.config.strategy, "seed": self.config.seed,
                           "cost_model": self.config.cost_model},
            "metrics": {k: v for k, v in record.metrics.items() if not math.isnan(v)},
        })
        return policy


# ------------------------------------------------------------------------------------------------- stages


def baselines_of(problem: Problem, study: Any, evaluator: Evaluator | None) -> dict[str, dict[str, float]]:
    """Metrics of the baselines the report and the bounds need; computed once and kept in the study's journal."""
    stored = study.user_attrs.get("baselines")
    if stored:
        return stored
    cfg = problem.config
    names = list(dict.fromkeys([*REPORT_BASELINES, *problem.program.baselines, *cfg.warm_start]))
    policies = [baseline_policy(n, problem.graph) for n in names]
    costs = problem.cost(policies)
    out = {n: {m: float(v[i]) for m, v in costs.items()} for i, n in enumerate(names)}
    if evaluator is not None:
        for name, policy in zip(names, policies):
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


def warm_start_trials(problem: Problem, bounds: dict[str, float]) -> list[tuple[dict[str, int], dict[str, str]]]:
    """The config's warm starts as (params, user attributes): each baseline projected onto the hardware bounds
    (:mod:`~picojoule.search.projection`), so that a budget-constrained search starts from feasible policies near
    them instead of spending trials on baselines the cost model already rules out."""
    project = Projector(problem.space, problem.program, bounds,
                        lambda vecs: problem.cost(problem.space.decode_batch(vecs)))
    out = []
    for name in problem.config.warm_start:
        vec = problem.space.encode(baseline_policy(name, problem.graph))
        fitted = project(vec)
        label = name if (fitted == vec).all() else f"{name} lowered to the hardware bounds"
        out.append((knob_params(problem.space, fitted), {"warm_start": label}))
    return out


# ------------------------------------------------------------------------------------------------- the loop


def jsonable(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metrics as the journal stores them: NaN (not measured) as null."""
    return {k: (None if math.isnan(v) else v) for k, v in metrics.items()}


def score(problem: Problem, bounds: dict[str, float], reference: float, metrics: dict[str, float],
          result: dict | None) -> tuple[dict[str, float], list[float], dict[str, float]]:
    """(every metric, objective values told, constraint violations) of a priced trial and its accuracy result
    (None: not measured; the strategy is told accuracy 0, so an accuracy constraint counts as broken too)."""
    full = dict(metrics)
    if problem.config.needs_accuracy:
        full.update(accuracy_metrics(result["accuracy"] if result else math.nan, reference))
    told = dict(full)
    if problem.config.needs_accuracy and result is None:
        told.update(accuracy_metrics(0.0, reference))
    constraints = {k: float(v) for k, v in problem.program.violations(told, bounds).items()}
    return full, [told[o.metric] for o in problem.objectives], constraints


class _Loop:
    """One session of asking and telling until the trial budget is spent."""

    def __init__(self, problem: Problem, strategy: Strategy, executor: Executor, baselines: dict, bounds: dict,
                 callbacks: Sequence[Callback], progress: bool):
        self.problem, self.strategy, self.executor = problem, strategy, executor
        self.bounds, self.callbacks, self.progress = bounds, list(callbacks), progress
        self.needs_accuracy = problem.config.needs_accuracy
        self.reference = baselines["fp32"].get("accuracy", math.nan)
        self.front = RunningFront(problem.objectives, self.needs_accuracy)
        self.cache: dict[tuple[int, ...], float] = {}
        self.counts = {"infeasible": 0, "failed": 0}
        self.new_trials = self.evaluations = 0

    def run(self, records: list[TrialRecord]) -> None:
        for r in records:
            self._note(r)
        done, total = sum(r.counted for r in records), self.problem.config.trials
        bar = tqdm(total=total, initial=min(done, total), desc=f"search ({self.problem.config.strategy})",
                   unit="trial", disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
        self.bar = bar
        self._postfix()
        ex = self.executor
        try:
            while done < total:
                room = min(ex.capacity - ex.in_flight, total - done - ex.in_flight)
                if room > 0:
                    done += self._propose(room)
                    if ex.in_flight < ex.capacity and done + ex.in_flight < total:
                        continue
                for (handle, vec, metrics), result, error in ex.collect():
                    self.evaluations += 1
                    self._finish(handle, vec, metrics, result, error)
                    done += 1
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
            if not (self.needs_accuracy and hw_ok[i]):
                self._finish(handle, vec, metrics, None, None)
            elif key in self.cache:
                self._finish(handle, vec, metrics, {"accuracy": self.cache[key], "cached": True}, None)
            else:
                self.executor.submit((handle, vec, metrics), self.problem.space.decode(vec))
                continue
            told += 1
        return told

    def _finish(self, handle: Any, vec: np.ndarray, metrics: dict[str, float], result: dict | None,
                error: str | None) -> None:
        """Tell the strategy how the trial went; note it for the bar, the cache and the callbacks."""
        full, objectives, constraints = score(self.problem, self.bounds, self.reference, metrics, result)
        attrs: dict[str, Any] = {"metrics": jsonable(full), "evaluated": result is not None}
        if error:
            attrs["error"] = error
            self.strategy.tell(handle, [], {}, failed=True, attrs=attrs)
            record = TrialRecord(handle.number, "fail", vec, full, {}, False, error)
        else:
            if result and not result.get("cached"):
                attrs["eval_seconds"] = result["seconds"]
            for key in ("worker_died", "node"):  # measured again on a fresh worker; the Ray node that measured it
                if result and result.get(key):
                    attrs[key] = result[key]
            self.strategy.tell(handle, objectives, constraints, attrs=attrs)
            record = TrialRecord(handle.number, "complete", vec, full, constraints, result is not None,
                                 node=attrs.get("node"))
        self.new_trials += 1
        self._note(record)
        self.bar.update(1)
        self._postfix()
        for callback in self.callbacks:
            callback(record)

    def _note(self, record: TrialRecord) -> None:
        if record.state == "complete" and record.evaluated and not math.isnan(record.metrics.get("accuracy", math.nan)):
            self.cache.setdefault(record.key, record.metrics["accuracy"])
        if record.counted:
            self.counts["failed"] += record.state == "fail"
            self.counts["infeasible"] += record.state == "complete" and not record.feasible
        self.front.add(record)

    def _postfix(self) -> None:
        if not self.progress:
            return
        first = self.problem.objectives[0]
        best = self.front.best(0)
        self.bar.set_postfix({f"best {first.metric}": format_value(first.metric, best) if best is not None else "—",
                              "front": len(self.front), **self.counts}, refresh=False)


# ------------------------------------------------------------------------------------------------- entry


def run_search(config: SearchConfig | dict | str | Path | None, out_dir: str | Path, resume: bool = False,
               progress: bool = True, callbacks: Sequence[Callback] = (), **overrides: Any) -> SearchResult:
    """Run (or resume) the search ``config`` states, writing everything to ``out_dir``.

    ``config`` is a YAML path, a mapping or a :class:`SearchConfig`; None resumes with ``out_dir``'s own
    config. ``overrides`` replace config fields (``trials=50``, ``seed=1``, ``workers=2``, ...; a mapping
    merges into a mapping field). On resume only trials, workers and ray_address may differ from the run's
    config. ``callbacks`` are called with each finished trial (native backend only). ``backend: ray-tune`` hands
    the trials to Ray Tune (:mod:`picojoule.search.tune_backend`).
    """
    quiet_optuna()
    run_dir = Path(out_dir)
    if config is None:
        if not resume:
            raise PicojouleError("run_search: a config is needed to start a search (None only resumes one)")
        config = saved_config_path(run_dir)
    cfg, source = resolve_config(config, **overrides)
    check_run_dir(run_dir, cfg, resume)
    where = f"{source}: field 'strategy_options'"
    make_sampler(cfg.strategy, cfg.seed, cfg.strategy_options, where)  # bad options fail before anything is written
    problem = build_problem(cfg, source)
    with run_lock(run_dir):
        write_config(run_dir, cfg)
        if cfg.backend == "ray-tune":
            from picojoule.search.tune_backend import run_tune

            return run_tune(run_dir, problem, resume, progress, where)
        return _search(run_dir, problem, resume, progress, callbacks, where)


def _search(run_dir: Path, problem: Problem, resume: bool, progress: bool, callbacks: Sequence[Callback],
            where: str) -> SearchResult:
    """The run itself, under the run directory's lock."""
    cfg = problem.config
    strategy = make_strategy(cfg.strategy, problem.space, run_dir, [o.direction for o in problem.objectives],
                             cfg.seed, cfg.strategy_options, resume, where)
    if resume:
        recover_interrupted(strategy.study)
    executor, evaluator = _executor(problem)
    try:
        baselines = baselines_of(problem, strategy.study, evaluator)
        bounds = problem.program.bounds(baselines)
        if not resume:
            for params, attrs in warm_start_trials(problem, bounds):
                strategy.study.enqueue_trial(params, user_attrs=attrs)
        loop = _Loop(problem, strategy, executor, baselines, bounds, callbacks, progress)
        loop.run(read_records(strategy.study, problem.space))
    finally:
        executor.close()
    return finish_run(run_dir, problem, strategy.study, baselines, bounds, loop.new_trials, loop.evaluations)


def finish_run(run_dir: Path, problem: Problem, study: Any, baselines: dict, bounds: dict, new_trials: int,
               evaluations: int) -> SearchResult:
    """Read every trial back from the journal, find the front and write the run directory's outputs."""
    from picojoule.search.report import write_outputs

    records = read_records(study, problem.space)
    front = pareto_front(records, problem.objectives, problem.config.needs_accuracy)
    result = SearchResult(run_dir, problem, records, front, baselines, bounds, new_trials, evaluations, study)
    result.outputs = write_outputs(result)
    return result
