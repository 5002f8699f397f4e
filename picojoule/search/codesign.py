"""Hardware-software co-design: the hardware's parameters and the per-layer policy searched together.

A co-design config is a search config whose target has a ``parameters`` section
(:mod:`picojoule.hwmodels.parameters`), plus a ``codesign`` section::

    codesign:
      strategy: grid          # grid | random | tpe: how hardware points are chosen
      points: null            # grid: every combination (or a seeded sample of this many); random, tpe: this many (8)
      grid_values: 3          # values of a range without a step on the grid
      trials_per_point: 60    # the policy search at each point (default: the config's trials)
      warm_start: 4           # best policies of the earlier points that start each point's policy search

**Hardware outer, policy inner, warm-started.** Each hardware point gets a full policy search (the engine of
:mod:`picojoule.search.engine`, in ``points/NNN/`` of the run directory, with its journal, resume and report,
seeded with the config's seed plus the point's index so that the points explore different policies), started
from the uniform warm starts of the config and the best policies found at the points before it. At the end every
policy measured anywhere is priced on every searched point: the joint front is over all of those pairs. Why not
one joint search over hardware and policy together: the expensive part of a trial is measuring accuracy, and
accuracy depends on the policy only, not on the hardware it is priced on. Outer/inner with one accuracy cache
shared by every point (a policy measured at one point costs nothing at the next) spends the measurements on
policies, while each hardware point is priced by the cost model in microseconds; a joint sampler would spread
the same budget over a space the size of (hardware points x policies) and measure policies again for each
hardware it paired them with. Warm starts carry what one point learned to the next: neighbouring hardware
points share most of their good policies.

``strategy: tpe`` chooses the hardware points with Optuna's TPE sampler (a real Optuna study, journaled in the
run directory) on the best energy-delay product of each point's feasible front; ``grid`` and ``random`` visit a
fixed plan. Hardware-only constraints (``area <= 2 mm2``) are checked before a point's search: a point that
breaks one is recorded and skipped. The report (``codesign.md``, ``codesign.json``, plots) keeps the Pareto
front over the config's objectives plus area across all points, and plots each parameter against the best
energy and EDP reached at its values.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from picojoule.errors import PicojouleError
from picojoule.hwmodels.area import area_mm2
from picojoule.hwmodels.parameters import cast, grid, grid_points, instantiate
from picojoule.hwmodels.target import Target
from picojoule.policy import Policy
from picojoule.search.codesign_report import values_text
from picojoule.search.config import SearchConfig, config_from_dict
from picojoule.search.metrics import format_value
from picojoule.yamlfile import read_yaml, validated

STATE_FILE = "codesign.json"
CACHE_FILE = "accuracy_cache.json"


class CodesignOptions(BaseModel):
    """The ``codesign`` section of a co-design config."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["grid", "random", "tpe"] = "grid"
    points: int | None = Field(default=None, ge=1)
    grid_values: int = Field(default=3, ge=2)
    trials_per_point: int | None = Field(default=None, ge=1)
    warm_start: int = Field(default=4, ge=0)


def _format(source: str, err) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return f"{source}: field 'codesign.{loc}': {msg}"


def load_codesign(config: str | Path | dict, **overrides: Any) -> tuple[SearchConfig, CodesignOptions, str]:
    """The search config and the co-design options of a co-design config (a YAML path or a mapping)."""
    if isinstance(config, dict):
        data, source = dict(config), "config"
    else:
        data, source = read_yaml(config, "co-design config"), str(config)
        if not isinstance(data, dict):
            raise PicojouleError(f"{source}: expected a mapping of search settings with a 'codesign' section")
        data = dict(data)
    options = validated(CodesignOptions, data.pop("codesign", None) or {}, source, "co-design options", _format)
    data.update({k: v for k, v in overrides.items() if v is not None})
    cfg = config_from_dict(data, source)
    from picojoule.hwmodels.target import load_target

    target = load_target(cfg.target)
    if not target.parameters:
        raise PicojouleError(f"{source}: field 'target': '{cfg.target}' has no 'parameters' section: co-design needs "
                             "hardware given as ranges or choices (see picojoule.hwmodels.parameters)")
    return cfg, options, source


