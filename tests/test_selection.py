"""Honest selection: a validation split selects, the test split only reports (measured once, after the search);
a policy proposed again is told from the journal and not counted against the budget."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from picojoule.search import problem as problem_module
from picojoule.search.config import config_from_dict
from picojoule.search.engine import REPEAT_PATIENCE, run_search
from picojoule.search.journal import knob_params
from picojoule.search.pareto import pareto_front
from picojoule.search.problem import build_problem, load_data
from picojoule.search.strategies.optuna_samplers import OptunaStrategy

pytestmark = pytest.mark.usefixtures("single_thread")

#: 2 choices for 2 of the digits CNN's knob kinds, the rest pinned: 16 policies, so samplers repeat themselves
SMALL = {"defaults": {"w_bits": [4, 8], "a_bits": [8], "keep": [1.0], "sparsity": [0.0, 0.5]},
         "layers": {"*": {"rank": [0]}}}
DIGITS = {"model": "digits", "target": "eyeriss", "cost_model": "eyeriss",
          "objectives": ["maximise accuracy", "minimise energy"], "constraints": ["energy <= 0.6 * uniform_int8"],
          "strategy_options": {"population_size": 4}, "trials": 8, "evaluation": {"calibration_images": 128},
          "space": {"defaults": {"w_bits": [4, 8], "a_bits": [4, 8], "keep": [0.5, 1.0], "sparsity": [0.0]},
                    "layers": {"*": {"rank": [0]}}}}


class SplitCalls:
    """Counts the evaluator's calls per split, and how many trials had finished at each test call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.finished, self.test_at = 0, []
        original = problem_module.Evaluator.__call__

        def call(evaluator, policy, split="validation", rung=-1):
            if split == "test":
                self.test_at.append(self.finished)
            return original(evaluator, policy, split, rung)

        monkeypatch.setattr(problem_module.Evaluator, "__call__", call)

    def callback(self, record) -> None:
        self.finished += 1


def _npz(path: Path, n_train: int = 60, n_test: int = 20) -> Path:
    """Images that each carry their index (so contents tell splits apart)."""
    rng = np.random.default_rng(0)
    x_train = (np.arange(n_train)[:, None, None, None] + np.zeros((1, 8, 8, 3))).astype(np.uint8)
    x_test = (200 + np.arange(n_test)[:, None, None, None] + np.zeros((1, 8, 8, 3))).astype(np.uint8)
    np.savez(path, x_train=x_train, y_train=rng.integers(0, 10, n_train), x_test=x_test,
             y_test=rng.integers(0, 10, n_test))
    return path


def _ids(data) -> set[int]:
    return {int(v) for v in data.x[:, 0, 0, 0]}


