"""Benchmark: compressing a real pretrained transformer (all-MiniLM-L6-v2) without labelled data.

The sentence model that the ``hf`` extra installs (BERT, 6 layers, hidden 384, 22.7 M parameters) at sequence
length 128. Each variant compresses every nn.Linear of the encoder from 64 calibration passages, and is scored
by embedding fidelity to the uncompressed model on 256 other passages of CPython's ``pydoc_data.topics``:
mean cosine similarity, and top-10 retrieval overlap (each passage as a query against the other 255).
Variants: W8A8 (int8 weights per output channel, int8 inputs per tensor, static absmax range) without and with
SmoothQuant at migration strength 0.5 and 0.75; W4A16 and W3A16 with groups of 128, round-to-nearest against
GPTQ; 2:4 sparsity chosen by magnitude against Wanda. Each variant's policy is also priced: latency on a100
(batch 1) against FP16, and energy on eyeriss against uniform INT8.

Each variant is also exported for ONNX Runtime (``picojoule.compilers.linear_onnx``: MatMulNBits for group-quantized
weights, QDQ int8 for W8A8, float otherwise), run on the evaluation passages (fidelity of the ORT output) and timed
at batch 1 on one thread (``--no-ort`` skips it).

Run from the repository root: ``python experiments/bench_transformer.py`` (about 8 minutes on 2 cores).
Writes experiments/results/bench_transformer.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import picojoule as pj
from picojoule.compilers.tvm_build import host_cpu
from picojoule.frontends.hf import fidelity, load_hf, pydoc_corpus
from picojoule.spaces.linear_ptq import LinearPlan, compress_linears

RESULTS = Path(__file__).parent / "results"
SEQ = 128

#: variant -> (linear plan or None for the float model, the policy its cost is priced with)
VARIANTS: dict[str, tuple[LinearPlan | None, dict[str, Any]]] = {
    "FP32": (None, {"w_bits": 32, "a_bits": 32}),
    "W8A8": (LinearPlan(w_bits=8, a_bits=8), {"w_bits": 8, "a_bits": 8}),
    "W8A8 SmoothQuant a=0.5": (LinearPlan(w_bits=8, a_bits=8, smooth=0.5), {"w_bits": 8, "a_bits": 8}),
    "W8A8 SmoothQuant a=0.75": (LinearPlan(w_bits=8, a_bits=8, smooth=0.75), {"w_bits": 8, "a_bits": 8}),
    "W4A16 g128 RTN": (LinearPlan(w_bits=4, group_size=128), {"w_bits": 4, "a_bits": 16}),
    "W4A16 g128 GPTQ": (LinearPlan(w_bits=4, group_size=128, method="gptq"), {"w_bits": 4, "a_bits": 16}),
    "W3A16 g128 RTN": (LinearPlan(w_bits=3, group_size=128), {"w_bits": 3, "a_bits": 16}),
    "W3A16 g128 GPTQ": (LinearPlan(w_bits=3, group_size=128, method="gptq"), {"w_bits": 3, "a_bits": 16}),
    "2:4 magnitude (FP16)": (LinearPlan(sparsity="2:4", select="magnitude"),
                             {"w_bits": 16, "a_bits": 16, "sparsity": 0.5, "sparsity_pattern": "2:4"}),
    "2:4 Wanda (FP16)": (LinearPlan(sparsity="2:4", select="wanda"),
                         {"w_bits": 16, "a_bits": 16, "sparsity": 0.5, "sparsity_pattern": "2:4"}),
}


def plan_scales(plan: LinearPlan | None) -> dict[str, Any] | None:
    """The scale format a plan deploys, as ``pj.cost``'s ``linear_quant`` fields: its weight groups, static
    per-tensor activations (None: the float model, nothing to price)."""
    if plan is None or plan.w_bits is None:
        return None
    return {"group_size": plan.group_size, "activations": "tensor", "rotate": False}


def priced(graph: Any, knobs: dict[str, Any], plan: LinearPlan | None = None) -> dict[str, float]:
    """Cost of ``knobs`` on every linear layer, with the scales ``plan`` deploys (its weight groups' rescales and
    scale traffic, :mod:`picojoule.hwmodels.scales`)."""
    linears = {layer.name: knobs for layer in graph.layers if layer.op == "linear"}
    policy = {"default": {"w_bits": 32, "a_bits": 32}, "layers": linears}
    fmt = plan_scales(plan)
    a100 = pj.cost(graph, "a100", policy, linear_quant=fmt).total
    eyeriss = pj.cost(graph, "eyeriss", policy, cost_model="eyeriss", linear_quant=fmt).total
    return {"a100_latency_s": a100["latency_s"], "eyeriss_energy_j": eyeriss["energy_j"],
            "size_bytes": a100["size_bytes"]}


def ort_row(module: torch.nn.Module, model: Any, path: Path, ids: torch.Tensor, mask: torch.Tensor,
            reference: torch.Tensor, repeat: int) -> dict[str, Any]:
    """Export for ONNX Runtime (MatMulNBits / QDQ int8 / float), run on the evaluation passages, time at batch 1."""
    from picojoule.compilers.export import measure_onnxruntime, onnxruntime_session
    from picojoule.compilers.linear_onnx import export_linear_onnx

    path, summary = export_linear_onnx(module, model.example(1), path, output_names=["embedding"])
    session = onnxruntime_session(path, threads=1)
    out = np.concatenate([session.run(None, {"input_ids": ids[i:i + 32].numpy(),
                                             "attention_mask": mask[i:i + 32].numpy()})[0]
                          for i in range(0, len(ids), 32)])
    score = fidelity(reference, torch.from_numpy(out))
    ids1, mask1 = model.example(1)
    latency = measure_onnxruntime(path, {"input_ids": ids1, "attention_mask": mask1}, repeat, number=1, warmup=3)
    kind = ("MatMulNBits" if summary["matmul_nbits"] else "QDQ int8 (MatMulIntegerToFloat)" if summary["qdq_int8"]
            else "float MatMul")
    return {"ort_latency_s": latency, "ort_cosine": score["cosine"],
            "ort_retrieval_overlap": score["retrieval_overlap"], "ort_linears": kind,
            "ort_file_mb": path.stat().st_size / 1e6}


def searched_summary() -> str:
    """The searched policies' line, read from bench_transformer_search.json (that study runs them): per case, the
    best test cosine (after the winner's final fine-tune where the run has one) of a run priced as the cost model prices now (a recipe's run from before its scales were
    priced is stale and left out)."""
    path = RESULTS / "bench_transformer_search.json"
    if not path.is_file():
        return "**not run** (experiments/bench_transformer_search.py)"
    parts = json.loads(path.read_text())["parts"]
    best: dict[str, tuple[float, str]] = {}
    for key, p in parts.items():
        current = p.get("recipe", "generic") == "generic" or p.get("scales_priced")
        w = p.get("winner") or {}
        test = w.get("finetuned_test") or w.get("test")  # as deployed: after the final fine-tune where there was one
        if current and test is not None and test > best.get(p.get("case", key), (-1.0, ""))[0]:
            best[p.get("case", key)] = (test, key)
    met = len(best) >= 2 and all(v >= 0.98 for v, _ in best.values())
    return ("see bench_transformer_search.md, " + ("met" if met else "**missed**") + ": best test cosine "
            + ", ".join(f"{case} {v:.3f} ({key})" for case, (v, key) in sorted(best.items())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=64, help="calibration passages")
    ap.add_argument("--eval", type=int, default=256, help="evaluation passages (the corpus's last ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30, help="timed ORT calls per variant (batch 1, one thread)")
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime export and timing")
    ap.add_argument("--reprice", action="store_true", help="recompute only the predicted columns (after a cost "
                                                             "model change), keeping the measured ones of the JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_hf("all-MiniLM-L6-v2", SEQ)
    corpus = pydoc_corpus()
    calib_texts, eval_texts = corpus[:args.calib], corpus[-args.eval:]
    ids, mask = model.tokenize(calib_texts)
    calib = [(ids[i:i + 16], mask[i:i + 16]) for i in range(0, len(ids), 16)]
    graph = model.graph(batch=1)
    fp16 = priced(graph, {"w_bits": 16, "a_bits": 16})
    int8 = priced(graph, {"w_bits": 8, "a_bits": 8})
    if args.reprice:
        return reprice(graph, fp16, int8)
    reference = model.embed(eval_texts)
    rows = {}
    eval_ids, eval_mask = model.tokenize(eval_texts)
    work = Path(tempfile.mkdtemp(prefix="bench_transformer-"))
    for name, (plan, knobs) in VARIANTS.items():
        start = time.perf_counter()
        compressed = model.module if plan is None else compress_linears(model.module, calib, plan)[0]
        score = fidelity(reference, model.embed(eval_texts, module=compressed))
        cost = priced(graph, knobs, plan)
        rows[name] = {**score, **cost, "a100_latency_vs_fp16": cost["a100_latency_s"] / fp16["a100_latency_s"],
                      "eyeriss_energy_vs_int8": cost["eyeriss_energy_j"] / int8["eyeriss_energy_j"]}
        if not args.no_ort:
            rows[name].update(ort_row(compressed, model, work / f"{len(rows)}.onnx", eval_ids, eval_mask, reference,
                                      args.repeat))
        rows[name]["seconds"] = time.perf_counter() - start
        ort = (f", ORT {1e3 * rows[name]['ort_latency_s']:.1f} ms (cosine {rows[name]['ort_cosine']:.4f})"
               if "ort_latency_s" in rows[name] else "")
        print(f"{name}: cosine {score['cosine']:.4f}, top-10 overlap {score['retrieval_overlap']:.3f}, "
              f"a100 {rows[name]['a100_latency_vs_fp16']:.2f}x fp16, eyeriss {rows[name]['eyeriss_energy_vs_int8']:.2f}x "
              f"int8{ort} ({rows[name]['seconds']:.0f} s)", flush=True)
    doc = {"model": "all-MiniLM-L6-v2", "seq_len": SEQ, "graph": repr(graph), "calibration_passages": len(calib_texts),
           "evaluation_passages": len(eval_texts), "rows": rows, "load_avg": os.getloadavg()[0], "host": host_cpu(),
           "repeat": args.repeat}
    return write(doc)


def reprice(graph: Any, fp16: dict[str, float], int8: dict[str, float]) -> int:
    """Recompute the predicted columns of the saved rows with the current cost model; the measured ones stay."""
    doc = json.loads((RESULTS / "bench_transformer.json").read_text())
    old = (RESULTS / "bench_transformer.md").read_text()
    host = re.search(r"run on this CPU \(([^)]*)\)", old)
    doc.setdefault("host", host.group(1) if host else "unknown")
    doc.setdefault("repeat", int(m.group(1)) if (m := re.search(r"median of (\d+) calls", old)) else 30)
    for name, (plan, knobs) in VARIANTS.items():
        cost = priced(graph, knobs, plan)
        doc["rows"][name].update({**cost, "a100_latency_vs_fp16": cost["a100_latency_s"] / fp16["a100_latency_s"],
                                  "eyeriss_energy_vs_int8": cost["eyeriss_energy_j"] / int8["eyeriss_energy_j"]})
    doc["repriced"] = "the predicted columns recomputed with the weight groups' scales priced; the measured ones kept"
    return write(doc)


def write(doc: dict[str, Any]) -> int:
    """Write the JSON and the report of ``doc``."""
    rows = doc["rows"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_transformer.json").write_text(json.dumps(doc, indent=2))
    w8 = rows["W8A8 SmoothQuant a=0.75"]["cosine"]
    gptq, rtn = rows["W4A16 g128 GPTQ"]["cosine"], rows["W4A16 g128 RTN"]["cosine"]
    mark = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    lines = ["# A real transformer compressed: all-MiniLM-L6-v2, sequence length 128", "",
             f"{doc['graph']}. Fidelity to the uncompressed model on {doc['evaluation_passages']} pydoc passages "
             f"(calibration on {doc['calibration_passages']} others); predicted a100 latency at batch 1 against FP16, "
             "eyeriss energy against uniform INT8 (every linear layer compressed, each variant's weight-group "
             "scales priced as it deploys them: their traffic and the partial-sum rescales, "
             "`picojoule/hwmodels/scales.py`; attention matmuls and the rest priced at 32 bits). "
             f"Load average {doc['load_avg']:.1f}. Generated by `experiments/bench_transformer.py`"
             + (f" ({doc['repriced']}, `--reprice`)." if doc.get("repriced") else "."), "",
             "ONNX Runtime columns: the variant exported by `picojoule.compilers.linear_onnx` and run on this CPU "
             f"({doc['host']}), one thread, batch 1, median of {doc['repeat']} calls; its cosine is the ORT output's "
             "against the uncompressed model's.", "",
             "| variant | mean cosine | top-10 overlap | a100 latency / FP16 | eyeriss energy / INT8 | size MB | "
             "ORT linears | ORT ms | ORT vs FP32 | ORT cosine | ORT file MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fp32_ms = rows["FP32"].get("ort_latency_s")
    for name, r in rows.items():
        ort = (f"{r['ort_linears']} | {1e3 * r['ort_latency_s']:.1f} | {fp32_ms / r['ort_latency_s']:.2f}x | "
               f"{r['ort_cosine']:.4f} | {r['ort_file_mb']:.1f}" if "ort_latency_s" in r else "— | — | — | — | —")
        lines.append(f"| {name} | {r['cosine']:.4f} | {r['retrieval_overlap']:.3f} | {r['a100_latency_vs_fp16']:.2f} | "
                     f"{r['eyeriss_energy_vs_int8']:.2f} | {r['size_bytes'] / 1e6:.1f} | {ort} |")
    lines += ["", "Targets:", "",
              f"- W8A8 (SmoothQuant) cosine >= 0.99: {w8:.4f}, {mark(w8 >= 0.99)}",
              f"- W4A16 GPTQ beats round-to-nearest on fidelity: {gptq:.4f} vs {rtn:.4f}, {mark(gptq > rtn)}",
              "- a searched mixed policy meets a100 `latency <= 0.5 * fp16` / eyeriss `energy <= 0.5 * int8` with "
              f"cosine >= 0.98: {searched_summary()}",
              ("- latency measured in ONNX Runtime here: see the ORT columns (W8A8 runs integer MatMuls; W4A16 "
               "MatMulNBits computes the exact fake-quant weights in float, so at 128 tokens it saves memory, not time; "
               "2:4 has no sparse CPU kernel)" if fp32_ms else "- latency measured in ONNX Runtime here: not run (--no-ort)"),
              ""]
    (RESULTS / "bench_transformer.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
