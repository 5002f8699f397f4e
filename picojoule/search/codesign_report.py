"""What a co-design run leaves behind: ``codesign.md``, ``codesign.json`` (the joint front and every point), and
the plots ``codesign_parameters.png`` (each hardware parameter against the best energy and EDP reached at its
values) and ``codesign_front.png`` (the joint front: energy against area, coloured by accuracy)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from picojoule.plots import new_figure
from picojoule.search.metrics import format_value

if TYPE_CHECKING:
    from picojoule.search.codesign import CodesignResult


def label(name: str, v: Any) -> str:
    """A hardware value as a report shows it: an array ``12x14``, bit-widths ``4,8,16`` (a run ``1..16``)."""
    if isinstance(v, list):
        if len(v) > 3 and v == list(range(v[0], v[0] + len(v))):
            return f"{v[0]}..{v[-1]}"
        return ("x" if name in ("array",) else ",").join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _order(v: Any) -> tuple:
    """Sort key of a hardware value: arrays by PE count, bit lists by narrowest width, numbers by value."""
    if isinstance(v, list):
        return (0, float(np.prod(v)), -min(v), len(v))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), 0, 0)
    return (1, 0.0, 0, str(v))


def values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={label(k, v)}" for k, v in values.items())


def plot_parameters(result: CodesignResult, path: Path) -> Path | None:
    """One column per hardware parameter: the best energy (top) and EDP (bottom) of the points at each value."""
    done = [p for p in result.points if p.status == "done" and np.isfinite(p.best("energy"))]
    if not done or not result.parameters:
        return None
    n = len(result.parameters)
    fig = new_figure(figsize=(3.6 * n, 6.0), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for j, name in enumerate(result.parameters):
        raw = {label(name, p.values[name]): p.values[name] for p in done}
        labels = sorted(raw, key=lambda t: _order(raw[t]))
        pos = {s: i for i, s in enumerate(labels)}
        for row, (metric, scale, unit) in enumerate((("energy", 1e6, "µJ"), ("EDP", 1e9, "µJ·ms"))):
            ax = axes[row, j]
            xs = [pos[label(name, p.values[name])] for p in done]
            ys = [(p.best("energy") if metric == "energy" else p.best_edp) * scale for p in done]
            if max(ys) > 10 * min(ys):
                ax.set_yscale("log")
            ax.scatter(xs, ys, s=22, alpha=0.8)
            best = {}
            for x, y in zip(xs, ys):
                best[x] = min(best.get(x, math.inf), y)
            ax.plot(sorted(best), [best[x] for x in sorted(best)], lw=1, color="C1", label="best at this value")
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 5 else 0, fontsize=8)
            ax.set_xlabel(name, fontsize=9)
            ax.set_ylabel(f"best feasible {metric} ({unit})", fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0 and row == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"Co-design: each hardware parameter against the best energy and EDP ({len(done)} points)",
                 fontsize=10)
    fig.savefig(path, dpi=130)
    return path


def plot_front(result: CodesignResult, path: Path) -> Path | None:
    """The joint front, energy against area, coloured by accuracy where measured."""
    rows = [p for p in result.points if p.status == "done"]
    pts = [(p, r) for p in rows for r in p.front if r["feasible"]]
    if not pts:
        return None
    fig = new_figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    area = np.asarray([p.area_mm2 for p, _ in pts])
    energy = np.asarray([r["metrics"]["energy"] for _, r in pts]) * 1e6
    acc = np.asarray([r["metrics"].get("accuracy") if r["metrics"].get("accuracy") is not None else np.nan
                      for _, r in pts], dtype=float)  # each point's own search's front
    colour = acc * 100 if np.isfinite(acc).any() else None
    sc = ax.scatter(area, energy, c=colour, s=18, alpha=0.5, cmap="viridis", label="feasible front of each point")
    if colour is not None:
        fig.colorbar(sc, ax=ax, label="validation accuracy (%)")
    jf = result.front
    ax.scatter([r["metrics"]["area"] for r in jf], [r["metrics"]["energy"] * 1e6 for r in jf], s=60,
               facecolors="none", edgecolors="red", label="joint Pareto front")
    ax.set_xlabel("area (mm²)")
    ax.set_ylabel("energy per inference (µJ)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Co-design: policy x hardware", fontsize=10)
    fig.savefig(path, dpi=130)
    return path


def write_codesign_outputs(result: CodesignResult) -> dict[str, str]:
    run = result.run_dir
    out: dict[str, str] = {}
    doc = {"parameters": result.parameters, "objectives": [str(o) for o in result.objectives],
           "front": result.front, "points": [p.to_dict() for p in result.points]}
    (run / "codesign_result.json").write_text(json.dumps(doc, indent=1, default=str))
    out["result"] = str(run / "codesign_result.json")
    plots = {}
    for name, fn in (("parameters", plot_parameters), ("front", plot_front)):
        p = fn(result, run / f"codesign_{name}.png")
        if p is not None:
            plots[name] = p.name
            out[f"plot_{name}"] = str(p)
    metrics = [o.metric for o in result.objectives]
    lines = ["# Co-design report", "",
             f"{len(result.points)} hardware points; parameters: {', '.join(result.parameters)}; "
             f"objectives: {', '.join(str(o) for o in result.objectives)} (and area).", "",
             "## Joint Pareto front (policy x hardware)", "",
             "Every policy measured anywhere in the co-design, priced on every searched hardware point (accuracy "
             "depends on the policy only) and kept where it meets that point's bounds; `trial` is a point's own "
             "search's trial where the pair came from its front (— : a measured policy priced here).", "",
             "| point | hardware | trial | " + " | ".join(metrics) + " | area | EDP |",
             "|---|---|---|" + "---|" * len(metrics) + "---|---|"]
    for r in result.front:
        m = r["metrics"]
        edp = m["energy"] * m["latency"]
        lines.append(f"| {r['point']} | {values_text(r['values'])} | {r['trial'] if r['trial'] is not None else '—'} | "
                     + " | ".join(format_value(x, m.get(x) if m.get(x) is not None else math.nan) for x in metrics)
                     + f" | {m['area']:.3g} mm² | {edp * 1e9:.4g} µJ·ms |")
    lines += ["", "## Hardware points", "",
              "| point | hardware | area | status | front | best energy | best EDP | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for p in result.points:
        lines.append(f"| {p.index} | {values_text(p.values)} | "
                     f"{p.area_mm2:.3g} mm² | {p.status} | {len(p.front)} | "
                     f"{format_value('energy', p.best('energy'))} | "
                     f"{(p.best_edp * 1e9) if np.isfinite(p.best_edp) else math.nan:.4g} µJ·ms | {p.seconds:.0f} |")
    for name, file in plots.items():
        lines += ["", f"![{name}]({file})"]
    (run / "codesign.md").write_text("\n".join(lines) + "\n")
    out["report"] = str(run / "codesign.md")
    return out
