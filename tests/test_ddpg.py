"""The DDPG strategy (HAQ/AMC-style): engine runs on the digits default, hardware adjustment, determinism,
resume by replaying the journal, and learning on cost-only rewards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from picojoule.cli import DEFAULT_SEARCH, main
from picojoule.errors import PicojouleError
from picojoule.search.baselines import baseline_policy
from picojoule.search.config import config_from_dict
from picojoule.search.constraints import all_hold
from picojoule.search.engine import SearchResult, run_search, strategy_context
from picojoule.search.problem import Problem, build_problem
from picojoule.search.strategies import DDPGStrategy
from picojoule.search.strategies.ddpg import ACTIONS

pytestmark = pytest.mark.usefixtures("single_thread")

DDPG = {**DEFAULT_SEARCH, "strategy": "ddpg", "strategy_options": {}, "trials": 30}
COST_ONLY = {**DDPG, "objectives": ["energy", "latency"], "constraints": ["energy <= 0.4 * uniform_int8"],
             "trials": 20, "strategy_options": {"warmup": 10}}


def _problem(*constraints: str) -> Problem:
    """The digits default's model, target and space; energy the one objective; only ``constraints``."""
    return build_problem(config_from_dict({**DEFAULT_SEARCH, "objectives": ["minimise energy"],
                                           "constraints": list(constraints)}))


def _agent(problem: Problem, **options) -> DDPGStrategy:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[o.direction for o in problem.objectives])
    return DDPGStrategy(strategy_context(problem, study, options=options))


def _summary(res: SearchResult) -> list[tuple]:
    return [(r.number, r.state, r.key, round(r.metrics["energy"] * 1e12, 3)) for r in res.records]


@pytest.fixture(scope="module")
def ddpg_run(tmp_path_factory: pytest.TempPathFactory) -> SearchResult:
    return run_search(DDPG, tmp_path_factory.mktemp("ddpg") / "run", progress=False)


def test_digits_default_finds_feasible_front(ddpg_run: SearchResult) -> None:
    res = ddpg_run
    assert sum(r.counted for r in res.records) == 30
    assert res.front and all(r.feasible and r.evaluated for r in res.front)
    bound = res.bounds["energy <= 0.5 * uniform_int8"]
    agent_trials = [t for t in res.study.trials if ACTIONS in t.user_attrs]
    assert len(agent_trials) == 30 - len(DDPG["warm_start"])  # all but the warm starts
    # every policy the agent proposed was adjusted to the hardware bound before it was priced by the engine
    assert all(res.records[t.number].metrics["energy"] <= bound for t in agent_trials)


def test_adjusted_policies_meet_hardware_bounds() -> None:
    """Random episodes and random vectors, adjusted, then re-priced independently of the agent."""
    problem = _problem("energy <= 0.5 * uniform_int8", "latency <= 0.7 * uniform_int8")
    agent = _agent(problem, warmup=1000)
    rng = np.random.default_rng(1)
    vecs = np.vstack([problem.space.sample(rng, 40), [agent.episode()[1] for _ in range(40)], agent.top[None]])
    adjusted = np.stack([agent.adjust(v) for v in vecs])
    assert (adjusted != vecs).any(1).sum() > 10  # the bounds bite
    costs = problem.cost(problem.space.decode_batch(adjusted))
    int8 = problem.cost([baseline_policy("uniform_int8", problem.graph)])
    assert (costs["energy"] <= 0.5 * int8["energy"][0]).all() and (costs["latency"] <= 0.7 * int8["latency"][0]).all()
    capacity = np.asarray([[agent.levels[d][i] for d, i in enumerate(v)] for v in np.vstack([adjusted, vecs])])
    assert (capacity[:len(vecs)] <= capacity[len(vecs):]).all()  # knobs were only lowered


def test_impossible_bound_lowers_to_the_space_minimum() -> None:
    problem = _problem("energy <= 0.01 * uniform_int8")
    agent = _agent(problem)
    bottom = np.asarray([int(np.argmin(lv)) for lv in agent.levels])
    assert (agent.adjust(agent.top.copy()) == bottom).all()
    assert not all_hold(problem.program.violations(problem.cost(problem.space.decode_batch(bottom[None])),
                                                   agent.bounds, hardware_only=True))


def test_same_seed_same_trials(tmp_path: Path) -> None:
    first = run_search(COST_ONLY, tmp_path / "a", progress=False)
    again = run_search(COST_ONLY, tmp_path / "b", progress=False)
    other = run_search({**COST_ONLY, "seed": 1}, tmp_path / "c", progress=False)
    assert _summary(first) == _summary(again)
    assert _summary(first) != _summary(other)
    assert len({r.key for r in first.records}) > 10


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_agent_learns_a_cost_only_reward(sign: float) -> None:
    """Told energy (sign 1) or minus energy (sign -1) as the one minimised objective, the mean reward of the last
    episodes beats the random warm-up's by far: the actor learns to go down, or up, the cost model."""
    problem = _problem()
    agent = _agent(problem, warmup=20)

    def reward(vec: np.ndarray) -> tuple[list[float], float]:
        value = [sign * problem.cost(problem.space.decode_batch(vec[None]))["energy"][0]]
        return value, agent.reward(value, {})

    rewards = []
    for _ in range(80):
        handle, vec = agent.ask()
        value, r = reward(vec)
        agent.tell(handle, value, {})
        rewards.append(r)
    best = reward(np.asarray([int(np.argmin(lv)) for lv in agent.levels]) if sign > 0 else agent.top)[1]
    start, end = np.mean(rewards[:20]), np.mean(rewards[-20:])
    assert end - start > 0.5 * (best - start), (start, end, best)  # half the way from random to the optimum


def test_resume_replays_the_journal(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_search({**COST_ONLY, "trials": 14}, out, progress=False)
    res = run_search(None, out, resume=True, trials=24, progress=False)
    assert sum(r.counted for r in res.records) == 24 and res.new_trials == 10
    assert sum(ACTIONS in t.user_attrs for t in res.study.trials) == 24 - len(DDPG["warm_start"])  # not warm starts
    agent = DDPGStrategy(strategy_context(res.problem, res.study, res.baselines, resume=True))
    assert agent.told == 24 and agent.stored == 24 * len(agent.dims) and agent.episodes == 24
    # the rebuilt agent acts after its warm-up: its actor has been trained on the replayed episodes
    assert not np.allclose(agent.actor[0][0].weight.detach().numpy(),
                           _agent(res.problem, **COST_ONLY["strategy_options"]).actor[0][0].weight.detach().numpy())


def test_bad_options_one_line_error(tmp_path: Path) -> None:
    for options, what in (({"warmpu": 3}, "warmpu"), ({"noise": -1}, "noise")):
        with pytest.raises(PicojouleError) as info:
            run_search({**DDPG, "strategy_options": options}, tmp_path / "run", progress=False)
        msg = str(info.value)
        assert "\n" not in msg and "field 'strategy_options'" in msg and f"'{what}'" in msg
        assert not (tmp_path / "run").exists()
    with pytest.raises(PicojouleError, match="'weights': expected 2"):
        run_search({**DDPG, "strategy_options": {"weights": [1.0]}}, tmp_path / "w", progress=False)


def test_cli_runs_ddpg(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({**COST_ONLY, "trials": 6}))
    assert main(["search", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "6 trials" in capsys.readouterr().out