@dataclass
class PointResult:
    """One hardware point: its parameter values, its target, and the policy search's front there."""

    index: int
    values: dict[str, Any]
    target: str
    area_mm2: float
    status: str  # done | skipped: <why>
    front: list[dict[str, Any]] = field(default_factory=list)  # {trial, metrics, policy, feasible}
    seconds: float = 0.0
    evaluations: int = 0
    bounds: dict[str, float] = field(default_factory=dict)  # each constraint's bound at this point (SI units)
    reference: float | None = None  # the float32 model's validation accuracy (what accuracy_drop is below)
    best_energy: float | None = None  # over every measured policy priced here (joint_front), feasible ones
    best_edp_any: float | None = None

    def best(self, metric: str) -> float:
        """The lowest ``metric`` of a feasible policy at this point: over every policy the co-design measured
        (priced here) where the joint front was computed, else over this point's own search's front."""
        if metric == "energy" and self.best_energy is not None:
            return self.best_energy
        vals = [r["metrics"].get(metric, math.nan) for r in self.front if r["feasible"]]
        vals = [v for v in vals if v is not None and np.isfinite(v)]
        return min(vals) if vals else math.nan

    @property
    def best_edp(self) -> float:
        if self.best_edp_any is not None:
            return self.best_edp_any
        vals = [r["metrics"]["energy"] * r["metrics"]["latency"] for r in self.front if r["feasible"]]
        return min(vals) if vals else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "values": self.values, "target": self.target, "area_mm2": self.area_mm2,
                "status": self.status, "front": self.front, "seconds": self.seconds, "evaluations": self.evaluations,
                "bounds": self.bounds, "reference": self.reference, "best_energy": self.best_energy,
                "best_edp_any": self.best_edp_any}


@dataclass
class CodesignResult:
    """A finished co-design: every hardware point and the joint front (policy x hardware)."""

    run_dir: Path | None
    parameters: list[str]
    objectives: list[Any]
    points: list[PointResult]
    front: list[dict[str, Any]]  # {point, values, trial, metrics (with area), policy}
    outputs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        done = [p for p in self.points if p.status == "done"]
        lines = [f"co-design: {len(self.points)} hardware points ({len(done)} searched), "
                 f"joint front of {len(self.front)}"]
        for row in self.front[:10]:
            metrics = ", ".join(f"{o.metric} {format_value(o.metric, row['metrics'].get(o.metric, math.nan))}"
                                for o in self.objectives)
            found = f"trial {row['trial']}" if row["trial"] is not None else "a measured policy"
            lines.append(f"  point {row['point']} ({values_text(row['values'])}), {found}: {metrics}")
        if self.run_dir is not None:
            lines.append(f"  report: {self.run_dir / 'codesign.md'}")
        return "\n".join(lines)


def _plan(target: Target, options: CodesignOptions, seed: int) -> list[dict[str, Any]]:
    """The hardware points a grid or random co-design visits, in order (the base point first where it is on it)."""
    combos = grid_points(target.parameters, options.grid_values)
    rng = np.random.default_rng(seed)
    n = options.points
    if options.strategy == "random":
        n = n or 8
        if n < len(combos):
            combos = [combos[i] for i in sorted(rng.choice(len(combos), n, replace=False))]
    elif n is not None and n < len(combos):
        combos = [combos[i] for i in sorted(rng.choice(len(combos), n, replace=False))]
    return combos


def _tpe_study(run_dir: Path | None, seed: int):
    import optuna

    from picojoule.search.journal import quiet_optuna  # noqa: F401  (logging level)

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    if run_dir is None:
        return optuna.create_study(direction="minimize", sampler=sampler)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(run_dir / "hardware.journal")))
    return optuna.create_study(study_name="hardware", storage=storage, direction="minimize", sampler=sampler,
                               load_if_exists=True)


