"""The ``picojoule compile``, ``run`` and ``calibrate`` subcommands; ``add_parsers(sub)`` adds them to the CLI."""

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

__all__ = ["add_parsers", "calibration_batches", "chosen_policy", "finetuned_weights", "run_artifact", "run_calibrate",
           "run_compile"]


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
    saved = run_dir / "config.yaml"  # result.json leaves the data out: the run's own config file has it
    if "data" not in config and saved.is_file():
        written = read_yaml(saved, "search run config")
        if isinstance(written, dict) and written.get("data"):  # a run from Python keeps its data as objects
            config = {**config, **{k: written[k] for k in ("data", "evaluation") if k in written}}
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


def _resolve(source: Path, model: str | None, weights: str | None
             ) -> tuple[Any, str, str | None, str, dict[str, Any]]:
    """(policy, model spec, weights, artifact name, the run's config or {}) of a policy file or a search run
    directory."""
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
    return policy, str(spec), weights or config.get("weights"), name, config


def _run_calibration(config: dict[str, Any], source: Path) -> tuple[list[Any], str] | None:
    """The calibration batches a search run's config names (its ``data.calibration``, else ``data.train``):
    as many images as the search calibrated on, in batches of 128; None when it names none."""
    from picojoule.data import load_dataset
    from picojoule.search.problem import CALIB_BATCH, _field

    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    for split in ("calibration", "train"):
        spec = data.get(split)
        if spec:
            with _field(str(source), f"data.{split}"):
                dataset = load_dataset(spec)
            images = int((config.get("evaluation") or {}).get("calibration_images") or 256)
            subset = dataset.subset(min(images, len(dataset)))
            return [x for x, *_ in subset.batches(CALIB_BATCH)], f"the run's data.{split}: {dataset.name}"
    return None


def noise_batches(example: Any, calib_data: str | None) -> tuple[list[Any], str]:
    if calib_data:
        from picojoule.data import load_dataset

        data = load_dataset({"source": calib_data, "split": "train"})
        return [x for x, _ in data.subset(128).batches(32)], f"data: {data.name}"
    from picojoule.compilers.calibrate import noise_batch

    _say("picojoule: note: no --calib-data: activation ranges come from noise (latency is real, the "
         "artifact's accuracy is not)")
    return [noise_batch(example)], "synthetic noise (give --calib-data for a deployable model)"


def calibration_batches(example: Any, calib_data: str | None, config: dict[str, Any], source: Path
                        ) -> tuple[list[Any], str]:
    """--calib-data, else the search run's own calibration data, else noise (with a note)."""
    if not calib_data and config:
        found = _run_calibration(config, source)
        if found is not None:
            return found
    return noise_batches(example, calib_data)


