"""Search: config and constraint parsing, real searches on the digits default, resume after SIGKILL."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from picojoule.errors import PicojouleError
from picojoule.graph import build_graph
from picojoule.hwmodels.costs import price
from picojoule.search.baselines import baseline_policy
from picojoule.search.config import load_config
from picojoule.search.constraints import parse_constraint
from picojoule.search.engine import SearchResult, run_search
from picojoule.search.journal import TrialRecord
from picojoule.policy import LayerPolicy, Policy

REPO = Path(__file__).resolve().parents[1]
DIGITS = {
    "model": "digits", "target": "eyeriss", "cost_model": "eyeriss",
    "objectives": ["maximise accuracy", "minimise energy"],
    "constraints": ["energy <= 0.5 * uniform_int8"],
    "strategy": "nsga2", "strategy_options": {"population_size": 8},
    "trials": 20, "seed": 0, "evaluation": {"calibration_images": 128},
}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> SearchResult:
    return run_search(DIGITS, tmp_path_factory.mktemp("search") / "run", progress=False)


def _summary(records: list[TrialRecord]) -> list[tuple]:
    acc = [r.metrics.get("accuracy", np.nan) for r in records]
    return [(r.number, r.state, r.key, None if np.isnan(a) else round(a, 6), round(r.metrics["energy"] * 1e12, 3))
            for r, a in zip(records, acc)]


# ------------------------------------------------------------------------------------------ constraints


@pytest.mark.parametrize("text, metric, upper, value, factor, baseline", [
    ("energy <= 0.5 * uniform_int8", "energy", True, None, 0.5, "uniform_int8"),
    ("energy<=0.5x uniform_int4", "energy", True, None, 0.5, "uniform_int4"),
    ("latency <= 2 ms", "latency", True, 2e-3, 1.0, None),
    ("latency < 150 µs", "latency", True, 150e-6, 1.0, None),
    ("size <= 100 KB", "size", True, 1e5, 1.0, None),
    ("size <= 1 MiB", "size", True, 2**20, 1.0, None),
    ("accuracy_drop <= 0.5", "accuracy_drop", True, 0.5, 1.0, None),
    ("accuracy >= 97.5 %", "accuracy", False, 0.975, 1.0, None),
    ("accuracy >= 0.99 * fp32", "accuracy", False, None, 0.99, "fp32"),
    ("co2e <= 2 ug", "co2e", True, 2e-6, 1.0, None),
    ("macs <= 1.5 M", "macs", True, 1.5e6, 1.0, None),
    ("latency <= uniform_w4a8", "latency", True, None, 1.0, "uniform_w4a8"),
])
def test_constraints_parse(text, metric, upper, value, factor, baseline) -> None:
    c = parse_constraint(text)
    assert (c.metric, c.upper, c.factor, c.baseline) == (metric, upper, factor, baseline)
    assert c.value == pytest.approx(value) if value is not None else c.value is None
    assert parse_constraint(c.text) == c  # the canonical text reads back the same


def test_accuracy_drop_of_exactly_the_bound_holds() -> None:
    from picojoule.search.metrics import accuracy_metrics

    drop = accuracy_metrics(0.9625, 0.9825)["accuracy_drop"]  # 2.0000000000000018 before rounding
    assert drop == 2.0 and parse_constraint("accuracy_drop <= 2").violation(drop, 2.0) <= 0


def test_constraint_violation_is_relative() -> None:
    c = parse_constraint("energy <= 0.5 * uniform_int8")
    bound = c.bound({"uniform_int8": {"energy": 4e-6}})
    assert bound == pytest.approx(2e-6)
    assert c.violation(np.array([1e-6, 2e-6, 3e-6]), bound) == pytest.approx([-0.5, 0.0, 0.5])
    lower = parse_constraint("accuracy >= 0.9")
    assert lower.violation(0.95, 0.9) < 0 < lower.violation(0.8, 0.9)


# ------------------------------------------------------------------------------------------ bad configs


BAD_CONFIGS = [
    ("target: eyeriss\ntrials: 0\n", "trials"),
    ("target: nowhere\n", "target"),
    ("target: eyeriss\nstrategy: annealing\n", "strategy"),
    ("target: eyeriss\nobjectives: [maximise energy]\n", "objectives"),
    ("target: eyeriss\nobjectives: [minimise happiness]\n", "objectives"),
    ("target: eyeriss\nconstraints: ['energy <= 2']\n", "constraints[0]"),
    ("target: eyeriss\nconstraints: ['latency <= 2 ms', 'energy <= 0.5 * int8']\n", "constraints[1]"),
    ("target: eyeriss\nconstraints: ['accuracy <= 0.9']\n", "constraints[0]"),
    ("target: eyeriss\nconstraints: ['speed <= 2 ms']\n", "constraints[0]"),
    ("target: eyeriss\nevaluation: {calibration_imgs: 64}\n", "evaluation.calibration_imgs"),
    ("target: eyeriss\nseeds: 3\n", "seeds"),
    ("target: eyeriss\nmodel: resnet20\n", "data"),
    ("target: eyeriss\nmodel: net.onnx\n", "model"),
    ("target: eyeriss\nmodel: not a model\n", "model"),
    ("target: eyeriss\nwarm_start: [int8]\n", "warm_start"),
    ("model: digits\n", "target"),
    ("target: eyeriss\nbackend: slurm\n", "backend"),
    ("target: [eyeriss\n", None),  # not YAML
    ("- target\n", None),  # not a mapping
]


@pytest.mark.parametrize("text, field", BAD_CONFIGS)
def test_bad_config_one_line_error(tmp_path: Path, text: str, field: str | None) -> None:
    path = tmp_path / "search.yaml"
    path.write_text(text)
    with pytest.raises(PicojouleError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    if field:
        assert f"field '{field}'" in msg


def test_good_config_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({**DIGITS, "constraints": ["energy<=0.5*uniform_int8", "latency <= 2ms"]}))
    cfg = load_config(path)
    assert cfg.constraints == ["energy <= 0.5 * uniform_int8", "latency <= 2 ms"]
    assert cfg.needs_accuracy and cfg.data_config.test["split"] == "test"


@pytest.mark.parametrize("change, field", [
    ({"space": {"defaults": {"keep": [1.5]}}}, "space"),
    ({"strategy_options": {"population": 4}}, "strategy_options"),
])
def test_bad_setting_found_at_build_time(tmp_path: Path, change: dict, field: str) -> None:
    with pytest.raises(PicojouleError) as info:
        run_search({**DIGITS, **change}, tmp_path / "run", progress=False)
    assert f"field '{field}'" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing is written before the problem is known to be sound


def test_run_dir_misuse(tmp_path: Path) -> None:
    with pytest.raises(PicojouleError, match="nothing to resume"):
        run_search(None, tmp_path / "empty", resume=True, progress=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "journal.log").write_text("")
    with pytest.raises(PicojouleError, match="already ran here"):
        run_search(DIGITS, tmp_path / "used", progress=False)


# ------------------------------------------------------------------------------------------ searches


def test_cost_only_search_all_strategies(tmp_path: Path) -> None:
    """Without accuracy nothing is evaluated; every strategy runs and respects a hardware bound."""
    for strategy in ("tpe", "gp", "random", "nsga2"):
        cfg = {**DIGITS, "objectives": ["energy", "size"], "constraints": ["latency <= 0.8 * uniform_int8"],
               "strategy": strategy, "strategy_options": {}, "trials": 12}
        res = run_search(cfg, tmp_path / strategy, progress=False)
        assert res.evaluations == 0 and sum(r.counted for r in res.records) == 12 and res.front
        assert all(r.metrics["latency"] <= 0.8 * res.baselines["uniform_int8"]["latency"] for r in res.front)


def test_warm_starts_are_lowered_onto_the_hardware_bounds(tmp_path: Path) -> None:
    """uniform_int8 breaks `energy <= 0.5 * uniform_int8`: the warm start is int8 lowered just enough to fit."""
    cfg = {**DIGITS, "objectives": ["energy", "size"], "warm_start": ["uniform_int8", "fp32"], "trials": 3}
    res = run_search(cfg, tmp_path / "warm", progress=False)
    first, second = res.records[:2]
    assert first.warm_start == "uniform_int8 lowered to the hardware bounds" and first.feasible
    assert second.warm_start == "fp32 lowered to the hardware bounds" and second.feasible
    bound = 0.5 * res.baselines["uniform_int8"]["energy"]
    assert 0.8 * bound < first.metrics["energy"] <= bound  # lowered just enough, not to the floor
    from picojoule.search.projection import knob_capacity

    space = res.problem.space
    int8 = space.encode(baseline_policy("uniform_int8", res.problem.graph))
    caps = [knob_capacity(k, space) for k in space.knobs]
    lowered = [cap[i] for cap, i in zip(caps, first.vec)]
    original = [cap[i] for cap, i in zip(caps, int8)]
    assert all(a <= b for a, b in zip(lowered, original)) and lowered != original  # knobs were only lowered


def test_digits_search_finds_feasible_front(digits_run: SearchResult) -> None:
    res = digits_run
    assert sum(r.counted for r in res.records) == 20 and res.new_trials == 20
    assert res.front and all(r.feasible and r.evaluated for r in res.front)
    assert all(0.0 <= r.metrics["accuracy"] <= 1.0 for r in res.front)
    best = res.study.best_trials  # Optuna's feasible Pareto set agrees (up to repeated policies)
    assert {r.number for r in res.front} <= {t.number for t in best}
    assert {r.key for r in res.front} == {tuple(t.params[k.name] for k in res.problem.space.knobs) for t in best}
    # two stages: trials over the hardware bound were never evaluated
    over = [r for r in res.records if r.state == "complete" and r.constraints[DIGITS["constraints"][0]] > 0]
    assert all(not r.evaluated for r in over)
    assert res.evaluations <= 20 - len([r for r in over if r.counted])
    run = res.run_dir
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert sum(not r["duplicate_of"] for r in rows) == 20 and {r["on_front"] for r in rows} == {"True", "False"}
    assert sorted(p.name for p in (run / "pareto").glob("*.yaml")) == sorted(
        f"trial_{r.number:05d}.yaml" for r in res.front)
    assert len(list((run / "pareto").glob("*.haq.json"))) == len(res.front)
    report = (run / "report.md").read_text()
    assert "## Pareto front" in report and "uniform_int8" in report and "maximise accuracy" in report
    for png in ("front.png", "policy.png", "energy.png"):
        assert (run / "plots" / png).stat().st_size > 10_000
    assert yaml.safe_load((run / "config.yaml").read_text())["trials"] == 20


def test_pareto_policies_recosted_meet_constraint(digits_run: SearchResult) -> None:
    """Re-price each exported policy from its YAML, independently of the engine."""
    from picojoule.models import load_torch_model

    model, example = load_torch_model("digits")
    graph = build_graph(model, example)
    int8 = Policy(LayerPolicy(), {layer.name: LayerPolicy(8, 8) for layer in graph.compute_layers()})
    bound = 0.5 * price(graph, "eyeriss", int8, model="eyeriss").total_energy_j[0]
    files = sorted((digits_run.run_dir / "pareto").glob("trial_*.yaml"))
    assert files
    for path in files:
        policy = Policy.load(path)
        energy = price(graph, "eyeriss", policy, model="eyeriss").total_energy_j[0]
        assert energy <= bound, path.name
        assert energy == pytest.approx(policy.meta["metrics"]["energy"])
        assert policy.provenance["trial"] == int(path.stem.split("_")[1])


@pytest.mark.slow
def test_same_seed_same_front(digits_run: SearchResult, tmp_path: Path) -> None:
    again = run_search(DIGITS, tmp_path / "again", progress=False)
    assert _summary(again.records) == _summary(digits_run.records)
    assert [r.number for r in again.front] == [r.number for r in digits_run.front]


_KILL_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from picojoule.search import problem
from picojoule.search.engine import run_search

calls, original = [0], problem.Evaluator.__call__
def stalling(self, policy, *args, **kwargs):
    calls[0] += 1
    if calls[0] == {stall_at}:
        print("STALLED", flush=True)
        time.sleep(600)
    return original(self, policy, *args, **kwargs)
problem.Evaluator.__call__ = stalling
run_search({config!r}, {out!r}, progress=False)
"""


