"""A DDPG actor-critic that walks the layers, in the manner of HAQ (Wang et al., CVPR 2019) and AMC (He et al.,
ECCV 2018).

An episode is one policy. Its steps are the compute layers that carry knobs, in graph order (a pruning group's
``keep`` is decided at the group's anchor). At each step the actor sees a state vector -- step index / steps,
the layer's kind (one-hot), min-max normalised in/out channels, kernel, stride, log weights and log MACs, the
previous step's actions, the budget consumed by the layers before and the budget the rest would take at their
largest choices, and which knob kinds the layer has -- and outputs one action in [0, 1] per knob kind
(``w_bits``, ``a_bits``, ``keep``, ``rank``). An action picks the choice nearest to ``lo + a * (hi - lo)`` on
the knob's *capacity* scale (bits, keep ratio, rank with 0 = no split counted as full rank). Exploration adds
truncated-normal noise that decays per episode; the first ``warmup`` episodes act uniformly at random.

The finished policy is then made feasible for the hardware constraints with the cost model (no accuracy
needed, :mod:`picojoule.search.projection`): from the last layer backwards, each layer lowers by one step the knob
that most reduces the violated bounds, one pass after another, until the priced policy meets every hardware bound
or no knob can be lowered.

Reward (HAQ-style, every transition of the episode gets it, centred by a moving average at update time)::

    R = sum_i w_i * term_i - penalty * min(1, sum(max(violation, 0)))
    term = value (maximised objectives: accuracy)  or  -value / fp32 value (minimised cost objectives)

with default weights 1 for the first objective and 0.1 for the others. As in HAQ the replay buffer holds the
actor's actions before the adjustment, so the critic learns what the adjustment makes of them; they are kept
with each trial in the journal (attribute ``ddpg_actions``), and a resumed run rebuilds the agent -- buffer,
reward baseline, networks -- by replaying every complete trial through the same learning step. Warm starts and
retries stand for the actions that pick their vectors; failed trials teach nothing.

Options (``strategy_options``): see :class:`DDPGOptions`. Deterministic under the seed (torch's global RNG is
left untouched: the networks are initialised under a forked, seeded RNG; noise and minibatches come from a
numpy generator).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from picojoule.errors import PicojouleError
from picojoule.hwmodels.common import CostResult
from picojoule.policy import PolicyBatch
from picojoule.search.journal import knob_params
from picojoule.search.projection import Projector, knob_capacity
from picojoule.search.strategies.base import Handle, Strategy, StrategyContext
from picojoule.policy import Policy
from picojoule.spaces.space import KNOB_KINDS

LAYER_KINDS = ("conv", "depthwise", "linear", "matmul")
#: the trial attribute holding the actor's actions (steps x knob kinds), so that a resumed run can replay them
ACTIONS = "ddpg_actions"
#: per-layer arrays of a CostResult whose shares split each metric's total over the layers
_PER_LAYER = {"energy": lambda r: r.energy_j.sum(-1), "co2e": lambda r: r.energy_j.sum(-1),
              "latency": lambda r: r.latency_s, "size": lambda r: r.weight_bits, "macs": lambda r: r.macs,
              "params": lambda r: r.params}


class DDPGOptions(BaseModel):
    """``strategy_options`` of ``ddpg`` (defaults after HAQ, scaled down to budgets of hundreds of episodes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup: int = Field(20, ge=0, description="random episodes before the actor acts")
    noise: float = Field(0.5, ge=0, description="initial std of the truncated-normal exploration noise")
    noise_decay: float = Field(0.97, gt=0, le=1, description="noise factor per episode after the warm-up")
    hidden: int = Field(64, ge=1, description="width of the two hidden layers of actor and critic")
    lr_actor: float = Field(1e-3, gt=0)
    lr_critic: float = Field(1e-3, gt=0)
    tau: float = Field(0.01, gt=0, le=1, description="soft update rate of the target networks")
    discount: float = Field(1.0, ge=0, le=1)
    batch_size: int = Field(64, ge=1)
    buffer: int = Field(10000, ge=1, description="transitions kept")
    updates: int | None = Field(None, ge=0, description="gradient steps per episode (default: steps, at least 16)")
    weights: list[float] | None = Field(None, description="scalarisation weight per objective")
    penalty: float = Field(1.0, ge=0, description="reward lost per unit of relative violation (at most 1 unit)")
    baseline_rate: float = Field(0.5, gt=0, le=1, description="moving-average rate of the reward baseline")

    @classmethod
    def parse(cls, options: Mapping[str, Any], where: str) -> DDPGOptions:
        try:
            return cls.model_validate(dict(options))
        except ValidationError as e:
            first = e.errors()[0]
            msg = "unknown option" if first["type"] == "extra_forbidden" else first["msg"]
            raise PicojouleError(f"{where}: ddpg option '{'.'.join(map(str, first['loc']))}': {msg}") from None


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


def _minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min() if len(x) else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def truncated_normal(rng: np.random.Generator, mean: np.ndarray, std: float) -> np.ndarray:
    """Normal samples around ``mean`` truncated to [0, 1] (by rejection)."""
    mean = np.clip(np.nan_to_num(mean, nan=0.5), 0.0, 1.0)
    if std <= 0:
        return mean
    x = rng.normal(mean, std)
    while (bad := (x < 0) | (x > 1)).any():
        x[bad] = rng.normal(mean[bad], std)
    return x


class DDPGStrategy(Strategy):
    """HAQ/AMC-style DDPG over the layers of the context's space, priced by its cost model, within its hardware
    bounds."""

    def __init__(self, context: StrategyContext):
        super().__init__(context)
        seed, study, where = context.seed, context.study, context.where
        self.opts = DDPGOptions.parse(context.options or {}, where)
        self.objectives = context.objectives
        n_obj = len(self.objectives)
        self.weights = np.asarray(self.opts.weights or [1.0] + [0.1] * (n_obj - 1))
        if len(self.weights) != n_obj:
            raise PicojouleError(f"{where}: ddpg option 'weights': expected {n_obj} (one per objective), "
                                 f"got {len(self.weights)}")
        self._build_steps()
        self._build_budget()
        self.state_dim = self.static.shape[1] + len(KNOB_KINDS) + 2
        k, h = len(KNOB_KINDS), self.opts.hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = nn.Sequential(_mlp(self.state_dim, h, k), nn.Sigmoid())
            self.critic = _mlp(self.state_dim + k, h, 1)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.opts.lr_actor, foreach=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.opts.lr_critic, foreach=True)
        size = self.opts.buffer
        self.buf = {"s": np.zeros((size, self.state_dim), np.float32), "a": np.zeros((size, k), np.float32),
                    "r": np.zeros(size, np.float32), "s2": np.zeros((size, self.state_dim), np.float32),
                    "done": np.zeros(size, np.float32)}
        self.stored = self.told = 0
        self.baseline = 0.0
        trials = study.get_trials(deepcopy=False)
        self.episodes = len(trials)
        self.rng = np.random.default_rng(seed + len(trials))  # a resumed run draws a fresh stream
        for t in trials:  # resume: rebuild buffer, baseline and networks from the journal
            if t.state == TrialState.COMPLETE:
                self._learn(t, self.reward(t.values, t.constraints))

    # -- the episode's structure ------------------------------------------------------------------

    def _build_steps(self) -> None:
        """Steps (layers with knobs), per step the knob of each kind (-1: none), capacity levels per knob."""
        graph, knobs = self.space.graph, self.space.knobs
        names = sorted({k.layer for k in knobs}, key=graph.index)
        self.columns = np.asarray([graph.index(n) for n in names] + [len(graph)])
        self.dims = np.full((len(names), len(KNOB_KINDS)), -1)
        for d, k in enumerate(knobs):
            self.dims[names.index(k.layer), KNOB_KINDS.index(k.kind)] = d
        self.levels = [_minmax(knob_capacity(k, self.space)) for k in knobs]  # per knob: capacity in [0, 1]
        layers = [graph[n] for n in names]
        kind = np.asarray([[float(layer.kind == c) for c in LAYER_KINDS] for layer in layers]).reshape(-1, 4)
        raw = np.asarray([[layer.in_channels, layer.out_channels, layer.kernel[0], layer.stride[0],
                           math.log1p(layer.weights), math.log1p(layer.macs)] for layer in layers]).reshape(-1, 6)
        steps = len(names)
        position = np.arange(steps + 1)[:, None] / max(steps, 1)
        static = np.hstack([kind, np.apply_along_axis(_minmax, 0, raw), (self.dims >= 0).astype(float)])
        self.static = np.hstack([position, np.vstack([static, np.zeros(static.shape[1])])])  # row T: terminal
        self.top = np.asarray([lv.argmax() for lv in self.levels], dtype=np.int64)  # the largest choices
        width = max((len(lv) for lv in self.levels), default=1)
        self.level_table = np.asarray([np.pad(lv, (0, width - len(lv))) for lv in self.levels]).reshape(-1, width)

    def _build_budget(self) -> None:
        """Hardware bounds, and the metric (and its scale) that the budget features are counted in."""
        program = self.context.program
        self.hardware = program.hardware
        self.baselines = self.context.baselines
        self.bounds = {c.text: self.context.bounds[c.text] for c in self.hardware}
        self.projector = Projector(self.space, program, self.bounds, self.context.cost)
        costs = [o.metric for o in self.objectives if not o.maximise]
        if self.hardware:
            self.budget_metric, self.budget_scale = self.hardware[0].metric, self.bounds[self.hardware[0].text]
        else:
            self.budget_metric = costs[0] if costs else "energy"
            self.budget_scale = self.baselines["fp32"][self.budget_metric]

    def _price(self, policies: PolicyBatch | list[Policy]) -> tuple[dict[str, np.ndarray], CostResult]:
        """(total metrics, per-layer CostResult) of N policies, as the engine prices them."""
        return self.context.price(policies)

    # -- states and actions ------------------------------------------------------------------------

    def actions(self, vec: np.ndarray) -> np.ndarray:
        """The (T, 4) actions that pick ``vec``'s choices (0 where a step has no knob of a kind)."""
        level = self.level_table[np.arange(len(vec)), vec]
        return np.where(self.dims >= 0, level[self.dims], 0.0)

    def _choose(self, vec: np.ndarray, t: int, action: np.ndarray) -> None:
        """Set step ``t``'s knobs of ``vec`` to the choices nearest to ``action``."""
        for k, d in enumerate(self.dims[t]):
            if d >= 0:
                vec[d] = int(np.argmin(np.abs(self.levels[d] - action[k])))

    def _partial(self, vec: np.ndarray, t: int) -> np.ndarray:
        """``vec`` with the knobs of steps t.. at their largest choices (the state the actor saw at step t)."""
        out = vec.copy()
        rest = self.dims[t:][self.dims[t:] >= 0]
        out[rest] = self.top[rest]
        return out

    def states(self, ts: np.ndarray, partials: np.ndarray) -> np.ndarray:
        """States (N, S) at steps ``ts`` given the partially decided vectors (N, D)."""
        totals, result = self._price(self.space.decode_batch(partials))
        layer = _PER_LAYER[self.budget_metric](result)
        layer = layer / np.maximum(layer.sum(1, keepdims=True), 1e-300) * totals[self.budget_metric][:, None]
        before = np.cumsum(layer, 1) / self.budget_scale
        cols = self.columns[ts]
        consumed = np.where(cols > 0, before[np.arange(len(ts)), np.maximum(cols - 1, 0)], 0.0)
        rest = before[:, -1] - consumed
        prev = np.stack([self.actions(p)[t - 1] if t else np.zeros(len(KNOB_KINDS)) for p, t in zip(partials, ts)])
        return np.hstack([self.static[ts], prev, consumed[:, None], rest[:, None]]).astype(np.float32)

    def episode(self) -> tuple[np.ndarray, np.ndarray]:
        """One walk over the layers: the actions (T, 4) and the vector they pick, before the hardware adjustment."""
        vec, actions = self.top.copy(), np.zeros(self.dims.shape)
        sigma = self.opts.noise * self.opts.noise_decay ** max(0, self.episodes - self.opts.warmup)
        for t in range(len(self.dims)):
            if self.episodes < self.opts.warmup:
                action = self.rng.random(len(KNOB_KINDS))
            else:
                state = torch.from_numpy(self.states(np.asarray([t]), vec[None]))
                with torch.no_grad():
                    mean = self.actor(state)[0].double().numpy()
                action = truncated_normal(self.rng, mean, sigma)
            actions[t] = np.where(self.dims[t] >= 0, action, 0.0)
            self._choose(vec, t, action)
        return actions, vec

    def vector_of(self, actions: np.ndarray) -> np.ndarray:
        """The vector that ``actions`` (T, 4) pick."""
        vec = self.top.copy()
        for t, action in enumerate(actions):
            self._choose(vec, t, action)
        return vec

    def adjust(self, vec: np.ndarray) -> np.ndarray:
        """``vec`` lowered, last layer first, until it meets the hardware bounds (:mod:`~picojoule.search.projection`)."""
        return self.projector(vec)

    # -- Strategy ----------------------------------------------------------------------------------

    def ask(self) -> tuple[Handle, np.ndarray]:
        """The next queued trial (retry, warm start), else an episode's adjusted vector (its actions kept)."""
        if not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            actions, vec = self.episode()
            self.study.enqueue_trial(knob_params(self.space, self.adjust(vec)), user_attrs={ACTIONS: actions.tolist()})
        self.episodes += 1
        return self.record()

    def tell(self, handle: Handle, objectives: Sequence[float], constraints: Mapping[str, float],
             failed: bool = False, attrs: Mapping[str, Any] | None = None) -> None:
        self.finish(handle, objectives, constraints, failed, attrs)
        if not failed:
            self._learn(handle, self.reward(objectives, constraints))

    def reward(self, objectives: Sequence[float], constraints: Mapping[str, float]) -> float:
        """The scalarised, penalised reward of a told trial."""
        terms = [v if o.maximise else -v / self.baselines["fp32"][o.metric]
                 for o, v in zip(self.objectives, objectives)]
        excess = sum(max(float(v), 0.0) for v in constraints.values())
        return float(self.weights @ terms - self.opts.penalty * min(excess, 1.0))

    # -- learning ----------------------------------------------------------------------------------

    def _learn(self, trial: Handle | optuna.trial.FrozenTrial, reward: float) -> None:
        """Store a told trial's episode (every transition rewarded ``reward``), then train unless warming up.

        As in HAQ the actions are the actor's, before the hardware adjustment; a trial the agent did not propose
        (warm start, retry) stands for the actions that pick its vector."""
        if not math.isfinite(reward):
            return
        if ACTIONS in trial.user_attrs:
            a = np.asarray(trial.user_attrs[ACTIONS], dtype=float)
            vec = self.vector_of(a)
        else:
            vec = self.vector(trial)
            a = self.actions(vec)
        steps = len(self.dims)
        ts = np.arange(steps + 1)
        s = self.states(ts, np.stack([self._partial(vec, t) for t in ts]))
        for t in range(steps):
            i = self.stored % self.opts.buffer
            for key, value in (("s", s[t]), ("a", a[t]), ("r", reward), ("s2", s[t + 1]), ("done", t == steps - 1)):
                self.buf[key][i] = value
            self.stored += 1
        self.baseline = reward if self.told == 0 else self.baseline + self.opts.baseline_rate * (reward - self.baseline)
        self.told += 1
        if self.told > self.opts.warmup:
            for _ in range(max(steps, 16) if self.opts.updates is None else self.opts.updates):
                self._update()

    @staticmethod
    def _mask(s: torch.Tensor) -> torch.Tensor:
        """Which knob kinds each state's step has (actions of the others are zeroed): the state starts with the
        position, the kind one-hot and 6 layer features, then this mask."""
        start = 1 + len(LAYER_KINDS) + 6
        return s[:, start:start + len(KNOB_KINDS)]

    def _update(self) -> None:
        """One DDPG step on a minibatch: critic to the bootstrapped target, actor up the critic, soft targets."""
        idx = self.rng.integers(0, min(self.stored, self.opts.buffer), self.opts.batch_size)
        s, a, r, s2, done = (torch.from_numpy(self.buf[k][idx]) for k in ("s", "a", "r", "s2", "done"))
        with torch.no_grad():
            a2 = self.actor_target(s2) * self._mask(s2)
            q2 = self.critic_target(torch.cat([s2, a2], 1)).squeeze(1)
            target = (r - self.baseline) + self.opts.discount * (1 - done) * q2
        critic_loss = nn.functional.mse_loss(self.critic(torch.cat([s, a], 1)).squeeze(1), target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(torch.cat([s, self.actor(s) * self._mask(s)], 1)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, target_net in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                torch._foreach_lerp_(list(target_net.parameters()), list(net.parameters()), self.opts.tau)