def run_compile(args: argparse.Namespace) -> int:
    """``picojoule compile``: policy -> compressed model -> ONNX, TVM library and JSON report in --out."""
    import torch

    from picojoule.compilers.deploy import BACKENDS, deploy
    from picojoule.compilers.report import write_report
    from picojoule.graph import build_graph
    from picojoule.hwmodels.target import load_target
    from picojoule.models import load_state, load_torch_model
    from picojoule.spaces.apply import apply_policy
    from picojoule.spaces.formats import validate_policy
    from picojoule.spaces.quantize import calibrate_activations

    torch.set_num_threads(1)
    spec = load_target(args.target)
    source = Path(args.policy)
    policy, model_spec, weights, name, config = _resolve(source, args.model, args.weights)
    name = args.name or name
    if ((config or {}).get("evaluation") or {}).get("linear_quant"):
        raise PicojouleError(f"{source}: field 'evaluation.linear_quant': the search applied its bits to the linear "
                             "layers by the LLM recipe (GPTQ, per-token activations, rotation), which compile does not "
                             "build yet; it would build another model. Export it from Python "
                             "(picojoule.compilers.linear_onnx)")
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    _say(f"[1/3] applying {args.policy} to {model_spec}")
    model, example = load_torch_model(model_spec, weights)
    graph = build_graph(model, example, name=model_spec)
    validate_policy(policy, graph, args.policy)
    compressed, info = apply_policy(model, example, policy, graph)
    calibration = "not needed (float activations)"
    tuned = finetuned_weights(source) if source.is_dir() and not args.weights else None
    batches: list[Any] | None = None
    if tuned is not None:
        load_state(compressed, tuned, str(tuned))
        calibration = f"the search's final fine-tune ({tuned}: weights, BatchNorm statistics, activation ranges)"
        _say(f"picojoule: loaded the fine-tuned weights {tuned}")
    if info.needs_calibration or "onnxruntime" in backends:
        batches, where = calibration_batches(example, args.calib_data, config, source)
        if tuned is None and info.needs_calibration:
            calibrate_activations(compressed, batches)
            calibration = where
    label = spec.name
    _say(f"[2/3] exporting ONNX and building it for {' and '.join(backends)} for {label} (tens of seconds)"
         + ("; timing it if this CPU runs its code" if args.measure else ""))
    t0 = time.perf_counter()
    note = None
    try:
        report = deploy(compressed, example, args.target, args.out, name=name, graph=graph, policy=policy,
                        measure=args.measure, repeat=args.repeat, number=args.number, tune_trials=args.tune_trials,
                        backends=backends, calib_batches=batches, model_name=model_spec)
    except PicojouleError as exc:
        if spec.tvm is not None:
            raise
        note = str(exc)  # a target TVM cannot build for: the ONNX files and the report are its deliverables
        report = json.loads((Path(args.out) / f"{name}-{label}.json").read_text())
    report.update(source=str(args.policy), calibration=calibration, build_s=time.perf_counter() - t0)
    if args.measure and "tvm" in backends:
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
    ort = report.get("onnxruntime")
    if ort:
        print(f"onnx for ONNX Runtime: {ort['onnx']} ({ort['summary']})")
        if ort.get("latency_s") is not None:
            print(f"measured latency on this CPU (ONNX Runtime, 1 thread): {_ms(ort['latency_s'])}")
    if "tvm" in report.get("backends", ["tvm"]):
        print(f"library: {report.get('library') or '— (not built: ' + report.get('error', '?') + ')'}")
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
    _keeps(args.keeps)  # a bad --keeps fails before anything is built
    target = load_target(args.target)
    if target.kind != "cpu":
        raise PicojouleError(f"calibrate: target {target.name} is a {target.kind}: calibration times code on this "
                             "CPU, so only CPU targets (kind: cpu) can be calibrated")
    if args.runtime == "tvm":
        _, where = runnable_tvm_target(target)
    else:
        import onnxruntime

        from picojoule.compilers import tvm_build

        where = (f"this CPU ({tvm_build.host_cpu()}) in ONNX Runtime {onnxruntime.__version__}, 1 thread, "
                 "the integer ONNX compile writes")
    _say(f"picojoule: building and timing on {where}")
    model, example = load_torch_model(args.model, args.weights)
    graph = build_graph(model, example, name=args.model)
    policies = sample_policies(graph, target, args.policies, args.seed)
    if args.runtime == "onnxruntime":  # 9..16-bit widths run in float there
        from picojoule.compilers.calibrate import integer_or_float

        policies = [integer_or_float(p) for p in policies]
    kernels: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure_policies(args.model, args.weights, target, policies, args.workdir or tmp,
                                    rounds=args.rounds, runtime=args.runtime)
        ok = [m for m in measured if m.measured_s is not None]
        for m in measured:
            if m.error:
                _say(f"picojoule: policy {m.name} skipped: {m.error}")
        calibrated, stats = fit_efficiency(graph, target, [m.policy for m in ok], [m.measured_s for m in ok],
                                           holdout=args.holdout, seed=args.seed, names=[m.name for m in ok],
                                           measured_on=where)
        if args.runtime == "onnxruntime" and args.kernel_policies:
            calibrated, kernels = _kernel_table(args, graph, calibrated, example, ok, Path(args.workdir or tmp))
    out = Path(args.out or f"{target.name}-calibrated.yaml")
    write_target_yaml(calibrated, out, stats)
    fit_json = out.with_suffix(".fit.json")
    fit_json.write_text(json.dumps({"stats": stats.to_dict(), "kernels": kernels,
                                    "measurements": [m.to_dict() for m in measured]}, indent=2) + "\n")
    if args.json:
        print(json.dumps({**stats.to_dict(), "kernels": kernels}, indent=2))
    else:
        print(stats.summary())
        print("efficiency: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.efficiency.items())
              + f"; layer overhead {stats.layer_overhead_s * 1e6:.2f} us; channel exponent {stats.channel_exponent:.3f}"
              + "; mode rates "
              + ", ".join(f"{k} {v:.3g}" for k, v in stats.mode_rates.items()))
        if kernels:
            print(kernels["summary"])
        print(f"calibrated target: {out} (measurements: {fit_json})")
    return 0


