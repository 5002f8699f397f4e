"""The ``picojoule`` command line. A user's mistake prints one line and exits with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from picojoule.errors import PicojouleError


def _targets(args: argparse.Namespace) -> int:
    from picojoule.hwmodels.common import target_area
    from picojoule.hwmodels.target import load_target, target_names

    rows = []
    for name in [*target_names(), "host"]:  # host: this machine's CPU, detected
        t = load_target(name)
        area = target_area(t)
        rows.append({
            "name": t.name, "kind": t.kind, "clock_ghz": t.clock_hz / 1e9, "technology_nm": t.technology_nm,
            "peak_tops": {m.name: 2 * m.peak_macs_per_s / 1e12 for m in t.compute.modes},
            "dram_gb_s": t.dram.bandwidth_bytes_per_s / 1e9, "static_w": t.power.static_w,
            "area_mm2": area if area == area else None, "dataflow": t.dataflow.kind if t.dataflow else None,
            "parameters": list(t.parameters or {}),
            "tvm": t.tvm.kind if t.tvm else None, "description": t.description,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'target':16s} {'kind':11s} {'GHz':>5s} {'nm':>4s} {'DRAM GB/s':>9s} {'mm2':>6s}  peak TOPS by mode")
    for r in rows:
        peaks = ", ".join(f"{k} {v:.3g}" for k, v in r["peak_tops"].items())
        area = f"{r['area_mm2']:6.1f}" if r["area_mm2"] is not None else f"{'—':>6s}"
        extra = f"  [parameters: {', '.join(r['parameters'])}]" if r["parameters"] else ""
        print(f"{r['name']:16s} {r['kind']:11s} {r['clock_ghz']:5.2f} {r['technology_nm']:4d} {r['dram_gb_s']:9.1f} "
              f"{area}  {peaks}{extra}")
    print("mm2: the silicon estimate of picojoule/hwmodels/area.py (memories and MACs; wires and control not counted)")
    return 0


def _print_cost(rep: dict[str, Any]) -> None:
    comps = list(rep["total"]["energy_breakdown_j"])
    print(f"{rep['model']} on {rep['target']} ({rep['cost_model']} model)")
    head = f"{'layer':34s} {'op':7s} {'MMACs':>9s} {'lat µs':>9s} {'energy µJ':>10s} {'bound':>8s}  " + " ".join(
        f"{c[:8]:>8s}" for c in comps)
    print(head)
    for r in rep["layers"]:
        parts = " ".join(f"{r['energy_breakdown_j'][c] * 1e6:8.3f}" for c in comps)
        print(f"{r['name'][:34]:34s} {r['op']:7s} {r['macs'] / 1e6:9.3f} {r['latency_s'] * 1e6:9.2f} "
              f"{r['energy_j'] * 1e6:10.3f} {r['bound']:>8s}  {parts}")
    t = rep["total"]
    print(f"total: {t['macs'] / 1e6:.2f} M MACs, {t['params']:,} params, {t['size_bytes'] / 1024:.1f} KiB weights, "
          f"{t['latency_s'] * 1e3:.4f} ms, {t['energy_j'] * 1e6:.2f} µJ, {t['co2e_g']:.3e} g CO2e per inference")


def _cost(args: argparse.Namespace) -> int:
    from picojoule.graph import build_graph
    from picojoule.hwmodels.costs import price, report
    from picojoule.hwmodels.target import load_target
    from picojoule.policy import Policy

    target = load_target(args.target)
    graph = build_graph(args.model)
    policy = Policy.load(args.policy) if args.policy else Policy()
    result = price(graph, target, policy, model=args.cost_model, batch=args.batch)
    rep = report(graph, result, pue=args.pue, grid_g_per_kwh=args.grid)
    if args.plot:
        from picojoule.plots import plot_cost

        print(f"plot written to {plot_cost(rep, target, args.plot)}", file=sys.stderr)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        _print_cost(rep)
    return 0


def _datasets(args: argparse.Namespace):
    """(test, calibration/fine-tune) datasets: --data's test split and --calib-data (default: its train split)."""
    from picojoule.data import load_dataset

    source = args.data or ("digits" if args.model == "digits" else None)
    if source is None:
        raise PicojouleError("apply: --data is required (a .npz file, an ImageFolder directory or a dataset hook)")
    test = load_dataset({"source": source, "split": "test"})
    try:
        calib = load_dataset(args.calib_data or {"source": source, "split": "train"})
    except PicojouleError as e:
        raise PicojouleError(f"{e} (calibration needs training data: give --calib-data)") from None
    return test, calib


