"""The ``picojoule compile`` and ``picojoule calibrate`` subcommands; ``add_parsers(sub)`` adds them to the CLI."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from picojoule.errors import PicojouleError
from picojoule.yamlfile import read_text, read_yaml

__all__ = ["add_parsers", "chosen_policy", "finetuned_weights", "run_calibrate", "run_compile"]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _chosen_winner(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(the first objective's winner, the run's config, the file) as a search run directory's result.json gives
    them."""
    from picojoule.search.report import RESULT_FILE

    path = run_dir / RESULT_FILE
    if not path.is_file():
        raise PicojouleError(f"{run_dir}: not a finished search run (no {RESULT_FILE}): give a policy file, "
                             "e.g. one of pareto/trial_*.yaml")
    try:
        result = json.loads(read_text(path, "search result"))
        winners, config = result["winners"], result.get("config") or {}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PicojouleError(f"{path}: not a picojoule result ({type(e).__name__}: {e})") from None
    if not winners:
        raise PicojouleError(f"{path}: the search found no feasible policy: give a policy file")
    return winners[0], config, path


def chosen_policy(run_dir: Path) -> tuple[Any, dict[str, Any], str]:
    """(policy, the run's config as result.json gives it, name) of a search run directory's chosen policy: the
    first objective's winner in its result.json."""
    from picojoule.policy import Policy

    first, config, path = _chosen_winner(run_dir)
    return Policy.from_dict(first["policy"], f"{path}: winners[0].policy"), config, f"trial_{first['trial']:05d}"


def finetuned_weights(run_dir: Path) -> Path | None:
    """The weights of a search run's chosen policy after the search's final fine-tune (``final_finetune``), if
    it ran: a state_dict file in the run's ``pareto/``."""
    file = (_chosen_winner(run_dir)[0].get("finetuned") or {}).get("weights_file")
    return run_dir / file if file and (run_dir / file).is_file() else None


def _resolve(source: Path, model: str | None, weights: str | None) -> tuple[Any, str, str | None, str]:
    """(policy, model spec, weights, artifact name) of a policy file or a search run directory."""
    from picojoule.policy import Policy

    config: dict[str, Any] = {}
    if source.is_dir():
        policy, config, name = chosen_policy(source)
    elif source.exists():
        policy, name = Policy.load(source), source.stem
    else:
        raise PicojouleError(f"{source}: no such policy file or search run directory")
    spec = model or config.get("model") or policy.meta.get("model")
    if not spec:
        raise PicojouleError(f"{source}: the policy names no model (field 'model'): give --model")
    return policy, str(spec), weights or config.get("weights"), name


def noise_batches(example: Any, calib_data: str | None) -> tuple[list[Any], str]:
    if calib_data:
        from picojoule.data import load_dataset

        data = load_dataset({"source": calib_data, "split": "train"})
        return [x for x, _ in data.subset(128).batches(32)], f"data: {data.name}"
    from picojoule.compilers.calibrate import noise_batch

    _say("picojoule: note: no --calib-data: activation ranges come from noise (latency is real, the "
         "artifact's accuracy is not)")
    return [noise_batch(example)], "synthetic noise (give --calib-data for a deployable model)"


