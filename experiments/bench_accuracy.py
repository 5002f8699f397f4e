"""Benchmark: accuracy of compressed CIFAR ResNets on real data, beside their MACs, Eyeriss energy and
A100 latency, and the speed of one candidate evaluation.

Data: ../shared/data/cifar10/lossless_subset.npz (test: 1017 original test images; calibration and
fine-tuning: its 5085 training images). Weights: ../shared/data/models/resnet{20,56}_cifar10.th.
Policies: FP32; uniform W8A8, W6A8, W4A8, W4A4 post-training (the W4 ones keep the first and last
layer at 8 bits, as is usual); W4A8 after a KD fine-tune; 30% and 50% channel pruning of every
group with and without a fine-tune; every conv split at half its full rank (first/last kept).

Run: python experiments/bench_accuracy.py [--models resnet20 resnet56] [--finetune-seconds 120]
Writes experiments/results/bench_accuracy.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from picojoule.data import load_npz
from picojoule.graph import build_graph
from picojoule.hwmodels.costs import price
from picojoule.search.evaluate import accuracy, evaluate_policy
from picojoule.policy import LayerPolicy, Policy
from picojoule.zoo import build_model

HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "data"


def policies(graph) -> dict[str, tuple[Policy, bool]]:
    """name -> (policy, fine-tune?)."""
    convs = graph.compute_layers()
    edge = {convs[0].name, convs[-1].name}

    def bits(w: int, a: int) -> Policy:
        pins = {n: LayerPolicy(8, 8) for n in edge} if w < 8 or a < 8 else {}
        return Policy(LayerPolicy(w, a), pins)

    def prune(keep: float) -> Policy:
        return Policy(layers={g.anchor: LayerPolicy(keep=keep) for g in graph.groups})

    half_rank = Policy(layers={c.name: LayerPolicy(rank=max(1, c.max_rank // 2))
                               for c in convs if c.rankable and c.name not in edge})
    return {
        "FP32": (Policy(), False),
        "W8A8": (bits(8, 8), False), "W6A8": (bits(6, 8), False),
        "W4A8": (bits(4, 8), False), "W4A4": (bits(4, 4), False),
        "W4A8 + KD fine-tune": (bits(4, 8), True),
        "prune 30%": (prune(0.7), False), "prune 30% + fine-tune": (prune(0.7), True),
        "prune 50%": (prune(0.5), False), "prune 50% + fine-tune": (prune(0.5), True),
        "rank 1/2": (half_rank, False), "rank 1/2 + fine-tune": (half_rank, True),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    ap.add_argument("--finetune-seconds", type=float, default=120.0)
    ap.add_argument("--data", type=Path, default=SHARED / "cifar10" / "lossless_subset.npz")
    ap.add_argument("--policies", nargs="+", help="only these rows (e.g. W8A8 W4A8), to re-measure quickly")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.manual_seed(0)
    test, train = load_npz(args.data, "test"), load_npz(args.data, "train")
    rows = []
    for name in args.models:
        model, x = build_model(name, SHARED / "models" / f"{name}_cifar10.th")
        graph = build_graph(model, x, name=name)
        fp32 = accuracy(model, test)
        for label, (policy, finetune) in policies(graph).items():
            if args.policies and label not in args.policies:
                continue
            t = time.perf_counter()
            _, res = evaluate_policy(model, x, policy, test, graph=graph, calib_data=train, train_data=train,
                                     finetune_seconds=args.finetune_seconds if finetune else None)
            eyeriss = price(graph, "eyeriss", policy, model="eyeriss").total_energy_j[0]
            a100 = price(graph, "a100", policy).total_latency_s[0]
            rows.append({"model": name, "policy": label, "accuracy": 100 * res["accuracy"],
                         "drop_pt": 100 * (fp32 - res["accuracy"]), "macs": res["macs"], "params": res["params"],
                         "eyeriss_energy_uj": eyeriss * 1e6, "a100_latency_us": a100 * 1e6,
                         "eval_seconds": time.perf_counter() - t, "finetune": res["finetune"]})
            r = rows[-1]
            print(f"{name:9s} {label:24s} {r['accuracy']:6.2f}% ({r['drop_pt']:+.2f} pt)  {r['macs'] / 1e6:7.2f} M MACs "
                  f"{r['eyeriss_energy_uj']:8.1f} uJ  {r['a100_latency_us']:7.1f} us  {r['eval_seconds']:6.1f} s",
                  flush=True)
    ptq = [r["eval_seconds"] for r in rows if r["policy"] in ("W8A8", "W6A8", "W4A8", "W4A4")]
    speed = {"ptq_candidate_seconds_median": sorted(ptq)[len(ptq) // 2], "candidates_per_minute": 60 / sorted(ptq)[len(ptq) // 2]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_accuracy.json").write_text(json.dumps({"rows": rows, "speed": speed,
                                                               "load_avg": os.getloadavg()}, indent=2))
    lines = ["# Accuracy of compressed CIFAR ResNets (lossless test subset, 1017 images)", "",
             f"Calibration: 256 training images; fine-tune: KD from the FP32 model, {args.finetune_seconds:.0f} s "
             "budget on 2 cores, on the 5085 training images of the subset.", "",
             "| model | policy | top-1 % | drop (pt) | MACs (M) | params | Eyeriss energy (µJ) | A100 latency (µs) | eval s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['policy']} | {r['accuracy']:.2f} | {r['drop_pt']:+.2f} | {r['macs'] / 1e6:.2f} | "
              f"{r['params']:,} | {r['eyeriss_energy_uj']:.1f} | {r['a100_latency_us']:.1f} | {r['eval_seconds']:.1f} |"
              for r in rows]
    lines += ["", f"One post-training candidate (apply + calibrate + test on 1017 images): median "
                  f"{speed['ptq_candidate_seconds_median']:.2f} s, {speed['candidates_per_minute']:.1f} candidates/minute "
                  f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)."]
    (args.out / "bench_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
