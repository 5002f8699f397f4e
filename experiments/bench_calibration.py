"""Benchmark: the roofline's latency against TVM builds timed on this CPU, before and after calibration.

For each model (ResNet-20, ResNet-56 by default), on the host-znver3 target:
- N diverse policies from the model's space (uniform fp32/w8a8 baselines, uniformly pruned ones, seeded
  samples spreading pruning and low-rank levels; a quarter in float) are applied, exported to ONNX, built
  with TVM for this CPU (untuned llvm -mcpu=znver3) and timed (best of --rounds passes of a median);
- the target's efficiencies, per-layer overhead and 8-bit mode rate are fitted on 75% of them; Spearman
  and MAPE before/after are reported on the 25% held out, and over all policies by leave-one-out;
- speed-up: a cost-only random search (--candidates fresh samples, priced with the calibrated target) picks
  the policy with the most parameters (an accuracy-agnostic proxy) whose predicted latency is at most
  1/--bound of fp32's; it and fp32 are then built and timed side by side.

Run: python experiments/bench_calibration.py [--models resnet20 resnet56] [--policies 32] [--rounds 3]
Writes experiments/results/bench_calibration.{json,md,png} (bench_calibration-<target>.* for another --target).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from picojoule.compilers import tvm_build
from picojoule.compilers.calibrate import fit_efficiency, measure_policies, predict_latency, sample_policies
from picojoule.graph import build_graph
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.target import Target, load_target
from picojoule.models import load_torch_model

HERE = Path(__file__).parent
WEIGHTS = HERE.parent.parent / "shared" / "data" / "models"
GOALS = {"spearman": 0.95, "mape": 0.10, "speedup": 1.5}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def weights_for(model: str) -> str | None:
    path = WEIGHTS / f"{model}_cifar10.th"
    return str(path) if path.is_file() else None


def winner(graph: Any, calibrated: Target, candidates: list, bound: float) -> tuple[Any, float]:
    """The candidate with the most parameters whose predicted latency is <= fp32's / ``bound``."""
    fp32 = float(predict_latency(graph, calibrated, [candidates[0]])[0])
    cost = price(graph, calibrated, candidates)
    ok = np.flatnonzero(cost.total_latency_s <= fp32 / bound)
    if not len(ok):
        raise SystemExit(f"no candidate predicted {bound}x faster than fp32")
    best = int(ok[np.argmax(cost.total_params[ok])])
    return candidates[best], fp32 / float(cost.total_latency_s[best])


def bench_model(model: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    target = load_target(args.target)
    weights = weights_for(model)
    net, example = load_torch_model(model, weights)
    graph = build_graph(net, example, name=model)
    policies = sample_policies(graph, target, args.policies, args.seed)
    t0 = time.perf_counter()
    measured = measure_policies(model, weights, target, policies, workdir / model, repeat=args.repeat,
                                number=args.number, rounds=args.rounds)
    seconds = time.perf_counter() - t0
    ok = [m for m in measured if m.measured_s is not None]
    pols, meas, names = [m.policy for m in ok], [m.measured_s for m in ok], [m.name for m in ok]
    calibrated, stats = fit_efficiency(graph, target, pols, meas, holdout=args.holdout, seed=args.seed, names=names)
    _, loo = fit_efficiency(graph, target, pols, meas, holdout=0.0, names=names)
    before, after = predict_latency(graph, target, pols), predict_latency(graph, calibrated, pols)

    candidates = [policies[0]] + sample_policies(graph, target, args.candidates, args.seed + 1)[5:]
    chosen, predicted_speedup = winner(graph, calibrated, candidates, args.bound)
    chosen.meta["name"] = "winner"
    pair = measure_policies(model, weights, target, [policies[0], chosen], workdir / f"{model}-winner",
                            repeat=args.repeat, number=args.number, rounds=args.rounds)
    fp32_s, win_s = pair[0].measured_s, pair[1].measured_s
    return {
        "model": model, "weights": weights, "n_policies": len(ok), "failed": [m.name for m in measured if m.error],
        "measure_seconds": seconds, "holdout": stats.to_dict(), "loo": loo.to_dict(),
        "policies": [{"name": m.name, "macs": m.macs, "measured_s": m.measured_s, "before_s": float(b),
                      "after_s": float(a), "held_out": m.name in stats.test_names, "compile_s": m.compile_s}
                     for m, b, a in zip(ok, before, after)],
        "speedup": {"selection": f"cost-only random search over {args.candidates} space samples priced with the "
                                 f"calibrated target: most parameters (accuracy-agnostic proxy) with predicted "
                                 f"latency <= fp32 / {args.bound}",
                    "policy": chosen.to_dict(), "macs": pair[1].macs, "fp32_macs": pair[0].macs,
                    "fp32_s": fp32_s, "winner_s": win_s, "measured": fp32_s / win_s,
                    "predicted": predicted_speedup},
    }


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, key, title in ((axes[0], "before_s", "uncalibrated host-znver3"), (axes[1], "after_s", "calibrated")):
        for r, color in zip(results, colors):
            rows = r["policies"]
            for held, marker, label in ((False, "o", "fit"), (True, "^", "held out")):
                pts = [(p["measured_s"] * 1e3, p[key] * 1e3) for p in rows if p["held_out"] == held]
                if pts:
                    x, y = zip(*pts)
                    ax.scatter(x, y, c=color, marker=marker, s=28, alpha=0.8, label=f"{r['model']} ({label})")
        lo = min(min(p["measured_s"], p[key]) for r in results for p in r["policies"]) * 1e3 / 1.3
        hi = max(max(p["measured_s"], p[key]) for r in results for p in r["policies"]) * 1e3 * 1.3
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        if key == "after_s":
            ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.2,
                            label="±10%")
        ax.set(xscale="log", yscale="log", xlabel="measured latency, TVM on this CPU (ms)",
               ylabel="predicted latency (ms)", title=title)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _f(v: float, pct: bool = False) -> str:
    return "nan" if v is None or np.isnan(v) else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")


