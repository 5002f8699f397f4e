"""Importing picojoule changes no global state: every module imported in a fresh interpreter leaves matplotlib's
backend, torch's threads and RNG, the loggers' levels, the warnings filters and the environment as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = r"""
import importlib, json, logging, os, pkgutil, random, sys, warnings
import matplotlib, numpy as np, optuna, torch  # optuna sets its own logger's level when imported: not ours

def state():
    return {"backend": matplotlib.rcParams._get("backend"), "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "torch_rng": torch.get_rng_state().tolist(),
            "numpy_rng": np.random.get_state()[1].tolist(), "python_rng": list(random.getstate()[1]),
            "optuna_level": logging.getLogger("optuna").level, "optuna_verbosity": optuna.logging.get_verbosity(),
            "root_level": logging.getLogger().level, "root_handlers": len(logging.getLogger().handlers),
            "warnings_filters": [repr(f) for f in warnings.filters], "environ": dict(os.environ)}

before = state()
import picojoule
names = [m.name for m in pkgutil.walk_packages(picojoule.__path__, "picojoule.") if m.name != "picojoule.__main__"]
for name in names:
    importlib.import_module(name)
after = state()
print(json.dumps({"file": picojoule.__file__, "modules": names, "pyplot": "matplotlib.pyplot" in sys.modules,
                  "changed": {k: [before[k], after[k]] for k in before if before[k] != after[k]}}))
"""


def test_importing_every_module_changes_no_global_state():
    env = {**os.environ, "MPLBACKEND": "svg"}  # a user's backend choice, which matplotlib.use("Agg") would override
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert Path(result["file"]).resolve().parent == ROOT / "picojoule"
    assert {"picojoule.plots", "picojoule.search.plots", "picojoule.search.engine",
            "picojoule.search.parallel", "picojoule.search.tune_backend"} <= set(result["modules"])
    assert result["changed"] == {}
    assert not result["pyplot"]  # the plots draw on Figure + FigureCanvasAgg, outside pyplot's global state


def test_a_search_restores_optunas_logging_and_warnings(tmp_path):
    import logging
    import warnings

    import optuna

    from picojoule.cli import DEFAULT_SEARCH
    from picojoule.search import run_search

    level, filters = optuna.logging.get_verbosity(), list(warnings.filters)
    run_search({**DEFAULT_SEARCH, "objectives": ["minimise energy"], "constraints": [], "trials": 3},
               tmp_path / "run", progress=False)
    assert optuna.logging.get_verbosity() == level and logging.getLogger("optuna").level == level
    assert warnings.filters == filters
