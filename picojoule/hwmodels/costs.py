"""Pricing: (LayerGraph, policies, Target) -> per-layer latency, energy by component and bound."""

from __future__ import annotations

from typing import Any, Sequence

from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph
from picojoule.hwmodels.carbon import co2e_grams
from picojoule.hwmodels.common import CostResult
from picojoule.hwmodels.eyeriss import eyeriss
from picojoule.hwmodels.hierarchy import hierarchy
from picojoule.hwmodels.roofline import roofline
from picojoule.hwmodels.scales import ScaleFormat
from picojoule.hwmodels.target import Target, load_target
from picojoule.hwmodels.workload import graph_arrays, policy_batch, workload
from picojoule.policy import PolicyBatch
from picojoule.policy import Policy

COST_MODELS = {"roofline": roofline, "eyeriss": eyeriss, "hierarchy": hierarchy}


def price(graph: LayerGraph, target: Target | str, policies: PolicyBatch | Policy | Sequence[Policy] | None = None,
          model: str = "roofline", batch: int = 1, scales: ScaleFormat | None = None) -> CostResult:
    """Price a batch of policies (or one, or the float32 baseline when None) on ``target``; ``scales``: how the
    quantized linear layers carry their scales (:mod:`picojoule.hwmodels.scales`; None: their bits alone)."""
    if model not in COST_MODELS:
        raise PicojouleError(f"unknown cost model '{model}': expected one of {', '.join(COST_MODELS)}")
    target = load_target(target) if isinstance(target, str) else target
    ga = graph_arrays(graph)
    if policies is None:
        policies = Policy()
    if isinstance(policies, Policy):
        policies = [policies]
    pb = policies if isinstance(policies, PolicyBatch) else policy_batch(graph, policies)
    return COST_MODELS[model](ga, target, workload(ga, target, pb, batch, scales))


def report(graph: LayerGraph, result: CostResult, i: int = 0, **carbon: float) -> dict[str, Any]:
    """The JSON document of policy ``i``: totals and one row per layer."""
    energy = result.energy_j[i]
    layers = [
        {
            "name": layer.name,
            "op": layer.op,
            "macs": int(result.macs[i, j]),
            "latency_s": float(result.latency_s[i, j]),
            "energy_j": float(energy[j].sum()),
            "energy_breakdown_j": {c: float(energy[j, k]) for k, c in enumerate(result.components)},
            "bound": result.bound_names[result.bound[i, j]],
        }
        for j, layer in enumerate(graph.layers)
    ]
    total_energy = float(result.total_energy_j[i])
    return {
        "model": graph.name,
        "target": result.target,
        "cost_model": result.model,
        "total": {
            "macs": int(result.total_macs[i]),
            "params": int(result.total_params[i]),
            "nonzeros": int(result.total_nonzeros[i]),
            "size_bytes": float(result.size_bytes[i]),
            "latency_s": float(result.total_latency_s[i]),
            "energy_j": total_energy,
            "co2e_g": float(co2e_grams(total_energy, **carbon)),
            "energy_breakdown_j": {c: float(energy[:, k].sum()) for k, c in enumerate(result.components)},
        },
        "layers": layers,
    }