def _apply(args: argparse.Namespace) -> int:
    import math

    from picojoule.graph import build_graph
    from picojoule.hwmodels.costs import price
    from picojoule.models import load_torch_model, save_compressed
    from picojoule.search.evaluate import accuracy, check_data, evaluate_policy
    from picojoule.spaces.formats import validate_policy
    from picojoule.policy import Policy

    model, example = load_torch_model(args.model, args.weights)
    graph = build_graph(model, example, name=args.model)
    policy = Policy.load(args.policy)
    validate_policy(policy, graph, args.policy)
    test, calib = _datasets(args)
    check_data(model, example, test, calib)
    baseline = accuracy(model, test)
    compressed, res = evaluate_policy(
        model, example, policy, test, graph=graph, calib_data=calib, train_data=calib,
        calib_batches=max(1, math.ceil(args.calib_images / 128)), finetune_steps=args.finetune_steps,
        finetune_seconds=args.finetune_seconds, seed=args.seed, progress=not args.json,
    )
    cost = price(graph, args.target, policy, model=args.cost_model)
    out = {
        "model": args.model, "policy": str(args.policy), "data": test.name, "n_test": len(test),
        "accuracy": res["accuracy"], "baseline_accuracy": baseline, "accuracy_drop_pt": 100 * (baseline - res["accuracy"]),
        "macs": res["macs"], "params": res["params"], "size_bytes": float(cost.size_bytes[0]),
        "target": cost.target, "cost_model": cost.model, "latency_s": float(cost.total_latency_s[0]),
        "energy_j": float(cost.total_energy_j[0]), "seconds": res["seconds"], "finetune": res["finetune"],
    }
    if args.out:
        out["out"] = str(save_compressed(args.out, args.model, policy, compressed))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.model} with {args.policy} on {out['data']} ({out['n_test']} images)\n"
              f"  top-1 {100 * out['accuracy']:.2f}% (uncompressed {100 * baseline:.2f}%, drop {out['accuracy_drop_pt']:+.2f} pt)\n"
              f"  {out['macs'] / 1e6:.2f} M MACs, {out['params']:,} params, {out['size_bytes'] / 1024:.1f} KiB of weights\n"
              f"  on {out['target']} ({out['cost_model']}): {out['latency_s'] * 1e3:.4f} ms, {out['energy_j'] * 1e6:.2f} µJ"
              + (f"\n  saved to {out['out']}" if args.out else ""))
    return 0


def _space(args: argparse.Namespace) -> int:
    from picojoule.graph import build_graph
    from picojoule.hwmodels.target import load_target
    from picojoule.spaces.space import Space

    graph, target = build_graph(args.model), load_target(args.target)
    space = Space.load(graph, target, args.overrides) if args.overrides else Space.build(graph, target)
    if args.json:
        print(json.dumps({"model": graph.name, "target": target.name, "size": str(space.size),
                          "log10_size": space.log10_size,
                          "knobs": [{"name": k.name, "kind": k.kind, "choices": list(k.choices)} for k in space.knobs]},
                         indent=2))
    else:
        print(space.describe())
        for k in space.knobs:
            print(f"  {k.name:40s} {k.kind:7s} {list(k.choices)}")
    return 0


_FORMATS = ("haq", "amc", "torch-pruning")


