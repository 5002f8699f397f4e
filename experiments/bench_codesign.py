"""Co-design study (issue 12): an Eyeriss-like array, global buffer and supported bit-widths searched with the policy.

Part 1, ResNet-20 / CIFAR-10 with accuracy: ``picojoule codesign`` on ``eyeriss-codesign`` (27 hardware points:
PE array 8x8 | 12x14 | 16x16, GLB 32 | 108 | 256 KB, natively packed widths {8,16} | {4,8,16} | 1..16), a seeded
all of them (or a seeded sample of ``--points``), ``--trials`` policy trials each, constrained to ``accuracy_drop <= 1.5`` on the
validation split and ``area <= `` the fixed Eyeriss's own area ("at equal area"). Against it: the same policy
search on the fixed ``eyeriss`` with as many trials as the co-design spent in all. Validation: 1000 JPEG test
images disjoint from the 1017 lossless test images that report. Reported: the best energy-delay product among
each run's feasible front, its energy, latency, area, validation and test top-1.

Part 2, MobileNetV2 (ImageNet shape, no pretrained weights here, so cost only): every one of the 27 hardware
points at fixed policies W8A8 and W4A8 (first and last layers at 8 bits), with EDP and area; the best point at
the fixed Eyeriss's area or less against the fixed Eyeriss. The same for ResNet-20 beside it.

    python experiments/bench_codesign.py            # ~20 min on 2 cores; writes experiments/results/bench_codesign.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "experiments" / "results"
DATA = ROOT.parent / "shared" / "data"


def r20_config(trials: int) -> dict:
    lossless = str(DATA / "cifar10" / "lossless_subset.npz")
    return {
        "model": "resnet20", "weights": str(DATA / "models" / "resnet20_cifar10.th"),
        "data": {"test": lossless, "calibration": {"source": lossless, "split": "train"},
                 "validation": {"source": str(DATA / "cifar10" / "jpeg_test.npz"), "split": "test",
                                "start": 1017, "stop": 2017}},
        "target": "eyeriss-codesign", "cost_model": "hierarchy",
        "objectives": ["maximise accuracy", "minimise energy", "minimise latency"],
        "space": {"defaults": {"w_bits": [2, 3, 4, 5, 6, 8], "a_bits": [3, 4, 5, 6, 8], "keep": [0.75, 0.875, 1.0]},
                  "layers": {"*": {"rank": [0]}}},
        "strategy": "tpe", "strategy_options": {"n_startup_trials": 10}, "trials": trials,
        "evaluation": {"calibration_images": 256},
        "warm_start": ["uniform_int8", "uniform_w4a8", "uniform_w4a4"], "seed": 0,
    }


def best_edp(rows: list[dict]) -> dict | None:
    rows = [r for r in rows if r.get("energy") is not None]
    return min(rows, key=lambda r: r["energy"] * r["latency"]) if rows else None


def part1(points: int, trials: int, out: Path) -> dict:
    import picojoule as pj
    from picojoule.search import run_search
    from picojoule.search.codesign import run_codesign

    base_area = pj.area_mm2(pj.load_target("eyeriss"))
    cons = ["accuracy_drop <= 1.5", f"area <= {base_area:.4f} mm2"]
    cfg = {**r20_config(trials), "constraints": cons,
           "codesign": {"strategy": "grid", "points": points, "trials_per_point": trials, "warm_start": 4}}
    cd = run_codesign(cfg, out / "codesign", resume=(out / "codesign" / "codesign.json").exists(), progress=True)
    cd_seconds = sum(p.seconds for p in cd.points)  # each point's search, as the run recorded it (kept on resume)
    spent = sum(json.loads((p / "result.json").read_text())["trials"]
                for p in sorted((out / "codesign" / "points").glob("*")) if (p / "result.json").is_file())
    # the joint front: every measured policy priced on every searched point, kept where it meets that point's bounds
    rows = [{**r["metrics"], "hardware": r["values"], "point": r["point"], "policy": r["policy"]} for r in cd.front]
    fixed_cfg = {**r20_config(max(spent, trials)), "target": "eyeriss", "constraints": cons[:1]}
    seconds_file = out / "fixed_seconds.json"
    t0 = time.perf_counter()
    fixed = run_search(fixed_cfg, out / "fixed", resume=(out / "fixed" / "journal.log").exists())
    fixed_seconds = time.perf_counter() - t0
    if seconds_file.is_file():  # a resumed run: the first run's time plus this one's (the trials it added)
        fixed_seconds += json.loads(seconds_file.read_text())["seconds"]
    seconds_file.write_text(json.dumps({"seconds": fixed_seconds}))
    fp32 = fixed.baselines.get("fp32", {})
    fixed_rows = [{**r.metrics, "area": base_area, "hardware": "eyeriss (fixed)"} for r in fixed.front if r.feasible]
    winner = best_edp(rows)
    if winner is not None and winner.get("test_accuracy") is None:  # a cross-priced pair: test it as the front was
        from picojoule.policy import Policy
        from picojoule.search.problem import build_problem
        from picojoule.search.config import config_from_dict

        evaluator = build_problem(config_from_dict({k: v for k, v in fixed_cfg.items()})).evaluator()
        winner["test_accuracy"] = evaluator(Policy.from_dict(winner["policy"]), split="test")["accuracy"]
    return {"codesign": winner, "fixed": best_edp(fixed_rows), "base_area": base_area,
            "codesign_points": [p.to_dict() | {"front": len(p.front)} for p in cd.points],
            "codesign_trials": spent, "fixed_trials": sum(r.counted for r in fixed.records),
            "codesign_seconds": cd_seconds, "fixed_seconds": fixed_seconds,
            "codesign_front": len(cd.front), "fixed_front": len(fixed.front),
            "fp32": {k: fp32.get(k) for k in ("energy", "latency", "accuracy", "test_accuracy")}}


#: the search's own energy: wall seconds of its single-threaded process x one core's share of the host's TDP
#: estimate (picojoule/hwmodels/host.py: 4.4 W per core, AMD EPYC 7763's 280 W / 64 cores; these VMs expose no
#: RAPL), an upper bound where other processes shared the cores
CORE_W = 4.4


def carbon(p1: dict) -> dict:
    """Lifetime CO2e, (search + queries x energy per inference) x PUE x grid intensity, of the uncompressed model on
    the fixed Eyeriss and of each run's winner, and each winner's break-even query count against it."""
    from picojoule.hwmodels.carbon import DEFAULT_GRID_G_PER_KWH, DEFAULT_PUE, footprint_grams

    base = p1["fp32"]
    rows = {"uncompressed on fixed Eyeriss": {"search_j": 0.0, "inference_j": base["energy"]}}
    for key, label, seconds in (("codesign", "co-design winner", p1["codesign_seconds"]),
                                ("fixed", "fixed-Eyeriss winner", p1["fixed_seconds"])):
        if p1.get(key):
            rows[label] = {"search_j": seconds * CORE_W, "inference_j": p1[key]["energy"], "search_s": seconds}
    queries = [1e3, 1e6, 1e9, 1e12]
    for r in rows.values():
        r["grams"] = {q: footprint_grams(r["inference_j"], q, r["search_j"] / 3.6e6) for q in queries}
        saved = base["energy"] - r["inference_j"]
        r["break_even_queries"] = r["search_j"] / saved if saved > 0 and r["search_j"] > 0 else None
    return {"rows": rows, "queries": queries, "pue": DEFAULT_PUE, "grid_g_per_kwh": DEFAULT_GRID_G_PER_KWH,
            "core_w": CORE_W}


def part2() -> dict:
    import picojoule as pj
    from picojoule.graph import build_graph
    from picojoule.hwmodels.costs import price
    from picojoule.hwmodels.parameters import grid_points, instantiate
    from picojoule.search.baselines import baseline_policy

    base = pj.load_target("eyeriss-codesign")
    fixed = pj.load_target("eyeriss")
    base_area = pj.area_mm2(fixed)
    out = {}
    for net in ("mobilenet_v2", "resnet20"):
        g = build_graph(net)
        for name in ("uniform_int8", "uniform_w4a8"):
            policy = baseline_policy(name, g)
            rows = []
            for values in grid_points(base.parameters):
                t = instantiate(base, values)
                r = price(g, t, policy, model="hierarchy")
                rows.append({"hardware": values, "area": pj.area_mm2(t), "energy": float(r.total_energy_j[0]),
                             "latency": float(r.total_latency_s[0])})
            r = price(g, fixed, policy, model="hierarchy")
            ref = {"hardware": "eyeriss (fixed)", "area": base_area, "energy": float(r.total_energy_j[0]),
                   "latency": float(r.total_latency_s[0])}
            within = [x for x in rows if x["area"] <= base_area * (1 + 1e-9)]
            out[f"{net} {name}"] = {"fixed": ref, "best": best_edp(within), "best_any_area": best_edp(rows),
                                    "points": rows}
    return out


def _hw(h) -> str:
    if isinstance(h, str):
        return h
    bits = h["operand_bits"]
    bits = f"{bits[0]}..{bits[-1]}" if len(bits) > 3 else ",".join(map(str, bits))
    return f"{h['array'][0]}x{h['array'][1]}, GLB {h['glb_bytes'] // 1024} KB, bits {bits}"


def _row(label: str, r: dict | None) -> str:
    if r is None:
        return f"| {label} | none feasible | | | | | | |"
    edp = r["energy"] * r["latency"]
    acc = r.get("accuracy")
    test = r.get("test_accuracy")
    return (f"| {label} | {_hw(r['hardware'])} | {r['area']:.3f} | {r['energy'] * 1e6:.3f} | {r['latency'] * 1e3:.4f} | "
            f"{edp * 1e9:.4f} | {'' if acc is None else f'{acc * 100:.2f}%'} | "
            f"{'' if test is None else f'{test * 100:.2f}%'} |")


def plot(p2: dict, path: Path) -> None:
    from picojoule.plots import new_figure

    keys = list(p2)
    fig = new_figure(figsize=(4.3 * len(keys), 4.2), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        rows = p2[key]["points"]
        area = [x["area"] for x in rows]
        edp = [x["energy"] * x["latency"] * 1e9 for x in rows]
        sc = ax.scatter(area, edp, c=[np.prod(x["hardware"]["array"]) for x in rows], cmap="viridis", s=26)
        f = p2[key]["fixed"]
        ax.scatter([f["area"]], [f["energy"] * f["latency"] * 1e9], marker="*", s=160, color="red",
                   label="fixed Eyeriss")
        ax.axvline(f["area"], color="red", lw=0.8, ls="--")
        ax.set_xlabel("area (mm²)")
        ax.set_ylabel("EDP (µJ·ms)")
        ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.colorbar(sc, ax=ax, label="PEs")
    fig.suptitle("Co-design sweep on eyeriss-codesign (27 hardware points, hierarchy model)", fontsize=10)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=None, help="hardware points (default: all 27 of the grid)")
    ap.add_argument("--trials", type=int, default=20, help="policy trials per hardware point")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_codesign"))
    ap.add_argument("--skip-accuracy", action="store_true", help="part 2 only (no data needed)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    p1 = None if args.skip_accuracy or not DATA.is_dir() else part1(args.points, args.trials, Path(args.runs))
    p2 = part2()
    plot(p2, RESULTS / "bench_codesign.png")
    lines = ["# Co-design study: Eyeriss-like array, GLB and bit-widths searched with the policy", "",
             f"Hierarchy cost model; `eyeriss-codesign` (27 points). Load average at the end: {os.getloadavg()[0]:.1f}.", ""]
    if p1 is not None:
        lines += ["## ResNet-20 / CIFAR-10: co-design against the fixed Eyeriss at equal area", "",
                  f"Constraints: accuracy_drop <= 1.5 pt on 1000 validation images, area <= {p1['base_area']:.3f} mm² "
                  f"(the fixed Eyeriss). Co-design: {len(p1['codesign_points'])} hardware points, "
                  f"{p1['codesign_trials']} trials in all, {p1['codesign_seconds'] / 60:.1f} min; fixed Eyeriss: "
                  f"{p1['fixed_trials']} trials, {p1['fixed_seconds'] / 60:.1f} min. Best EDP of each run's feasible "
                  "front; top-1 on validation (selects) and on the 1017 lossless test images (reports).", "",
                  "| run | hardware | area mm² | energy µJ | latency ms | EDP µJ·ms | validation | test |",
                  "|---|---|---|---|---|---|---|---|",
                  _row("co-design", p1["codesign"]), _row("fixed Eyeriss", p1["fixed"])]
        if p1["codesign"] and p1["fixed"]:
            c, f = p1["codesign"], p1["fixed"]
            lines += ["", f"EDP ratio co-design / fixed: **{c['energy'] * c['latency'] / (f['energy'] * f['latency']):.3f}**; "
                      f"area ratio {c['area'] / f['area']:.3f}."]
        lines += ["", "| point | hardware | area mm² | status | front |", "|---|---|---|---|---|"]
        for p in p1["codesign_points"]:
            lines.append(f"| {p['index']} | {_hw(p['values'])} | {p['area_mm2']:.3f} | {p['status']} | {p['front']} |")
    if p1 is not None and p1["fp32"].get("energy"):
        cb = carbon(p1)
        qs = cb["queries"]
        lines += ["", "## Carbon: (search + queries x energy per inference) x PUE x grid intensity", "",
                  f"PUE {cb['pue']}, grid {cb['grid_g_per_kwh']:.0f} g CO2e/kWh (picojoule/hwmodels/carbon.py); the "
                  f"search's energy estimated from its wall time x {cb['core_w']} W (one core's share of the host's "
                  "TDP estimate; no RAPL on these VMs), the inference energy from the hierarchy model. No final "
                  "fine-tune ran, so none is counted.", "",
                  "| | search energy | energy / inference | " + " | ".join(f"CO2e at {q:.0e} queries" for q in qs)
                  + " | break-even queries |", "|---|---|---|" + "---|" * len(qs) + "---|"]
        for label, r in cb["rows"].items():
            be = r["break_even_queries"]
            lines.append(f"| {label} | {r['search_j'] / 1e3:.1f} kJ | {r['inference_j'] * 1e6:.2f} µJ | "
                         + " | ".join(f"{r['grams'][q]:.3g} g" for q in qs)
                         + f" | {'' if be is None else f'{be:.3g}'} |")
    lines += ["", "## Fixed policies on every hardware point (cost only)", "",
              "| model, policy | run | hardware | area mm² | energy µJ | latency ms | EDP µJ·ms | | |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, v in p2.items():
        for label in ("fixed", "best", "best_any_area"):
            r = v[label]
            text = {"fixed": "fixed Eyeriss", "best": "best at <= its area", "best_any_area": "best, any area"}[label]
            lines.append(_row(f"{key} | {text}", r))
        f, b = v["fixed"], v["best"]
        lines.append(f"| {key} | EDP ratio best / fixed | {b['energy'] * b['latency'] / (f['energy'] * f['latency']):.3f} "
                     f"| area ratio {b['area'] / f['area']:.3f} | | | | | |")
    lines += ["", "![sweep](bench_codesign.png)"]
    (RESULTS / "bench_codesign.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "bench_codesign.json").write_text(json.dumps({"part1": p1, "part2": {
        k: {kk: vv for kk, vv in v.items() if kk != "points"} for k, v in p2.items()}}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