def markdown(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [
        "# Calibration: roofline vs TVM latency on this CPU",
        "",
        f"Target `{env['target']}` on {env['cpu']} ({env['host_cpu']}), timed on {env.get('tvm', 'this CPU')}, "
        "untuned, one thread; "
        f"torch threads 1; timing: best of {env['rounds']} passes of the median of {env['repeat']} x "
        f"{env['number']} calls; load average {env['load']} at the end; {env['date']}.",
        "",
        "| model | policies | split | Spearman before | Spearman after | MAPE before | MAPE after | MAPE fit set |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for key, label in (("holdout", "held out"), ("loo", "leave-one-out")):
            s = r[key]
            lines.append(f"| {r['model']} | {r['n_policies']} | {label} ({s['n_test']} tested) | "
                         f"{_f(s['spearman_before'])} | **{_f(s['spearman_after'])}** | "
                         f"{_f(s['mape_before'], True)} | **{_f(s['mape_after'], True)}** | "
                         f"{_f(s['mape_train'], True)} |")
    lines += ["", f"Goals: Spearman >= {GOALS['spearman']}, MAPE <= {100 * GOALS['mape']:.0f}% after calibration.",
              "", "## Fitted parameters (held-out split)", "",
              "| model | conv | linear | pool | elementwise | overhead µs | channel exponent | "
              "int8 rate (effective / datasheet) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["holdout"]
        e = s["efficiency"]
        lines.append(f"| {r['model']} | {e['conv']:.4g} | {e['linear']:.3g} | {e['pool']:.3g} | "
                     f"{e['elementwise']:.3g} | {s['layer_overhead_s'] * 1e6:.3g} | "
                     f"{s.get('channel_exponent', 0.0):.3f} | {next(iter(s['mode_rates'].values())):.3g} |")
    lines += ["", "## Speed-up of a latency-constrained winner over fp32 (same pipeline)", "",
              "| model | fp32 ms | winner ms | winner MACs (% of fp32) | measured speed-up | predicted |",
              "|---|---|---|---|---|---|"]
    for r in results:
        s = r["speedup"]
        lines.append(f"| {r['model']} | {s['fp32_s'] * 1e3:.2f} | {s['winner_s'] * 1e3:.2f} | "
                     f"{s['macs'] / 1e6:.1f} M ({100 * s['macs'] / s['fp32_macs']:.0f}%) | **{s['measured']:.2f}x** | "
                     f"{s['predicted']:.2f}x |")
    lines += ["", f"Winner selection: {results[0]['speedup']['selection']}. Goal: >= {GOALS['speedup']}x.", "",
              "## Why the channel exponent", ""]
    for r in results:
        p = r["policies"]
        slope = np.polyfit(np.log([x["macs"] for x in p]), np.log([x["measured_s"] for x in p]), 1)[0]
        lines.append(f"- {r['model']}: measured latency grows as MACs^{slope:.2f} over the policies: untuned TVM "
                     "code slows per MAC as layers widen. With one efficiency per op kind the roofline is linear in "
                     "MACs and over-predicts heavily pruned policies; the fitted compute.channel_exponent "
                     f"({r['holdout'].get('channel_exponent', 0.0):.2f}: time per MAC x (channels / 32)^exponent) "
                     "takes that up.")
    lines += ["", "![predicted vs measured](bench_calibration.png)", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    ap.add_argument("--target", default="host-znver3")
    ap.add_argument("--policies", type=int, default=32)
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--number", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=2000, help="space samples the cost-only search prices")
    ap.add_argument("--bound", type=float, default=2.0, help="winner: predicted latency <= fp32 / bound")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            r = bench_model(model, args, Path(tmp))
            results.append(r)
            h, loo = r["holdout"], r["loo"]
            print(f"{model}: held out {h['spearman_after']:.3f} / {100 * h['mape_after']:.1f}%, leave-one-out "
                  f"{loo['spearman_after']:.3f} / {100 * loo['mape_after']:.1f}%, "
                  f"speed-up {r['speedup']['measured']:.2f}x", flush=True)
    from picojoule.compilers.calibrate import runnable_tvm_target

    env = {"target": args.target, "cpu": cpu_name(), "host_cpu": tvm_build.host_cpu(),
           "tvm": runnable_tvm_target(load_target(args.target))[1],
           "rounds": args.rounds, "repeat": args.repeat, "number": args.number,
           "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "date": time.strftime("%Y-%m-%d"),
           "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench_calibration" if args.target == "host-znver3" else f"bench_calibration-{load_target(args.target).name}"
    (args.out / f"{stem}.json").write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
    plot(results, args.out / f"{stem}.png")
    (args.out / f"{stem}.md").write_text(markdown(results, env).replace("bench_calibration.png", f"{stem}.png"))
    print(f"wrote {args.out}/{stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
