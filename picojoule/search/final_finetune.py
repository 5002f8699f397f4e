"""The search's last stage (``final_finetune`` in the settings): each winner fine-tuned, then measured again.

After the search and the test measurement (:func:`~picojoule.search.engine.measure_test`), each winner of the
objectives ``final_finetune.winners`` names (the front's best per objective; a trial that wins twice is fine-tuned
once) is compressed again from the uncompressed model, repaired as during the search (BatchNorm after pruning,
activation ranges), fine-tuned with knowledge distillation from the uncompressed model on the train split
(``seconds`` and/or ``steps``; ``augment``) and measured on the validation and the test split. The figures are kept
in the study's user attribute ``finetuned`` (trial number -> accuracy and test accuracy afterwards, steps, seconds,
weights file), so a resumed or re-finished run does not fine-tune again, and are read back as each record's
``finetuned_accuracy`` and ``finetuned_test_accuracy``. The weights, a ``state_dict`` of the compressed model
(``torch.load(path, weights_only=True)``), go beside the policy as ``pareto/trial_NNNNN.pt``; a search in memory
keeps them in memory. :func:`finetuned_model` rebuilds the fine-tuned model from either.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from picojoule.errors import PicojouleError
from picojoule.search.journal import (FINETUNED, FINETUNED_ACCURACY, FINETUNED_TEST_ACCURACY, TEST_ACCURACY,
                                      TrialRecord, finetuned_metrics)
from picojoule.search.metrics import format_value
from picojoule.search.report import PARETO_DIR, policy_name

if TYPE_CHECKING:
    from torch import nn

    from picojoule.search.engine import SearchResult


def chosen_winners(result: SearchResult) -> dict[int, tuple[TrialRecord, list[str]]]:
    """The winners the settings fine-tune: trial number -> (record, the objectives it wins), in objective order."""
    settings = result.config.final_finetune
    out: dict[int, tuple[TrialRecord, list[str]]] = {}
    if settings is None:
        return out
    for label, r in result.winners.items():
        if settings.chooses(label):
            out.setdefault(r.number, (r, []))[1].append(label)
    return out


def stored(result: SearchResult) -> dict[str, dict[str, Any]]:
    """The study's final fine-tunes: trial number (a string) -> figures."""
    return dict((result.study.user_attrs.get(FINETUNED) if result.study is not None else None) or {})


def finetune_winners(result: SearchResult, progress: bool = False) -> int:
    """Fine-tune the chosen winners that have no stored fine-tune (or whose weights file is gone), store the
    figures in the study and on the records' metrics; returns how many were fine-tuned."""
    settings, problem = result.config.final_finetune, result.problem
    if settings is None or not result.config.needs_accuracy or problem.data is None:
        return 0
    import torch

    done = stored(result)
    evaluator, tuned = None, 0
    for number, (record, labels) in chosen_winners(result).items():
        entry = done.get(str(number))
        if entry and (result.run_dir is None or (result.run_dir / entry["weights_file"]).is_file()):
            continue
        evaluator = evaluator or problem.evaluator()
        if progress:
            tqdm.write(f"final fine-tune of trial {number} (winner of {', '.join(labels)})", file=sys.stderr)
        model, entry = evaluator.finetuned(problem.space.decode(record.vec), settings.steps, settings.seconds,  # type: ignore[arg-type]
                                           settings.augment, progress, settings.options())
        entry["augment"] = settings.augment
        entry["options"] = settings.options()
        if result.run_dir is not None:
            path = result.run_dir / PARETO_DIR / f"{policy_name(record)}.pt"
            path.parent.mkdir(exist_ok=True)
            torch.save(model.state_dict(), path)  # the weights first: a stored entry always has its file
            entry["weights_file"] = f"{PARETO_DIR}/{path.name}"
        else:
            result.finetuned_states[number] = model.state_dict()
            entry["weights_file"] = None
        done[str(number)] = entry
        result.study.set_user_attr(FINETUNED, done)
        tuned += 1
    for r in result.records:
        r.metrics.update(finetuned_metrics(done.get(str(r.number))))
    return tuned


