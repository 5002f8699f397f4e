"""Study: a mixed per-layer policy for a real transformer (all-MiniLM-L6-v2), searched under a hardware bound.

The same search as for a CNN (``pj.search``: objectives, constraints, warm starts lowered onto the bound, the
Pareto front, the report and plots in a run directory), on the sentence model that the ``hf`` extra installs,
at sequence length 128. There are no labels: a policy's "accuracy" is its embedding fidelity to the uncompressed
model, the mean cosine similarity of the sentence embeddings of CPython's ``pydoc_data.topics`` passages.
Selection is on validation passages; the front is reported on other, held-out test passages (the 256 that
``bench_transformer.py`` scores its fixed variants on), with the top-10 retrieval overlap of the winner beside.

Cases (the bounds the issue names):

* ``a100``: ``latency <= 0.5 * fp16`` at batch 128 sequences, the layers no knob covers (attention matmuls,
  softmax, norms) at 16 bits as a GPU runs them (``rest_bits: 16``), 2:4 sparsity the target's own. At batch 1
  the model is launch-bound on an A100: even W4A4 everywhere is 0.92x fp16 there (the table prints the floor);
* ``eyeriss``: ``energy <= 0.5 * uniform_int8`` at batch 1 on the Eyeriss-style model, unstructured sparsity
  gated.

Space: per linear layer weights and activations at 4, 8 or 16 bits, channel keeps of the MLP hidden groups and
the attention heads 0.5/0.75/1, low rank at 1/4 and 1/2, sparsity; no layer pinned (``pin_first_last: false``:
a transformer has no stem or classifier to protect). ``--recipe`` says how a policy's bits are applied to the
linear layers: ``llm`` (``evaluation.linear_quant``: GPTQ weights in groups of 128, per-token activations, a
block Hadamard rotation of each linear's inputs), ``atom`` (``llm`` with one activation range per 128 inputs of
a token, ``act_group: 128``, as Atom's W4A4 kernels; these scales are not priced) or ``generic`` (per-channel round-to-nearest weights, calibrated
per-tensor activations). ``--strategy ilp`` first measures a label-free sensitivity
(``picojoule.sensitivity.metric_sensitivity``: the cosine drop per knob on passages of its own, 312 knob
choices, about 15 minutes) and lets the ILP choose from it; ``nsga2`` starts from the uniform warm starts.

Run from the repository root: ``python experiments/bench_transformer_search.py`` (about 10 minutes per case on
2 cores with the default 40 trials; ``--strategy ilp`` adds the sensitivity). Writes experiments/results/bench_transformer_search.{md,json} and the
run directories under runs/bench_transformer_search/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import picojoule as pj
from picojoule.errors import PicojouleError
from picojoule.frontends.hf import fidelity, load_hf, pydoc_corpus
from picojoule.hwmodels.costs import price
from picojoule.search.baselines import baseline_policy
from picojoule.sensitivity import metric_sensitivity

RESULTS = Path(__file__).parent / "results"
SEQ = 128
GOAL_COSINE = 0.98

#: case -> (target, metric, cost model, batch, bound, rest_bits)
CASES: dict[str, tuple[str, str, str, int, str, int]] = {
    "a100": ("a100", "latency", "roofline", 128, "latency <= 0.5 * fp16", 16),
    "eyeriss": ("eyeriss", "energy", "eyeriss", 1, "energy <= 0.5 * uniform_int8", 32),
}
SPACE = {"w_bits": [4, 8, 16], "a_bits": [4, 8, 16], "keep": [0.5, 0.75, 1.0], "rank_fractions": [0.25, 0.5]}
#: how the search applies a policy's bits to the linear layers (``evaluation.linear_quant``); None: the generic pass
RECIPES: dict[str, dict[str, Any] | None] = {
    "llm": {"weights": "gptq", "group_size": 128, "activations": "token", "rotate": True},
    # llm with one activation range per 128 inputs of a token (Atom's W4A4 kernels; the scales are not priced)
    "atom": {"weights": "gptq", "group_size": 128, "activations": "token", "rotate": True, "act_group": 128},
    "generic": None,
}


def embed(module: torch.nn.Module, ids: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(ids[i:i + batch]).float() for i in range(0, len(ids), batch)])


def floors(graph: Any, case: str) -> dict[str, float]:
    """Reference policies' metric as a ratio to the bound's baseline (cost only), at the case's batch and at 1."""
    target, metric, model, batch, bound, rest = CASES[case]
    space = pj.Space.build(graph, target, {"rest_bits": rest, "pin_first_last": False, "defaults": SPACE})
    base = bound.split("* ")[1]
    out = {}
    for b in sorted({1, batch}):
        def cost(policy: Any) -> float:
            r = price(graph, target, policy, model=model, batch=b)
            return float((r.total_latency_s if metric == "latency" else r.total_energy_j)[0])
        ref = cost(baseline_policy(base, graph))
        for name, (w, a, keep) in {"W8A8": (8, 8, 1.0), "W4A8": (4, 8, 1.0), "W4A4": (4, 4, 1.0),
                                   "W4A4 keep 0.5": (4, 4, 0.5)}.items():
            out[f"{name} @ batch {b}"] = cost(space.uniform_policy(w, a, keep)) / ref
    return out


