"""picojoule: hardware-aware compression search (bits, channel pruning, low rank, sparsity) against analytic
hardware cost models.

The Python API (objects first, files optional)::

    import picojoule as pj
    graph = pj.LayerGraph.from_torch(model, example)        # or pj.LayerGraph.from_onnx(path)
    target = pj.load_target("eyeriss")                       # a name, a path, or a Target
    report = pj.cost(graph, target, policy, cost_model="eyeriss")
    space = pj.Space(graph, target, overrides={"defaults": {"keep": [0.5, 1.0]}})
    compressed = pj.compress(model, example, policy, calib_data=loader)
    result = pj.search(model, example, target=target, evaluate=my_metric, calib_data=loader,
                       objectives=["maximise accuracy", "minimise energy"],
                       constraints=["energy <= 0.5 * uniform_int8"], trials=200, storage=None)
    result.front, result.best("accuracy"), result.to_dataframe()
    hw = pj.codesign(model, example, "eyeriss-codesign", evaluate=my_metric, calib_data=loader,
                     constraints=["accuracy_drop <= 1", "area <= 2.5 mm2"], codesign={"points": 8})
    hw.front                                                 # (policy, hardware) pairs; hw.points: every point

Names are imported on first use, so ``import picojoule`` stays cheap (no torch) and changes no global state.
"""

from __future__ import annotations

import importlib
from typing import Any

from picojoule.errors import PicojouleError

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    "LayerGraph": "picojoule.graph",
    "Target": "picojoule.hwmodels.target",
    "load_target": "picojoule.hwmodels.target",
    "target_names": "picojoule.hwmodels.target",
    "Policy": "picojoule.policy",
    "LayerPolicy": "picojoule.policy",
    "Space": "picojoule.spaces.space",
    "CostReport": "picojoule.api",
    "cost": "picojoule.api",
    "compress": "picojoule.api",
    "PASSES": "picojoule.passes",
    "CompressionPass": "picojoule.passes",
    "SearchResult": "picojoule.search.engine",
    "Sensitivity": "picojoule.sensitivity",
    "sensitivity": "picojoule.sensitivity",
    "codesign": "picojoule.search.api",
    "CodesignResult": "picojoule.search.codesign",
    "instantiate": "picojoule.hwmodels.parameters",
    "area_mm2": "picojoule.hwmodels.area",
}

__all__ = ["PicojouleError", "__version__", "search", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "search":  # the picojoule.search package is callable as picojoule.search.api.search, so that
        # pj.search(...) works whether or not a submodule import has bound the name to the package already
        return importlib.import_module("picojoule.search")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'picojoule' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