def run_compile(args: argparse.Namespace) -> int:
    """``picojoule compile``: policy -> compressed model -> ONNX, TVM library and JSON report in --out."""
    import torch

    from picojoule.compilers.deploy import deploy
    from picojoule.compilers.report import write_report
    from picojoule.graph import build_graph
    from picojoule.hwmodels.target import load_target
    from picojoule.models import load_state, load_torch_model
    from picojoule.spaces.apply import apply_policy
    from picojoule.spaces.formats import validate_policy
    from picojoule.spaces.quantize import calibrate_activations

    torch.set_num_threads(1)
    spec = load_target(args.target)
    policy, model_spec, weights, name = _resolve(Path(args.policy), args.model, args.weights)
    name = args.name or name
    _say(f"[1/3] applying {args.policy} to {model_spec}")
    model, example = load_torch_model(model_spec, weights)
    graph = build_graph(model, example, name=model_spec)
    validate_policy(policy, graph, args.policy)
    compressed, info = apply_policy(model, example, policy, graph)
    calibration = "not needed (float activations)"
    tuned = finetuned_weights(Path(args.policy)) if Path(args.policy).is_dir() and not args.weights else None
    if tuned is not None:
        load_state(compressed, tuned, str(tuned))
        calibration = f"the search's final fine-tune ({tuned}: weights, BatchNorm statistics, activation ranges)"
        _say(f"picojoule: loaded the fine-tuned weights {tuned}")
    elif info.needs_calibration:
        batches, calibration = noise_batches(example, args.calib_data)
        calibrate_activations(compressed, batches)
    label = spec.name
    _say(f"[2/3] exporting ONNX and building with TVM for {label} (tens of seconds)"
         + ("; timing it if this CPU runs its code" if args.measure else ""))
    t0 = time.perf_counter()
    note = None
    try:
        report = deploy(compressed, example, args.target, args.out, name=name, graph=graph, policy=policy,
                        measure=args.measure, repeat=args.repeat, number=args.number, tune_trials=args.tune_trials)
    except PicojouleError as exc:
        if spec.tvm is not None:
            raise
        note = str(exc)  # a target TVM cannot build for: the ONNX file and the report are its deliverables
        report = json.loads((Path(args.out) / f"{name}-{label}.json").read_text())
    report.update(source=str(args.policy), calibration=calibration, build_s=time.perf_counter() - t0)
    if args.measure:
        _time_on_host(report, graph, policy, example, args)
    path = write_report(Path(args.out) / f"{name}-{label}.json", report)
    if note:
        _say(f"picojoule: {note}")
    _print_compile(report, path)
    return 0


def _time_on_host(report: dict[str, Any], graph: Any, policy: Any, example: Any, args: argparse.Namespace) -> None:
    """Time the model on this CPU (the target's own build where this CPU runs its code, else a build for this CPU)
    and put the ``host`` target's prediction beside the timing: a prediction for another CPU is not compared
    with it (``predicted_latency_s`` stays the prediction for the target asked for)."""
    from picojoule.compilers import tvm_build
    from picojoule.compilers.report import predicted_latency
    from picojoule.hwmodels.target import load_target

    host = load_target(tvm_build.HOST)
    mcpu = tvm_build.native_mcpu()
    if report["latency_s"] is None:
        _say(f"[3/3] {report['target']}'s code does not run here: building for this CPU (llvm -mcpu={mcpu}) "
             "and timing it")
        executable = tvm_build.compile_onnx(report["onnx"], tvm_build.HOST, tuple(example.shape))
        report["host_latency_s"] = tvm_build.measure_latency(executable, example, args.repeat, args.number)
        report["host_timed_build"] = f"llvm -mcpu={mcpu} (target host)"
    else:
        report["host_latency_s"] = report["latency_s"]
        report["host_timed_build"] = f"llvm -mcpu={report['tvm_target'].get('mcpu')} (target {report['target']})"
    report["host_cpu"] = tvm_build.host_cpu()
    same = report["target"] == host.name and report.get("predicted_latency_s") is not None
    report["host_predicted_latency_s"] = (report["predicted_latency_s"] if same
                                          else predicted_latency(graph, host, policy))
    report["host_prediction_target"] = host.name
    report["host_description"] = host.description


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.3f} ms"


def _print_compile(report: dict[str, Any], path: Path) -> None:
    print(f"onnx:    {report['onnx']}")
    print(f"library: {report['library'] or '— (not built: ' + report.get('error', '?') + ')'}")
    print(f"report:  {path}")
    if report.get("predicted_latency_s") is not None:
        print(f"predicted latency on {report['target']}: {_ms(report['predicted_latency_s'])}")
    if "host_latency_s" in report:
        print(f"measured latency on this CPU ({report.get('host_cpu', report['target'])}, TVM, "
              f"{report.get('host_timed_build', 'own build')}): {_ms(report['host_latency_s'])}")
    if report.get("host_predicted_latency_s") is not None and report["target"] != report["host_prediction_target"]:
        print(f"predicted latency on this CPU (target {report['host_prediction_target']}, beside the measurement): "
              f"{_ms(report['host_predicted_latency_s'])}")