def _policy(args: argparse.Namespace) -> int:
    from picojoule.graph import build_graph
    from picojoule.spaces import formats
    from picojoule.policy import Policy

    graph = build_graph(args.model)
    if args.from_format:
        from picojoule.yamlfile import read_text

        path = Path(args.file)
        try:
            data = json.loads(read_text(path, f"JSON {args.from_format} export"))
        except json.JSONDecodeError as e:
            raise PicojouleError(f"{path}: expected a JSON {args.from_format} export ({e})") from None
        read = {"haq": formats.from_haq, "amc": formats.from_amc, "torch-pruning": formats.from_torch_pruning}
        policy = read[args.from_format](data, graph, str(path))
        print(yaml_dump(policy.to_dict()))
        return 0
    policy = Policy.load(args.file)
    formats.validate_policy(policy, graph, args.file)
    write = {"haq": formats.to_haq, "amc": formats.to_amc, "torch-pruning": formats.to_torch_pruning}
    print(json.dumps(write[args.to](policy, graph)) if args.to else yaml_dump(policy.to_dict()))
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from picojoule.data import load_dataset
    from picojoule.graph import build_graph
    from picojoule.models import load_torch_model
    from picojoule.sensitivity import sensitivity
    from picojoule.spaces.space import Space
    from picojoule.yamlfile import read_yaml

    model, example = load_torch_model(args.model, args.weights)
    overrides = read_yaml(args.overrides, "space overrides") if args.overrides else None
    space = Space(build_graph(model, example, name=Path(args.model).stem), args.target, overrides,
                  args.overrides or "space")
    source = args.data or ("digits" if args.model == "digits" else None)
    if source is None:
        raise PicojouleError("sensitivity: --data is required (its train split is sampled; a .npz, an ImageFolder "
                             "directory or a dataset hook)")
    data = load_dataset({"source": source, "split": "train"})
    out = Path(args.out) if args.out else Path("runs") / f"sensitivity-{space.graph.name}-{space.target.name}"
    if out.exists() and not out.is_dir():
        raise PicojouleError(f"{out}: --out: expected a directory, got a file")
    sens = sensitivity(model, example, space, data, images=args.images, calib_images=args.calib_images,
                       hessian_iters=args.hessian_iters, hessian_tol=args.hessian_tol, seed=args.seed,
                       cache_dir=out, progress=not (args.json or args.quiet))
    png = sens.plot(out / "sensitivity.png")
    if args.json:
        print(json.dumps({**sens.to_dict(), "json": str(out / "sensitivity.json"), "png": str(png)}, indent=1))
        return 0
    print(f"{sens.model} on {sens.target}: float loss {sens.info['float_loss']:.4f} on "
          f"{sens.info['key']['settings']['images']} training images"
          + (" (cached)" if sens.cached else ""))
    print(f"{'layer':24s} {'knob':8s} {'choice':>7s} {'loss incr.':>11s} {'KL':>10s} {'Hessian tr':>11s}")
    for r in sens.table:
        trace = f"{r['trace']:11.4g}" if r.get("trace") is not None else f"{'-':>11s}"
        print(f"{r['layer'][:24]:24s} {r['kind']:8s} {r['choice']:>7g} {r['loss_increase']:11.4g} "
              f"{r['kl']:10.4g} {trace}")
    print(f"wrote {out / 'sensitivity.json'} and {png}")
    return 0


