"""The final fine-tune of the winners as a stage of the search (``final_finetune``): stored before/after figures,
weights that reload with weights_only=True and reproduce them, no second fine-tune on resume, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import picojoule as pj
from picojoule.errors import PicojouleError
from picojoule.search import problem as problem_module
from picojoule.search.config import FinalFinetuneConfig, config_from_dict
from picojoule.search.engine import SearchResult, run_search
from picojoule.search.evaluate import accuracy
from picojoule.search.final_finetune import chosen_winners
from picojoule.search.problem import build_problem
from picojoule.spaces.apply import apply_policy

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 40
DIGITS = {"model": "digits", "target": "eyeriss", "cost_model": "eyeriss",
          "objectives": ["maximise accuracy", "minimise energy"], "constraints": ["energy <= 0.5 * uniform_int8"],
          "strategy_options": {"population_size": 6}, "trials": 10, "evaluation": {"calibration_images": 128},
          "final_finetune": {"steps": STEPS, "seconds": 30}}


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory: pytest.TempPathFactory) -> SearchResult:
    return run_search(DIGITS, tmp_path_factory.mktemp("final") / "run", progress=False)


def test_the_winners_are_fine_tuned_and_measured_on_both_splits(tuned_run: SearchResult) -> None:
    res, run = tuned_run, tuned_run.run_dir
    winners = {r.number: r for r in res.winners.values()}
    stored = res.study.user_attrs["finetuned"]
    assert set(stored) == {str(n) for n in winners}  # every winner, a trial that wins twice once
    for n, r in winners.items():
        entry = stored[str(n)]
        assert entry["steps"] == STEPS and entry["seconds"] > 0 and entry["weights_file"] == f"pareto/trial_{n:05d}.pt"
        assert r.metrics["finetuned_accuracy"] == entry["accuracy"] and 0 <= entry["accuracy"] <= 1
        assert r.metrics["finetuned_test_accuracy"] == entry["test_accuracy"] and 0 <= entry["test_accuracy"] <= 1
    # KD from the uncompressed model repairs the low-energy winner (far below fp32 before it)
    low = res.best("energy")
    assert low.metrics["finetuned_accuracy"] > low.metrics["accuracy"]
    doc = json.loads((run / "result.json").read_text())
    assert doc["final_finetune"]["steps"] == STEPS
    for w in doc["winners"]:
        tuned = w["finetuned"]
        assert tuned["validation"] == {"before": w["metrics"]["accuracy"], "after": w["metrics"]["finetuned_accuracy"]}
        assert tuned["test"] == {"before": w["metrics"]["test_accuracy"],
                                 "after": w["metrics"]["finetuned_test_accuracy"]}
        assert tuned["steps"] == STEPS and (run / tuned["weights_file"]).is_file()
    report = (run / "report.md").read_text()
    assert "## Final fine-tune" in report and "validation before | validation after | test before | test after" in report
    assert all(f"(pareto/trial_{n:05d}.pt)" in report for n in winners)
    text = str(res)
    assert "final fine-tune (KD from the uncompressed model" in text and f"{STEPS} steps)" in text
    rows = {r["trial"]: r for r in csv.DictReader((run / "trials.csv").open())}
    assert {t for t, r in rows.items() if r["finetuned_accuracy"]} == {str(n) for n in winners}
    assert res.to_dataframe()["finetuned_test_accuracy"].notna().sum() == len(winners)


def test_the_weights_reload_with_weights_only_and_reproduce_the_figures(tuned_run: SearchResult) -> None:
    res = tuned_run
    problem = build_problem(config_from_dict(DIGITS))  # a fresh load: the same model and carved splits
    for r in {r.number: r for r in res.winners.values()}.values():
        path = res.run_dir / "pareto" / f"trial_{r.number:05d}.pt"
        state = torch.load(path, weights_only=True)
        policy = pj.Policy.load(path.with_suffix(".yaml"))
        model, _ = apply_policy(problem.model, problem.example, policy)
        model.load_state_dict(state)
        assert accuracy(model, problem.data.validation) == r.metrics["finetuned_accuracy"]
        assert accuracy(model, problem.data.test) == r.metrics["finetuned_test_accuracy"]
        again = pj.compress(problem.model, problem.example, policy, state_dict=path)  # no calib_data needed
        assert accuracy(again, problem.data.validation) == r.metrics["finetuned_accuracy"]
        assert accuracy(res.finetuned_model(r), problem.data.validation) == r.metrics["finetuned_accuracy"]
    with pytest.raises(PicojouleError, match="state_dict.*do not fit") as info:
        pj.compress(problem.model, problem.example, {"default": {"w_bits": 8}}, state_dict={"conv9.weight": 0})
    assert "\n" not in str(info.value)


def test_compile_takes_the_chosen_winners_fine_tuned_weights(tuned_run: SearchResult) -> None:
    from picojoule.compilers.commands import finetuned_weights

    chosen = tuned_run.chosen
    assert finetuned_weights(tuned_run.run_dir) == tuned_run.run_dir / "pareto" / f"trial_{chosen.number:05d}.pt"


def test_a_resumed_finish_does_not_fine_tune_again(tuned_run: SearchResult, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tuned_run.run_dir, run)
    calls = []
    original = problem_module.Evaluator.finetuned
    monkeypatch.setattr(problem_module.Evaluator, "finetuned",
                        lambda self, policy, *a, **k: calls.append(policy) or original(self, policy, *a, **k))
    again = run_search(None, run, resume=True, progress=False)
    assert calls == [] and again.new_trials == 0
    assert again.study.user_attrs["finetuned"] == tuned_run.study.user_attrs["finetuned"]
    assert all(r.metrics["finetuned_accuracy"] == tuned_run.best(o.split()[-1]).metrics["finetuned_accuracy"]
               for o, r in again.winners.items())
    assert sorted(p.name for p in (run / "pareto").glob("*.pt")) == sorted(
        p.name for p in (tuned_run.run_dir / "pareto").glob("*.pt"))  # rewriting pareto/ keeps the weights
    more = run_search(None, run, resume=True, progress=False, trials=14)  # new winners (only) are fine-tuned
    fresh = {r.number for r in more.winners.values()} - {int(n) for n in tuned_run.study.user_attrs["finetuned"]}
    assert len(calls) == len(fresh)
    assert set(more.study.user_attrs["finetuned"]) >= {str(r.number) for r in more.winners.values()}


def test_without_train_data_one_line_error_naming_the_field(tmp_path: Path) -> None:
    no_train = {**DIGITS, "data": {"test": {"source": "digits", "split": "test"},
                                   "calibration": {"source": "digits", "split": "train"}}}
    for config in (no_train, {**DIGITS, "objectives": ["minimise energy"], "constraints": []},
                   {**DIGITS, "final_finetune": {"augment": True}},
                   {**DIGITS, "final_finetune": {"seconds": 1, "winners": ["latency"]}}):
        with pytest.raises(PicojouleError) as info:
            run_search(config, tmp_path / "run", progress=False)
        assert "field 'final_finetune" in str(info.value) and "\n" not in str(info.value)
    assert "data.train" in str(pytest.raises(PicojouleError, run_search, no_train, tmp_path / "r").value)
    assert not (tmp_path / "run").exists()
    problem = build_problem(config_from_dict({k: v for k, v in DIGITS.items() if k != "final_finetune"}))
    with pytest.raises(PicojouleError, match="field 'final_finetune'.*train_data") as info:
        pj.search(problem.model, problem.example, "eyeriss", evaluate=lambda m: 1.0,
                  calib_data=problem.data.calibration, final_finetune={"seconds": 1}, progress=False, trials=2)
    assert "\n" not in str(info.value)


def test_in_memory_with_the_python_api(tmp_path: Path) -> None:
    from functools import partial

    problem = build_problem(config_from_dict(DIGITS))
    data = problem.data
    res = pj.search(problem.model, problem.example, "eyeriss", evaluate=partial(accuracy, data=data.validation),
                    calib_data=data.calibration, train_data=data.train, progress=False, trials=4,
                    **{k: v for k, v in DIGITS.items() if k not in ("model", "target", "trials")})
    assert res.run_dir is None and res.winners
    for r in res.winners.values():
        model = res.finetuned_model(r.number)  # weights kept in memory
        assert accuracy(model, data.validation) == r.metrics["finetuned_accuracy"]
        assert "finetuned_test_accuracy" in r.metrics  # NaN: no test_evaluate
    assert "final fine-tune" in str(res)


def test_a_trial_that_wins_twice_is_fine_tuned_once() -> None:
    one, two = SimpleNamespace(number=3), SimpleNamespace(number=5)
    result = SimpleNamespace(config=SimpleNamespace(final_finetune=FinalFinetuneConfig(seconds=1)),
                             winners={"maximise accuracy": one, "minimise energy": one, "minimise latency": two})
    assert {n: labels for n, (_, labels) in chosen_winners(result).items()} == {
        3: ["maximise accuracy", "minimise energy"], 5: ["minimise latency"]}
    result.config.final_finetune = FinalFinetuneConfig(seconds=1, winners=["latency"])
    assert list(chosen_winners(result)) == [5]


def test_evaluation_finetune_seconds_reaches_the_evaluator(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    original = problem_module.evaluate_policy

    def spy(*args, **kwargs):
        seen.append((kwargs["finetune_steps"], kwargs["finetune_seconds"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(problem_module, "evaluate_policy", spy)
    config = config_from_dict({**DIGITS, "evaluation": {"calibration_images": 128, "finetune_seconds": 0.2}})
    problem = build_problem(config)
    result = problem.evaluator()(problem.space.decode(problem.space.encode(pj.Policy.uniform(8, 8))))
    assert seen == [(0, 0.2)] and result["seconds"] >= 0.2
