"""picojoule: hardware-aware compression search (bits, channel pruning, low rank) against analytic cost models."""

from __future__ import annotations

import importlib
from typing import Any

from picojoule.errors import PicojouleError

__version__ = "0.1.0"
__all__ = ["PicojouleError", "__version__"]

# -- the search API (imported on first use: `import picojoule` stays free of torch and Optuna) --------------
#: ``picojoule.search(model, example, target, ...)`` (the picojoule.search package is callable as the function
#: :func:`picojoule.search.api.search`) and its result, :class:`picojoule.search.engine.SearchResult`
__all__ += ["search", "SearchResult"]


def __getattr__(name: str) -> Any:
    if name == "search":
        return importlib.import_module("picojoule.search")
    if name == "SearchResult":
        return importlib.import_module("picojoule.search.engine").SearchResult
    raise AttributeError(f"module 'picojoule' has no attribute {name!r}")
