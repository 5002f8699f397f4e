"""The Python API of the search (picojoule.search): a user's own module, DataLoader and metric, in memory or in a
run directory; DDPG in memory; the callable path against the config's top-1 path; README's example."""

from __future__ import annotations

import json
import os
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, TensorDataset

import picojoule as pj
from picojoule.errors import PicojouleError
from picojoule.hwmodels.costs import price
from picojoule.search.baselines import baseline_policy
from picojoule.search.config import config_from_dict
from picojoule.search.evaluate import accuracy
from picojoule.search.problem import build_problem

pytestmark = pytest.mark.usefixtures("single_thread")

README = Path(__file__).resolve().parents[1] / "README.md"
BOUND = "energy <= 0.8 * uniform_int8"
SPACE = {"defaults": {"w_bits": [4, 6, 8], "a_bits": [4, 6, 8], "keep": [0.5, 0.75, 1.0]}}
COST_ONLY = {"cost_model": "eyeriss", "objectives": ["minimise energy", "minimise latency"], "constraints": [BOUND],
             "progress": False}


class TinyCNN(torch.nn.Module):
    """A user's own model, unknown to picojoule."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2))
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@pytest.fixture(scope="module")
def tiny() -> tuple[TinyCNN, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model trained briefly on sklearn's digits, x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(4):
        for xb, yb in DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=64, shuffle=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval(), x[:1400], y[:1400], x[1400:], y[1400:]


def _f1(x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> float:
    return float(f1_score(y, model(x).argmax(1), average="macro"))


def test_own_module_dataloader_and_metric_in_memory(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x_train, y_train, x_test, y_test = tiny
    monkeypatch.chdir(tmp_path)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=50)
    metric = partial(_f1, x_test, y_test)
    res = pj.search(model, x_test[:1], "eyeriss", evaluate=metric, calib_data=loader, cost_model="eyeriss",
                    objectives=["maximise accuracy", "minimise energy"], constraints=[BOUND], space=SPACE,
                    warm_start=["uniform_int8"], trials=12, progress=False, metric_name="macro F1")
    assert os.listdir(tmp_path) == []  # storage=None: nothing written
    assert res.run_dir is None and sum(r.counted for r in res.records) == 12
    with torch.no_grad():
        assert res.baselines["fp32"]["accuracy"] == pytest.approx(metric(model))  # the metric, not top-1
    assert res.front and all(r.feasible and r.evaluated for r in res.front)
    # every front policy meets the bound when priced afresh
    graph, target = res.problem.graph, res.problem.target
    int8 = price(graph, target, baseline_policy("uniform_int8", graph), model="eyeriss").total_energy_j[0]
    energies = price(graph, target, [r.policy for r in res.front], model="eyeriss").total_energy_j
    assert (energies <= 0.8 * int8 * (1 + 1e-12)).all()
    assert res.best("accuracy").metrics["accuracy"] == max(r.metrics["accuracy"] for r in res.front)
    assert res.best("energy").metrics["energy"] == min(r.metrics["energy"] for r in res.front)
    frame = res.to_dataframe()
    assert frame["duplicate_of"].isna().sum() == 12  # a repeated policy is a row, not a trial
    assert {"accuracy", "energy", "latency", "state", "feasible"} <= set(frame.columns)
    assert frame["on_front"].sum() == len(res.front)
    text = repr(res)
    assert len(text) < 2000 and "12 trials" in text and "macro F1" in text and text == str(res)


def test_errors_name_the_argument(tiny) -> None:
    model, _, _, x_test, _ = tiny
    with pytest.raises(PicojouleError, match="evaluate"):
        pj.search(model, x_test[:1], "eyeriss", objectives=["maximise accuracy"], progress=False)
    with pytest.raises(PicojouleError, match="calib_data"):
        pj.search(model, x_test[:1], "eyeriss", evaluate=lambda m: 0.0, progress=False)
    with pytest.raises(PicojouleError, match="field 'strategy'"):
        pj.search(model, x_test[:1], "eyeriss", strategy="annealing", progress=False)
    with pytest.raises(PicojouleError, match="resume needs the storage"):
        pj.search(model, x_test[:1], "eyeriss", resume=True, progress=False)


def test_storage_writes_result_json_that_compile_reads(tiny, tmp_path: Path) -> None:
    from picojoule.compilers.commands import _resolve

    model, _, _, x_test, _ = tiny
    run = tmp_path / "run"
    res = pj.search(model, x_test[:1], "eyeriss", **COST_ONLY, trials=10, storage=run)
    doc = json.loads((run / "result.json").read_text())
    assert doc["front"] == [r.number for r in res.front] and doc["trials"] == 10
    assert doc["config"]["cost_model"] == "eyeriss" and doc["config"]["model"] is None
    assert [w["trial"] for w in doc["winners"]] == [r.number for r in res.winners.values()]
    assert doc["baselines"]["fp32"]["energy"] == res.baselines["fp32"]["energy"] and BOUND in doc["bounds"]
    chosen = res.chosen
    policy, spec, weights, name, config = _resolve(run, "mypkg.models:tiny", None)
    assert config == doc["config"]
    assert (spec, weights, name) == ("mypkg.models:tiny", None, f"trial_{chosen.number:05d}")
    assert policy.to_dict() == chosen.policy.to_dict()
    with pytest.raises(PicojouleError, match="already ran here"):
        pj.search(model, x_test[:1], "eyeriss", **COST_ONLY, trials=10, storage=run)
    more = pj.search(model, x_test[:1], "eyeriss", **COST_ONLY, trials=14, storage=run, resume=True)
    assert sum(r.counted for r in more.records) == 14 and more.new_trials == 4
    with pytest.raises(PicojouleError, match="started from Python"):
        pj.search.run_search(None, run, resume=True)


def test_ddpg_in_memory(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _, _, x_test, _ = tiny
    monkeypatch.chdir(tmp_path)
    res = pj.search(model, x_test[:1], "eyeriss", **COST_ONLY, strategy="ddpg", strategy_options={"warmup": 4},
                    trials=8)
    assert os.listdir(tmp_path) == [] and sum(r.counted for r in res.records) == 8
    assert res.front and all(r.metrics["energy"] <= res.bounds[BOUND] for r in res.front)
    assert sum("ddpg_actions" in t.user_attrs for t in res.study.trials) == 8


def test_callable_top1_equals_the_config_top1_path(tmp_path: Path) -> None:
    """The digits config through run_search (top-1 on its validation split selecting and on its test split
    reporting, the rest of its train split calibrating) and the same objects through picojoule.search (top-1 on
    each as evaluate and test_evaluate, the calibration split as a DataLoader): the same trials and reports."""
    config = {"model": "digits", "target": "eyeriss", "cost_model": "eyeriss", "constraints": [BOUND],
              "objectives": ["maximise accuracy", "minimise energy"], "space": SPACE, "trials": 8,
              "strategy_options": {"population_size": 4}, "evaluation": {"calibration_images": 128}}
    stored = pj.search.run_search(config, tmp_path / "run", progress=False)
    problem = build_problem(config_from_dict(config))
    calib = problem.data.calibration
    loader = DataLoader(TensorDataset(next(calib.batches(len(calib)))[0]), batch_size=97)
    res = pj.search(problem.model, problem.example, "eyeriss",
                    evaluate=partial(accuracy, data=problem.data.validation),
                    test_evaluate=partial(accuracy, data=problem.data.test), calib_data=loader, name="digits_cnn", progress=False,
                    **{k: v for k, v in config.items() if k not in ("model", "target")})

    def summary(r):
        return [(t.number, t.key, t.metrics.get("accuracy", np.nan), t.metrics.get("test_accuracy", np.nan))
                for t in r.records]

    assert stored.baselines == res.baselines
    np.testing.assert_equal(summary(res), summary(stored))
    assert any(t.evaluated for t in res.records) and all("test_accuracy" in t.metrics for t in res.front)


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code = re.search(r"## Python API\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert os.listdir(tmp_path) == []
    assert "12 trials" in capsys.readouterr().out


def test_import_picojoule_stays_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, picojoule; print('torch' in sys.modules, 'optuna' in sys.modules, callable(picojoule.search))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False", "False", "True"]
