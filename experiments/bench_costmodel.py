"""Benchmark: policy costings per second of the roofline, Eyeriss-style and hierarchy models, against ZigZag.

For ResNet-50 and ResNet-56 (and ResNet-18, the model ZigZag maps), in one process on one core:
- batch: N random mixed-precision/pruning policies priced in one vectorised call (policies/s);
- single: one policy per call, as an ask/tell loop would (ms per policy);
- ZigZag 3.9.1 (the `bench` extra) mapping and costing ResNet-18 on its eyeriss_like.yaml, in the
  same run, so the table shows the ratio; skipped with a note when zigzag is not installed.

Run: python experiments/bench_costmodel.py [--no-zigzag] [--batch 1000] [--against REV]
Writes experiments/results/bench_costmodel.{json,md} (with ``--against REV``: bench_costmodel-vs-REV.*).
``--against REV`` also times the code of git revision REV
(a temporary worktree) in the same run: seven rounds, each timing REV and this tree in turn in fresh processes,
the fastest of each; the table then gives this tree's speed over REV's (a refactor must stay >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from picojoule.graph import build_graph
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.target import load_target
try:
    from picojoule.policy import PolicyBatch
except ImportError:  # a revision before the policy types moved (for --against)
    from picojoule.hwmodels.workload import PolicyBatch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from zigzag_reference import run_zigzag_resnet18  # noqa: E402

TARGETS = {"roofline": 10_000, "eyeriss": 1_000, "hierarchy": 10_000}  # issue goals, ResNet-50 policies per second


def random_policies(n_layers: int, n: int, seed: int = 0) -> PolicyBatch:
    rng = np.random.default_rng(seed)
    return PolicyBatch(
        w_bits=rng.integers(2, 9, (n, n_layers)).astype(float),
        a_bits=rng.integers(2, 9, (n, n_layers)).astype(float),
        keep=rng.choice([0.25, 0.5, 0.75, 1.0], (n, n_layers)),
        rank=np.where(rng.random((n, n_layers)) < 0.2, rng.integers(1, 64, (n, n_layers)), 0).astype(float),
        sparsity=np.zeros((n, n_layers)),
    )


def rate(fn, min_seconds: float = 2.0, block_seconds: float = 0.02) -> float:
    """Seconds per call of ``fn``: the fastest of repeated blocks of calls, each block at least ``block_seconds``
    (timeit's rule). These shared virtual machines switch between a fast and a ~1.6x slower state every few
    seconds, which a median of single calls only samples."""
    fn()
    t = time.perf_counter()
    fn()
    per_block = max(1, int(block_seconds / max(time.perf_counter() - t, 1e-9)))
    blocks = []
    t_end = time.perf_counter() + min_seconds
    while time.perf_counter() < t_end or len(blocks) < 5:
        t = time.perf_counter()
        for _ in range(per_block):
            fn()
        blocks.append((time.perf_counter() - t) / per_block)
    return float(min(blocks))


def time_rows(target_name: str, batch: int, min_seconds: float = 2.0, quiet: bool = False) -> list[dict]:
    """Policies/s of both cost models on ResNet-50, ResNet-56 and ResNet-18, batched and one at a time."""
    target = load_target(target_name)
    rows = []
    for name in ("resnet50", "resnet56", "resnet18"):
        graph = build_graph(name)
        pb = random_policies(len(graph), batch)
        one = random_policies(len(graph), 1, seed=1)
        for model in ("roofline", "eyeriss", "hierarchy"):
            t_batch = rate(lambda: price(graph, target, pb, model=model), min_seconds)
            t_single = rate(lambda: price(graph, target, one, model=model), min_seconds)
            rows.append({"model": name, "layers": len(graph), "cost_model": model,
                         "batch_policies_per_s": batch / t_batch, "single_ms": t_single * 1e3,
                         "single_policies_per_s": 1 / t_single})
            if not quiet:
                print(f"{name:9s} {model:9s} batch {batch / t_batch:10.0f}/s  single {t_single * 1e3:6.3f} ms",
                      flush=True)
    return rows


def against(rev: str, target: str, batch: int, rounds: int = 7) -> dict:
    """This tree's rows over revision ``rev``'s, timed alternately in fresh processes (the fastest of ``rounds``)."""
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, capture_output=True, text=True,
                               check=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), rev], cwd=root, check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[list[dict]]] = {"old": [], "new": []}
            for r in range(rounds):
                for label, tree in (("old", old), ("new", root)):
                    print(f"round {r + 1}/{rounds}: {label} ({rev if label == 'old' else 'this tree'})", flush=True)
                    out = subprocess.run([sys.executable, __file__, "--worker", "--target", target, "--batch",
                                          str(batch)], env={**os.environ, "PYTHONPATH": str(tree)},
                                         capture_output=True, text=True, check=True)
                    runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=root, capture_output=True)
    rows = []
    for i, row in enumerate(runs["new"][0]):
        best = {label: {k: float(np.max([run[i][k] for run in runs[label]]))
                       for k in ("batch_policies_per_s", "single_policies_per_s")} for label in runs}
        rows.append({"model": row["model"], "cost_model": row["cost_model"], **{
            f"{label}_{k}": v for label in best for k, v in best[label].items()},
            "batch_ratio": best["new"]["batch_policies_per_s"] / best["old"]["batch_policies_per_s"],
            "single_ratio": best["new"]["single_policies_per_s"] / best["old"]["single_policies_per_s"]})
    return {"rev": rev, "rounds": rounds, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--target", default="eyeriss")
    ap.add_argument("--no-zigzag", action="store_true")
    ap.add_argument("--against", metavar="REV", help="also time git revision REV and give the speed ratios")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one timing run, JSON on stdout
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.worker:
        print(json.dumps(time_rows(args.target, args.batch, min_seconds=1.0, quiet=True)))
        return 0
    rows = time_rows(args.target, args.batch)
    versus = against(args.against, args.target, args.batch) if args.against else None
    zz = None
    if not args.no_zigzag:
        print("ZigZag: mapping + costing ResNet-18 on eyeriss_like.yaml (minutes)...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            zz = run_zigzag_resnet18(Path(tmp))
    ours_r18 = next(r for r in rows if r["model"] == "resnet18" and r["cost_model"] == "eyeriss")
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg": os.getloadavg(), "torch_threads": 1},
        "target": args.target, "batch": args.batch, "rows": rows, "zigzag": zz, "against": versus,
        "zigzag_over_ours_resnet18": (zz["seconds"] / (ours_r18["single_ms"] / 1e3)) if zz else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_costmodel-vs-{args.against}" if args.against else "bench_costmodel"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Cost-model speed", "",
        f"Target `{args.target}`, one process, torch threads 1, load average {os.getloadavg()[0]:.1f} at the end.",
        f"Batch: {args.batch} random policies (bits 2-8, keep 0.25-1, 20% of layers low-rank) per call.", "",
        "| model | layers | cost model | batch policies/s | single policy ms | goal (ResNet-50) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        goal = f">= {TARGETS[r['cost_model']]:,}/s, < 1 ms" if r["model"] == "resnet50" else ""
        lines.append(f"| {r['model']} | {r['layers']} | {r['cost_model']} | {r['batch_policies_per_s']:,.0f} | "
                     f"{r['single_ms']:.3f} | {goal} |")
    if zz:
        lines += ["", f"ZigZag {zz.get('zigzag_version')} mapping + costing ResNet-18 on eyeriss_like.yaml "
                      f"(generic default mapping, LOMA lpf_limit {zz.get('lpf_limit')}): {zz['seconds']:.1f} s wall, "
                      f"{zz['cpu_seconds']:.1f} s CPU, {zz.get('cost_evaluations')} cost evaluations.",
                  f"Ratio ZigZag ResNet-18 / picojoule Eyeriss-style ResNet-18 single policy: "
                  f"**{result['zigzag_over_ours_resnet18']:,.0f}x** (ZigZag searches mappings; picojoule prices a fixed "
                  "row-stationary-like mapping analytically)."]
    else:
        lines += ["", "ZigZag not run (install the `bench` extra: `pip install -e .[bench]`)."]
    if versus:
        lines += ["", f"## This tree against `{versus['rev']}`", "",
                  f"Each timed {versus['rounds']} times, alternately, in fresh processes; the fastest of each (timeit's "
                  "rule: the machine drifts between a fast and a ~1.6x slower state); ratio = this tree's policies/s "
                  "over the revision's (goal >= 0.95).", "",
                  "| model | cost model | batch old /s | batch new /s | ratio | single old /s | single new /s | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in versus["rows"]:
            lines.append(f"| {r['model']} | {r['cost_model']} | {r['old_batch_policies_per_s']:,.0f} | "
                         f"{r['new_batch_policies_per_s']:,.0f} | {r['batch_ratio']:.2f} | "
                         f"{r['old_single_policies_per_s']:,.0f} | {r['new_single_policies_per_s']:,.0f} | "
                         f"{r['single_ratio']:.2f} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
