"""The Python API's functions over objects (no files needed): price a policy, compress a model.

::

    import picojoule as pj
    graph = pj.LayerGraph.from_torch(model, example)
    report = pj.cost(graph, "eyeriss", policy, cost_model="eyeriss")   # per-layer rows and totals
    compressed = pj.compress(model, example, policy, calib_data=loader)

Cheap, pure code: :func:`cost` imports no torch; :func:`compress` imports what touches weights when called.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph
from picojoule.hwmodels.carbon import DEFAULT_GRID_G_PER_KWH, DEFAULT_PUE
from picojoule.hwmodels.costs import COST_MODELS, price, report
from picojoule.hwmodels.target import Target, load_target
from picojoule.policy import Policy

__all__ = ["CostReport", "as_policy", "compress", "cost"]


def as_policy(policy: Policy | Mapping[str, Any] | str | Path | None, source: str = "policy") -> Policy:
    """A :class:`Policy` from a Policy, a policy document (mapping), a YAML/JSON path, or None (float32)."""
    if policy is None:
        return Policy()
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping):
        return Policy.from_dict(dict(policy), source)
    if isinstance(policy, (str, Path)):
        return Policy.load(policy)
    raise PicojouleError(f"{source}: expected a Policy, a mapping or a policy file, got {type(policy).__name__}")


@dataclass
class CostReport:
    """One policy priced on one target: ``total`` (macs, params, nonzeros, size_bytes, latency_s, energy_j,
    co2e_g, energy_breakdown_j) and one row per layer in ``layers``."""

    model: str
    target: str
    cost_model: str
    total: dict[str, Any]
    layers: list[dict[str, Any]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document ``picojoule cost --json`` prints."""
        return {"model": self.model, "target": self.target, "cost_model": self.cost_model, "total": self.total,
                "layers": self.layers}

    def to_dataframe(self) -> Any:
        """The per-layer rows as a pandas DataFrame (energy by component in ``energy_<component>_j`` columns)."""
        import pandas as pd

        rows = [{**{k: v for k, v in row.items() if k != "energy_breakdown_j"},
                 **{f"energy_{c}_j": e for c, e in row["energy_breakdown_j"].items()}} for row in self.layers]
        return pd.DataFrame(rows).set_index("name")

    def __repr__(self) -> str:
        t = self.total
        return (f"CostReport({self.model} on {self.target}, {self.cost_model}: {t['macs'] / 1e6:.2f} M MACs, "
                f"{t['params']:,} params ({t['nonzeros']:,} non-zero), {t['size_bytes'] / 1e3:.1f} kB, "
                f"latency {t['latency_s'] * 1e3:.4g} ms, energy {t['energy_j'] * 1e6:.4g} uJ, "
                f"{len(self.layers)} layers)")


def cost(graph: LayerGraph, target: Target | str, policy: Policy | Mapping[str, Any] | str | Path | None = None, *,
         cost_model: str = "roofline", batch: int = 1, pue: float = DEFAULT_PUE,
         grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH, linear_quant: Any = None) -> CostReport:
    """``policy`` (None: float32) on ``target`` (a Target, a bundled name or a YAML path) by ``cost_model``
    (roofline or eyeriss), per inference of ``batch`` inputs. The policy is validated against the graph.
    ``linear_quant`` (as :func:`compress` takes it) prices the linear layers as that recipe deploys them, with
    their scales, rescales, ranges and rotation (:mod:`picojoule.hwmodels.scales`)."""
    from picojoule.hwmodels.scales import ScaleFormat
    from picojoule.spaces.formats import validate_policy

    if cost_model not in COST_MODELS:
        raise PicojouleError(f"cost: unknown cost model '{cost_model}': expected one of {', '.join(COST_MODELS)}")
    target, policy = load_target(target), as_policy(policy)
    validate_policy(policy, graph)
    scales = ScaleFormat.of(_linear_quant_config(linear_quant, "cost")) if linear_quant is not None else None
    doc = report(graph, price(graph, target, policy, model=cost_model, batch=batch, scales=scales), pue=pue,
                 grid_g_per_kwh=grid_g_per_kwh)
    return CostReport(doc["model"], doc["target"], doc["cost_model"], doc["total"], doc["layers"])


# ------------------------------------------------------------------------------------------------- compress


