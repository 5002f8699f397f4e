"""Search: the problem a user states (config, constraint program), strategies, the two-stage engine, reports.

``from picojoule.search import run_search`` is the entry point (imported lazily: ``picojoule.search.evaluate``
stays free of Optuna).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SearchResult", "load_config", "run_search"]


def __getattr__(name: str) -> Any:
    if name in ("run_search", "SearchResult"):
        from picojoule.search import engine

        return getattr(engine, name)
    if name == "load_config":
        from picojoule.search.config import load_config

        return load_config
    raise AttributeError(f"module 'picojoule.search' has no attribute {name!r}")