def run_case(case: str, model: Any, ids: dict[str, torch.Tensor], refs: dict[str, torch.Tensor], trials: int,
             runs: Path, seed: int, fresh: bool, recipe: str = "llm", strategy: str = "nsga2") -> dict[str, Any]:
    target, metric, cost_model, batch, bound, rest = CASES[case]
    module = model.ids_module()
    run_dir = runs / "-".join([case] + ([recipe] if recipe != "llm" else []) + ([strategy] if strategy != "nsga2" else []))
    linear_quant = RECIPES[recipe]
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    n_evals = [0]

    def validation(m: torch.nn.Module) -> float:
        n_evals[0] += 1
        return fidelity(refs["validation"], embed(m, ids["validation"]))["cosine"]

    def test(m: torch.nn.Module) -> float:
        return fidelity(refs["test"], embed(m, ids["test"]))["cosine"]

    calib = [ids["calibration"][i:i + 16] for i in range(0, len(ids["calibration"]), 16)]
    start, loads = time.perf_counter(), []
    sens, sens_s = None, 0.0
    if strategy == "ilp":  # a label-free sensitivity: the fidelity drop per knob, on passages of its own
        graph = pj.LayerGraph.from_torch(module, ids["calibration"][:1])
        space = pj.Space(graph, target, {"rest_bits": rest, "pin_first_last": False, "defaults": SPACE})

        def sens_metric(m: torch.nn.Module) -> float:
            return fidelity(refs["sensitivity"], embed(m, ids["sensitivity"]))["cosine"]

        sens = metric_sensitivity(module, ids["calibration"][:1], space, sens_metric, calib,
                                  linear_quant=RECIPES[recipe], data_key=f"pydoc sensitivity split "
                                  f"{len(ids['sensitivity'])} passages", cache_dir=run_dir)
        sens_s = 0.0 if sens.cached else sens.info["seconds"]["table"]
    try:
        res = pj.search(module, ids["calibration"][:1], target, evaluate=validation, test_evaluate=test,
                        calib_data=calib, constraints=[bound], trials=trials, storage=run_dir,
                        resume=(run_dir / "config.yaml").is_file() or (run_dir / "journal.log").is_file(),
                        cost_model=cost_model, batch=batch, strategy=strategy, seed=seed, sensitivity=sens,
                        space={"rest_bits": rest, "pin_first_last": False, "defaults": SPACE},
                        warm_start=["uniform_int8", "uniform_w8a16", "uniform_w4a8", "uniform_w4a4"],
                        metric_name="cosine", evaluation={"linear_quant": linear_quant} if linear_quant else None,
                        name=f"minilm-{case}", callbacks=[lambda r: loads.append(os.getloadavg()[0])])
    except PicojouleError as e:
        return {"case": case, "recipe": recipe, "constraint": bound, "error": str(e),
                "wall_s": time.perf_counter() - start}
    hw = res.problem.program.hardware[0]
    limit = res.bounds[hw.text]
    counted = [r for r in res.records if r.counted]
    out: dict[str, Any] = {
        "case": case, "recipe": recipe, "strategy": strategy, "sensitivity_s": sens_s,
        "sensitivity_evaluations": sens.info["evaluations"] if sens else 0, "linear_quant": linear_quant, "target": target, "constraint": hw.text, "batch": batch, "rest_bits": rest, "bound": limit,
        "trials": len(counted), "measured": sum(r.evaluated for r in counted), "front": len(res.front),
        "wall_s": time.perf_counter() - start, "load_avg": float(np.mean(loads)) if loads else os.getloadavg()[0],
        "space": res.problem.space.describe(),
        "baselines": {k: {m: v.get(m) for m in ("accuracy", "test_accuracy", metric)} for k, v in res.baselines.items()},
        "front_points": [{"trial": r.number, "validation": r.metrics["accuracy"], "test": r.metrics.get("test_accuracy"),
                          "ratio": 0.5 * r.metrics[metric] / limit} for r in res.front],
    }
    if res.front:
        winner = res.best("accuracy")
        policy = res.policy(winner)
        compressed = pj.compress(module, ids["calibration"][:1], policy, calib_data=calib, linear_quant=linear_quant)
        score = fidelity(refs["test"], embed(compressed, ids["test"]))
        layers = [policy.for_layer(layer.name) for layer in res.problem.graph.compute_layers()]
        macs = np.asarray([layer.macs for layer in res.problem.graph.compute_layers()], dtype=float)
        mean = lambda xs: float(np.dot(macs, xs) / macs.sum())  # noqa: E731
        out["winner"] = {
            "trial": winner.number, "validation": winner.metrics["accuracy"], "test": winner.metrics.get("test_accuracy"),
            "test_cosine_recompressed": score["cosine"], "test_retrieval_overlap": score["retrieval_overlap"],
            "ratio": 0.5 * winner.metrics[metric] / limit, "warm_start": winner.warm_start,
            "w_bits": mean([lp.w_bits for lp in layers]), "a_bits": mean([lp.a_bits for lp in layers]),
            "keep": mean([lp.keep for lp in layers]), "rank_split": sum(lp.rank > 0 for lp in layers),
            "sparse": sum(lp.sparsity > 0 for lp in layers)}
    return out


