"""Benchmark: search strategies on ResNet-20 / CIFAR-10 (lossless subset) on Eyeriss, energy <= 0.5 x uniform INT8.

Three parts, each optional (``--parts``):

* quality: for each strategy (nsga2, tpe, ddpg, random by default), the best feasible accuracy and the
  hypervolume of the feasible (accuracy, energy) points after K and M accuracy evaluations (defaults 50 and 200;
  a policy measured before is not counted again), beside uniform W8A8 and W4A8 (and FP32). The hypervolume is
  the area dominated in [0, 1] accuracy x [0, bound] energy, normalised by that box (reference: accuracy 0,
  energy at the bound). The search stops as soon as it has spent M evaluations. Every strategy is warm-started
  with the same ``--warm-start`` baselines (default uniform W8A8, W4A8, W4A4), each lowered onto the bound by
  the cost model (HAQ's adjustment, :mod:`picojoule.search.projection`); they are reported as fixed rows too,
  so the table shows what each search adds to its starting points. Then, as HAQ
  does with its search's winner, the best feasible policy at M is fine-tuned (knowledge distillation from the
  FP32 model on the subset's training split, ``--finetune-seconds``) and tested again: the search ranks policies
  by post-training accuracy, the fine-tune shows what the winner is worth once repaired.
* overhead: cost-only trials per second through the whole engine (ask, price, tell, Optuna's journal), same
  space and bound with objectives energy and size, timed between the first and the last trial (goal >= 20/s).
* ray: accuracy-bound trials (random strategy, no hardware bound: every trial is evaluated) per second in this
  process and on 2 Ray actors, in the same run; the ratio is the speed-up (goal >= 1.8x). Evaluation runs on one
  torch thread in both arms (``--threads``), as each actor does.

Results are rewritten after every strategy and part, so an interrupted run keeps what it measured; parts not
run keep the figures an earlier run wrote.

Run (from the repository root): python experiments/bench_search.py [--k 50 --m 200] [--strategies ddpg random]
    [--parts quality overhead ray] [--test-images 500] [--overhead-trials 300] [--ray-trials 12] [--ddpg-warmup 8]
    [--finetune-seconds 120] [--augment] [--runs DIR]  (--parts finetune: the final fine-tune again on DIR's runs)
Writes experiments/results/bench_search.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from picojoule.search import run_search
from picojoule.search.baselines import baseline_policy
from picojoule.search.config import config_from_dict, load_config
from picojoule.search.engine import warm_start_trials
from picojoule.search.journal import TrialRecord, quiet_optuna
from picojoule.search.evaluate import evaluate_policy
from picojoule.search.problem import CALIB_BATCH, Problem, build_problem

HERE = Path(__file__).parent
CONFIG = HERE / "configs" / "resnet20_eyeriss.yaml"
STRATEGY_OPTIONS = {"nsga2": {"population_size": 20}}
PARTS = ("quality", "finetune", "overhead", "ray")
UNIFORMS = {"FP32": "fp32", "uniform W8A8": "uniform_int8", "uniform W4A8": "uniform_w4a8"}
WARM_STARTS = ["uniform_int8", "uniform_w4a8", "uniform_w4a4"]


class Enough(Exception):
    """Raised by :class:`Recorder` once the evaluation budget is spent (it ends the search)."""


class Recorder:
    """A search callback: each finished trial with its time and the accuracy evaluations spent so far."""

    def __init__(self, limit: int | None = None):
        self.limit, self.evaluations = limit, 0
        self.rows: list[tuple[float, int, TrialRecord]] = []
        self._measured: set[tuple[int, ...]] = set()

    def __call__(self, record: TrialRecord) -> None:
        fresh = record.state == "fail" or (record.evaluated and record.key not in self._measured)
        if record.evaluated:
            self._measured.add(record.key)
        self.evaluations += fresh
        self.rows.append((time.perf_counter(), self.evaluations, record))
        if self.limit is not None and self.evaluations >= self.limit:
            raise Enough

    def rate(self, first_batch: int = 1) -> float:
        """Trials per second from the end of the first batch (the first ``first_batch`` trials, which finish
        together when that many run in parallel) to the last trial."""
        if len(self.rows) <= first_batch:
            return float("nan")
        return (len(self.rows) - first_batch) / (self.rows[-1][0] - self.rows[first_batch - 1][0])


def hypervolume(points: list[tuple[float, float]], bound: float) -> float:
    """Normalised area that (accuracy, cost) points dominate in [0, 1] x [0, bound] (maximise accuracy, minimise
    cost; reference point accuracy 0, cost at the bound)."""
    area, floor = 0.0, 0.0
    for acc, gain in sorted(((a, 1 - c / bound) for a, c in points if c <= bound), reverse=True):
        if gain > floor:
            area, floor = area + acc * (gain - floor), gain
    return area


def config_for(path: Path, strategy: str, **changes: Any) -> dict[str, Any]:
    """The benchmark's config with ``strategy`` (its own options) and the benchmark's warm starts; ``changes``
    replace fields (a mapping merges into a mapping field)."""
    cfg = load_config(path).dump()
    cfg.update(strategy=strategy, strategy_options=STRATEGY_OPTIONS.get(strategy, {}), warm_start=WARM_STARTS)
    for key, value in changes.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


def search(cfg: dict[str, Any], run_dir: Path, recorder: Recorder, trials: int) -> float:
    """Run until the trials or the recorder's evaluations are spent; wall seconds."""
    start = time.perf_counter()
    try:
        run_search(cfg, run_dir, progress=False, callbacks=[recorder], trials=trials)
    except Enough:
        pass
    return time.perf_counter() - start


