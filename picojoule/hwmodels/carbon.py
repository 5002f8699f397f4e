"""Energy -> CO2e: footprint = (training + queries x energy per inference) x PUE x grid carbon intensity."""

from __future__ import annotations

J_PER_KWH = 3.6e6
#: Google's fleet-wide trailing-twelve-month PUE, 2023 environmental report: 1.10
DEFAULT_PUE = 1.10
#: world average grid carbon intensity, IEA 2023: ~480 g CO2e/kWh
DEFAULT_GRID_G_PER_KWH = 480.0


def co2e_grams(energy_j, pue: float = DEFAULT_PUE, grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH):
    """Grams of CO2-equivalent for ``energy_j`` joules drawn by the device (scalar or numpy array)."""
    return energy_j / J_PER_KWH * pue * grid_g_per_kwh


def footprint_grams(energy_per_inference_j: float, queries: float, training_kwh: float = 0.0,
                    pue: float = DEFAULT_PUE, grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH) -> float:
    """Lifetime CO2e of a model: (training + queries x energy per inference) x PUE x carbon intensity."""
    kwh = training_kwh + queries * energy_per_inference_j / J_PER_KWH
    return kwh * pue * grid_g_per_kwh