def _linear_quant_config(value: Any, where: str) -> Any:
    """``value`` (a LinearQuant, or a mapping of its fields) checked: the LinearQuant itself, or the mapping as a
    LinearQuantConfig (without importing torch); a one-line error naming ``where``'s field otherwise."""
    import pydantic

    from picojoule.search.config import LinearQuantConfig

    linear_ptq = sys.modules.get("picojoule.spaces.linear_ptq")  # not imported: value cannot be a LinearQuant
    if linear_ptq is not None and isinstance(value, linear_ptq.LinearQuant):
        return value
    if not isinstance(value, Mapping):
        raise PicojouleError(f"{where}: field 'linear_quant': expected a LinearQuant or a mapping, got "
                             f"{type(value).__name__}")
    try:
        return LinearQuantConfig.model_validate(dict(value))
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "linear_quant"
        msg = err["msg"].removeprefix("Value error, ")
        raise PicojouleError(f"{where}: field 'linear_quant.{field}': {msg}") from None


def _linear_quant(value: Any) -> Any:
    """A LinearQuant from ``compress``'s ``linear_quant`` (None, a LinearQuant or a mapping of its fields)."""
    if value is None:
        return None
    checked = _linear_quant_config(value, "compress")
    return checked.recipe() if hasattr(checked, "recipe") else checked


def compress(model: Any, example: Any, policy: Policy | Mapping[str, Any] | str | Path, *, calib_data: Any = None,
             calib_batches: int = 8, graph: LayerGraph | None = None, importance: str = "l1", seed: int = 0,
             return_info: bool = False, state_dict: Any = None, linear_quant: Any = None) -> Any:
    """A compressed copy of the torch ``model`` (untouched) under ``policy``, ready to use: every compression
    pass applied (prune, low rank, sparsity, quantize), BatchNorm statistics re-estimated after pruning and
    activation ranges calibrated (``calib_batches`` batches of 128), both on ``calib_data``: a torch DataLoader,
    any iterable of batches (``x`` or ``(x, y)``) or a picojoule ArrayDataset. ``calib_data`` is required when the
    policy prunes or quantizes activations. ``state_dict`` (a mapping, or a file saved by ``torch.save``, such as a
    search's fine-tuned winner ``pareto/trial_NNNNN.pt``) gives the compressed model's weights, BatchNorm
    statistics and activation ranges instead: they are loaded, no repair runs and ``calib_data`` is not needed.
    ``linear_quant`` (a :class:`picojoule.spaces.linear_ptq.LinearQuant`, or its fields as a mapping, as a
    search's ``evaluation.linear_quant``) quantizes the linear layers the LLM way from ``calib_data``.
    With ``return_info``, returns ``(model, ApplyInfo)``."""
    import torch

    from picojoule.models import load_state
    from picojoule.search.evaluate import as_calibration, repair
    from picojoule.spaces.apply import apply_policy
    from picojoule.spaces.linear_ptq import recipe_calibration
    from picojoule.spaces.quantize import calibrate_activations

    policy = as_policy(policy)
    recipe = _linear_quant(linear_quant)
    compressed, info = apply_policy(model, example, policy, graph=graph, importance=importance,  # type: ignore[arg-type]
                                    seed=seed)
    if state_dict is not None:
        load_state(compressed, state_dict, "compress: field 'state_dict'")
        compressed.eval()
        return (compressed, info) if return_info else compressed
    if (info.channels or info.needs_calibration or recipe is not None) and calib_data is None:
        what = ("re-estimate BatchNorm after pruning" if info.channels else "calibrate activation ranges"
                if info.needs_calibration else "quantize the linear layers by linear_quant")
        raise PicojouleError(f"compress: field 'calib_data': needed to {what}; pass a DataLoader or batches")
    with torch.random.fork_rng(devices=[]):  # the observers sample with torch's global generator
        torch.manual_seed(seed)
        repair(compressed, as_calibration(calib_data, limit=128 * calib_batches), bn_reestimate=bool(info.channels),
               calibrate=(recipe_calibration(recipe) if recipe is not None else
                          calibrate_activations if info.needs_calibration else None), calib_batches=calib_batches,
               seed=seed)
    compressed.eval()
    return (compressed, info) if return_info else compressed