def report(parts: dict[str, Any], floor: dict[str, dict[str, float]], meta: dict[str, Any]) -> str:
    pct = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["# A searched mixed policy for all-MiniLM-L6-v2 (sequence length 128)", "",
             f"Fidelity (mean cosine of sentence embeddings against the uncompressed model) selects on "
             f"{meta['validation']} validation passages and is reported on {meta['test']} held-out test passages of "
             f"CPython's pydoc topics; activations calibrated on {meta['calibration']} others. NSGA-II (or the ILP "
             f"where the strategy column says so), {meta['trials']} trials per case, warm starts uniform W8A8 / W8A16 / W4A8 (and W4A4 with the llm "
             "recipe) lowered onto the bound; no fine-tune. Recipe `llm` (`evaluation.linear_quant`): the linear "
             "layers' weights by GPTQ with one range per 128 inputs, activations with one range per token taken "
             "at run time, both in a block Walsh-Hadamard rotation of each linear's inputs (QuaRot); `atom`: `llm` with "
             "one activation range per 128 inputs of a token (Atom's W4A4; the weight and activation scales are not "
             "priced); `generic`: "
             "per-channel round-to-nearest weights and calibrated per-tensor activations (an earlier run). "
             "Magnitude pruning, low rank and sparsity are the same in both. "
             "Generated by `experiments/bench_transformer_search.py`.", "",
             "## How low each target can go (cost only, ratio to the bound's baseline)", "",
             "| case | " + " | ".join(next(iter(floor.values())).keys()) + " |",
             "|---|" + "---|" * len(next(iter(floor.values()))), ]
    for case, row in floor.items():
        lines.append(f"| {case} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
    lines += ["", "## The searched winners", "",
              "| case | recipe | strategy | constraint | batch | winner validation cosine | test cosine | test top-10 overlap | ratio to baseline "
              "| w_bits | a_bits | keep | rank split | sparse | front | trials (measured) | wall min (sensitivity) | load "
              "| goal (cosine >= 0.98) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, p in parts.items():
        if "error" in p:
            lines.append(f"| {p.get('case', case)} | {p.get('recipe', 'generic')} | {p.get('strategy', 'nsga2')} | `{p['constraint']}` | | not run: {p['error']} | | | | | | | | | | | | | | missed |")
            continue
        w = p.get("winner")
        if not w:
            lines.append(f"| {p.get('case', case)} | {p.get('recipe', 'generic')} | {p.get('strategy', 'nsga2')} | `{p['constraint']}` | {p['batch']} | no feasible policy measured | | | | | | | | | "
                         f"0 | {p['trials']} ({p['measured']}) | {p['wall_s'] / 60:.1f} | {p['load_avg']:.1f} | "
                         "missed |")
            continue
        met = (w["test"] or 0) >= GOAL_COSINE
        lines.append(
            f"| {p.get('case', case)} | {p.get('recipe', 'generic')} | {p.get('strategy', 'nsga2')} | `{p['constraint']}` | {p['batch']} | {pct(w['validation'])} | {pct(w['test'])} | "
            f"{w['test_retrieval_overlap']:.3f} | {w['ratio']:.3f} | {w['w_bits']:.2f} | {w['a_bits']:.2f} | "
            f"{w['keep']:.3f} | {w['rank_split']} | {w['sparse']} | {p['front']} | {p['trials']} ({p['measured']}) | "
            f"{p['wall_s'] / 60:.1f} ({p.get('sensitivity_s', 0) / 60:.1f}) | {p['load_avg']:.1f} | "
            f"{('met (group scales not priced)' if (p.get('linear_quant') or {}).get('group_size') else 'met') if met else '**missed**'} |")
    lines += ["", "Fronts (validation cosine, test cosine, ratio to the baseline):", ""]
    for case, p in parts.items():
        pts = sorted(p.get("front_points", []), key=lambda q: q["ratio"])
        lines.append(f"- {case}: " + ("; ".join(f"{pct(q['validation'])} / {pct(q['test'])} at {q['ratio']:.3f}x"
                                                for q in pts) or "empty"))
    llm = [p for p in parts.values() if p.get("recipe") == "llm" and p.get("winner")]
    generic = [p for p in parts.values() if p.get("recipe") == "generic" and p.get("winner")]
    best = max(llm, key=lambda p: p["winner"]["test"] or 0, default=None)
    w4a4 = floor.get("a100", {}).get("W4A4 @ batch 128")  # the W4A4 warm start lowered: W4A4 on every linear
    cheap = next((q for p in llm for q in p.get("front_points", []) if w4a4 and abs(q["ratio"] - w4a4) < 1e-3), None)
    met = [p for p in parts.values() if p.get("winner") and (p["winner"]["test"] or 0) >= GOAL_COSINE]
    lines += ["", "What the bounds need: 4-bit operands. On a100 at batch 128 W8A8 everywhere is "
              f"{floor.get('a100', {}).get('W8A8 @ batch 128', float('nan')):.3f}x fp16, so most linears need the "
              "int4 tensor-core rate, i.e. 4-bit activations too; on eyeriss W4A4 everywhere is "
              f"{floor.get('eyeriss', {}).get('W4A4 @ batch 1', float('nan')):.3f}x INT8, so the bound needs "
              "4-bit weights and activations and some pruning. With the generic passes MiniLM does not survive "
              f"4-bit activations (cosine {max((p['winner']['test'] or 0) for p in generic) if generic else float('nan'):.2f} "
              "at best). The llm recipe lifts the searched winner to "
              + (f"{best['winner']['test']:.4f} (test) at {best['winner']['ratio']:.3f}x" if best else "(not run)")
              + (f"; W4A4 on every linear scores {cheap['test']:.4f} at {cheap['ratio']:.3f}x" if cheap else "")
              + ("; every winner under it is the W4A8 warm start lowered onto the bound (4-bit activations where "
                 "it must, 8-bit where it can): no strategy found a mix above it. "
                 if llm and all((p["winner"].get("warm_start") or "").startswith("uniform_w4a8") for p in llm)
                 else ". ")
              + ("".join(f"The {p['recipe']} recipe ({p['strategy']}) meets the goal on {p['case']}: "
                         f"{p['winner']['test']:.4f} test cosine at {p['winner']['ratio']:.3f}x, a margin of "
                         f"{p['winner']['test'] - GOAL_COSINE:.4f}, with its group scales (weights: one per "
                         f"{p['linear_quant'].get('group_size')} inputs, activations: one per "
                         + (f"{p['linear_quant']['act_group']} inputs of a token" if p['linear_quant'].get('act_group')
                            else "token")
                         + ") not priced. " for p in met if p.get("recipe") != "generic")
                 or "No case meets the goal. ")
              + "".join(f"On {p['case']} the {p['recipe']} recipe reaches {p['winner']['test']:.4f} at "
                        f"{p['winner']['ratio']:.3f}x (keep {p['winner']['keep']:.3f}, {p['winner']['rank_split']} "
                        f"layers split by rank, {p['measured']} of {p['trials']} trials measured feasible), "
                        f"{GOAL_COSINE - p['winner']['test']:.3f} short: the pruning or low rank that its bound "
                        "needs beyond W4A4 costs that much. "
                        for p in parts.values() if p.get("winner") and p.get("recipe") != "generic"
                        and p["case"] != "a100" and (p["winner"]["test"] or 0) < GOAL_COSINE),
              "", "Each case's run directory (report.md, plots/front.png, the winners' policies) is under "
              "runs/bench_transformer_search/.", ""]
    return "\n".join(lines)


def _load(out_json: Path) -> dict[str, Any]:
    doc = json.loads(out_json.read_text()) if out_json.is_file() else {"parts": {}, "floors": {}}
    for key in [k for k, v in doc["parts"].items() if "recipe" not in v]:  # runs from before the recipe existed
        doc["parts"][f"{key}-generic"] = {**doc["parts"].pop(key), "recipe": "generic"}
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="all", choices=["all", *CASES])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--validation", type=int, default=96)
    ap.add_argument("--test", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", default="llm", choices=list(RECIPES),
                    help="how the linear layers are quantized: the LLM recipe (GPTQ g128, per-token activations, "
                         "Hadamard rotation) or the generic pass (per-channel RTN, per-tensor activations)")
    ap.add_argument("--strategy", default="nsga2", choices=["nsga2", "ilp"],
                    help="ilp: guided by a label-free sensitivity (the fidelity drop per knob) on other passages")
    ap.add_argument("--sensitivity", type=int, default=48, help="passages the ilp's sensitivity is measured on")
    ap.add_argument("--fresh", action="store_true", help="start the run directories anew")
    ap.add_argument("--runs", type=Path, default=Path("runs/bench_transformer_search"))
    ap.add_argument("--report-only", action="store_true", help="rewrite the table from the saved JSON")
    args = ap.parse_args()
    out_json = RESULTS / "bench_transformer_search.json"
    if args.report_only:
        doc = json.loads(out_json.read_text())
        (RESULTS / "bench_transformer_search.md").write_text(report(doc["parts"], doc["floors"], doc["meta"]))
        return 0
    torch.set_num_threads(args.threads)
    model = load_hf("all-MiniLM-L6-v2", SEQ)
    corpus = pydoc_corpus()
    mid = args.calib + args.validation
    texts = {"calibration": corpus[:args.calib], "validation": corpus[args.calib:mid],
             "sensitivity": corpus[mid:mid + args.sensitivity], "test": corpus[-args.test:]}
    if mid + args.sensitivity > len(corpus) - args.test:
        raise SystemExit(f"the corpus has {len(corpus)} passages: too few for these splits")
    ids = {k: model.tokenize(v)[0] for k, v in texts.items()}
    module = model.ids_module()
    refs = {k: embed(module, ids[k]) for k in ("validation", "sensitivity", "test")}
    graph = pj.LayerGraph.from_torch(module, ids["calibration"][:1])
    cases = list(CASES) if args.case == "all" else [args.case]
    doc = _load(out_json)
    ran_keys = []
    for case in cases:
        doc["floors"][case] = floors(graph, case)
        print(case, "floors", json.dumps({k: round(v, 3) for k, v in doc["floors"][case].items()}), flush=True)
        key = "-".join([case] + ([args.recipe] if args.recipe != "llm" else [])
                       + ([args.strategy] if args.strategy != "nsga2" else []))
        ran_keys.append(key)
        doc["parts"][key] = run_case(case, model, ids, refs, args.trials, args.runs, args.seed, args.fresh, args.recipe,
                                     args.strategy)
        print(key, json.dumps({k: v for k, v in doc["parts"][key].items() if k not in ("front_points", "baselines")}),
              flush=True)
    doc["meta"] = {"calibration": args.calib, "validation": args.validation, "test": args.test,
                   "trials": args.trials, "corpus": len(corpus), "graph": repr(graph)}
    RESULTS.mkdir(exist_ok=True)
    # another run may have written its parts meanwhile: reread the file and replace only the parts run here
    ran = {case_key: doc["parts"][case_key] for case_key in ran_keys}
    doc["parts"] = {**_load(out_json)["parts"], **ran}
    out_json.write_text(json.dumps(doc, indent=1))
    text = report(doc["parts"], doc["floors"], doc["meta"])
    (RESULTS / "bench_transformer_search.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
