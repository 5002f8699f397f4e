"""The figures a search can optimise or constrain, their directions and units, and how the cost model yields them.

Units are SI base units throughout (J, s, bytes, g CO2e, MACs), except ``accuracy`` (a fraction in [0, 1],
measured on the validation split: what a search selects on) and ``accuracy_drop`` (percentage points below the
float32 model's accuracy on the same validation split). ``test_accuracy``, the same measurement on the test split
after the search (front, winners and baselines only), is reported, never optimised or constrained; so are
``finetuned_accuracy`` and ``finetuned_test_accuracy``, a winner's accuracy on each split after the final
fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from picojoule.hwmodels.carbon import co2e_grams
from picojoule.hwmodels.common import CostResult


@dataclass(frozen=True)
class Metric:
    """One figure of merit: the direction that is better, and its unit (for humans)."""

    name: str
    maximise: bool
    unit: str
    needs_accuracy: bool = False


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", True, "", needs_accuracy=True),
    Metric("accuracy_drop", False, "pp", needs_accuracy=True),
    Metric("energy", False, "J"),
    Metric("latency", False, "s"),
    Metric("size", False, "B"),
    Metric("co2e", False, "g"),
    Metric("macs", False, "MACs"),
    Metric("params", False, ""),
    Metric("area", False, "mm²"),
    Metric("power", False, "W"),
)}
#: what an objective may name (accuracy_drop is accuracy seen from the baseline: constrain it instead)
OBJECTIVE_METRICS = tuple(m for m in METRICS if m != "accuracy_drop")
COST_METRICS = tuple(m.name for m in METRICS.values() if not m.needs_accuracy)


def cost_metrics(cost: CostResult, pue: float, grid_g_per_kwh: float) -> dict[str, np.ndarray]:
    """The hardware figures of each of a CostResult's N policies, each an (N,) float array."""
    energy = np.asarray(cost.total_energy_j, dtype=float)
    return {
        "energy": energy,
        "latency": np.asarray(cost.total_latency_s, dtype=float),
        "size": np.asarray(cost.size_bytes, dtype=float),
        "co2e": np.asarray(co2e_grams(energy, pue, grid_g_per_kwh), dtype=float),
        "macs": np.asarray(cost.total_macs, dtype=float),
        "params": np.asarray(cost.total_params, dtype=float),
        "area": np.full(len(energy), cost.area_mm2, dtype=float),
        "power": cost.average_power_w,
    }


def accuracy_metrics(accuracy: float, reference: float) -> dict[str, float]:
    """``accuracy`` and its drop in percentage points below ``reference`` (the float32 model's accuracy), rounded
    to 1e-9 pt so that a drop of exactly the bound (0.9825 - 0.9625 is 2.0000000000000018 pt in floats) meets it."""
    return {"accuracy": float(accuracy), "accuracy_drop": round(float((reference - accuracy) * 100.0), 9)}


def format_value(metric: str, value: float) -> str:
    """A human rendering with an SI prefix: ``3.2 µJ``, ``1.5 ms``, ``12.3 KB``, ``98.50%``."""
    if value is None or not np.isfinite(value):
        return "—"
    if metric.endswith("accuracy"):  # accuracy, test_accuracy, finetuned_accuracy, finetuned_test_accuracy
        return f"{value * 100:.2f}%"
    if metric == "accuracy_drop":
        return f"{value:+.2f} pp"
    unit = METRICS[metric].unit
    if metric == "area":
        return f"{value:.3g} mm²"
    if metric == "size":
        for scale, prefix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {prefix}"
        return f"{value:.3g} B"
    if metric in ("macs", "params"):
        for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {prefix}{(' ' + unit) if unit else ''}".rstrip()
        return f"{value:.3g} {unit}".rstrip()
    for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"
