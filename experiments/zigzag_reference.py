"""Reference timing: ZigZag (PyPI ``zigzag-dse==3.9.1``) mapping and costing ResNet-18.

The benchmark compares picojoule's analytic cost model against ZigZag's full
mapping search + cost evaluation of ResNet-18 on ZigZag's own packaged
``eyeriss_like.yaml`` accelerator.

Everything comes from the installed ``zigzag`` package itself:

* workload:    ``zigzag/inputs/workload/resnet18.onnx`` -- ImageNet-shaped
  (input 1x3x224x224), opset 14, already shape-inferred, weights stripped
  (ZigZag loads it with ``load_external_data=False``; it only needs shapes).
  20 Conv + 1 Gemm = 21 layers are costed; ReLU/Add/pool nodes are dummies.
* accelerator: ``zigzag/inputs/hardware/eyeriss_like.yaml`` (14x12 PE array).
* mapping:     ``zigzag/inputs/mapping/default.yaml`` -- the package ships no
  eyeriss-specific mapping file; ``default`` applies to every operator
  (spatial K:32 on D1, C:32 on D2, which ZigZag clips to the 14x12 array,
  i.e. K:14 x C:12, C:3 for the first conv).  Temporal mappings are searched
  with LOMA (``lpf_limit=6``), the API defaults.

API used: ``zigzag.api.get_hardware_performance_zigzag(workload, accelerator,
mapping, opt=..., dump_folder=..., loma_show_progress_bar=False)`` which
returns ``(energy_total_pJ, latency_total_cycles, cmes)`` where
``cmes[0] == (CumulativeCME, [(CostModelEvaluation, extra), ...per layer])``.

Run directly (needs the ``bench`` extra)::

    python experiments/zigzag_reference.py
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ZIGZAG_VERSION_EXPECTED = "3.9.1"


def _zigzag_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zigzag-dse")
    except PackageNotFoundError:  # pragma: no cover - installed from source
        return "unknown"


def zigzag_inputs() -> dict[str, Path] | None:
    """Paths of the packaged ResNet-18 workload, eyeriss_like hardware and default mapping."""
    try:
        import zigzag
    except ImportError:
        return None
    root = Path(zigzag.__file__).resolve().parent / "inputs"
    return {
        "workload": root / "workload" / "resnet18.onnx",
        "accelerator": root / "hardware" / "eyeriss_like.yaml",
        "mapping": root / "mapping" / "default.yaml",
    }


def run_zigzag_resnet18(workdir: Path, *, opt: str = "latency", lpf_limit: int = 6) -> dict[str, Any] | None:
    """Run ZigZag's full mapping search + costing of ResNet-18 on eyeriss_like.

    ZigZag's own output files (json/pickle dumps) go under ``workdir``.
    ``seconds`` is wall time of the API call; ``cpu_seconds`` is this process's CPU
    time over it (ZigZag's LOMA search is single-threaded, so on a busy machine
    ``cpu_seconds`` is the better estimate of the uncontended wall time).
    ``cost_evaluations`` counts CostModelEvaluation constructions (one per
    candidate mapping); ``*ms_per_cost_evaluation`` is their mean cost.
    Returns None (after printing a one-line reason) when zigzag is unavailable.
    """
    try:
        import zigzag.api as zz_api
        import zigzag.stages.evaluation.cost_model_evaluation as zz_cms
    except ImportError as exc:
        print(f"zigzag reference skipped: zigzag-dse not importable ({exc}); install the 'bench' extra")
        return None

    paths = zigzag_inputs()
    assert paths is not None
    for kind, p in paths.items():
        if not p.is_file():
            print(f"zigzag reference skipped: packaged {kind} file missing at {p}")
            return None

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dump_folder = workdir / "zigzag_outputs"

    # Count and time every single cost-model evaluation (one fixed mapping each),
    # by wrapping the class the CostModelStage instantiates; restored afterwards.
    n_evals = 0
    eval_seconds = 0.0
    eval_cpu_seconds = 0.0
    orig_cme_cls = zz_cms.CostModelEvaluation

    def _timed_cme(*args: Any, **kwargs: Any):
        nonlocal n_evals, eval_seconds, eval_cpu_seconds
        t, c = time.perf_counter(), time.process_time()
        cme = orig_cme_cls(*args, **kwargs)
        eval_seconds += time.perf_counter() - t
        eval_cpu_seconds += time.process_time() - c
        n_evals += 1
        return cme

    # The API calls logging.basicConfig(level=INFO) and logs per layer; silence it
    # and undo any handler/level it installs on the root logger.
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_disable = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    zz_cms.CostModelEvaluation = _timed_cme  # type: ignore[assignment]
    try:
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        energy, latency, cmes = zz_api.get_hardware_performance_zigzag(
            str(paths["workload"]),
            str(paths["accelerator"]),
            str(paths["mapping"]),
            opt=opt,
            lpf_limit=lpf_limit,
            dump_folder=str(dump_folder),
            loma_show_progress_bar=False,
        )
        wall = time.perf_counter() - t_wall
        cpu = time.process_time() - t_cpu
    finally:
        zz_cms.CostModelEvaluation = orig_cme_cls  # type: ignore[assignment]
        logging.disable(saved_disable)
        for h in list(root.handlers):
            if h not in saved_handlers:
                root.removeHandler(h)
        root.setLevel(saved_level)

    per_layer = cmes[0][1]
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "energy_pj": float(energy),
        "latency_cycles": float(latency),
        "layers": len(per_layer),
        "cost_evaluations": n_evals,
        "ms_per_cost_evaluation": 1e3 * eval_seconds / n_evals if n_evals else None,
        "cpu_ms_per_cost_evaluation": 1e3 * eval_cpu_seconds / n_evals if n_evals else None,
        "zigzag_version": _zigzag_version(),
        "opt": opt,
        "lpf_limit": lpf_limit,
        "hardware": "eyeriss_like.yaml",
        "mapping": "default.yaml",
        "workload": "resnet18.onnx (zigzag package)",
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="zigzag_ref_") as tmp:
        result = run_zigzag_resnet18(Path(tmp))
    if result is None:
        sys.exit(0)
    print(json.dumps(result, indent=2))
