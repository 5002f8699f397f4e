"""Agreement of picojoule's memory-hierarchy cost models with ZigZag 3.9.1, layer by layer (issue 12, item 4).

For each network and each of ZigZag's shipped hardware files that ``experiments/zigzag_layers.py`` ran (its JSON
in ``experiments/results/zigzag/``), the same ONNX file is loaded by picojoule's front end and priced at W8A8
(ZigZag's ONNX parser: 8-bit weights and inputs, 16-bit partial sums, 8-bit final outputs) on the mirrored
target of ``experiments/zigzag_targets/`` by

* ``hierarchy``: the operand-aware model of target schema v2 (picojoule/hwmodels/hierarchy.py), and
* ``eyeriss``: the v1 Eyeriss-style model, which reads the same mirror as a positional hierarchy (its levels'
  roles by position, every level holding every operand) - what the model could do before schema v2.

Per network and hardware: the Spearman rank correlation of per-layer energy and of per-layer latency (cycles =
seconds x the mirror's 1 GHz clock) over the n costed layers, and the ratio of totals. Goals (issue 12): energy
Spearman >= 0.95, totals within 10%, latency Spearman >= 0.9, on every mirrored hardware.

    python experiments/bench_zigzag.py            # writes experiments/results/bench_zigzag.md (+ .png)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

RESULTS = ROOT / "experiments" / "results"
ZZ = RESULTS / "zigzag"
MIRRORS = ROOT / "experiments" / "zigzag_targets"
GOALS = {"energy_spearman": 0.95, "total_ratio_within": 0.10, "latency_spearman": 0.9}


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def compare(path: Path) -> dict:
    from picojoule.graph import build_graph
    from picojoule.hwmodels.costs import price
    from picojoule.hwmodels.target import load_target_file
    from picojoule.policy import Policy

    doc = json.loads(path.read_text())
    onnx = ROOT / doc["files"]["workload"]
    if not onnx.is_file():  # the bigger networks' files are not kept: export the same shape-only file again
        from zigzag_layers import export_onnx

        export_onnx(doc["network"], onnx)
    graph = build_graph(str(onnx))
    target = load_target_file(MIRRORS / f"{doc['hardware']}.yaml")
    index = {layer.name: i for i, layer in enumerate(graph.layers)}
    rows = [r for r in doc["layers"] if r.get("picojoule_layer") in index]
    cols = [index[r["picojoule_layer"]] for r in rows]
    zz_e = np.asarray([r["energy_total_pj"] for r in rows], dtype=float)
    zz_t = np.asarray([r["latency_total_cycles"] for r in rows], dtype=float)
    out = {"network": doc["network"], "hardware": doc["hardware"], "opt": doc["opt"], "n": len(rows),
           "zigzag_energy_pj": float(zz_e.sum()), "zigzag_cycles": float(zz_t.sum()),
           "zigzag_seconds": doc.get("wall_seconds"), "layers": [], "models": {}}
    for model in ("hierarchy", "eyeriss"):
        res = price(graph, target, Policy.uniform(8, 8), model=model)
        e = res.energy_j[0, cols].sum(-1) * 1e12
        t = res.latency_s[0, cols] * target.clock_hz
        out["models"][model] = {
            "energy_spearman": spearman(zz_e, e), "latency_spearman": spearman(zz_t, t),
            "energy_ratio": float(e.sum() / zz_e.sum()), "latency_ratio": float(t.sum() / zz_t.sum()),
            "energy_pj": e.tolist(), "cycles": t.tolist(),
        }
    for i, r in enumerate(rows):
        out["layers"].append({"layer": r["picojoule_layer"], "zigzag_energy_pj": zz_e[i], "zigzag_cycles": zz_t[i],
                              **{f"{m}_energy_pj": out["models"][m]["energy_pj"][i] for m in out["models"]},
                              **{f"{m}_cycles": out["models"][m]["cycles"][i] for m in out["models"]}})
    return out


def _met(m: dict) -> bool:
    return (m["energy_spearman"] >= GOALS["energy_spearman"] and abs(m["energy_ratio"] - 1) <= GOALS["total_ratio_within"]
            and m["latency_spearman"] >= GOALS["latency_spearman"])


def plot(results: list[dict], path: Path) -> None:
    """One row per (network, hardware): per-layer energy and latency of both models against ZigZag's."""
    from picojoule.plots import new_figure

    fig = new_figure(figsize=(9.0, 2.9 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 2, squeeze=False)
    for j, r in enumerate(results):
        zz_e = np.asarray([x["zigzag_energy_pj"] for x in r["layers"]]) / 1e6
        zz_t = np.asarray([x["zigzag_cycles"] for x in r["layers"]]) / 1e3
        for col, (key, zz, unit, scale, name) in enumerate((("energy_pj", zz_e, "µJ", 1e6, "energy"),
                                                            ("cycles", zz_t, "k cycles", 1e3, "latency"))):
            ax = axes[j, col]
            values = [zz]
            for model, marker in (("hierarchy", "o"), ("eyeriss", "x")):
                ours = np.asarray(r["models"][model][key]) / scale
                values.append(ours)
                ax.scatter(zz, ours, marker=marker, s=20,
                           label=f"{model} (Spearman {r['models'][model][name + '_spearman']:.2f})")
            allv = np.concatenate(values)
            allv = allv[allv > 0]
            lim = [allv.min() * 0.7, allv.max() * 1.4]
            ax.plot(lim, lim, lw=0.8, color="grey", ls="--", label="equal")
            ax.set_xlim(lim)
            ax.set_ylim(lim)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"ZigZag per-layer {name} ({unit})", fontsize=8)
            ax.set_ylabel(f"picojoule ({unit})", fontsize=8)
            ax.set_title(f"{r['network']} on {r['hardware']} (n={r['n']} layers)", fontsize=9)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opt", default="energy", help="which ZigZag runs to compare against (energy | latency)")
    ap.add_argument("--out", default=str(RESULTS / "bench_zigzag.md"))
    args = ap.parse_args()
    files = sorted(ZZ.glob(f"*__*__{args.opt}.json"))
    if not files:
        sys.exit(f"no ZigZag results in {ZZ}: run experiments/zigzag_layers.py first")
    results = [compare(f) for f in files]
    lines = ["# picojoule's memory-hierarchy models against ZigZag 3.9.1, layer by layer", "",
             f"W8A8, ZigZag optimising {args.opt} (LOMA, lpf_limit 6) on its shipped hardware and mappings; picojoule "
             "on the mirrored targets of experiments/zigzag_targets/. n = costed conv/linear layers (ZigZag treats "
             "Add, pooling and ReLU as free). Goals: energy Spearman >= 0.95, total energy within 10%, latency "
             f"Spearman >= 0.9. Load average at the end: {os.getloadavg()[0]:.1f}.", "",
             "| network | hardware | n | model | energy Spearman | total energy ratio | latency Spearman | "
             "total latency ratio | goals |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for model, m in r["models"].items():
            lines.append(f"| {r['network']} | {r['hardware']} | {r['n']} | {model} | {m['energy_spearman']:.3f} | "
                         f"{m['energy_ratio']:.3f} | {m['latency_spearman']:.3f} | {m['latency_ratio']:.3f} | "
                         f"{'met' if _met(m) else 'missed'} |")
    lines += ["", "Per layer (energy µJ, latency k cycles): ZigZag / hierarchy / eyeriss v1", ""]
    for r in results:
        lines += [f"### {r['network']} on {r['hardware']}", "", "| layer | ZigZag µJ | hierarchy µJ | v1 µJ | "
                  "ZigZag kcyc | hierarchy kcyc | v1 kcyc |", "|---|---|---|---|---|---|---|"]
        for x in r["layers"]:
            lines.append(f"| {x['layer']} | {x['zigzag_energy_pj'] / 1e6:.3f} | {x['hierarchy_energy_pj'] / 1e6:.3f} | "
                         f"{x['eyeriss_energy_pj'] / 1e6:.3f} | {x['zigzag_cycles'] / 1e3:.2f} | "
                         f"{x['hierarchy_cycles'] / 1e3:.2f} | {x['eyeriss_cycles'] / 1e3:.2f} |")
        lines.append("")
    out = Path(args.out)
    png = out.with_suffix(".png")
    plot(results, png)
    lines.append(f"![per-layer agreement]({png.name})")
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    print("\n".join(lines[:8 + 2 * len(results)]))


if __name__ == "__main__":
    main()
