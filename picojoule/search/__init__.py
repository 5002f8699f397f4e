"""Search: the problem a user states (config, constraint program), strategies, the two-stage engine, reports.

Entry points (imported lazily: ``picojoule.search.evaluate`` stays free of Optuna): ``search`` (the Python API,
:func:`picojoule.search.api.search`) and ``run_search`` (a config file or mapping). This package is itself
callable as ``search``, so that ``picojoule.search(model, example, target, ...)`` works whether or not the
package was imported before (importing a submodule binds ``picojoule.search`` to this package).
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["SearchResult", "load_config", "run_search", "search"]


def __getattr__(name: str) -> Any:
    if name in ("run_search", "SearchResult"):
        from picojoule.search import engine

        return getattr(engine, name)
    if name == "search":
        from picojoule.search.api import search

        return search
    if name == "load_config":
        from picojoule.search.config import load_config

        return load_config
    raise AttributeError(f"module 'picojoule.search' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """``picojoule.search(...)`` is :func:`picojoule.search.api.search`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from picojoule.search.api import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