def _kernel_table(args: argparse.Namespace, graph: Any, calibrated: Any, example: Any, sampled: list,
                  workdir: Path) -> tuple[Any, dict[str, Any]]:
    """The kernel table of ``calibrate --runtime onnxruntime``: design policies built and timed, their kernels
    profiled in context, the whole-model terms fitted; checked on the sampled policies too. Returns the target
    with its ``kernels`` section and the figures."""
    import numpy as np

    from picojoule.compilers.calibrate import measure_policies
    from picojoule.compilers.kernel_bench import design_policies, fit_kernel_table, measure_kernel_table
    from picojoule.hwmodels.costs import price
    from picojoule.compilers.calibrate import _spearman as spearman

    keeps = _keeps(args.keeps)
    design = design_policies(graph, calibrated, args.kernel_policies, keeps, seed=args.seed)
    _say(f"picojoule: kernel table: {len(design)} design policies (keeps {', '.join(f'{k:g}' for k in keeps)}; "
         "W8A8 or float per layer)")
    built = [m for m in measure_policies(args.model, args.weights, calibrated, design, workdir / "kernels",
                                         rounds=args.rounds, runtime="onnxruntime") if m.measured_s is not None]
    table, info = measure_kernel_table(graph, calibrated, [(m.policy, m.onnx) for m in built], example, keeps)
    fitted, fit = fit_kernel_table(graph, calibrated, table, [m.policy for m in built], [m.measured_s for m in built],
                                   seed=args.seed)
    with_table = calibrated.model_copy(update={"kernels": fitted})
    pred = price(graph, with_table, [m.policy for m in sampled]).total_latency_s
    meas = np.asarray([m.measured_s for m in sampled])
    on_sampled = {"n": len(meas), "mape": float(np.mean(np.abs(pred - meas) / meas)),
                  "spearman": spearman(pred, meas)}
    summary = (f"kernel table: {info['in_context']} kernel shapes timed in context ({info['policies_profiled']} "
               f"builds), {info['alone']} alone; out-of-fold on the {fit.n_policies} design policies: MAPE "
               f"{100 * fit.mape:.1f}%, Spearman {fit.spearman:.3f}; on the {len(meas)} sampled policies (low rank "
               f"and other keeps fall back to the model): MAPE {100 * on_sampled['mape']:.1f}%, Spearman "
               f"{on_sampled['spearman']:.3f}")
    return with_table, {**info, "fit": fit.to_dict(), "on_sampled": on_sampled, "summary": summary,
                        "design": {m.name: m.measured_s for m in built}}


def _keeps(text: str) -> tuple[float, ...]:
    try:
        keeps = tuple(sorted({float(v) for v in str(text).split(",") if v.strip()}, reverse=True))
    except ValueError:
        keeps = ()
    if not keeps or not all(0 < k <= 1 for k in keeps):
        raise PicojouleError(f"calibrate: --keeps: expected comma-separated fractions in (0, 1], got {text!r}")
    return keeps