@pytest.mark.slow
def test_resume_after_sigkill_loses_and_repeats_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from picojoule.search import problem as problem_module

    out = tmp_path / "run"
    config = {**DIGITS, "trials": 14}
    script = textwrap.dedent(_KILL_SCRIPT).format(stall_at=2 + 7, config=config, out=str(out))  # 2 baselines first
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STALLED", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "journal.log")))
    before = optuna.load_study(study_name="picojoule", storage=storage).get_trials()
    finished = {t.number: t for t in before if t.state.is_finished()}
    running = [t for t in before if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == 1 and 6 <= len(finished) < 14

    evaluated: list[str] = []
    original = problem_module.Evaluator.__call__

    def counting(self, policy, split="validation", rung=-1):
        if split == "validation":  # the test split measures the front once after the search
            evaluated.append(repr(sorted(policy.layers.items())))
        return original(self, policy, split, rung)

    monkeypatch.setattr(problem_module.Evaluator, "__call__", counting)
    res = run_search(None, out, resume=True, progress=False)

    by_number = {r.number: r for r in res.records}
    for number, t in finished.items():  # nothing lost: every finished trial as it was
        r = by_number[number]
        assert r.state == t.state.name.lower() and r.vec.tolist() == [t.params[k.name] for k in res.problem.space.knobs]
        assert (t.values is None) or r.metrics["energy"] == pytest.approx(t.user_attrs["metrics"]["energy"])
    stalled = by_number[running[0].number]
    assert stalled.state == "fail" and stalled.interrupted
    retries = [r for r in res.records if r.retry_of == stalled.number]
    assert len(retries) == 1 and retries[0].key == stalled.key and retries[0].state == "complete"
    assert sum(r.counted for r in res.records) == 14  # the budget, exactly
    assert res.new_trials == 14 - sum("duplicate_of" not in t.user_attrs for t in finished.values())
    # nothing repeated: no policy measured before the kill was measured again
    before_measured = {repr(sorted(res.policy(by_number[n]).layers.items())) for n, t in finished.items()
                       if t.user_attrs.get("evaluated")}
    assert len(evaluated) == res.evaluations and not before_measured & set(evaluated)
    # resuming a finished run does nothing
    assert run_search(None, out, resume=True, progress=False).new_trials == 0


@pytest.mark.slow
def test_ray_workers_match_serial_evaluation(digits_run: SearchResult, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two local Ray actors evaluate policies exactly as this process does."""
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    res = run_search({**DIGITS, "trials": 10, "workers": 2}, tmp_path / "ray", progress=False)
    assert sum(r.counted for r in res.records) == 10 and res.evaluations > 0
    measured = [r for r in res.records if r.evaluated]
    evaluator = digits_run.problem.evaluator()
    for r in measured[:3]:
        assert r.metrics["accuracy"] == evaluator(res.policy(r))["accuracy"]


def test_ray_tune_backend_takes_optuna_strategies_only(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("target: eyeriss\nstrategy: ddpg\nbackend: ray-tune\n")
    with pytest.raises(PicojouleError, match="ray-tune drives Optuna samplers") as info:
        load_config(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


@pytest.mark.slow
def test_ray_tune_backend_forwards_constraints_and_resumes(digits_run: SearchResult, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Tuner + OptunaSearch on 2 local workers: the sampler's trials carry the constraint violations, the run
    directory is the native engine's, the front holds the bound, and a resume adds only the missing trials."""
    pytest.importorskip("ray.tune")
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    config = {**DIGITS, "trials": 8, "workers": 2, "backend": "ray-tune", "strategy_options": {"population_size": 4}}
    res = run_search(config, tmp_path / "tune", progress=False)
    assert sum(r.counted for r in res.records) == 8 and res.new_trials == 8
    study = optuna.load_study(study_name="picojoule",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "tune" / "journal.log"))))
    trials = study.get_trials()
    assert all(t.constraints and len(t.constraints) == 1 for t in trials if t.state.name == "COMPLETE")
    bound = res.bounds["energy <= 0.5 * uniform_int8"]
    for r in res.records:
        assert r.evaluated == (r.metrics["energy"] <= bound)  # only hardware-feasible policies were measured
        assert r.constraints["energy <= 0.5 * uniform_int8"] == pytest.approx(r.metrics["energy"] / bound - 1)
    assert res.front and all(r.feasible and r.metrics["energy"] <= bound for r in res.front)
    evaluator = digits_run.problem.evaluator()
    best = res.front[0]
    assert best.metrics["accuracy"] == evaluator(res.policy(best))["accuracy"]  # a worker measures as we do
    assert (tmp_path / "tune" / "report.md").is_file() and list((tmp_path / "tune" / "pareto").glob("trial_*.yaml"))
    assert (tmp_path / "tune" / "tune").is_dir()  # Tune's own records

    again = run_search(None, tmp_path / "tune", resume=True, progress=False, trials=10)
    assert again.new_trials == 2 and sum(r.counted for r in again.records) == 10
    assert _summary(again.records[:8]) == _summary(res.records)