def finetuned_model(result: SearchResult, number: int) -> nn.Module:
    """The fine-tuned model of winner ``number``: its policy applied to the uncompressed model, then the stored
    weights loaded (from ``pareto/trial_NNNNN.pt``, or from memory for a search in memory); eval mode."""
    from picojoule.models import load_state
    from picojoule.spaces.apply import apply_policy

    entry, problem = stored(result).get(str(number)), result.problem
    if entry is None:
        raise PicojouleError(f"finetuned_model: trial {number} has no final fine-tune (fine-tuned: "
                             f"{', '.join(stored(result)) or 'none'})")
    if problem.model is None:
        raise PicojouleError("finetuned_model: the search has no torch model")
    file = entry.get("weights_file")
    state = result.run_dir / file if file else result.finetuned_states[number]  # type: ignore[operator]
    record = next(r for r in result.records if r.number == number)
    model, _ = apply_policy(problem.model, problem.example, problem.space.decode(record.vec), graph=problem.graph)
    linear_quant = problem.config.evaluation.linear_quant
    if linear_quant is not None:
        from picojoule.spaces.linear_ptq import recipe_shells

        recipe_shells(model, linear_quant.recipe())
    return load_state(model, state, f"trial {number}'s fine-tuned weights").eval()


def finetune_rows(result: SearchResult) -> list[dict[str, Any]]:
    """One row per fine-tuned winner: trial, the objectives it wins, accuracy on each split before and after the
    fine-tune (None: not measured), steps, seconds, augment and weights file."""
    done = stored(result)
    rows = []
    for number, (r, labels) in chosen_winners(result).items():
        entry = done.get(str(number))
        if entry is None:
            continue
        after = finetuned_metrics(entry)
        rows.append({"trial": number, "objectives": labels,
                     "validation": {"before": _none(r.metrics.get("accuracy")), "after": _none(after[FINETUNED_ACCURACY])},
                     "test": {"before": _none(r.metrics.get(TEST_ACCURACY)), "after": _none(after[FINETUNED_TEST_ACCURACY])},
                     **{k: entry.get(k) for k in ("steps", "seconds", "augment", "weights_file")}})
    return rows


def _none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def budget_text(result: SearchResult) -> str:
    """The settings' budget in words: ``KD on data.train, 2 s or 500 steps per winner, no augmentation``."""
    s = result.config.final_finetune
    assert s is not None
    parts = [f"{s.seconds:g} s" if s.seconds else None, f"{s.steps} steps" if s.steps else None]
    how = "" if (s.loss, s.optimizer, s.lr, s.qat) == ("kl", "sgd", None, False) else (
        f" ({s.loss} loss, {s.optimizer}" + (f" lr {s.lr:g}" if s.lr else "")
        + (", quantization-aware" + (" with scales" if s.qat_scales else "") if s.qat else "") + ")")
    return (f"KD from the uncompressed model{how} on the train split, {' or '.join(p for p in parts if p)} per "
            f"winner, {'with' if s.augment else 'no'} augmentation")


def _change(split: dict[str, float | None]) -> str:
    return f"{format_value('accuracy', split['before'])} -> {format_value('accuracy', split['after'])}"


def summary_lines(result: SearchResult) -> list[str]:
    """The summary's lines on the final fine-tune (none without the stage)."""
    if result.config.final_finetune is None or not result.front:
        return []
    lines = [f"  final fine-tune ({budget_text(result)}):"]
    for row in finetune_rows(result):
        lines.append(f"    trial {row['trial']} ({', '.join(row['objectives'])}): validation {_change(row['validation'])}"
                     f", test {_change(row['test'])} ({row['seconds']:.1f} s, {row['steps']} steps)")
    return lines


def report_lines(result: SearchResult) -> list[str]:
    """report.md's section on the final fine-tune (none without the stage)."""
    if result.config.final_finetune is None:
        return []
    lines = ["", "## Final fine-tune", "",
             f"Each winner compressed again and fine-tuned ({budget_text(result)}), then measured again on both "
             "splits; the weights are a `state_dict` of the compressed model (`torch.load(path, weights_only=True)`; "
             "`pj.compress(model, example, policy, state_dict=path)` rebuilds it).", ""]
    rows = finetune_rows(result)
    if not rows:
        return [*lines, "No winner to fine-tune."]
    lines += ["| trial | winner of | validation before | validation after | test before | test after | seconds | "
              "steps | weights |", "|" + "---|" * 9]
    for row in rows:
        v, t, file = row["validation"], row["test"], row["weights_file"]
        lines.append(f"| {row['trial']} | {', '.join(row['objectives'])} | "
                     + " | ".join(format_value("accuracy", x) for x in (v["before"], v["after"], t["before"], t["after"]))
                     + f" | {row['seconds']:.1f} | {row['steps']} | " + (f"[{file.split('/')[-1]}]({file})" if file
                                                                       else "in memory") + " |")
    return lines
