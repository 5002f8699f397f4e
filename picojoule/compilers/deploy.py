"""One call from a compressed torch model to its artifacts for a target: ONNX (QDQ), TVM library, JSON report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from picojoule.compilers import tvm_build
from picojoule.compilers.export import check_onnxruntime, export_onnx, run_onnxruntime
from picojoule.compilers.report import build_report, write_report
from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph
from picojoule.hwmodels.target import load_target
from picojoule.policy import Policy

__all__ = ["deploy"]


def deploy(model: nn.Module, example_input: torch.Tensor, target: str, outdir: str | Path, name: str = "model",
           graph: LayerGraph | None = None, policy: Policy | None = None, measure: bool = True,
           repeat: int = 20, number: int = 5, host_mcpu: str | None = None, tune_trials: int = 0) -> dict[str, Any]:
    """Export ``model`` to ``outdir/<name>.onnx``, build it with TVM for ``target`` (a target name, a YAML path
    or ``"host"``: this CPU, detected) into ``outdir/<name>-<target>.so`` and write ``outdir/<name>-<target>.json``;
    returns the report.

    The report holds the ONNX Runtime vs torch difference, the TVM vs ONNX Runtime difference and the median
    latency when the library runs on this CPU, and the cost model's prediction when ``graph`` is given (with
    ``policy``, or float32). ``host_mcpu`` is the CPU of a GPU target's host code (default: this machine's).
    For a target TVM cannot build for, the ONNX file and the report (no library) are still written, then a
    PicojouleError says so. ``tune_trials`` > 0 tunes the kernels with MetaSchedule first (records in
    ``outdir/<name>-<target>.tuning``; llvm code this CPU runs only).
    """
    outdir = Path(outdir)
    spec = load_target(target)
    label = spec.name
    onnx_path = export_onnx(model, example_input, outdir / f"{name}.onnx")
    common = dict(model=name, target=label, onnx=onnx_path, graph=graph, policy=policy, target_spec=spec,
                  ort_max_abs_diff=check_onnxruntime(model, example_input, onnx_path, tolerance=None))
    report_path = outdir / f"{name}-{label}.json"
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
