"""What a run leaves behind: ``trials.csv``, ``pareto/`` (each front policy as YAML, plus HAQ and AMC
exports), ``result.json`` (the machine-readable result), ``report.md`` and the plots."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from picojoule.passes.quantize import FLOAT_BITS
from picojoule.search.constraints import all_hold
from picojoule.search.journal import FINETUNED_METRICS, TEST_ACCURACY, TrialRecord
from picojoule.search.metrics import METRICS, format_value

if TYPE_CHECKING:
    from picojoule.search.engine import SearchResult

PARETO_DIR = "pareto"
PLOTS_DIR = "plots"
RESULT_FILE = "result.json"


def shown_metrics(result: SearchResult) -> list[str]:
    """The metrics a table shows: accuracy on validation and its drop (if measured), accuracy on test (if reported)
    and every hardware figure but params."""
    acc = ["accuracy", "accuracy_drop"] if result.config.needs_accuracy else []
    return acc + ([TEST_ACCURACY] if result.tested else []) + ["energy", "latency", "size", "co2e", "macs"]


def column(result: SearchResult, metric: str) -> str:
    """A table's heading of ``metric``: the accuracies name their split and its images."""
    if metric == "accuracy_drop":
        return "accuracy_drop (validation)"
    split = {"accuracy": "validation", TEST_ACCURACY: "test"}.get(metric)
    if split is None:
        return metric
    images = result.problem.splits().get(split, {}).get("images")
    return f"accuracy ({split}{f', {images} images' if images else ''})"


def policy_name(record: TrialRecord) -> str:
    return f"trial_{record.number:05d}"


#: a list of per-layer values longer than this is written run-length (``8/4×17/8``)
RUN_LENGTH_AFTER = 8


