"""Plots of a search: the front's 2-D projections, and the chosen policy layer by layer (knobs, energy)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from picojoule.hwmodels.costs import price, report
from picojoule.plots import breakdown_axes, new_figure
from picojoule.search.journal import TrialRecord

if TYPE_CHECKING:
    from picojoule.search.engine import SearchResult

MAX_PANELS = 6
_SCALE = {"energy": (1e6, "µJ"), "latency": (1e3, "ms"), "size": (1e-3, "KB"), "co2e": (1e6, "µg"),
          "macs": (1e-6, "M MACs"), "params": (1e-3, "K params"), "accuracy": (100, "%"), "accuracy_drop": (1, "pp"),
          "area": (1, "mm²"), "power": (1e3, "mW")}


def _axis(metric: str) -> tuple[float, str]:
    scale, unit = _SCALE[metric]
    return scale, f"{metric} ({unit})"


def _plotted_metrics(result: SearchResult) -> list[str]:
    """Objectives, then constrained metrics (accuracy_drop shown as accuracy)."""
    names = [o.metric for o in result.problem.objectives]
    names += ["accuracy" if c.metric == "accuracy_drop" else c.metric for c in result.problem.program]
    return list(dict.fromkeys(names))


def _values(records: list[TrialRecord], metric: str) -> np.ndarray:
    return np.asarray([r.metrics.get(metric, math.nan) for r in records], dtype=float)


def _bounds(result: SearchResult) -> dict[str, float]:
    """Each constrained metric's bound on the plotted axes (an accuracy_drop bound as an accuracy)."""
    out = {}
    for c in result.problem.program:
        bound = result.bounds[c.text]
        if c.metric == "accuracy_drop":
            out["accuracy"] = result.baselines["fp32"]["accuracy"] - bound / 100.0
        else:
            out[c.metric] = bound
    return out


def _xy(records: list[TrialRecord], mx: str, my: str, unmeasured: bool) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of ``records``; an unmeasured trial's accuracy is 0, as the search was told."""
    def values(metric: str) -> np.ndarray:
        if metric == "trial":
            return np.asarray([r.number for r in records], dtype=float)
        if unmeasured and metric == "accuracy":
            return np.zeros(len(records))
        return _values(records, metric)
    return values(mx), values(my)


def plot_front(result: SearchResult, out: Path) -> Path:
    """Every pair of plotted metrics: infeasible trials grey, feasible blue, the front red, baselines black."""
    metrics = _plotted_metrics(result)
    pairs = list(itertools.combinations(metrics, 2))[:MAX_PANELS] or [("trial", metrics[0])]
    done = [r for r in result.records if r.state == "complete" and r.counted]  # not the repeated proposals
    unmeasured = [r for r in done if result.config.needs_accuracy and not r.evaluated]
    measured_infeasible = [r for r in done if not r.feasible and (r.evaluated or not result.config.needs_accuracy)]
    groups = [("infeasible", measured_infeasible, dict(c="0.75", s=10)),
              ("over a hardware bound, not measured", unmeasured, dict(c="0.55", s=14, marker="x")),
              ("feasible", [r for r in done if r.feasible], dict(c="tab:blue", s=14)),
              ("Pareto front", result.front, dict(c="tab:red", s=30, edgecolors="k", linewidths=0.5))]
    bounds = _bounds(result)
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = new_figure(figsize=(5 * cols, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (mx, my) in zip(axes.flat, pairs):
        sx, lx = (1.0, "trial") if mx == "trial" else _axis(mx)
        sy, ly = _axis(my)
        for label, recs, style in groups:
            xs, ys = _xy(recs, mx, my, recs is unmeasured)
            ax.scatter(xs * sx, ys * sy, label=f"{label} ({len(recs)})", zorder=3, **style)
        for name, b in result.baselines.items():
            if mx != "trial" and mx in b and my in b:
                ax.scatter(b[mx] * sx, b[my] * sy, marker="*", s=90, c="k", zorder=4)
                ax.annotate(name, (b[mx] * sx, b[my] * sy), fontsize=7, xytext=(4, 4), textcoords="offset points")
        for metric, line, scale in ((mx, ax.axvline, sx), (my, ax.axhline, sy)):
            if metric in bounds:
                line(bounds[metric] * scale, ls="--", lw=0.8, c="tab:orange")
        ax.set_xlabel(lx)
        ax.set_ylabel(ly)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{result.problem.graph.name} on {result.problem.target.name}\n"
                 "trials and Pareto front (dashed: constraint bounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def short_names(names: list[str]) -> tuple[list[str], str]:
    """Layer names without the dotted prefix they all share (``module.encoder.encoder.``), and that prefix."""
    parts = [n.split(".") for n in names]
    k = 0
    while parts and all(len(p) > k + 1 and p[k] == parts[0][k] for p in parts):
        k += 1
    prefix = ".".join(parts[0][:k]) + "." if k and len(names) > 1 else ""
    return ([".".join(p[k:]) for p in parts] if prefix else list(names)), prefix


def plot_policy(result: SearchResult, record: TrialRecord, out: Path) -> Path:
    """Per compute layer: weight and activation bits, keep ratio, and rank as a share of full rank."""
    policy = result.policy(record)
    layers = result.problem.graph.compute_layers()
    lps = [policy.for_layer(layer.name) for layer in layers]
    x = np.arange(len(layers))
    fig = new_figure(figsize=(max(6, 0.35 * len(layers) + 3), 8))
    ax_bits, ax_keep, ax_rank = fig.subplots(3, 1, sharex=True)
    ax_bits.bar(x - 0.2, [lp.w_bits for lp in lps], 0.4, label="weights")
    ax_bits.bar(x + 0.2, [lp.a_bits for lp in lps], 0.4, label="activations")
    ax_bits.set_ylabel("bits")
    ax_bits.legend(fontsize=7)
    ax_keep.bar(x, [lp.keep for lp in lps], color="tab:green")
    ax_keep.set_ylabel("keep ratio")
    ax_keep.set_ylim(0, 1.05)
    ax_rank.bar(x, [lp.rank / layer.max_rank if lp.rank and layer.max_rank else 1.0 for lp, layer in
                    zip(lps, layers)], color="tab:purple")
    ax_rank.set_ylabel("rank / full rank\n(1: no split)")
    ax_rank.set_ylim(0, 1.05)
    names, prefix = short_names([layer.name for layer in layers])
    ax_rank.set_xticks(x, names, rotation=90, fontsize=8)
    if prefix:
        ax_rank.set_xlabel(f"layer (names after '{prefix}')", fontsize=9)
    fig.suptitle(f"Policy of trial {record.number}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def plot_energy(result: SearchResult, record: TrialRecord, out: Path) -> Path:
    """The chosen policy's energy by layer and memory level."""
    problem = result.problem
    cost = price(problem.graph, problem.target, result.policy(record), model=problem.config.cost_model,
                 batch=problem.config.batch, scales=problem.scales)
    fig = new_figure(figsize=(max(6, 0.3 * len(problem.graph) + 3), 5))
    ax = fig.subplots()
    breakdown_axes(ax, report(problem.graph, cost))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def write_plots(result: SearchResult, folder: Path) -> dict[str, Path]:
    """front.png always; policy.png and energy.png of the chosen policy when there is one."""
    folder.mkdir(exist_ok=True)
    out = {"Pareto front": plot_front(result, folder / "front.png")}
    if result.chosen is not None:
        out["chosen policy"] = plot_policy(result, result.chosen, folder / "policy.png")
        out["chosen policy: energy by layer"] = plot_energy(result, result.chosen, folder / "energy.png")
    return out
