"""Benchmark: compiled artifacts on this CPU, batch 1, one thread: latency and top-1 on real data.

For ResNet-20 and ResNet-56 (pretrained CIFAR-10 weights), each policy is applied, calibrated on 256 lossless
training images, and built as ``picojoule compile`` builds it:

* **ORT integer**: the ONNX that ``compile`` writes for ONNX Runtime (``<name>.ort.onnx``: BatchNorm folded into
  int8 weights, quantizers where ORT's fusions need them), run by ONNX Runtime's CPU provider;
* **ORT QDQ**: the plain QDQ export (the fake-quant graph exactly), run by ONNX Runtime: what picojoule shipped
  before the integer rewrite;
* **TVM untuned**: the TVM (Relax) build of the QDQ export for this CPU (``--tvm``; QDQ runs as float there);
* **ORT quantize_static** (reference): ONNX Runtime's own ``quantize_static`` of the FP32 export (QDQ, per-channel
  int8 weights, uint8 activations, MinMax on the same 256 images).

Policies: FP32, W8A8 and W4A8 (every layer; the first conv and the classifier included), W8A8 at keep 0.5 (the
pruned shortcuts' path), a hand-made latency reference (``policies_for``), and W4A4 for the
sub-8-bit path. Top-1 is measured on the 1017 lossless test images for the fake-quant torch model and for each
artifact (TVM on the first ``--tvm-images``). Latency: the median of ``--repeat`` runs of ``--number`` calls,
in ``--rounds`` interleaved passes over all artifacts of a model, each keeping its fastest pass (so a slow phase
of other work lands on no single artifact); ratios are within one run. The load average is recorded.

Latency models (``--latency-policies``, default 48): sampled ResNet-20 policies timed in ORT, and on held-out folds the
roofline as it is, the roofline calibrated on the training folds, and the learned predictor (gbr and gp).

Run from the repository root (about 6 minutes with --tvm; keep the machine quiet):
    python experiments/bench_deploy.py --tvm
Writes experiments/results/bench_deploy.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import picojoule as pj
from picojoule.compilers.export import export_onnx, measure_onnxruntime, onnxruntime_session
from picojoule.compilers.integer_onnx import INTEGER_KERNELS, integer_onnx, ort_kernel_counts
from picojoule.data import load_dataset
from picojoule.models import load_torch_model

RESULTS = Path(__file__).parent / "results"
DATA = Path("../shared/data")
MODELS = {"resnet20": DATA / "models" / "resnet20_cifar10.th", "resnet56": DATA / "models" / "resnet56_cifar10.th"}
POLICIES: dict[str, dict[str, Any] | None] = {
    "FP32": None,
    "W8A8": {"default": {"w_bits": 8, "a_bits": 8}},
    "W4A8": {"default": {"w_bits": 4, "a_bits": 8}},
    "W4A4": {"default": {"w_bits": 4, "a_bits": 4}},
    "W8A8 keep 0.5": {"default": {"w_bits": 8, "a_bits": 8, "keep": 0.5}},
}
HAND_MADE = "W8A8, stages 2-3 inner keep 0.5, conv1 float (hand-made)"


def policies_for(name: str) -> dict[str, dict[str, Any] | None]:
    """POLICIES, and a hand-made latency reference for ORT: int8 everywhere but the first conv (3 input channels:
    ORT's float kernel is faster there), and half the inner channels of the blocks of stages 2 and 3 (stage 1's
    16 channels pruned to 8 run no faster in ORT's int8 kernels)."""
    blocks = {"resnet20": 3, "resnet56": 9}[name]
    half = {"w_bits": 8, "a_bits": 8, "keep": 0.5}
    layers: dict[str, Any] = {"conv1": {"w_bits": 32, "a_bits": 32}}
    layers.update({f"layer{s}.{b}.conv1": half for s in (2, 3) for b in range(blocks)})
    return {**POLICIES, HAND_MADE: {"default": {"w_bits": 8, "a_bits": 8}, "layers": layers}}


def labels_torch(model: torch.nn.Module, data: Any) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(x).argmax(1).numpy() for x, _ in data.batches(256)])


def labels_ort(path: Path, data: Any) -> np.ndarray:
    session = onnxruntime_session(path, threads=1)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x.numpy()})[0].argmax(1) for x, _ in data.batches(128)])