def yaml_dump(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip()


#: `picojoule search` with no config: the digits CNN on Eyeriss, offline, in about 20 seconds. Every knob kind
#: (bits, keep, rank, sparsity); half uniform INT8's energy within 2 points of fp32's validation accuracy. Three
#: warm starts lowered onto the energy bound and multivariate TPE. The CNN is trained here, and its weights differ
#: between CPUs, so the front does too: 120 trials gave 6-8 policies on an AMD EPYC (seeds 0-4) but 4-8 on an
#: Intel Xeon (seeds 0-3; 4 at seed 0); 200 trials give 6-8 on the Xeon in 21 s (NSGA-II found 2-5 on this space)
DEFAULT_SEARCH = {
    "model": "digits", "target": "eyeriss", "cost_model": "eyeriss",
    "objectives": ["maximise accuracy", "minimise energy"],
    "constraints": ["energy <= 0.5 * uniform_int8", "accuracy_drop <= 2"],
    "space": {"defaults": {"w_bits": [2, 3, 4, 5, 6, 8], "a_bits": [3, 4, 5, 6, 8], "keep": [0.5, 0.75, 1.0],
                           "sparsity": [0.0, 0.25, 0.5, 0.75]}},
    "strategy": "tpe", "strategy_options": {"n_startup_trials": 20}, "trials": 200,
    "warm_start": ["uniform_int8", "uniform_w4a8", "uniform_w4a4"], "seed": 0,
}


def _search(args: argparse.Namespace) -> int:
    from datetime import datetime

    import torch

    from picojoule.search import run_search

    # one torch thread, as the Ray workers, compile and calibrate use: the digits default took 7 s for 40 trials on
    # one thread and 73-119 s on two on this 2-core machine while other jobs ran (the threads wait on each other)
    torch.set_num_threads(1)
    if args.resume:
        config, out, resume = None, Path(args.resume), True
    else:
        config = args.config or DEFAULT_SEARCH
        out = Path(args.out) if args.out else Path("runs") / datetime.now().strftime("search-%Y%m%d-%H%M%S")
        resume = False
    overrides = {k: v for k, v in {"trials": args.trials, "seed": args.seed, "strategy": args.strategy,
                                   "workers": args.workers, "ray_address": args.ray_address,
                                   "backend": args.backend}.items() if v is not None}
    try:
        result = run_search(config, out, resume=resume, progress=not args.quiet, **overrides)
    except KeyboardInterrupt:
        print(f"picojoule: interrupted; finished trials are in {out}/journal.log: "
              f"continue with 'picojoule search --resume {out}'", file=sys.stderr)
        return 130
    print(result.summary())
    print(f"{sum(r.counted for r in result.records)} trials, {len(result.front)} on the feasible Pareto front; "
          f"report: {result.outputs.get('report', out / 'report.md')}")
    return 0


def _codesign(args: argparse.Namespace) -> int:
    from datetime import datetime

    import torch

    from picojoule.search.codesign import run_codesign

    torch.set_num_threads(1)
    if args.resume:
        out = Path(args.resume)
        config = out / "config.yaml"
        if not config.is_file():
            raise PicojouleError(f"{out}: nothing to resume (no config.yaml of a co-design run)")
    else:
        if not args.config:
            raise PicojouleError("codesign: give a co-design config (a search config whose target has 'parameters', "
                                 "plus a 'codesign' section; see examples/codesign-digits.yaml)")
        config = args.config
        out = Path(args.out) if args.out else Path("runs") / datetime.now().strftime("codesign-%Y%m%d-%H%M%S")
    overrides = {k: v for k, v in {"seed": args.seed}.items() if v is not None}
    try:
        result = run_codesign(config, out, resume=bool(args.resume), progress=not args.quiet, **overrides)
    except KeyboardInterrupt:
        print(f"picojoule: interrupted; finished hardware points and trials are in {out}: "
              f"continue with 'picojoule codesign --resume {out}'", file=sys.stderr)
        return 130
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from picojoule.hwmodels.carbon import DEFAULT_GRID_G_PER_KWH, DEFAULT_PUE
    from picojoule.search.config import COST_MODEL_NAMES, STRATEGIES

    parser = argparse.ArgumentParser(prog="picojoule", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("targets", help="list the hardware targets with their key figures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_targets)
    p = sub.add_parser("cost", help="price a model (and a policy) on a target, layer by layer")
    p.add_argument("model", help="zoo name (resnet20, resnet50, mobilenet_v2, bert_base, ...) or an .onnx path")
    p.add_argument("--target", required=True, help="target name (see 'picojoule targets') or a target .yaml")
    p.add_argument("--policy", help="policy YAML/JSON (default: float32, unpruned)")
    p.add_argument("--cost-model", choices=COST_MODEL_NAMES, default="roofline")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--pue", type=float, default=DEFAULT_PUE)
    p.add_argument("--grid", type=float, default=DEFAULT_GRID_G_PER_KWH, help="grid carbon intensity, g CO2e/kWh")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="draw the roofline and the per-layer energy breakdown")
    p.set_defaults(func=_cost)
    p = sub.add_parser("apply", help="compress a model with a policy and measure its accuracy on real data")
    p.add_argument("model", help="zoo name, 'digits' (offline default) or 'package.module:function'")
    p.add_argument("--weights", help="pretrained weights (state_dict file) for the model")
    p.add_argument("--policy", required=True, help="policy YAML/JSON")
    p.add_argument("--data", help="test data: .npz (x_test/y_test), ImageFolder dir with test/, or a hook")
    p.add_argument("--calib-data", help="calibration/fine-tune data (default: the train split of --data)")
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--finetune-steps", type=int, default=0, help="KD fine-tune steps (0: post-training only)")
    p.add_argument("--finetune-seconds", type=float, default=None, help="KD fine-tune time budget")
    p.add_argument("--target", default="eyeriss", help="target to cost the compressed model on")
    p.add_argument("--cost-model", choices=COST_MODEL_NAMES, default="eyeriss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="save the compressed model (policy + weights) to this .pt file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_apply)
    p = sub.add_parser("space", help="the search space of a model on a target: knobs, choices and size")
    p.add_argument("model")
    p.add_argument("--target", required=True)
    p.add_argument("--overrides", help="YAML that narrows or widens the space (see picojoule/spaces/space.py)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_space)
    p = sub.add_parser("policy", help="validate a policy, or convert it to/from HAQ, AMC or Torch-Pruning form")
    p.add_argument("file", help="policy YAML/JSON (or, with --from, a JSON export)")
    p.add_argument("--model", required=True, help="the model the policy is for (layer order and groups)")
    way = p.add_mutually_exclusive_group()
    way.add_argument("--to", choices=_FORMATS, help="print the policy in this format (JSON)")
    way.add_argument("--from", dest="from_format", choices=_FORMATS, help="read FILE in this format; print YAML")
    p.set_defaults(func=_policy)
    p = sub.add_parser("search", help="search per-layer bits/pruning/rank for the feasible Pareto front")
    p.add_argument("config", nargs="?", help="search config YAML (default: the offline digits example)")
    p.add_argument("--out", help="run directory (default: runs/search-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--trials", type=int)
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="Ray actors evaluating accuracy (0: in this process)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--backend", choices=["picojoule", "ray-tune"],
                   help="picojoule: this engine (default); ray-tune: ray.tune.Tuner with OptunaSearch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_search)
    p = sub.add_parser("codesign", help="search hardware parameters and per-layer policies together")
    p.add_argument("config", nargs="?", help="co-design config YAML: a search config whose target has 'parameters', "
                   "plus a 'codesign' section")
    p.add_argument("--out", help="run directory (default: runs/codesign-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted co-design")
    p.add_argument("--seed", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_codesign)
    p = sub.add_parser("sensitivity", help="loss increase, KL and Hessian trace of each knob choice, one layer at a time")
    p.add_argument("model", help="zoo name, 'digits' or 'package.module:function'")
    p.add_argument("--weights", help="pretrained weights (state_dict file) for the model")
    p.add_argument("--data", help="labelled data whose train split is sampled: .npz, ImageFolder dir or a hook")
    p.add_argument("--target", required=True, help="target name or a target .yaml (its search space)")
    p.add_argument("--overrides", help="YAML that narrows or widens the space")
    p.add_argument("--images", type=int, default=256, help="validation images drawn from the train split")
    p.add_argument("--calib-images", type=int, default=256, help="calibration / BN images (other train images)")
    p.add_argument("--hessian-iters", type=int, default=50, help="Hutchinson iterations at most (0: no trace)")
    p.add_argument("--hessian-tol", type=float, default=1e-2, help="stop when every trace moves less than this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for sensitivity.json (the cache) and sensitivity.png")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_sensitivity)
    from picojoule.compilers.commands import add_parsers

    add_parsers(sub)  # compile, run, calibrate
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PicojouleError as e:
        print(f"picojoule: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("picojoule: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