def summary(recorder: Recorder, evaluations: int, metric: str, bound: float) -> dict[str, Any]:
    """Best feasible accuracy and hypervolume once ``evaluations`` were spent."""
    records = [r for _, spent, r in recorder.rows if spent <= evaluations]
    measured = [r for r in records if r.feasible and r.evaluated]
    points = [(r.metrics["accuracy"], r.metrics[metric]) for r in measured]
    return {"evaluations": min(evaluations, recorder.evaluations), "trials": len(records),
            "feasible_measured": len({r.key for r in measured}),
            "best_accuracy": max((a for a, _ in points), default=None), "hypervolume": hypervolume(points, bound)}


def best_feasible(recorder: Recorder, evaluations: int) -> TrialRecord | None:
    """The feasible measured trial of highest accuracy once ``evaluations`` were spent (earliest on ties)."""
    measured = [r for _, spent, r in recorder.rows if spent <= evaluations and r.feasible and r.evaluated]
    return max(measured, key=lambda r: (r.metrics["accuracy"], -r.number), default=None)


def replay(run_dir: Path, problem: Problem) -> Recorder:
    """A finished quality run's trials from its journal, counted as the live run's recorder counted them."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from picojoule.search.journal import JOURNAL, STUDY_NAME, read_records

    study = optuna.load_study(study_name=STUDY_NAME, storage=JournalStorage(JournalFileBackend(str(run_dir / JOURNAL))))
    recorder = Recorder()
    for record in read_records(study, problem.space):
        if record.counted:
            recorder(record)
    return recorder


def finetuned(problem: Problem, record: TrialRecord, seconds: float, augment: bool = False) -> dict[str, Any]:
    """``record``'s policy fine-tuned for ``seconds`` (KD from the FP32 model; ``augment``: crop+flip) and tested."""
    cfg = problem.config
    test = problem.data.test.subset(cfg.evaluation.test_images) if cfg.evaluation.test_images else problem.data.test
    _, result = evaluate_policy(problem.model, problem.example, problem.space.decode(record.vec), test,
                                graph=problem.graph, calib_data=problem.data.calibration, train_data=problem.data.train,
                                calib_batches=-(-cfg.evaluation.calibration_images // CALIB_BATCH),
                                finetune_seconds=seconds, augment=augment, seed=cfg.seed)
    return {"trial": record.number, "before": record.metrics["accuracy"], "after": result["accuracy"],
            "steps": result["finetune"]["steps"], "seconds": result["seconds"], "augment": augment}


def uniforms(problem: Problem) -> tuple[dict[str, Any], str, float, str]:
    """Accuracy, cost and hypervolume of the uniform baselines; the hardware bound's metric, value and text."""
    hw = problem.program.hardware[0]
    ref = problem.cost([baseline_policy(hw.baseline, problem.graph)]) if hw.baseline else {}
    bound = hw.bound({hw.baseline: {m: float(v[0]) for m, v in ref.items()}} if hw.baseline else {})
    evaluator, out = problem.evaluator(), {}
    for label, name in UNIFORMS.items():
        policy = baseline_policy(name, problem.graph)
        acc, cost = evaluator(policy)["accuracy"], float(problem.cost([policy])[hw.metric][0])
        out[label] = {"accuracy": acc, hw.metric: cost, "feasible": cost <= bound,
                      "hypervolume": hypervolume([(acc, cost)], bound)}
        print(f"{label:14s} {100 * acc:6.2f}%  {hw.metric} {cost / bound:.2f} x bound", flush=True)
    for params, attrs in warm_start_trials(problem, {hw.text: bound}):
        policy = problem.space.decode(np.asarray([params[k.name] for k in problem.space.knobs]))
        acc, cost = evaluator(policy)["accuracy"], float(problem.cost([policy])[hw.metric][0])
        label = "warm start: " + attrs["warm_start"].replace("uniform_int8", "uniform_w8a8")
        out[label] = {"accuracy": acc, hw.metric: cost, "feasible": cost <= bound,
                      "hypervolume": hypervolume([(acc, cost)], bound)}
        print(f"{label} {100 * acc:6.2f}%  {hw.metric} {cost / bound:.2f} x bound", flush=True)
    return out, hw.metric, bound, hw.text


def write(results: dict[str, Any], out: Path) -> None:
    """bench_search.json and a markdown summary of what has been measured so far."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_search.json").write_text(json.dumps(results, indent=2))
    q, a = results.get("quality", {}), results["args"]
    lines = [f"# Search strategies: ResNet-20 / CIFAR-10 on Eyeriss, `{q.get('constraint', '')}`", "",
             f"Config `{a['config']}`; warm starts (lowered onto the bound): "
             f"{', '.join(a.get('warm_start') or []) or 'none'}; test images: {a['test_images'] or 'all 1017'}; "
             f"seed {a['seed']}; "
             f"{os.cpu_count()} cores, load average {results['load_avg']:.1f} at the start.", ""]
    if q:
        k, m = a["k"], a["m"]
        lines += [f"Best feasible accuracy and hypervolume (accuracy x energy under the bound) after K = {k} and "
                  f"M = {m} accuracy evaluations.", "",
                  f"| strategy | best acc @{k} | HV @{k} | best acc @{m} | HV @{m} | trials @{m} | feasible measured "
                  f"| wall s | best @{m} after KD fine-tune | same, with crop+flip |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        pct = lambda v: "—" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        tuned = lambda f: "—" if f is None else f"{pct(f['after'])} ({f['seconds']:.0f} s, {f['steps']} steps)"  # noqa: E731
        for name, row in q.get("strategies", {}).items():
            at_k, at_m = row[str(k)], row[str(m)]
            lines.append(f"| {name} | {pct(at_k['best_accuracy'])} | {at_k['hypervolume']:.3f} | "
                         f"{pct(at_m['best_accuracy'])} | {at_m['hypervolume']:.3f} | {at_m['trials']} | "
                         f"{at_m['feasible_measured']} | {row['wall_s']:.0f} | "
                         f"{tuned(row.get('finetuned'))} | {tuned(row.get('finetuned_augmented'))} |")
        for name, row in q.get("uniforms", {}).items():
            where = "feasible" if row["feasible"] else f"infeasible: {row[q['metric']] / q['bound']:.2f} x bound"
            lines.append(f"| {name} (fixed) | {pct(row['accuracy'])} | {row['hypervolume']:.3f} | | | | {where} | | | |")
        lines += ["", f"Goal: top-1 within 0.5 pt of FP32 ({pct(q['uniforms']['FP32']['accuracy'] - 0.005)} or more) "
                      "under the bound, every strategy above uniform."]
    if "overhead" in results:
        lines += ["", "Cost-only trials per second through the engine (goal >= 20/s): " + ", ".join(
            f"{name} {rate:.1f}/s" for name, rate in results["overhead"].items()) + "."]
    if "ray" in results:
        r = results["ray"]
        lines += ["", f"Accuracy-bound trials ({r['trials']} per arm, random strategy, every trial evaluated): "
                      f"{r['serial_per_min']:.1f}/min in this process, {r['ray_per_min']:.1f}/min on 2 Ray actors: "
                      f"speed-up {r['speedup']:.2f}x (goal >= 1.8x)."]
    (out / "bench_search.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--strategies", nargs="+", default=["nsga2", "tpe", "ddpg", "random"])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--k", type=int, default=50, help="first evaluation budget reported")
    ap.add_argument("--m", type=int, default=200, help="evaluation budget each search runs to")
    ap.add_argument("--test-images", type=int, help="evaluate on the first N test images (default: all)")
    ap.add_argument("--overhead-trials", type=int, default=300)
    ap.add_argument("--ray-trials", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    ap.add_argument("--ddpg-warmup", type=int, help="DDPG's random episodes (default: its own, 20)")
    ap.add_argument("--warm-start", nargs="*", default=WARM_STARTS, help="baselines every strategy starts from")
    ap.add_argument("--finetune-seconds", type=float, default=120.0,
                    help="KD fine-tune of each strategy's best feasible policy at M (0: none)")
    ap.add_argument("--augment", action="store_true", help="crop+flip augmentation in that fine-tune")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, help="where the run directories go (default: a fresh temporary one)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    WARM_STARTS[:] = args.warm_start
    torch.set_num_threads(args.threads)
    if args.ddpg_warmup is not None:
        STRATEGY_OPTIONS["ddpg"] = {"warmup": args.ddpg_warmup}
    quiet_optuna()
    runs = args.runs or Path(tempfile.mkdtemp(prefix="bench_search-"))
    evaluation = {"test_images": args.test_images} if args.test_images else {}
    previous = args.out / "bench_search.json"  # parts not run now keep their earlier figures
    results: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    for part in args.parts:
        results.pop(part, None)
    if "finetune" in args.parts and ("quality" not in results or args.runs is None):
        raise SystemExit("--parts finetune re-runs the final fine-tune of an earlier quality part: give its --runs")
    results.update(args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   load_avg=os.getloadavg()[0])
    if "quality" in args.parts:
        problem = build_problem(config_from_dict(config_for(args.config, "random", seed=args.seed,
                                                            evaluation=evaluation)))
        table, metric, bound, text = uniforms(problem)
        quality = results["quality"] = {"constraint": text, "metric": metric, "bound": bound, "uniforms": table,
                                        "strategies": {}}
        write(results, args.out)
        for name in args.strategies:
            rec = Recorder(args.m)
            cfg = config_for(args.config, name, seed=args.seed, evaluation=evaluation)
            wall = search(cfg, runs / f"quality-{name}", rec, trials=50 * args.m)
            row = quality["strategies"][name] = {"wall_s": wall, **{str(n): summary(rec, n, metric, bound)
                                                                    for n in (args.k, args.m)}}
            if args.finetune_seconds and (best := best_feasible(rec, args.m)) is not None:
                row["finetuned"] = finetuned(problem, best, args.finetune_seconds, args.augment)
            print(name, json.dumps(quality["strategies"][name]), flush=True)
            write(results, args.out)
    if "finetune" in args.parts:  # the final fine-tune again, on the quality part's saved runs (--runs)
        problem = build_problem(config_from_dict(config_for(args.config, "random", seed=args.seed,
                                                            evaluation=evaluation)))
        key, done = ("finetuned_augmented" if args.augment else "finetuned"), {}
        for name, row in results["quality"]["strategies"].items():
            if (best := best_feasible(replay(runs / f"quality-{name}", problem), args.m)) is not None:
                if best.key not in done:  # strategies whose winner is the same policy share one fine-tune
                    done[best.key] = finetuned(problem, best, args.finetune_seconds, args.augment)
                row[key] = {**done[best.key], "trial": best.number}
                print(name, json.dumps(row[key]), flush=True)
                write(results, args.out)
    if "overhead" in args.parts:
        metric = load_config(args.config).objective_list[-1].metric
        results["overhead"] = {}
        for name in args.strategies:
            rec = Recorder()
            search(config_for(args.config, name, seed=args.seed, objectives=[metric, "size"]),
                   runs / f"overhead-{name}", rec, args.overhead_trials)
            results["overhead"][name] = rec.rate()
            print(f"{name}: {rec.rate():.1f} cost-only trials/s", flush=True)
            write(results, args.out)
    if "ray" in args.parts:
        rates = {}
        for workers in (0, 2):
            rec = Recorder()
            cfg = config_for(args.config, "random", seed=args.seed, constraints=[], workers=workers,
                             evaluation=evaluation)
            search(cfg, runs / f"ray-{workers}", rec, args.ray_trials)
            rates[workers] = 60 * rec.rate(first_batch=max(1, workers))
            print(f"workers={workers}: {rates[workers]:.1f} evaluated trials/min", flush=True)
        results["ray"] = {"trials": args.ray_trials, "serial_per_min": rates[0], "ray_per_min": rates[2],
                          "speedup": rates[2] / rates[0]}
        write(results, args.out)
    print((args.out / "bench_search.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
