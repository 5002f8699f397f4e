"""One call from a compressed torch model to its artifacts for a target: ONNX (QDQ), the integer ONNX for ONNX
Runtime, the TVM library, and the JSON report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from picojoule.compilers import tvm_build
from picojoule.compilers.export import check_onnxruntime, export_onnx, measure_onnxruntime, run_onnxruntime
from picojoule.compilers.integer_onnx import integer_onnx
from picojoule.compilers.report import build_report, write_report
from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph
from picojoule.hwmodels.target import load_target
from picojoule.policy import Policy

__all__ = ["BACKENDS", "deploy"]


BACKENDS = ("tvm", "onnxruntime")


def deploy(model: nn.Module, example_input: torch.Tensor, target: str, outdir: str | Path, name: str = "model",
           graph: LayerGraph | None = None, policy: Policy | None = None, measure: bool = True,
           repeat: int = 20, number: int = 5, host_mcpu: str | None = None, tune_trials: int = 0,
           backends: Sequence[str] = BACKENDS, calib_batches: Sequence[Any] | None = None,
           model_name: str | None = None) -> dict[str, Any]:
    """Export ``model`` to ``outdir/<name>.onnx`` and build it for each of ``backends``; write
    ``outdir/<name>-<target>.json`` and return the report.

    * ``tvm``: a TVM library ``outdir/<name>-<target>.so`` for ``target`` (a target name, a YAML path or
      ``"host"``: this CPU, detected), with the TVM vs ONNX Runtime difference and, when the library runs on this
      CPU and ``measure``, its median latency (``latency_s``). ``host_mcpu`` is the CPU of a GPU target's host code
      (default: this machine's). ``tune_trials`` > 0 tunes the kernels with MetaSchedule first (records in
      ``outdir/<name>-<target>.tuning``; llvm code this CPU runs only). For a target TVM cannot build for, the
      ONNX file and the report (no library) are still written, then a PicojouleError says so.
    * ``onnxruntime``: ``outdir/<name>.ort.onnx``, the export rewritten for ONNX Runtime's integer kernels
      (:mod:`picojoule.compilers.integer_onnx`; ``calib_batches`` set the ranges of the 8-bit quantizers it adds),
      under the report's ``onnxruntime`` key: its difference from torch, the kernels ORT runs, and with
      ``measure`` its median latency on this CPU with one thread.

    The report's ``predicted_latency_s`` is the cost model's when ``graph`` is given (with ``policy``, or
    float32); ``model`` is ``model_name`` (default ``name``).
    """
    outdir = Path(outdir)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise PicojouleError(f"deploy: field 'backends': expected some of {list(BACKENDS)}, got {list(backends)}")
    spec = load_target(target)
    label = spec.name
    onnx_path = export_onnx(model, example_input, outdir / f"{name}.onnx")
    common = dict(model=model_name or name, target=label, onnx=onnx_path, graph=graph, policy=policy, target_spec=spec,
                  ort_max_abs_diff=check_onnxruntime(model, example_input, onnx_path, tolerance=None),
                  backends=list(backends))
    if "onnxruntime" in backends:
        common["onnxruntime"] = _ort_artifact(model, example_input, onnx_path, outdir / f"{name}.ort.onnx",
                                              calib_batches, measure, repeat, number)
    report_path = outdir / f"{name}-{label}.json"
    if "tvm" not in backends:
        report = build_report(**common)
        write_report(report_path, report)
        return report
    try:
        tgt = tvm_build.tvm_target(spec, host_mcpu, onnx_path)
    except PicojouleError as exc:
        write_report(report_path, build_report(**common, error=str(exc)))
        raise
    executable = tvm_build.compile_onnx(onnx_path, tgt, tuple(example_input.shape), tune_trials=tune_trials,
                                        tune_dir=outdir / f"{name}-{label}.tuning")
    library = tvm_build.export_library(executable, outdir / f"{name}-{label}.so")
    latency = tvm_diff = None
    runs_here = not tvm_build.missing_isa(tgt)
    if runs_here:
        tvm_out = tvm_build.run(executable, example_input, tgt)
        tvm_diff = float(np.abs(tvm_out - run_onnxruntime(onnx_path, example_input)).max())
        if measure:
            latency = tvm_build.measure_latency(executable, example_input, repeat, number, target=tgt)
    report = build_report(**common, library=library, tvm_target=tgt, latency_s=latency,
                          tvm_vs_ort_max_abs_diff=tvm_diff, runs_on_host=runs_here, host_cpu=tvm_build.host_cpu(),
                          tune_trials=tune_trials, tune_cost_model=tvm_build.tune_cost_model() if tune_trials else None)
    write_report(report_path, report)
    return report


def _ort_artifact(model: nn.Module, example: torch.Tensor, qdq_path: Path, path: Path,
                  calib_batches: Sequence[Any] | None, measure: bool, repeat: int, number: int) -> dict[str, Any]:
    """Write the integer ONNX for ONNX Runtime; its record in the report."""
    import onnx

    batches = list(calib_batches) if calib_batches is not None else []
    integer, rewrite = integer_onnx(onnx.load(str(qdq_path)), batches or [example])
    onnx.save(integer, str(path))
    record: dict[str, Any] = {
        "onnx": str(path), "kernels": rewrite.kernels, "summary": rewrite.summary(), "rewrite": rewrite.to_dict(),
        "calibration": f"{len(batches)} batches" if batches else "the example input only (give calibration data)",
        "max_abs_diff_vs_torch": check_onnxruntime(model, example, path, tolerance=None),
        "threads": 1, "latency_s": None,
    }
    if measure:
        record["latency_s"] = measure_onnxruntime(path, example, repeat, number, threads=1)
    return record