def _short(value: Any) -> str:
    """A knob value in few characters: bits as they are (``f`` for float), fractions without the leading zero."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:g}".removeprefix("0")
    return "f" if value == FLOAT_BITS else f"{value:g}" if isinstance(value, float) else str(value)


def _runs(values: list[str]) -> str:
    """``8/4/4/8``, or for a long list runs of three or more alike as ``value×count``: ``8/4×17/8``."""
    if len(values) <= RUN_LENGTH_AFTER:
        return "/".join(values)
    out, i = [], 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        out += [f"{values[i]}×{j - i}"] if j - i >= 3 else values[i:j]
        i = j
    return "/".join(out)


def compact_policy(policy: Any, graph: Any) -> str:
    """A policy on one line, per compute layer in graph order: ``W 8/3/3/8 A 8/8/5/8 keep 1/.75/1/1``, then
    ``rank`` and ``sparsity`` where some layer is split or sparse (``-``: no split; ``2:4``: that pattern)."""
    lps = [policy.for_layer(layer.name) for layer in graph.compute_layers()]
    parts = {"W": [_short(lp.w_bits) for lp in lps], "A": [_short(lp.a_bits) for lp in lps],
             "keep": [_short(float(lp.keep)) for lp in lps]}
    if any(lp.rank for lp in lps):
        parts["rank"] = [str(lp.rank) if lp.rank else "-" for lp in lps]
    if any(lp.sparsity for lp in lps):
        parts["sparsity"] = ["2:4" if lp.sparsity and lp.sparsity_pattern == "2:4" else _short(float(lp.sparsity))
                             for lp in lps]
    return " ".join(f"{name} {_runs(values)}" for name, values in parts.items())


def saving(result: SearchResult, record: TrialRecord) -> str:
    """The record's hardware figures as ratios to the baselines its constraints name (``0.36x uniform_int8
    energy``); without such a constraint, each minimised hardware objective against uniform_int8."""
    pairs = [(c.metric, c.baseline) for c in result.problem.program
             if c.baseline is not None and not METRICS[c.metric].needs_accuracy]
    if not pairs:
        pairs = [(o.metric, "uniform_int8") for o in result.problem.objectives
                 if not o.maximise and not METRICS[o.metric].needs_accuracy]
    texts = []
    for metric, name in dict.fromkeys(pairs):
        base = result.baselines.get(name, {}).get(metric)
        if base and metric in record.metrics:
            texts.append(f"{record.metrics[metric] / base:.2f}x {name} {metric}")
    return ", ".join(texts) or "—"


def front_order(result: SearchResult) -> list[TrialRecord]:
    """The front, best first by the first objective."""
    first = result.problem.objectives[0]
    return sorted(result.front, key=lambda r: r.metrics[first.metric], reverse=first.maximise)


#: front members the summary lists (report.md lists them all)
SUMMARY_FRONT = 8


def front_lines(result: SearchResult) -> list[str]:
    """The summary's lines on the front: each member's objectives, saving and policy in compact form."""
    if not result.front:
        return []
    first = result.problem.objectives[0].metric
    lines = [f"  front, best {first} first (W/A: weight/activation bits per layer in graph order):"]
    graph = result.problem.graph
    for r in front_order(result)[:SUMMARY_FRONT]:
        figures = ", ".join(f"{o.metric} {format_value(o.metric, r.metrics.get(o.metric, math.nan))}"
                            for o in result.problem.objectives)
        lines.append(f"    trial {r.number}: {figures} ({saving(result, r)}): "
                     f"{compact_policy(result.policy(r) if r.policy is None else r.policy, graph)}")
    if len(result.front) > SUMMARY_FRONT:
        lines.append(f"    ... and {len(result.front) - SUMMARY_FRONT} more (report.md lists them all)")
    return lines


def trial_rows(result: SearchResult) -> Iterator[dict[str, Any]]:
    """One dict per trial: state, metrics (SI units; NaN where not measured), constraint violations (None where
    not told), knob values (None without a vector), and where the trial came from. ``accuracy`` is on the
    validation split (what selected), ``test_accuracy`` on the test split (measured for the front only);
    ``duplicate_of`` marks a repeat of a tried policy (not counted), ``drawn`` one the engine drew at random,
    ``repaired`` an infeasible proposal lowered onto the bounds (not counted), and ``repaired_from`` on the
    trial that measured the lowered policy names that proposal."""
    space = result.problem.space
    on_front = {r.number for r in result.front}
    for r in result.records:
        knobs = [k.choices[i] for k, i in zip(space.knobs, r.vec)] if r.vec is not None else [None] * space.dim
        yield {"trial": r.number, "state": r.state, "feasible": r.feasible, "evaluated": r.evaluated,
               "on_front": r.number in on_front, **{m: r.metrics.get(m, math.nan) for m in METRICS},
               **{m: r.metrics.get(m, math.nan) for m in (TEST_ACCURACY, *FINETUNED_METRICS)},
               **{f"violation[{k}]": r.constraints.get(k) for k in result.bounds},
               **{k.name: v for k, v in zip(space.knobs, knobs)},
               "warm_start": r.warm_start, "retry_of": r.retry_of, "interrupted": r.interrupted,
               "duplicate_of": r.duplicate_of, "drawn": r.drawn, "repaired": r.repaired,
               "repaired_from": r.repaired_from, "error": r.error}


def write_trials_csv(result: SearchResult, path: Path) -> Path:
    """One row per trial (:func:`trial_rows`): metrics and violations to 6 digits, blank where missing."""
    numeric = {*METRICS, TEST_ACCURACY, *FINETUNED_METRICS, *(f"violation[{k}]" for k in result.bounds)}

    def cell(key: str, value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.6g}" if key in numeric else value

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        for i, row in enumerate(trial_rows(result)):
            if i == 0:
                w.writerow(row)
            w.writerow([cell(k, v) for k, v in row.items()])
    return path


def write_pareto(result: SearchResult, folder: Path) -> list[Path]:
    """Each front policy as ``trial_NNNNN.yaml``, with ``.haq.json`` and ``.amc.json`` beside it (and the final
    fine-tune's weights ``.pt``, which that stage writes)."""
    from picojoule.spaces.formats import to_amc, to_haq

    folder.mkdir(exist_ok=True)
    tuned = {f"{policy_name(r)}.pt" for r in result.front}
    for old in folder.glob("trial_*"):  # a resumed run's front replaces the last one (its members keep weights)
        if old.name not in tuned:
            old.unlink()
    paths = []
    for r in result.front:
        policy = result.policy(r)
        path = folder / f"{policy_name(r)}.yaml"
        policy.save(path)
        graph = result.problem.graph
        path.with_suffix(".haq.json").write_text(json.dumps(to_haq(policy, graph)))
        path.with_suffix(".amc.json").write_text(json.dumps(to_amc(policy, graph)))
        paths.append(path)
    return paths


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def write_result_json(result: SearchResult, path: Path) -> Path:
    """result.json: the winner of each objective (trial number, metrics, policy document, policy file, and with
    ``final_finetune`` its fine-tune: accuracy on both splits before and after, steps, seconds, weights file; the
    first is the run's chosen policy), the front's trial numbers and each member's validation and test accuracy,
    what the two accuracies were measured on, the repeats, the baselines, the bounds and what was searched."""
    from picojoule.search.config import SOURCE_FIELDS

    cfg, problem = result.config, result.problem
    from picojoule.search.final_finetune import finetune_rows

    tuned = {row["trial"]: row for row in finetune_rows(result)}
    winners = [{"objective": label, "trial": r.number, "metrics": _finite(r.metrics),
                "policy": result.policy(r).to_dict(), "policy_file": f"{PARETO_DIR}/{policy_name(r)}.yaml",
                **({"finetuned": tuned[r.number]} if r.number in tuned else {})}
               for label, r in result.winners.items()]
    dumped = cfg.dump()
    doc = {
        "config": {**{k: dumped.get(k) for k in SOURCE_FIELDS if k != "data"}, "cost_model": cfg.cost_model,
                   "strategy": cfg.strategy, "seed": cfg.seed, "objectives": cfg.objectives,
                   "constraints": cfg.constraints, "graph": problem.graph.name, "target_name": problem.target.name},
        "trials": sum(r.counted for r in result.records),
        "feasible": sum(r.feasible for r in result.records if r.counted),
        "winners": winners,
        "front": [r.number for r in result.front],
        "front_accuracy": {str(r.number): {split: r.metrics.get(m) for split, m in
                                           (("validation", "accuracy"), ("test", TEST_ACCURACY))}
                           for r in result.front} if cfg.needs_accuracy else {},
        "splits": problem.splits(),
        "repeats": sum(r.duplicate_of is not None for r in result.records),
        "drawn": sum(r.drawn is not None for r in result.records),
        "baselines": {name: _finite(m) for name, m in result.baselines.items()},
        "bounds": result.bounds,
        "final_finetune": dumped.get("final_finetune"),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _row(lead: list[str], metrics: dict[str, float], shown: list[str], extra: list[str]) -> str:
    return "| " + " | ".join([*lead, *(format_value(m, metrics.get(m, math.nan)) for m in shown), *extra]) + " |"


def _header(lead: list[str], shown: list[str], extra: list[str]) -> list[str]:
    cols = [*lead, *shown, *extra]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _link(r: TrialRecord) -> str:
    return f"[{r.number}]({PARETO_DIR}/{policy_name(r)}.yaml)"


def write_report(result: SearchResult, path: Path, plots: dict[str, Path]) -> Path:
    """report.md: the problem, the winners (and their final fine-tune), the front and the baselines side by side."""
    from picojoule.search.final_finetune import report_lines

    cfg, problem = result.config, result.problem
    shown = shown_metrics(result)
    heads = [column(result, m) for m in shown]
    counted = [r for r in result.records if r.counted]
    n_feasible = sum(r.feasible for r in counted)
    n_failed = sum(r.state == "fail" for r in counted)
    lines = [
        f"# picojoule search: {problem.graph.name} on {problem.target.name}",
        "",
        f"- cost model: {cfg.cost_model}; strategy: {cfg.strategy}; seed {cfg.seed}",
        f"- space: {problem.space.dim} knobs, 10^{problem.space.log10_size:.1f} policies",
        f"- trials: {len(counted)} ({n_feasible} feasible, {len(counted) - n_feasible - n_failed} infeasible, "
        f"{n_failed} failed); {sum(r.evaluated for r in counted)} measured for accuracy; "
        f"{result.repeats_line()}",
        *([f"- accuracy: {result.splits_line()}; the winners are chosen on validation"]
          if cfg.needs_accuracy else []),
        f"- objectives: {', '.join(cfg.objectives)}",
        "- constraints: " + ("; ".join(f"`{k}` (bound {format_value(k.split()[0], v)})"
                                       for k, v in result.bounds.items()) or "none"),
        "",
        "## Winners",
        "",
        "The best feasible policy for each objective; a constraint's margin is its value's distance from the "
        "bound, as a share of the bound (negative: inside it).",
        "",
    ]
    margin_cols = [f"margin `{k}`" for k in result.bounds]
    winners = result.winners
    if winners:
        lines += _header(["objective", "trial"], heads, margin_cols)
        for label, r in winners.items():
            margins = [_margin(r.constraints.get(k)) for k in result.bounds]
            lines.append(_row([label, _link(r)], r.metrics, shown, margins))
    else:
        lines.append("No feasible policy was found: loosen the constraints or give more trials.")
    lines += report_lines(result)
    lines += ["", f"## Pareto front ({len(result.front)} polic{'y' if len(result.front) == 1 else 'ies'})", ""]
    if result.front:
        lines += ["Best first by the first objective; the saving against the baseline each constraint names; the "
                  "policy per compute layer in graph order (W/A: weight/activation bits, f: float; keep: share of "
                  "output channels kept; rank: low-rank split, -: none; sparsity: share of weights zero).", ""]
        lines += _header(["trial"], heads, ["saving", "policy"])
        for r in front_order(result):
            lines.append(_row([_link(r)], r.metrics, shown, [saving(result, r),
                                                             f"`{compact_policy(result.policy(r), problem.graph)}`"]))
    lines += ["", "## Baselines", ""]
    lines += _header(["baseline"], heads, ["meets constraints"])
    for name, metrics in result.baselines.items():
        violations = problem.program.violations(metrics, result.bounds) if _has(metrics, problem) else {}
        meets = "—" if not _has(metrics, problem) else ("yes" if bool(all_hold(violations)) else "no")
        lines.append(_row([name], metrics, shown, [meets]))
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{label}]({p.relative_to(path.parent)})" for label, p in plots.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _has(metrics: dict[str, float], problem) -> bool:
    return all(c.metric in metrics for c in problem.program)


def _margin(violation: float | None) -> str:
    """A violation as a signed share of the bound: -30% is 30% inside it, +5% breaks it by 5%."""
    return "—" if violation is None else f"{violation * 100:+.0f}%"


def write_outputs(result: SearchResult) -> dict[str, Path]:
    """Write every output of the run; returns them by name."""
    from picojoule.search.plots import write_plots

    run = result.run_dir
    out = {"trials": write_trials_csv(result, run / "trials.csv")}
    pareto = write_pareto(result, run / PARETO_DIR)
    out |= {f"pareto/{p.stem}": p for p in pareto}
    plots = write_plots(result, run / PLOTS_DIR)
    out |= plots
    out["result"] = write_result_json(result, run / RESULT_FILE)
    out["report"] = write_report(result, run / "report.md", plots)
    return out
