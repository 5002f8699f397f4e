"""The JSON record of one build: artifacts, TVM target, measured and predicted latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from picojoule.graph import LayerGraph
from picojoule.hwmodels.target import Target
from picojoule.policy import Policy

__all__ = ["REPORT_VERSION", "build_report", "predicted_latency", "write_report"]

REPORT_VERSION = 1


def predicted_latency(graph: LayerGraph, target: Target | str, policy: Policy | None = None,
                      cost_model: str = "roofline") -> float:
    """The cost model's total latency (s) of ``policy`` (float32 when None) on ``target``, batch 1."""
    from picojoule.hwmodels.costs import price

    return float(price(graph, target, policy, model=cost_model).total_latency_s[0])


def build_report(model: str, target: str, onnx: str | Path, library: str | Path | None = None,
                 tvm_target: Any = None, latency_s: float | None = None, graph: LayerGraph | None = None,
                 policy: Policy | None = None, target_spec: Target | None = None, **extra: Any) -> dict[str, Any]:
    """The report as a dict. ``predicted_latency_s`` is filled when ``graph`` and a picojoule ``target_spec``
    are given (``policy`` None prices the float model); ``extra`` keys are added as they are."""
    predicted = None
    if graph is not None and target_spec is not None:
        predicted = predicted_latency(graph, target_spec, policy)
    return {
        "version": REPORT_VERSION,
        "model": model,
        "target": target,
        "onnx": str(onnx),
        "library": None if library is None else str(library),
        "tvm_target": None if tvm_target is None else json.loads(str(tvm_target)),
        "latency_s": latency_s,
        "predicted_latency_s": predicted,
        "policy": None if policy is None else policy.to_dict(),
        **extra,
    }


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
