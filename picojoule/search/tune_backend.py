"""The Ray Tune backend (``backend: ray-tune``): the same problem, costing and run directory, driven by
``ray.tune.Tuner`` with ``OptunaSearch``, for users whose cluster already runs Tune.

Each Tune trial receives one policy (knob indices) from :class:`ConstrainedOptunaSearch` -- the config's Optuna
sampler on the run's own journal -- prices it, tests the hardware bounds and, only if they hold, measures its
accuracy; it reports the objectives, every metric (``metric/<name>``) and the violation of every constraint
(``constraint/<text>``). The searcher forwards those violations to the Optuna trial (``set_constraint``) before
telling it, so NSGA-II, TPE and GP see feasibility exactly as in the native engine, and stores the metrics the way
the engine does: the journal, trials.csv, pareto/, report.md and plots come from the same code, and
``--resume`` continues the run (trials a killed run left running are retried once). Tune's own records go to
``RUN_DIR/tune``. Concurrency is ``workers`` trials (at least one), one CPU each; a trial whose worker died is run
once more (Tune's ``max_failures=1``), then failed.

Compared with the native engine (``backend: picojoule``): trials are not deduplicated, and Tune spends a process
start per trial, so cost-only trials are far slower; ddpg is not offered (it proposes its own vectors).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from picojoule.errors import PicojouleError
from picojoule.search.constraints import all_hold
from picojoule.search.engine import (SearchResult, baselines_of, finish_run, jsonable, score, strategy_context,
                                     warm_start_trials)
from picojoule.search.executors import safe_evaluate
from picojoule.search.journal import (STUDY_NAME, knob_distributions, open_study, quiet_optuna, read_records,
                                      recover_interrupted)
from picojoule.search.parallel import init_ray
from picojoule.search.problem import Problem
from picojoule.search.strategies import make_sampler

OBJECTIVE, METRIC, CONSTRAINT = "objective/", "metric/", "constraint/"


def _searcher_class() -> type:
    """:class:`ConstrainedOptunaSearch`, built on first use (importing ray.tune takes seconds)."""
    from ray.tune.search.optuna import OptunaSearch

    class ConstrainedOptunaSearch(OptunaSearch):
        """OptunaSearch that forwards each trial's constraint violations and metrics to its Optuna trial."""

        def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None,
                              error: bool = False) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and result:
                metrics = {k[len(METRIC):]: v for k, v in result.items() if k.startswith(METRIC)}
                ot_trial.set_user_attr("metrics", jsonable({k: float(v) for k, v in metrics.items()}))
                ot_trial.set_user_attr("evaluated", bool(result.get("evaluated", False)))
                if result.get("eval_seconds") is not None:
                    ot_trial.set_user_attr("eval_seconds", float(result["eval_seconds"]))
                if result.get("error"):
                    ot_trial.set_user_attr("error", str(result["error"]))
                    result, error = None, True
                else:
                    for key, value in result.items():
                        if key.startswith(CONSTRAINT):
                            ot_trial.set_constraint(key[len(CONSTRAINT):], float(value))
            elif ot_trial is not None and error:
                ot_trial.set_user_attr("error", "the Tune trial failed (see RUN_DIR/tune)")
            super().on_trial_complete(trial_id, result, error)

    return ConstrainedOptunaSearch


def _trial(params: dict[str, Any], problem: Problem, bounds: dict[str, float], reference: float) -> dict[str, Any]:
    """One Tune trial: price the policy, measure its accuracy if it meets the hardware bounds, report."""
    torch.set_num_threads(1)
    vec = np.asarray([params[k.name] for k in problem.space.knobs], dtype=np.int64)
    policy = problem.space.decode(vec)
    costs = problem.cost([policy])
    metrics = {m: float(v[0]) for m, v in costs.items()}
    result, error = None, None
    hw_ok = all_hold(problem.program.violations(costs, bounds, hardware_only=True))
    if problem.config.needs_accuracy and bool(np.all(hw_ok)):
        result, error = safe_evaluate(problem.evaluator(), policy)
    full, objectives, constraints = score(problem, bounds, reference, metrics, result)
    out: dict[str, Any] = {f"{OBJECTIVE}{i}": v for i, v in enumerate(objectives)}
    out.update({f"{METRIC}{k}": v for k, v in full.items()})
    out.update({f"{CONSTRAINT}{k}": v for k, v in constraints.items()})
    out.update(evaluated=result is not None, eval_seconds=result["seconds"] if result else None, error=error)
    return out


@quiet_optuna()
def run_tune(run_dir: Path, problem: Problem, resume: bool, progress: bool, where: str) -> SearchResult:
    """The run in ``run_dir`` (under its lock) on Ray Tune; returns what the native engine returns."""
    from ray import tune

    cfg = problem.config
    directions = [o.direction for o in problem.objectives]
    sampler = make_sampler(cfg.strategy, cfg.seed, cfg.strategy_options, where)
    study = open_study(run_dir, directions, sampler, resume)
    if resume:
        recover_interrupted(study)
        sampler = make_sampler(cfg.strategy, cfg.seed + len(study.trials), cfg.strategy_options, where)
    started = init_ray(max(cfg.workers, 1), cfg.ray_address, problem.source)
    try:
        evaluator = problem.evaluator() if cfg.needs_accuracy else None
        baselines = baselines_of(problem, study, evaluator, progress)
        bounds = problem.program.bounds(baselines)
        if not resume:
            context = strategy_context(problem, study, baselines, resume, where, run_dir=run_dir, progress=progress)
            for params, attrs in warm_start_trials(problem, bounds, context):
                study.enqueue_trial(params, user_attrs=attrs)
        done = sum(r.counted for r in read_records(study, problem.space))
        remaining = max(cfg.trials - done, 0)
        if remaining:
            searcher = _searcher_class()(
                space=knob_distributions(problem.space), metric=[f"{OBJECTIVE}{i}" for i in range(len(directions))],
                mode=["max" if o.maximise else "min" for o in problem.objectives], sampler=sampler,
                study_name=STUDY_NAME, storage=study._storage)  # the run's journal storage
            trainable = tune.with_resources(
                tune.with_parameters(_trial, problem=problem, bounds=bounds,
                                     reference=baselines["fp32"].get("accuracy", math.nan)), {"cpu": 1})
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                            max_concurrent_trials=max(cfg.workers, 1)),
                run_config=tune.RunConfig(name="tune", storage_path=str(run_dir.resolve()),
                                          failure_config=tune.FailureConfig(max_failures=1),  # a dead worker: once more
                                          verbose=1 if progress else 0))
            grid = tuner.fit()
            if grid.num_errors == remaining and remaining:
                raise PicojouleError(f"{run_dir}: every Ray Tune trial failed; see {run_dir / 'tune'}")
    finally:
        if started:
            import ray

            ray.shutdown()
    fresh = [r for r in read_records(study, problem.space) if r.counted][done:]
    return finish_run(run_dir, problem, study, baselines, bounds, len(fresh), sum(r.evaluated for r in fresh),
                      progress=progress)
