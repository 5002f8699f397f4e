"""Plots people would rather look at than read: rooflines and per-layer energy breakdowns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from picojoule.hwmodels.target import Target


def new_figure(**kwargs: Any) -> Figure:
    """A figure drawn by Agg outside pyplot: no backend switch, no global figure list (nothing to close)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _roofline_axes(ax, target: Target, report: dict[str, Any]) -> None:
    rows = [r for r in report["layers"] if r["macs"] > 0]
    traffic = np.array([_dram_bytes(r, target) for r in rows])
    macs = np.array([r["macs"] for r in rows], dtype=float)
    lat = np.array([r["latency_s"] for r in rows])
    intensity = macs / np.maximum(traffic, 1.0)
    achieved = macs / np.maximum(lat, 1e-12)
    xs = np.logspace(np.log10(max(intensity.min() / 4, 1e-2)), np.log10(intensity.max() * 4 + 1), 200)
    for mode in target.compute.modes:
        ax.axhline(mode.peak_macs_per_s, ls="--", lw=0.8, color="grey")
        ax.text(xs[0], mode.peak_macs_per_s * 1.1, f"{mode.name} peak", fontsize=7, color="grey")
    for level in target.memory:
        ax.plot(xs, xs * level.bandwidth_bytes_per_s, lw=0.8, label=f"{level.name} bandwidth")
    bound = [r["bound"] for r in rows]
    for b in sorted(set(bound)):
        sel = np.array([x == b for x in bound])
        ax.scatter(intensity[sel], achieved[sel], s=14, label=f"layers ({b}-bound)", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(achieved.min() / 4, max(m.peak_macs_per_s for m in target.compute.modes) * 3)
    ax.set_xlabel("operational intensity (MACs per DRAM byte)")
    ax.set_ylabel("MACs per second")
    ax.set_title(f"Roofline: {report['model']} on {target.name}")
    ax.legend(fontsize=7, loc="lower right")


def _dram_bytes(row: dict[str, Any], target: Target) -> float:
    """DRAM bytes of a layer, recovered from its DRAM energy (read energy per bit)."""
    e = row["energy_breakdown_j"].get(target.dram.name, 0.0)
    return e / (target.dram.read_energy_pj_per_bit * 1e-12) / 8


def breakdown_axes(ax, report: dict[str, Any]) -> None:
    rows = report["layers"]
    components = list(rows[0]["energy_breakdown_j"])
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for c in components:
        vals = np.array([r["energy_breakdown_j"][c] for r in rows]) * 1e6
        ax.bar(x, vals, bottom=bottom, label=c, width=0.85)
        bottom += vals
    ax.set_xticks(x, [r["name"] for r in rows], rotation=90, fontsize=5)
    ax.set_ylabel("energy per inference (µJ)")
    ax.set_title(f"Energy by layer and component ({report['cost_model']} model): "
                 f"total {report['total']['energy_j'] * 1e6:.1f} µJ")
    ax.legend(fontsize=7)


def plot_cost(report: dict[str, Any], target: Target, out: str | Path) -> Path:
    """Roofline with the layers on it, above the per-layer energy breakdown; written to ``out`` (PNG)."""
    fig = new_figure(figsize=(12, 10))
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1, 1]})
    _roofline_axes(top, target, report)
    breakdown_axes(bottom, report)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=130)
    return out