def run_artifact(args: argparse.Namespace) -> int:
    """``picojoule run ARTIFACT --data D``: top-1 and batch-1 latency of a compiled artifact on this CPU (an .onnx
    file in ONNX Runtime, a TVM library .so in TVM)."""
    import os

    import numpy as np

    from picojoule.data import load_dataset

    path = Path(args.artifact)
    if not path.is_file():
        raise PicojouleError(f"{path}: no such artifact (expected an .onnx file or a TVM library .so)")
    if path.suffix not in (".onnx", ".so"):
        raise PicojouleError(f"{path}: unknown artifact kind '{path.suffix}' (expected .onnx for ONNX Runtime or .so "
                             "for TVM)")
    if args.threads < 1 or args.repeat < 1 or args.number < 1:
        raise PicojouleError("run: --threads, --repeat and --number must be >= 1")
    data = load_dataset(args.data)
    if args.images is not None:
        if args.images < 1:
            raise PicojouleError(f"run: --images must be >= 1, got {args.images}")
        data = data.subset(min(args.images, len(data)))
    example = next(iter(data.subset(1).batches(1)))[0]
    if path.suffix == ".onnx":
        from picojoule.compilers.export import measure_onnxruntime, onnxruntime_session

        session = onnxruntime_session(path, args.threads)
        feed_name = session.get_inputs()[0].name
        static = session.get_inputs()[0].shape[0]
        batch = 1 if isinstance(static, int) else 128

        def forward(x: Any) -> np.ndarray:
            return session.run(None, {feed_name: x.numpy()})[0]

        runtime = f"ONNX Runtime {__import__('onnxruntime').__version__}, {args.threads} thread(s)"
        timer = lambda: measure_onnxruntime(path, example, args.repeat, args.number, threads=args.threads)  # noqa: E731
    else:
        os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
        from picojoule.compilers import tvm_build

        executable = tvm_build.load_library(path)
        batch = 1

        def forward(x: Any) -> np.ndarray:
            return tvm_build.run(executable, x)

        runtime = f"TVM, TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}"
        timer = lambda: tvm_build.measure_latency(executable, example, args.repeat, args.number)  # noqa: E731
    correct = seen = 0
    _say(f"picojoule: running {path} on {len(data)} images of {data.name} ({runtime})")
    try:
        for x, y in data.batches(batch):
            out = forward(x)
            correct += int((out.reshape(len(x), -1).argmax(1) == y.numpy()).sum())
            seen += len(x)
    except PicojouleError:
        raise
    except Exception as exc:  # a runtime's own error on an input that does not fit the artifact
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise PicojouleError(f"{path}: cannot run on {args.data} (input {tuple(example.shape)}): {first}") from None
    latency = timer()
    result = {"artifact": str(path), "runtime": runtime, "data": data.name, "images": seen,
              "top1": correct / seen, "latency_s": latency, "repeat": args.repeat, "number": args.number,
              "load_avg": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"top-1 {100 * result['top1']:.2f}% on {seen} images of {data.name}")
        print(f"latency {_ms(latency)} at batch 1 ({runtime}; median of {args.repeat} x {args.number} calls; "
              f"load {result['load_avg']:.1f})")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``compile`` and ``calibrate`` to the CLI's subparsers."""
    p = sub.add_parser("compile", help="build a policy (or a search run's chosen policy) into ONNX for ONNX Runtime "
                       "and a TVM library")
    p.add_argument("policy", metavar="POLICY_OR_RUN_DIR",
                   help="policy YAML/JSON, or a search run directory (its first objective's winner)")
    p.add_argument("--target", required=True, help="target name or .yaml ('host': this CPU, detected)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", help="model (default: the policy's or the run's 'model')")
    p.add_argument("--weights", help="pretrained weights (default: the run's, and its chosen policy's fine-tuned "
                   "weights where the search fine-tuned it; none: seeded random weights)")
    p.add_argument("--backend", choices=["all", "tvm", "onnxruntime"], default="all",
                   help="what to build: a TVM library, the integer ONNX for ONNX Runtime, or both (default)")
    p.add_argument("--calib-data", help="dataset for activation ranges of quantized layers (.npz, folder, hook; "
                   "default: a search run's own calibration data, else noise)")
    p.add_argument("--name", help="artifact file name stem (default: the policy file's stem)")
    p.add_argument("--measure", action="store_true",
                   help="time the model on this CPU beside the host target's prediction")
    p.add_argument("--repeat", type=int, default=10, help="timed repeats (median) with --measure")
    p.add_argument("--number", type=int, default=3, help="calls per repeat with --measure")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="MetaSchedule tuning trials in all (0: untuned; llvm code this CPU runs; minutes per 64)")
    p.set_defaults(func=run_compile)
    p = sub.add_parser("run", help="top-1 and latency of a compiled artifact (.onnx in ONNX Runtime, .so in TVM) "
                       "on real data, on this CPU")
    p.add_argument("artifact", metavar="ARTIFACT", help="an .onnx file (e.g. compile's <name>.ort.onnx) or a TVM .so")
    p.add_argument("--data", required=True, help="labelled data set (.npz, ImageFolder folder, digits, hook)")
    p.add_argument("--images", type=int, help="use the first N images only")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    p.add_argument("--repeat", type=int, default=20, help="timed repeats (median)")
    p.add_argument("--number", type=int, default=5, help="calls per repeat")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_artifact)
    p = sub.add_parser("calibrate", help="fit a CPU target's efficiencies to TVM latencies measured on this CPU")
    p.add_argument("--target", required=True,
                   help="CPU target name or .yaml (host: this CPU, detected; cpu-avx512, host-znver3, ...)")
    p.add_argument("--model", required=True, help="zoo name, 'digits' or 'package.module:function'")
    p.add_argument("--weights", help="pretrained weights (latency does not depend on them)")
    p.add_argument("--policies", type=int, default=24, help="policies to sample, build and time")
    p.add_argument("--runtime", choices=["tvm", "onnxruntime"], default="tvm",
                   help="the runtime whose timings the target is fitted to (default tvm, untuned; onnxruntime: "
                   "the integer ONNX compile writes, 1 thread)")
    p.add_argument("--holdout", type=float, default=0.25, help="share held out for the statistics (0: leave-one-out)")
    p.add_argument("--rounds", type=int, default=3, help="timing passes over all policies (each keeps its fastest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="calibrated target YAML (default: <target>-calibrated.yaml)")
    p.add_argument("--workdir", help="keep the ONNX files here (default: a temporary directory)")
    p.add_argument("--kernel-policies", type=int, default=32,
                   help="with --runtime onnxruntime: design policies whose kernels ORT's profiler times in context "
                   "for the target's kernel table (0: no table)")
    p.add_argument("--keeps", default="1,0.75,0.5",
                   help="pruning keeps the kernel table covers (give a search space the same; default 1,0.75,0.5)")
    p.add_argument("--json", action="store_true", help="print the fit statistics as JSON")
    p.set_defaults(func=run_calibrate)