def test_run_lock_refuses_a_second_live_search(tmp_path: Path) -> None:
    from picojoule.search.rundir import LOCK_FILE, run_lock

    with run_lock(tmp_path), pytest.raises(PicojouleError, match="another search"), run_lock(tmp_path):
        pass
    (tmp_path / LOCK_FILE).write_text("999999999")  # a dead process's lock is taken over
    with run_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()


_DYING_MODEL = '''
import os
import torch
from torch import nn


class Net(nn.Module):
    """A tiny digits classifier whose forward kills its process when a marker file says so (never the driver's)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        if os.getpid() != int(os.environ["PJ_DRIVER_PID"]):
            if os.path.exists(os.environ["PJ_DIE_ALWAYS"]):
                os._exit(1)
            if os.path.exists(os.environ["PJ_DIE_ONCE"]):
                os.remove(os.environ["PJ_DIE_ONCE"])
                os._exit(1)
        return self.fc(self.conv2(self.conv(x).relu()).relu().mean((2, 3)))


def build(weights=None):
    return Net(), torch.zeros(1, 1, 8, 8)
'''


@pytest.mark.slow
def test_a_dead_worker_is_retried_once_then_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers really die (os._exit in the model's forward): the policy is measured once more on a fresh worker;
    a second death fails the trial with the reason, and the executor goes on with a fresh worker."""
    pytest.importorskip("ray")
    from picojoule.search.config import config_from_dict
    from picojoule.search.parallel import RayExecutor
    from picojoule.search.problem import build_problem

    (tmp_path / "dying_model.py").write_text(_DYING_MODEL)
    once, always = tmp_path / "die-once", tmp_path / "die-always"
    monkeypatch.chdir(tmp_path)
    for key, value in {"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}",  # workers import this checkout
                       "PJ_DRIVER_PID": str(os.getpid()), "PJ_DIE_ONCE": str(once),
                       "PJ_DIE_ALWAYS": str(always), "RAY_AUTH_MODE": "disabled"}.items():
        monkeypatch.setenv(key, value)
    problem = build_problem(config_from_dict({"model": "dying_model:build", "data": "digits", "target": "eyeriss",
                                              "evaluation": {"calibration_images": 64}}))
    policy = Policy()
    expected = problem.evaluator()(policy)["accuracy"]
    executor = RayExecutor(problem, 1)

    def evaluate(tag: str) -> tuple:
        executor.submit(tag, policy)
        while not (out := executor.collect()):
            pass
        return out[0]

    try:
        assert evaluate("fine")[1]["accuracy"] == expected
        once.touch()
        tag, result, error = evaluate("dies once")
        assert error is None and result["accuracy"] == expected and result["worker_died"] == 1
        assert not once.exists()  # the first worker really ran the forward and died there
        always.touch()
        tag, result, error = evaluate("dies twice")
        assert result is None and error.startswith("the worker died twice evaluating this policy")
        always.unlink()
        assert evaluate("after")[1]["accuracy"] == expected  # a fresh worker took the dead one's place
    finally:
        executor.close()


def test_policy_plot_labels_drop_the_prefix_every_layer_shares() -> None:
    from picojoule.search.plots import short_names

    names = ["module.encoder.layer.0.attention.self.query", "module.encoder.layer.5.output.dense"]
    assert short_names(names) == (["0.attention.self.query", "5.output.dense"], "module.encoder.layer.")
    assert short_names(["conv1", "layer1.0.conv1"]) == (["conv1", "layer1.0.conv1"], "")
    assert short_names(["fc.weight"]) == (["fc.weight"], "")  # one layer keeps its whole name