def quantize_static_reference(fp32: Path, out: Path, calib: list[np.ndarray]) -> Path:
    """ONNX Runtime's own static int8 quantization of the FP32 export (its recommended pre-processing first)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": np.asarray(x, np.float32)} for x in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def integer_share(kernels: dict[str, int]) -> str:
    macs = {k: v for k, v in kernels.items() if k in ("QLinearConv", "QGemm", "Conv", "FusedConv", "Gemm",
                                                      "NchwcConv", "MatMul", "QLinearMatMul", "MatMulInteger")}
    ints = sum(v for k, v in macs.items() if k in INTEGER_KERNELS)
    return f"{ints}/{sum(macs.values())}"


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model, example = load_torch_model(name, MODELS[name])
    lossless = DATA / "cifar10" / "lossless_subset.npz"
    calib_set = load_dataset({"source": str(lossless), "split": "train"}).subset(256)
    test = load_dataset({"source": str(lossless), "split": "test"})
    calib = [x for x, _ in calib_set.batches(128)]
    rows: list[dict[str, Any]] = []
    artifacts: list[tuple[dict[str, Any], str, Any]] = []  # (row, backend, runnable)
    fp32_path = export_onnx(model, example, work / f"{name}-fp32.onnx")
    for label, policy in policies_for(name).items():
        print(f"[{name}] {label}: apply, calibrate, export", flush=True)
        if policy is None:
            compressed = model
        else:
            compressed = pj.compress(model, example, policy, calib_data=calib_set)
        fake = labels_torch(compressed, test)
        row: dict[str, Any] = {"model": name, "policy": label, "fake_quant_top1": float((fake == test.y).mean())}
        qdq = fp32_path if policy is None else export_onnx(compressed, example, work / f"{name}-{label}.onnx")
        t0 = time.perf_counter()
        integer, report = integer_onnx(onnx.load(str(qdq)), calib)
        row["rewrite_s"] = time.perf_counter() - t0
        ort_path = work / f"{name}-{label}.ort.onnx"
        onnx.save(integer, str(ort_path))
        row["ort_kernels"] = report.kernels
        row["ort_integer_macs"] = integer_share(report.kernels)
        got = labels_ort(ort_path, test)
        row["ort_top1"], row["ort_agreement"] = float((got == test.y).mean()), float((got == fake).mean())
        artifacts.append((row, "ort", ort_path))
        if policy is not None:
            row["ort_qdq_top1"] = float((labels_ort(qdq, test) == test.y).mean())
            artifacts.append((row, "ort_qdq", qdq))
        if args.tvm:
            from picojoule.compilers import tvm_build

            t0 = time.perf_counter()
            executable = tvm_build.compile_onnx(qdq, tvm_build.HOST, tuple(example.shape))
            row["tvm_build_s"] = time.perf_counter() - t0
            sub = test.subset(min(args.tvm_images, len(test)))
            correct = sum(int(tvm_build.run(executable, x).argmax(1)[0] == int(y[0])) for x, y in sub.batches(1))
            row["tvm_top1"], row["tvm_images"] = correct / len(sub), len(sub)
            artifacts.append((row, "tvm", executable))
        rows.append(row)
    if args.search_run and name == _run_model(args.search_run):
        rows.append(searched_row(name, args, work, test, artifacts))
    ref = {"model": name, "policy": "W8A8 (ORT quantize_static of the FP32 export)"}
    ref_path = quantize_static_reference(fp32_path, work / f"{name}-ort-static.onnx", [x.numpy() for x in calib])
    ref["ort_kernels"] = ort_kernel_counts(str(ref_path))
    ref["ort_integer_macs"] = integer_share(ref["ort_kernels"])
    ref["ort_top1"] = float((labels_ort(ref_path, test) == test.y).mean())
    artifacts.append((ref, "ort", ref_path))
    rows.append(ref)
    print(f"[{name}] timing {len(artifacts)} artifacts x {args.rounds} rounds", flush=True)
    best: dict[tuple[int, str], float] = {}
    loads = []
    for _ in range(args.rounds):
        for row, backend, runnable in artifacts:
            if backend == "tvm":
                from picojoule.compilers import tvm_build

                t = tvm_build.measure_latency(runnable, example, max(3, args.repeat // 4), max(1, args.number // 5))
            else:
                t = measure_onnxruntime(runnable, example, args.repeat, args.number, threads=1)
            key = (id(row), backend)
            best[key] = min(best.get(key, float("inf")), t)
            loads.append(os.getloadavg()[0])
    for row, backend, _ in artifacts:
        row[f"{backend}_latency_s"] = best[(id(row), backend)]
    return {"rows": rows, "load_avg": float(np.mean(loads)), "test_images": len(test)}


SEARCHED = "the searched latency winner"


def _run_model(run: Path) -> str:
    return json.loads((Path(run) / "result.json").read_text())["config"]["model"]


def searched_row(name: str, args: argparse.Namespace, work: Path, test: Any,
                 artifacts: list[tuple[dict[str, Any], str, Any]]) -> dict[str, Any]:
    """The chosen winner of a search run (its final fine-tune's weights), compiled for ORT as ``picojoule compile
    RUN_DIR --backend onnxruntime`` compiles it, timed with the other artifacts."""
    from picojoule.cli import main as cli

    out = work / "searched"
    fields = run_fields(args.search_run)
    assert cli(["compile", str(args.search_run), "--backend", "onnxruntime", "--target", fields["target"],
                "--out", str(out)]) == 0
    ort_path = next(out.glob("*.ort.onnx"))
    got = labels_ort(ort_path, test)
    row = {"model": name, **fields, "ort_top1": float((got == test.y).mean()), "ort_agreement": None,
           "ort_kernels": ort_kernel_counts(str(ort_path))}
    row["ort_integer_macs"] = integer_share(row["ort_kernels"])
    artifacts.append((row, "ort", ort_path))
    return row


def run_fields(run: Path) -> dict[str, Any]:
    """What a search run's result.json says of its chosen winner (not measured here): the policy label, its test
    top-1 after the final fine-tune (fake-quant), its predicted latency and the run's predicted FP32 latency."""
    result = json.loads((Path(run) / "result.json").read_text())
    winner = result["winners"][0]
    tuned = winner.get("finetuned") or {}
    return {"policy": f"{SEARCHED} ({run}, trial {winner['trial']})",
            "fake_quant_top1": (tuned.get("test") or {}).get("after", winner["metrics"].get("test_accuracy")),
            "validation_accuracy": (tuned.get("validation") or {}).get("after", winner["metrics"].get("accuracy")),
            "predicted_latency_s": winner["metrics"]["latency"],
            "predicted_fp32_latency_s": result["baselines"]["fp32"]["latency"],
            "target": str(result["config"]["target"]), "constraints": result["config"].get("constraints")}


def kernel_table_figures(run: Path) -> dict[str, Any] | None:
    """The kernel table's held-out figures from the search target's calibrate record (``<target>.fit.json``)."""
    target = Path(run_fields(run)["target"])
    fit = target.with_suffix(".fit.json")
    if not fit.is_file():
        return None
    kernels = json.loads(fit.read_text()).get("kernels")
    return None if not kernels else {"target": str(target), "fit": kernels["fit"], "on_sampled": kernels["on_sampled"],
                                     "in_context": kernels["in_context"], "alone": kernels["alone"]}


def test_y(part: dict[str, Any]) -> range:
    return range(part["test_images"])


def latency_models(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``--latency-policies`` sampled ResNet-20 policies (9..16-bit widths made float) timed in ORT on the integer
    ONNX, then the roofline (raw and calibrated on the training folds) and the learned predictors on held-out
    folds."""
    from picojoule.compilers.calibrate import integer_or_float, measure_policies, sample_policies
    from picojoule.compilers.latency_predictor import compare_on_holdout
    from picojoule.graph import build_graph
    from picojoule.hwmodels.target import load_target

    model, example = load_torch_model("resnet20", MODELS["resnet20"])
    graph = build_graph(model, example, name="resnet20")
    target = load_target("host")
    policies = [integer_or_float(p) for p in sample_policies(graph, target, args.latency_policies, seed=1)]
    print(f"[latency] building and timing {len(policies)} ResNet-20 policies in ORT", flush=True)
    measured = measure_policies("resnet20", str(MODELS["resnet20"]), target, policies, work / "latency",
                                repeat=10, number=5, rounds=3, progress=False, runtime="onnxruntime")
    ok = [m for m in measured if m.measured_s is not None]
    result = compare_on_holdout(graph, target, [m.policy for m in ok], [m.measured_s for m in ok],
                                folds=args.latency_folds, seed=0)
    result["load_avg"] = os.getloadavg()[0]
    result["measured_ms"] = {m.name: m.measured_s * 1e3 for m in ok}
    return result


def fmt_ms(s: float | None) -> str:
    return "—" if s is None else f"{s * 1e3:.3f}"


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def report(result: dict[str, Any]) -> str:
    lines = ["# Compiled artifacts on this CPU: latency and top-1", "",
             f"CPU: {result['cpu']}; 1 thread, batch 1; ONNX Runtime {result['ort']}; TVM {result['tvm'] or 'not run'}. "
             "Latency: median of repeated calls, fastest of interleaved rounds; top-1 on the 1017 lossless CIFAR-10 "
             "test images (TVM on the first " f"{result['args']['tvm_images']}). Calibration: 256 lossless training "
             "images. Generated by `experiments/bench_deploy.py`.", ""]
    for model, part in result["models"].items():
        rows = part["rows"]
        fp32 = next(r for r in rows if r["policy"] == "FP32")["ort_latency_s"]
        lines += [f"## {model} (load average {part['load_avg']:.1f} during timing)", "",
                  "| policy | fake-quant top-1 | ORT integer: ms | x vs ORT FP32 | top-1 | labels as fake-quant | "
                  "int MAC kernels | ORT QDQ export: ms | top-1 | TVM untuned: ms | top-1 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            speed = fp32 / r["ort_latency_s"]
            lines.append(
                f"| {r['policy']} | {fmt_pct(r.get('fake_quant_top1'))} | {fmt_ms(r['ort_latency_s'])} | "
                f"{speed:.2f}x | {fmt_pct(r['ort_top1'])} | {fmt_pct(r.get('ort_agreement'))} | {r['ort_integer_macs']} | "
                f"{fmt_ms(r.get('ort_qdq_latency_s'))} | {fmt_pct(r.get('ort_qdq_top1'))} | "
                f"{fmt_ms(r.get('tvm_latency_s'))} | {fmt_pct(r.get('tvm_top1'))} |")
        lines.append("")
    lines += ["## Targets (issue 11)", ""]
    for model, part in result["models"].items():
        rows = {r["policy"]: r for r in part["rows"]}
        fp32 = rows["FP32"]["ort_latency_s"]
        w8 = rows["W8A8"]
        speed = fp32 / min(w8["ort_latency_s"], w8.get("tvm_latency_s") or float("inf"))
        lines.append(f"- {model}: W8A8 on the better backend against ORT FP32 >= 1.8x faster: {speed:.2f}x, "
                     + ("met" if speed >= 1.8 else "**missed**"))
        for label in ("W8A8", "W4A8", "W4A4"):
            r = rows[label]
            gap = abs(r["ort_top1"] - r["fake_quant_top1"]) * 100
            lines.append(f"- {model} {label}: compiled (ORT integer) top-1 within 0.3 pt of fake-quant: "
                         f"{fmt_pct(r['ort_top1'])} vs {fmt_pct(r['fake_quant_top1'])} ({gap:.2f} pt; "
                         f"{100 * (1 - r['ort_agreement']):.1f}% of the {len(test_y(part))} labels differ), "
                         + ("met" if gap <= 0.3 + 1e-9 else "**missed**"))
        ref = rows["W8A8 (ORT quantize_static of the FP32 export)"]
        lines.append(f"- {model}: picojoule's W8A8 against ORT's own quantize_static: "
                     f"{ref['ort_latency_s'] / w8['ort_latency_s']:.2f}x its speed, top-1 {fmt_pct(w8['ort_top1'])} "
                     f"vs {fmt_pct(ref['ort_top1'])}")
    lines += ["- tuned TVM within 1.3x of ORT, same policy: not run (TVM's QDQ still lowers to float; no int8 "
              "schedules yet)"
              ]
    found = False
    for model, part in result["models"].items():
        rows = {r["policy"]: r for r in part["rows"]}
        fp32 = rows["FP32"]
        for r in part["rows"]:
            if not r["policy"].startswith(SEARCHED):
                continue
            found = True
            speed = fp32["ort_latency_s"] / r["ort_latency_s"]
            drop = 100 * (fp32["ort_top1"] - r["ort_top1"])
            lines.append(f"- {model}: the searched latency winner >= 2.5x faster than ORT FP32 within 1 pt: "
                         f"{speed:.2f}x (predicted {r['predicted_fp32_latency_s'] / r['predicted_latency_s']:.2f}x "
                         f"by `{r['target']}`; {1e6 * r['predicted_latency_s']:.0f} us predicted, "
                         f"{1e6 * r['ort_latency_s']:.0f} us measured), top-1 {fmt_pct(r['ort_top1'])} compiled "
                         f"({fmt_pct(r['fake_quant_top1'])} fake-quant after the run's final fine-tune) vs FP32 "
                         f"{fmt_pct(fp32['ort_top1'])}: {drop:.2f} pt below, "
                         + ("met" if speed >= 2.5 and drop <= 1.0 else "**missed**"))
    if not found:
        lines.append("- the searched latency winner >= 2.5x faster than ORT FP32 within 1 pt: not run (--search-run)")
    lat = result.get("latency")
    if lat:
        best = min(lat["methods"].items(), key=lambda kv: kv[1]["mape"])
        lines.append(f"- predicted vs measured latency MAPE <= 10% on held-out policies, ORT, sampled policies "
                     f"(below): best {best[0]} {100 * best[1]['mape']:.1f}%, "
                     + ("met" if best[1]["mape"] <= 0.10 else "**missed**")
                     + "; TVM: not run here (bench_calibration.py fits untuned TVM)")
        kt = result.get("kernel_table")
        if kt:
            f, o = kt["fit"], kt["on_sampled"]
            lines.append(f"- the same, ORT, the kernel table of `{kt['target']}` (the search's target) on the policies "
                         f"it covers (W8A8 or float per layer, its keeps): {100 * f['mape']:.1f}% out-of-fold, "
                         f"Spearman {f['spearman']:.3f}, n = {f['n_policies']} design policies, "
                         + ("met" if f["mape"] <= 0.10 else "**missed**")
                         + f"; on {o['n']} sampled policies with low rank and 9..16-bit widths, which fall back to "
                         f"the roofline: {100 * o['mape']:.1f}%, Spearman {o['spearman']:.3f}")
        lines += ["", f"## Latency models on held-out policies (ORT, ResNet-20, n = {lat['n']}, {lat['folds']} folds of "
                  f"{min(lat['held_out_per_fold'])}-{max(lat['held_out_per_fold'])} held out; load "
                  f"{lat['load_avg']:.1f})", "",
                  "Each policy predicted by a model fitted without its fold. Roofline: the `host` target as it is; "
                  "calibrated: `fit_efficiency` on the training folds; gbr/gp: `LatencyPredictor` "
                  "(picojoule/compilers/latency_predictor.py).", "",
                  "| method | MAPE | Spearman (all out-of-fold) | mean Spearman per fold | measured within 2 std |",
                  "|---|---|---|---|---|"]
        for k, v in lat["methods"].items():
            within = f"{100 * v['within_2std']:.0f}%" if "within_2std" in v else "—"
            lines.append(f"| {k} | {100 * v['mape']:.1f}% | {v['spearman']:.3f} | {v['mean_fold_spearman']:.3f} | "
                         f"{within} |")
    else:
        lines.append("- predicted vs measured latency MAPE <= 10% per backend: not run (--latency-policies 0)")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--tvm", action="store_true", help="also build and time untuned TVM (QDQ as float)")
    ap.add_argument("--tvm-images", type=int, default=200, help="test images TVM's top-1 is measured on")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--number", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-policies", type=int, default=48, help="sampled policies timed for the latency "
                    "models (0: skip)")
    ap.add_argument("--latency-folds", type=int, default=4)
    ap.add_argument("--search-run", type=Path, help="a finished search run (e.g. runs/resnet20_host_ort from "
                    "experiments/configs/resnet20_host_ort.yaml) whose winner is compiled and timed with the rest")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_deploy")
    ap.add_argument("--render", type=Path, help="only write the report of this results JSON again (the fields a "
                    "--search-run row reads from its run refreshed)")
    args = ap.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        for part in result["models"].values():
            for row in part["rows"]:
                if row["policy"].startswith(SEARCHED):
                    row.update(run_fields(Path(row["policy"].split("(", 1)[1].split(",")[0])))
                    result["kernel_table"] = kernel_table_figures(Path(row["policy"].split("(", 1)[1].split(",")[0]))
        args.render.write_text(json.dumps(result, indent=2, default=str) + "\n")
        text = report(result)
        args.render.with_suffix(".md").write_text(text)
        print(text)
        return 0
    torch.set_num_threads(1)
    import onnxruntime

    tvm_version = None
    if args.tvm:
        import tvm

        tvm_version = tvm.__version__
    from picojoule.compilers.tvm_build import host_cpu

    result: dict[str, Any] = {"cpu": f"{host_cpu()} ({platform.processor() or platform.machine()})",
                              "ort": onnxruntime.__version__, "tvm": tvm_version, "args": vars(args) | {"out": str(args.out)},
                              "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            result["models"][name] = bench_model(name, args, Path(tmp))
        if args.latency_policies:
            result["latency"] = latency_models(args, Path(tmp))
    if args.search_run:
        result["kernel_table"] = kernel_table_figures(args.search_run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = report(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