def _suggest(trial: Any, target: Target, options: CodesignOptions) -> dict[str, Any]:
    values = {}
    for name, spec in target.parameters.items():
        choices = grid(name, spec, options.grid_values)
        if spec.range is not None and not spec.step:  # a continuous range: TPE samples it, not its grid
            lo, hi = spec.range
            values[name] = cast(name, trial.suggest_float(name, lo, hi, log=spec.log))
        else:
            values[name] = choices[trial.suggest_categorical(name, list(range(len(choices))))]
    return values


def _hardware_violation(cfg: SearchConfig, area: float) -> str | None:
    for c in cfg.program:
        if c.metric == "area" and c.baseline is None:
            if (c.upper and area > c.value) or (not c.upper and area < c.value):
                return f"area {area:.3g} mm² breaks '{c.text}'"
    return None


def _front_rows(result: Any) -> list[dict[str, Any]]:
    return [{"trial": r.number, "metrics": {k: (None if v is None or not np.isfinite(v) else float(v))
                                            for k, v in r.metrics.items()},
             "policy": result.policy(r).to_dict(), "feasible": bool(r.feasible)} for r in result.front]


def _load_state(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None or not (run_dir / STATE_FILE).is_file():
        return {"points": []}
    return json.loads((run_dir / STATE_FILE).read_text())


def _save(run_dir: Path | None, state: dict[str, Any], cache: dict) -> None:
    if run_dir is None:
        return
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(run_dir / STATE_FILE)
    tmp = run_dir / (CACHE_FILE + ".tmp")
    tmp.write_text(json.dumps(cache))
    tmp.replace(run_dir / CACHE_FILE)


def _warm(points: Sequence[PointResult], k: int, objectives: Sequence[Any]) -> list[tuple[Policy, str]]:
    """The ``k`` feasible front policies of earlier points with the best first objective."""
    rows = [(p, r) for p in points if p.status == "done" for r in p.front if r["feasible"]]
    if not rows or k == 0:
        return []
    first = objectives[0]
    sign = -1.0 if first.maximise else 1.0
    rows.sort(key=lambda pr: sign * (pr[1]["metrics"].get(first.metric) or 0.0))
    out, seen = [], set()
    for p, r in rows:
        key = json.dumps(r["policy"]["layers"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append((Policy.from_dict(r["policy"]), f"front of hardware point {p.index} (trial {r['trial']})"))
        if len(out) == k:
            break
    return out


def measured_policies(cache: dict, rungs: int) -> tuple[list[Policy], np.ndarray]:
    """Every policy the co-design measured at full fidelity on the validation split (the accuracy cache's keys),
    with its accuracy."""
    policies, accuracy = [], []
    for key, value in cache.items():
        default, layers, split, rung = json.loads(key)
        if split != "validation" or rung not in (-1, rungs - 1):
            continue
        policies.append(Policy.from_dict({"default": default, "layers": layers}))
        accuracy.append(value["accuracy"])
    return policies, np.asarray(accuracy, dtype=float)


def joint_front(base_problem: Any, points: Sequence[PointResult], cache: dict) -> list[dict[str, Any]]:
    """The non-dominated feasible (policy, hardware) pairs over the objectives plus area. Accuracy depends on the
    policy only, so every policy measured anywhere in the co-design is priced on every searched hardware point
    (microseconds each) and checked against that point's bounds: a policy found at one point is credited at all.
    Each point's best feasible energy and EDP over them are kept on it. Without accuracy (a cost-only co-design)
    the pairs are the points' own fronts."""
    from picojoule.search.constraints import all_hold
    from picojoule.search.problem import make_problem

    objectives = base_problem.objectives
    base = base_problem.target
    policies, accuracy = measured_policies(cache, len(base_problem.config.evaluation.rungs))
    rows = []
    for p in points:
        if p.status != "done":
            continue
        if not policies or p.reference is None:
            for r in p.front:
                if r["feasible"]:
                    rows.append({"point": p.index, "values": p.values, "target": p.target, "trial": r["trial"],
                                 "metrics": {**r["metrics"], "area": p.area_mm2}, "policy": r["policy"]})
            continue
        target = instantiate(base, p.values)
        problem = make_problem(base_problem.config, base_problem.source, base_problem.graph, target)
        metrics = problem.cost(policies)
        metrics["accuracy"] = accuracy  # as accuracy_metrics words it: the drop in pp, rounded to 1e-9
        metrics["accuracy_drop"] = np.round((p.reference - accuracy) * 100.0, 9)
        ok = all_hold(problem.program.violations(metrics, p.bounds)) if len(problem.program) else \
            np.ones(len(policies), dtype=bool)
        ok = np.asarray(ok, dtype=bool) & np.isfinite(accuracy)
        if ok.any():
            edp = metrics["energy"] * metrics["latency"]
            p.best_energy = float(metrics["energy"][ok].min())
            p.best_edp_any = float(edp[ok].min())
        for i in np.flatnonzero(ok):
            rows.append({"point": p.index, "values": p.values, "target": p.target, "trial": None,
                         "metrics": {k: float(v[i]) for k, v in metrics.items()},
                         "policy": policies[i].to_dict()})
    if not rows:
        return []
    keys = [(o.metric, o.maximise) for o in objectives]
    if "area" not in [o.metric for o in objectives]:
        keys.append(("area", False))
    x = np.asarray([[(-1 if mx else 1) * (r["metrics"].get(m) if r["metrics"].get(m) is not None else math.inf)
                     for m, mx in keys] for r in rows], dtype=float)
    keep = np.ones(len(rows), dtype=bool)
    for start in range(0, len(rows), 256):  # blocks keep memory at 256 x n x k
        block = x[start:start + 256, None, :]
        keep[start:start + 256] &= ~((x[None] <= block).all(-1) & (x[None] < block).any(-1)).any(1)
    front = [r for r, k in zip(rows, keep) if k]
    seen, out = set(), []
    for r in front:  # one row per (point, metrics): equal policies priced alike are one pair
        key = (r["point"], tuple(round(r["metrics"].get(m) or 0.0, 12) for m, _ in keys))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def run_codesign(config: str | Path | dict, out_dir: str | Path | None, resume: bool = False,
                 progress: bool = True, **overrides: Any) -> CodesignResult:
    """Run (or resume) the co-design a config file (or mapping) states; ``out_dir`` None keeps it in memory."""
    from picojoule.search.problem import build_problem

    cfg, options, source = load_codesign(config, **overrides)
    run_dir = _prepare(run_dir=Path(out_dir) if out_dir is not None else None, resume=resume)
    if run_dir is not None:
        import yaml

        saved = run_dir / "config.yaml"
        if not (resume and saved.is_file()):
            saved.write_text(yaml.safe_dump({**cfg.dump(), "codesign": options.model_dump()}, sort_keys=False))
    return codesign_problem(build_problem(cfg, source), options, run_dir, progress)


def _prepare(run_dir: Path | None, resume: bool) -> Path | None:
    if run_dir is None:
        return None
    if (run_dir / STATE_FILE).exists() and not resume:
        raise PicojouleError(f"{run_dir}: a co-design run is already here: pass --resume to continue it, or choose "
                             "another directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def codesign_problem(base_problem: Any, options: CodesignOptions, run_dir: Path | None,
                     progress: bool = True) -> CodesignResult:
    """The co-design of ``base_problem`` (its target has ``parameters``) as ``options`` say: the core that
    ``picojoule codesign`` and :func:`picojoule.codesign` share. A stored run resumes where ``run_dir`` holds one."""
    from picojoule.search.engine import check_run, run_problem
    from picojoule.search.problem import make_problem

    cfg, source = base_problem.config, base_problem.source
    base = base_problem.target
    if not base.parameters:
        raise PicojouleError(f"{source}: target '{base.name}' has no 'parameters' section: co-design needs hardware "
                             "given as ranges or choices (see picojoule.hwmodels.parameters)")
    state = _load_state(run_dir)
    cache: dict = {}
    if run_dir is not None and (run_dir / CACHE_FILE).is_file():
        cache = json.loads((run_dir / CACHE_FILE).read_text())
    points = [PointResult(**p) for p in state["points"]]
    if options.strategy == "tpe":
        study = _tpe_study(run_dir, cfg.seed)
        total = options.points or 8
        plan = None
    else:
        study = None
        plan = _plan(base, options, cfg.seed)
        total = len(plan)
    trials = options.trials_per_point or cfg.trials
    names = list(base.parameters)
    stored = hasattr(cfg, "target")  # a config file's settings name their target: each point's names its own
    while len([p for p in points if p.status != "running"]) < total:
        running = next((p for p in points if p.status == "running"), None)
        k = running.index if running is not None else len(points)  # an interrupted point keeps its index
        hw_trial = None
        if running is not None:
            values = running.values
        elif study is not None:
            hw_trial = study.ask()
            values = _suggest(hw_trial, base, options)
        else:
            values = plan[k]
        target = instantiate(base, values)
        area = area_mm2(target)
        point_dir = run_dir / "points" / f"{k:03d}" if run_dir is not None else None
        if progress:
            print(f"hardware point {k + 1}/{total}: {values_text(values)} (area {area:.3g} mm²)", flush=True)
        point = running or PointResult(k, values, target.name, area, "running")
        if running is None:
            points.append(point)
        why = _hardware_violation(cfg, area)
        if why:
            point.status = f"skipped: {why}"
            if study is not None and hw_trial is not None:
                study.tell(hw_trial, math.inf)
            _save(run_dir, {"points": [p.to_dict() for p in points]}, cache)
            continue
        _save(run_dir, {"points": [p.to_dict() for p in points]}, cache)
        # each point's search draws its own proposals (seed + point index): searches seeded alike would propose
        # the same policies everywhere, and the joint front gains most from policies no other point measured
        update: dict[str, Any] = {"trials": trials, "seed": cfg.seed + k}
        if point_dir is not None:
            import yaml

            point_dir.mkdir(parents=True, exist_ok=True)
            target_file = point_dir / "target.yaml"
            target_file.write_text(yaml.safe_dump(target.document(), sort_keys=False))
            if stored:
                update["target"] = str(target_file)
        inner = cfg.model_copy(update=update)
        problem = make_problem(inner, f"{source} (hardware point {k})", base_problem.graph, target,
                               base_problem.model, base_problem.example, base_problem.data, base_problem.metric,
                               base_problem.test_metric)
        problem.given_sensitivity = base_problem.given_sensitivity
        problem.warm_policies = _warm(points, options.warm_start, problem.objectives)
        problem.evaluation_cache = cache
        started = time.perf_counter()
        resume_inner = point_dir is not None and (point_dir / "journal.log").exists()
        if point_dir is not None:
            check_run(inner, source, point_dir, resume_inner)
        result = run_problem(problem, point_dir, resume=resume_inner, progress=progress)
        point.front = _front_rows(result)
        point.bounds = {k: float(v) for k, v in result.bounds.items()}
        reference = result.baselines.get("fp32", {}).get("accuracy")
        point.reference = None if reference is None or not np.isfinite(reference) else float(reference)
        point.status = "done"
        point.seconds = time.perf_counter() - started
        point.evaluations = int(getattr(result, "evaluations", 0))
        if study is not None:
            edp = point.best_edp
            study.tell(hw_trial if hw_trial is not None else study.ask(), edp if np.isfinite(edp) else math.inf)
        _save(run_dir, {"points": [p.to_dict() for p in points]}, cache)
    front = joint_front(base_problem, points, cache)
    _save(run_dir, {"points": [p.to_dict() for p in points]}, cache)
    out = CodesignResult(run_dir, names, base_problem.objectives, points, front)
    if run_dir is not None:
        from picojoule.search.codesign_report import write_codesign_outputs

        out.outputs = write_codesign_outputs(out)
    return out