def run_calibrate(args: argparse.Namespace) -> int:
    """``picojoule calibrate``: sample, build, time and fit; write the calibrated target YAML."""
    import torch

    from picojoule.compilers.calibrate import (fit_efficiency, measure_policies, runnable_tvm_target,
                                               sample_policies, write_target_yaml)
    from picojoule.graph import build_graph
    from picojoule.hwmodels.target import load_target
    from picojoule.models import load_torch_model

    torch.set_num_threads(1)
    target = load_target(args.target)
    if target.kind != "cpu":
        raise PicojouleError(f"calibrate: target {target.name} is a {target.kind}: calibration times code on this "
                             "CPU, so only CPU targets (kind: cpu) can be calibrated")
    _, where = runnable_tvm_target(target)
    _say(f"picojoule: building and timing on {where}")
    model, example = load_torch_model(args.model, args.weights)
    graph = build_graph(model, example, name=args.model)
    policies = sample_policies(graph, target, args.policies, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure_policies(args.model, args.weights, target, policies, args.workdir or tmp,
                                    rounds=args.rounds)
    ok = [m for m in measured if m.measured_s is not None]
    for m in measured:
        if m.error:
            _say(f"picojoule: policy {m.name} skipped: {m.error}")
    calibrated, stats = fit_efficiency(graph, target, [m.policy for m in ok], [m.measured_s for m in ok],
                                       holdout=args.holdout, seed=args.seed, names=[m.name for m in ok],
                                       measured_on=where)
    out = Path(args.out or f"{target.name}-calibrated.yaml")
    write_target_yaml(calibrated, out, stats)
    fit_json = out.with_suffix(".fit.json")
    fit_json.write_text(json.dumps({"stats": stats.to_dict(), "measurements": [m.to_dict() for m in measured]},
                                   indent=2) + "\n")
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print(stats.summary())
        print("efficiency: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.efficiency.items())
              + f"; layer overhead {stats.layer_overhead_s * 1e6:.2f} us; channel exponent {stats.channel_exponent:.3f}"
              + "; mode rates "
              + ", ".join(f"{k} {v:.3g}" for k, v in stats.mode_rates.items()))
        print(f"calibrated target: {out} (measurements: {fit_json})")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``compile`` and ``calibrate`` to the CLI's subparsers."""
    p = sub.add_parser("compile", help="build a policy (or a search run's chosen policy) into ONNX + TVM library")
    p.add_argument("policy", metavar="POLICY_OR_RUN_DIR",
                   help="policy YAML/JSON, or a search run directory (its first objective's winner)")
    p.add_argument("--target", required=True, help="target name or .yaml ('host': this CPU, detected)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", help="model (default: the policy's or the run's 'model')")
    p.add_argument("--weights", help="pretrained weights (default: the run's, and its chosen policy's fine-tuned "
                   "weights where the search fine-tuned it; none: seeded random weights)")
    p.add_argument("--calib-data", help="dataset for activation ranges of quantized layers (.npz, folder, hook)")
    p.add_argument("--name", help="artifact file name stem (default: the policy file's stem)")
    p.add_argument("--measure", action="store_true",
                   help="time the model on this CPU beside the host target's prediction")
    p.add_argument("--repeat", type=int, default=10, help="timed repeats (median) with --measure")
    p.add_argument("--number", type=int, default=3, help="calls per repeat with --measure")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="MetaSchedule tuning trials in all (0: untuned; llvm code this CPU runs; minutes per 64)")
    p.set_defaults(func=run_compile)
    p = sub.add_parser("calibrate", help="fit a CPU target's efficiencies to TVM latencies measured on this CPU")
    p.add_argument("--target", required=True,
                   help="CPU target name or .yaml (host: this CPU, detected; cpu-avx512, host-znver3, ...)")
    p.add_argument("--model", required=True, help="zoo name, 'digits' or 'package.module:function'")
    p.add_argument("--weights", help="pretrained weights (latency does not depend on them)")
    p.add_argument("--policies", type=int, default=24, help="policies to sample, build and time")
    p.add_argument("--holdout", type=float, default=0.25, help="share held out for the statistics (0: leave-one-out)")
    p.add_argument("--rounds", type=int, default=3, help="timing passes over all policies (each keeps its fastest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="calibrated target YAML (default: <target>-calibrated.yaml)")
    p.add_argument("--workdir", help="keep the ONNX files here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the fit statistics as JSON")
    p.set_defaults(func=run_calibrate)