def test_validation_is_carved_with_the_seed_and_unseen(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz")
    base = {"model": "digits", "target": "eyeriss", "data": str(path)}
    data = load_data(config_from_dict(base))
    val, cal, train, test = _ids(data.validation), _ids(data.calibration), _ids(data.train), _ids(data.test)
    assert len(val) == 30 and val | cal == set(range(60)) and not val & cal  # default: min(1000, half)
    assert cal == train and not (val | cal) & test  # fine-tune data loses the same images; test untouched
    assert sorted(val) == data.carved["indices"].tolist() and data.carved["from"] == "train"
    assert _ids(load_data(config_from_dict(base)).validation) == val  # same seed, same draw
    assert _ids(load_data(config_from_dict({**base, "seed": 1})).validation) != val
    sized = load_data(config_from_dict({**base, "data": {"source": str(path), "validation": {"images": 12}}}))
    assert len(sized.validation) == 12 and len(sized.calibration) == 48
    from_test = load_data(config_from_dict({**base, "data": {"source": str(path),
                                                             "validation": {"carve": "test", "images": 5}}}))
    assert len(from_test.test) == 15 and not _ids(from_test.validation) & _ids(from_test.test)
    assert len(from_test.calibration) == 60
    given = load_data(config_from_dict({**base, "data": {"test": str(path), "calibration": {"source": str(path),
                                                         "split": "train"}, "validation": str(path)}}))
    assert given.carved is None and len(given.calibration) == 60 and len(given.validation) == 20
    from picojoule.errors import PicojouleError

    with pytest.raises(PicojouleError, match="field 'data.validation.images'"):
        load_data(config_from_dict({**base, "data": {"source": str(path), "validation": {"images": 60}}}))


def test_selection_on_validation_report_on_test_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = SplitCalls(monkeypatch)
    run = tmp_path / "run"
    res = run_search(DIGITS, run, progress=False, callbacks=[calls.callback])
    finished = calls.finished
    # the test split is measured only after the loop: once per front member and per baseline
    assert calls.test_at == [finished] * (len(res.front) + len(res.baselines))
    # the front is the validation front; every member (so every winner) carries a test accuracy beside it
    assert [r.number for r in res.front] == [r.number for r in pareto_front(res.records, res.problem.objectives,
                                                                              True)]
    assert res.front and all(0 <= r.metrics["test_accuracy"] <= 1 for r in res.front)
    assert any(r.metrics["test_accuracy"] != r.metrics["accuracy"] for r in res.front)
    assert res.best("accuracy").metrics["accuracy"] == max(r.metrics["accuracy"] for r in res.front)
    assert all("test_accuracy" in m for m in res.baselines.values())
    doc = json.loads((run / "result.json").read_text())
    assert set(doc["front_accuracy"]) == {str(r.number) for r in res.front}
    assert all(v["test"] is not None and v["validation"] is not None for v in doc["front_accuracy"].values())
    assert all("test_accuracy" in w["metrics"] and "accuracy" in w["metrics"] for w in doc["winners"])
    n_val = len(res.problem.data.validation)
    assert doc["splits"]["validation"]["images"] == n_val and doc["splits"]["test"]["images"] == 400
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert {r["trial"] for r in rows if r["test_accuracy"]} == {str(r.number) for r in res.front}
    text = str(res)
    assert f"validation ({n_val} images drawn from data.train with seed 0)" in text and "400 images" in text
    assert "accuracy (test)" in text and "accuracy (validation)" in text
    report = (run / "report.md").read_text()
    assert f"accuracy (validation, {n_val} images)" in report and "accuracy (test, 400 images)" in report
    frame = res.to_dataframe()
    assert frame["test_accuracy"].notna().sum() == len(res.front)

    # resume: the same carve, and no stored test accuracy measured again
    stored = {r.number: r.metrics["test_accuracy"] for r in res.front}
    calls.test_at.clear()
    more = run_search(None, run, resume=True, progress=False, trials=12, callbacks=[calls.callback])
    np.testing.assert_array_equal(more.problem.data.carved["indices"], res.problem.data.carved["indices"])
    fresh = [r for r in more.front if r.number not in stored]
    assert len(calls.test_at) == len(fresh)  # baselines were stored too
    assert all(r.metrics["test_accuracy"] == stored[r.number] for r in more.front if r.number in stored)
    assert all("test_accuracy" in r.metrics for r in more.front)


def test_python_api_test_evaluate_reports_after_the_search(tmp_path: Path) -> None:
    import picojoule as pj
    from functools import partial

    from picojoule.search.evaluate import accuracy

    problem = build_problem(config_from_dict(DIGITS))
    finished, test_at = [0], []

    def on_test(model) -> float:
        test_at.append(finished[0])
        return accuracy(model, problem.data.test)

    res = pj.search(problem.model, problem.example, "eyeriss", evaluate=partial(accuracy, data=problem.data.validation),
                    test_evaluate=on_test, calib_data=problem.data.calibration, progress=False,
                    callbacks=[lambda r: finished.__setitem__(0, finished[0] + 1)],
                    **{k: v for k, v in DIGITS.items() if k not in ("model", "target")})
    assert test_at == [finished[0]] * (len(res.front) + len(res.baselines))
    assert all("test_accuracy" in r.metrics for r in res.front)
    assert "test_evaluate callable" in str(res)
    without = pj.search(problem.model, problem.example, "eyeriss", evaluate=partial(accuracy, data=problem.data.test),
                        calib_data=problem.data.calibration, progress=False,
                        **{k: v for k, v in DIGITS.items() if k not in ("model", "target", "trials")}, trials=3)
    assert not any("test_accuracy" in r.metrics for r in without.records) and "not measured" in str(without)


# ------------------------------------------------------------------------------------------ repeats


def _distinct_counted(res) -> tuple[int, int]:
    counted = [r for r in res.records if r.counted]
    return len(counted), len({r.key for r in counted})


@pytest.mark.parametrize("accuracy", [False, True])
def test_a_repeated_policy_is_not_counted(tmp_path: Path, accuracy: bool) -> None:
    objectives = ["maximise accuracy", "minimise energy"] if accuracy else ["energy", "size"]
    cfg = {**DIGITS, "objectives": objectives, "constraints": [], "space": SMALL, "trials": 10}
    res = run_search(cfg, tmp_path / "run", progress=False)
    assert _distinct_counted(res) == (10, 10) and res.new_trials == 10
    repeats = [r for r in res.records if r.duplicate_of is not None]
    assert repeats, "the sampler should repeat itself in a space of 16 policies"
    by_number = {r.number: r for r in res.records}
    for r in repeats:  # told the first trial's result
        first = by_number[r.duplicate_of]
        assert first.counted and first.key == r.key and first.number < r.number
        assert np.isclose(r.metrics.get("accuracy", 0), first.metrics.get("accuracy", 0), equal_nan=True)
    study_values = {t.number: t.values for t in res.study.trials}
    assert all(study_values[r.number] == study_values[r.duplicate_of] for r in repeats)
    if accuracy:
        assert res.evaluations == sum(r.evaluated for r in res.records if r.counted)  # a repeat is not measured
    assert f"{len(repeats)} repeated proposals not counted" in str(res)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["repeats"] == len(repeats)
    rows = list(csv.DictReader((tmp_path / "run" / "trials.csv").open()))
    assert sum(bool(r["duplicate_of"]) for r in rows) == len(repeats)


def test_a_strategy_that_only_repeats_gets_untried_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sampler stuck on one policy: every REPEAT_PATIENCE repeats the engine queues an untried one; a space
    whose every policy was tried ends the search."""

    def stuck(self):
        if not self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            self.study.enqueue_trial(knob_params(self.space, np.zeros(self.space.dim, dtype=np.int64)))
        return self.record()

    monkeypatch.setattr(OptunaStrategy, "ask", stuck)
    cfg = {**DIGITS, "objectives": ["energy"], "constraints": [], "space": SMALL, "trials": 5}
    res = run_search(cfg, tmp_path / "stuck", progress=False)
    assert _distinct_counted(res) == (5, 5)
    drawn = [r for r in res.records if r.drawn]
    assert len(drawn) == 4 and all(r.counted for r in drawn)
    assert sum(r.duplicate_of is not None for r in res.records) == 4 * REPEAT_PATIENCE
    tiny = {**SMALL, "defaults": {**SMALL["defaults"], "sparsity": [0.0]}}  # 4 policies
    res = run_search({**cfg, "space": tiny, "trials": 10}, tmp_path / "tiny", progress=False)
    assert _distinct_counted(res) == (4, 4)  # every policy tried: the search stops short of the budget


# ------------------------------------------------------------------------------------------ repair


def test_repair_measures_the_lowered_policy_instead_of_spending_a_trial_on_an_infeasible_one(tmp_path: Path) -> None:
    """Under a tight bound most proposals are infeasible. With repair each one is lowered onto the bounds (HAQ's
    budget adjustment) and that policy is measured as the next trial: the infeasible proposal is told (NSGA-II
    learns from it) but not counted, so the budget buys measurements; a resumed search keeps the accounting."""
    cfg = {**DIGITS, "constraints": ["energy <= 0.45 * uniform_int8"], "trials": 8, "warm_start": []}
    plain = run_search(cfg, tmp_path / "plain", progress=False)
    fixed = run_search({**cfg, "repair": True}, tmp_path / "repair", progress=False)
    counted = [r for r in fixed.records if r.counted]
    repaired = [r for r in fixed.records if r.repaired]
    assert len(counted) == 8 and repaired, "a bound this tight should make the sampler propose infeasible policies"
    assert all(not r.counted and not r.feasible and not r.evaluated for r in repaired)
    by_from = {r.repaired_from: r for r in fixed.records if r.repaired_from is not None}
    for r in repaired:  # each repaired proposal led to a measured, feasible, lowered policy
        lowered = by_from[r.number]
        assert lowered.counted and lowered.feasible and lowered.evaluated and lowered.number > r.number
        assert (lowered.vec <= r.vec).all() and (lowered.vec < r.vec).any()  # only lowered (choices are ordered)
    assert sum(r.evaluated for r in counted) > sum(r.evaluated for r in plain.records if r.counted)
    assert f"{len(repaired)} infeasible proposals lowered onto the bounds (repair)" in str(fixed)
    rows = list(csv.DictReader((tmp_path / "repair" / "trials.csv").open()))
    assert sum(r["repaired"] == "True" for r in rows) == len(repaired)
    assert {int(r["repaired_from"]) for r in rows if r["repaired_from"]} == {r.number for r in repaired}
    again = run_search({**cfg, "repair": True, "trials": 10}, tmp_path / "repair", resume=True, progress=False)
    assert sum(r.counted for r in again.records) == 10 and again.new_trials == 2
    assert sum(r.repaired for r in again.records) >= len(repaired)


def test_resuming_a_run_the_cost_model_now_prices_differently_is_refused(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed run whose stored trials the cost model now prices differently (an upgrade, an edited target)
    would mix two cost models in one front: one line names the trial and the metric, and nothing is written."""
    from picojoule.errors import PicojouleError
    from picojoule.search.problem import Problem

    cfg = {**DIGITS, "trials": 4}
    run_search(cfg, tmp_path / "run", progress=False)
    journal = (tmp_path / "run" / "journal.log").read_bytes()
    original = Problem.priced

    def dearer(self, policies):
        metrics, result = original(self, policies)
        return {**metrics, "energy": metrics["energy"] * 1.01}, result

    monkeypatch.setattr(Problem, "priced", dearer)
    with pytest.raises(PicojouleError, match=r"resume: trial \d+ was priced at energy .* the cost model or the "
                                             r"target changed") as e:
        run_search({**cfg, "trials": 6}, tmp_path / "run", resume=True, progress=False)
    assert "\n" not in str(e.value)
    assert (tmp_path / "run" / "journal.log").read_bytes() == journal
    monkeypatch.setattr(Problem, "priced", original)
    again = run_search({**cfg, "trials": 6}, tmp_path / "run", resume=True, progress=False)
    assert sum(r.counted for r in again.records) == 6
