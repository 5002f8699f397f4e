"""A HAWQ-V3-style integer program over a space: one option per block of knobs, the least summed sensitivity under
the hardware bounds.

Pure code (numpy and scipy; no weights): what it needs is the space, the constraint program with its bounds, a
costing function (choice-index vectors -> total metrics, the cost model) and per-choice scores (from a
:class:`~picojoule.sensitivity.Sensitivity`, or learned from measured trials).

*Blocks.* Each layer's per-layer knobs (``w_bits``, ``a_bits``, ``rank``, ``sparsity``) form one block whose options
are their joint choices, so that a layer's cost, which multiplies weight and activation widths, is priced per
combination and not as a sum of separate effects (as HAWQ-V3 prices a layer's bit configuration); a group-wide knob
(``keep``) is a block of its own. A layer whose joint options would exceed ``joint_limit`` keeps its knobs apart.

*Linearisation.* Around a reference vector ``r`` each option's cost is ``metric(r with the block at the option) -
metric(r)``, priced by the full cost model in one batch (a few hundred policies, milliseconds). The program is a
multiple-choice knapsack::

    minimise   sum_b sum_o score[b, o] x[b, o]
    subject to sum_o x[b, o] = 1                                     for every block b
               sum_b sum_o delta_m[b, o] x[b, o] <= bound_m - m(r)   for every hardware bound m
               sum_(b, o) in s  x[b, o] <= |blocks| - 1              for every excluded solution s
               x binary

solved by scipy's ``milp`` (HiGHS). Interactions between blocks (a pruned group changes its neighbours' MACs, a
layer's activation width its producer's output traffic) make the linear costs approximate, so every solution is
re-checked with the full cost model: a solution that breaks a bound is linearised again around itself with the
bound tightened by the linearisation's error, up to ``refits`` times; if it still breaks a bound it is lowered onto
the bounds with HAQ's adjustment (:class:`~picojoule.search.projection.Projector`). A solution reports its
predicted and priced metrics so a user sees how good the linear model was.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from picojoule.errors import PicojouleError
from picojoule.search.constraints import Constraint, ConstraintProgram
from picojoule.search.metrics import format_value
from picojoule.search.projection import Costing, Projector, knob_capacity
from picojoule.spaces.space import Space

#: per-layer knob kinds that share a block (their joint choices are the block's options)
LAYER_KINDS = ("w_bits", "a_bits", "rank", "sparsity")
#: sensitivity measures a score can be read from (the Sensitivity table's columns)
MEASURES = ("loss", "kl", "hawq")


@dataclass(frozen=True)
class Block:
    """Knob dimensions chosen together; ``options`` (O, len(dims)) their joint choice indices."""

    dims: tuple[int, ...]
    options: np.ndarray


def make_blocks(space: Space, joint_limit: int = 64) -> list[Block]:
    """A block per layer (its per-layer knobs' joint choices, if at most ``joint_limit``), one per group knob."""
    by_layer: dict[str, list[int]] = {}
    blocks: list[Block] = []
    for d, knob in enumerate(space.knobs):
        if knob.kind in LAYER_KINDS:
            by_layer.setdefault(knob.layer, []).append(d)
        else:
            blocks.append(Block((d,), np.arange(len(knob.choices))[:, None]))
    for dims in by_layer.values():
        sizes = [len(space.knobs[d].choices) for d in dims]
        if math.prod(sizes) <= joint_limit:
            blocks.append(Block(tuple(dims), np.asarray(list(itertools.product(*map(range, sizes))), dtype=np.int64)))
        else:
            blocks.extend(Block((d,), np.arange(n)[:, None]) for d, n in zip(dims, sizes))
    return sorted(blocks, key=lambda b: b.dims[0])


def choice_rows(space: Space, sensitivity: Any) -> list[list[dict[str, Any] | None]]:
    """Per knob of ``space``, the Sensitivity table's row of each of its choices (None where the table has none)."""
    rows = {(r["knob"], float(r["choice"])): r for r in sensitivity.table}
    return [[rows.get((knob.name, float(choice))) for choice in knob.choices] for knob in space.knobs]


def sensitivity_scores(space: Space, sensitivity: Any, measure: str = "loss") -> list[np.ndarray]:
    """Per knob, the score of each choice: the loss increase (``loss``), the KL divergence (``kl``) or, for weight
    widths, HAWQ-V3's ``avg_trace * ||W - Q(W)||^2`` (``hawq``; other knobs then use the loss increase) of that
    choice alone, clipped at 0 (a measured decrease is noise, not a gain) and made monotone by
    :func:`monotone_scores`. A sensitivity computed for another space is refused with the first knob it lacks."""
    if measure not in MEASURES:
        raise PicojouleError(f"ilp: unknown sensitivity measure '{measure}' (expected one of {', '.join(MEASURES)})")
    column = {"loss": "loss_increase", "kl": "kl", "hawq": "hawq_v3"}[measure]
    scores = []
    for knob, rows in zip(space.knobs, choice_rows(space, sensitivity)):
        values = []
        for choice, row in zip(knob.choices, rows):
            if row is None:
                raise PicojouleError(f"ilp: the sensitivity has no row for knob '{knob.name}' = {choice:g}: it was "
                                     "computed for another space; compute it for this one")
            value = row.get(column)
            values.append(max(float(row["loss_increase"] if value is None else value), 0.0))
        scores.append(np.asarray(values))
    return monotone_scores(space, scores)


def monotone_scores(space: Space, scores: Sequence[np.ndarray], tie: float = 1e-4) -> list[np.ndarray]:
    """``scores`` made to grow as a knob's capacity falls: a choice never scores below a more capable one of the
    same knob (a measured 3-bit loss under the 4-bit one is the sample's noise), and among equal scores the less
    capable choice pays ``tie`` times the median positive score per step down. Without this, a choice whose
    measured harm rounds to zero ties with full capacity, and on a target where it saves nothing (sub-8-bit
    widths on an int8-only NPU) the solver may take it anyway, losing accuracy for no saving."""
    positive = np.concatenate([s[s > 0] for s in scores] or [np.zeros(0)])
    step = tie * (float(np.median(positive)) if positive.size else 1.0)
    out = []
    for knob, s in zip(space.knobs, scores):
        order = np.argsort(-knob_capacity(knob, space), kind="stable")  # most capable first
        ranked = np.maximum.accumulate(np.asarray(s, dtype=float)[order]) + step * np.arange(len(order))
        fixed = np.empty_like(ranked)
        fixed[order] = ranked
        out.append(fixed)
    return out


@dataclass
class Solution:
    """An ILP solution: its vector, the summed score, and per hardware bound the linear prediction and the price."""

    vec: np.ndarray
    score: float
    predicted: dict[str, float] = field(default_factory=dict)
    priced: dict[str, float] = field(default_factory=dict)
    refits: int = 0
    projected: bool = False
    scale: float = 1.0  # the fraction of the bounds it was solved under

    def describe(self) -> str:
        parts = [f"{m}: predicted {format_value(m.split()[0], p)}, priced {format_value(m.split()[0], self.priced[m])}"
                 for m, p in self.predicted.items()]
        return (f"ILP score {self.score:.4g}; " + "; ".join(parts)
                + (f"; {self.refits} re-linearisation(s)" if self.refits else "")
                + ("; lowered onto the bounds" if self.projected else ""))


class ILPPlanner:
    """Solves the program of the module doc for one space, program and bounds."""

    def __init__(self, space: Space, program: ConstraintProgram, bounds: Mapping[str, float], cost: Costing,
                 joint_limit: int = 64, refits: int = 4):
        self.space, self.program, self.bounds, self.cost = space, program, dict(bounds), cost
        self.blocks = make_blocks(space, joint_limit)
        self.refits = refits
        #: the caps the program solves under: key -> (metric, value); by default the program's hardware bounds
        self.caps = {c.text: (c.metric, self.bounds[c.text]) for c in program.hardware}
        # the least compressed policy: each knob at its most capable choice (the start of the linearisation)
        self.top = np.asarray([int(np.argmax(knob_capacity(k, space))) for k in space.knobs], dtype=np.int64)
        self.bottom = np.asarray([int(np.argmin(knob_capacity(k, space))) for k in space.knobs], dtype=np.int64)
        self._offsets = np.cumsum([0] + [len(b.options) for b in self.blocks])

    def _projector(self, target: Mapping[str, float]) -> Projector:
        """HAQ's adjustment onto the caps at ``target`` (upper bounds on their metrics)."""
        caps = ConstraintProgram(tuple(Constraint(key, metric, True, value) for key, (metric, _) in self.caps.items()
                                       for value in [target[key]]))
        return Projector(self.space, caps, {c.text: c.value for c in caps}, self.cost)

    # -- checks ------------------------------------------------------------------------------------

    def least(self, metric: str, sweeps: int = 3) -> tuple[np.ndarray, float]:
        """The policy of least ``metric`` found by coordinate descent over the blocks, starting from the most
        compressed choices. The least capable choice is not always the cheapest: splitting a layer into two
        low-rank ones costs a launch-bound target more time than it saves. For costs that add up over layers
        (the roofline's and the hierarchy's do) one sweep finds the true minimum."""
        best = self.bottom.copy()
        value = float(self.cost(best[None])[metric][0])
        for _ in range(sweeps):
            changed = False
            for b, block in enumerate(self.blocks):
                cand = np.repeat(best[None], len(block.options), 0)
                cand[:, list(block.dims)] = block.options
                vals = np.asarray(self.cost(cand)[metric], dtype=float)
                i = int(np.argmin(vals))
                if vals[i] < value * (1 - 1e-12):
                    best, value, changed = cand[i].copy(), float(vals[i]), True
            if not changed:
                break
        return best, value

    def check_feasible(self, where: str = "ilp") -> None:
        """Raise (one line) when even the policy of least cost breaks a hardware bound: no policy can meet it."""
        bottom = self.cost(self.bottom[None])
        for key, (metric, bound) in self.caps.items():
            if float(bottom[metric][0]) <= bound:  # the least capable policy meets it: no search for the cheapest
                continue
            _, least = self.least(metric)
            if least > bound:
                raise PicojouleError(
                    f"{where}: no policy of the space meets '{key}': the cheapest one is at "
                    f"{format_value(metric, least)} ({least / bound:.2f}x the bound "
                    f"{format_value(metric, bound)}); loosen the bound or allow lower choices in the space")

    # -- the program -------------------------------------------------------------------------------

    def _option_vectors(self, ref: np.ndarray) -> np.ndarray:
        """(sum O_b, D): ``ref`` with each block set to each of its options."""
        out = np.repeat(ref[None], self._offsets[-1], 0)
        for b, block in enumerate(self.blocks):
            rows = slice(self._offsets[b], self._offsets[b + 1])
            sub = out[rows]
            sub[:, list(block.dims)] = block.options
            out[rows] = sub
        return out

    def option_scores(self, scores: Sequence[np.ndarray]) -> np.ndarray:
        """(sum O_b,) each option's summed per-knob score."""
        out = []
        for block in self.blocks:
            total = np.zeros(len(block.options))
            for j, d in enumerate(block.dims):
                total += scores[d][block.options[:, j]]
            out.append(total)
        return np.concatenate(out)

    def vector_of(self, x: np.ndarray) -> np.ndarray:
        vec = self.top.copy()
        for b, block in enumerate(self.blocks):
            o = int(np.argmax(x[self._offsets[b]:self._offsets[b + 1]]))
            vec[list(block.dims)] = block.options[o]
        return vec

    def selection(self, vec: np.ndarray) -> np.ndarray:
        """The option indices (into the flat variable vector) that ``vec`` selects."""
        out = []
        for b, block in enumerate(self.blocks):
            o = np.flatnonzero((block.options == vec[list(block.dims)]).all(1))
            out.append(self._offsets[b] + int(o[0]))
        return np.asarray(out)

    def _solve_once(self, c: np.ndarray, ref: np.ndarray, limits: Mapping[str, float],
                    exclude: Sequence[np.ndarray], time_limit: float) -> tuple[np.ndarray | None, dict[str, float]]:
        from scipy.optimize import Bounds, LinearConstraint, milp

        n, nb = int(self._offsets[-1]), len(self.blocks)
        rows, lo, hi = [], [], []
        onehot = np.zeros((nb, n))
        for b in range(nb):
            onehot[b, self._offsets[b]:self._offsets[b + 1]] = 1
        rows.append(onehot)
        lo.append(np.ones(nb))
        hi.append(np.ones(nb))
        base = self.cost(ref[None])
        options = self.cost(self._option_vectors(ref))
        deltas = {}
        for key, (metric, _) in self.caps.items():
            delta = options[metric] - base[metric][0]
            deltas[key] = (float(base[metric][0]), delta)
            rows.append(delta[None])
            lo.append([-np.inf])
            hi.append([limits[key] - base[metric][0]])
        for vec in exclude:
            cut = np.zeros((1, n))
            cut[0, self.selection(vec)] = 1
            rows.append(cut)
            lo.append([-np.inf])
            hi.append([nb - 1])
        res = milp(c, constraints=LinearConstraint(np.vstack(rows), np.concatenate(lo), np.concatenate(hi)),
                   integrality=np.ones(n), bounds=Bounds(0, 1), options={"time_limit": time_limit})
        if res.x is None:
            return None, {}
        x = np.round(res.x)
        predicted = {k: b + float(d @ x) for k, (b, d) in deltas.items()}
        return x, predicted

    def price(self, vec: np.ndarray) -> dict[str, float]:
        metrics = self.cost(vec[None])
        return {key: float(metrics[metric][0]) for key, (metric, _) in self.caps.items()}

    def solve(self, scores: Sequence[np.ndarray], scale: float = 1.0, exclude: Sequence[np.ndarray] = (),
              time_limit: float = 10.0) -> Solution | None:
        """The least-score vector under every cap times ``scale`` (not one of ``exclude``); None when the program
        has no solution."""
        per_option = self.option_scores(scores)
        c = per_option + 1e-9 * np.arange(len(per_option)) / len(per_option)  # a fixed tie-break: the first option
        target = {key: value * scale for key, (_, value) in self.caps.items()}
        passed = list(exclude)
        for _ in range(4):
            sol, collided = self._solve_at(c, per_option, target, scale, passed, time_limit)
            if collided is None:
                return sol
            # lowered onto the bounds it lands on a policy already tried: look past this solution (without this,
            # every later call found it again and the strategy fell back to random draws; a100 at batch 1024)
            passed.append(collided)
        return None

    def _solve_at(self, c: np.ndarray, per_option: np.ndarray, target: Mapping[str, float], scale: float,
                  exclude: Sequence[np.ndarray], time_limit: float) -> tuple[Solution | None, np.ndarray | None]:
        """(the solution or None, None); or (None, the linear solution) when its projection is excluded."""
        limits, ref = dict(target), self.top
        best = None
        for attempt in range(self.refits + 1):
            x, predicted = self._solve_once(c, ref, limits, exclude, time_limit)
            if x is None and attempt > 0 and limits != target:
                # the tightened program has no solution: around the new reference (where the linear model is
                # exact) the bound itself may still be met. Launch-bound targets need this (tpu-v4 at batch 1024:
                # every rung ended here, and the strategy fell back to random, infeasible draws)
                limits = dict(target)
                x, predicted = self._solve_once(c, ref, limits, exclude, time_limit)
            if x is None:
                break
            vec = self.vector_of(x)
            priced = self.price(vec)
            best = Solution(vec, float(per_option[self.selection(vec)].sum()), predicted, priced, attempt,
                            scale=scale)
            over = {k: priced[k] - target[k] for k in target if priced[k] > target[k]}
            if not over:
                return best, None
            # re-linearise around the solution, the bound tightened by what the linear model missed
            ref = vec
            limits = {k: limits[k] - max(priced[k] - predicted[k], 0.0) if k in over else limits[k] for k in limits}
        if best is None:
            return None, None
        lowered = self._projector(target)(best.vec)
        if any(tuple(lowered) == tuple(v) for v in exclude):
            return None, best.vec
        priced = self.price(lowered)
        if any(priced[k] > target[k] for k in target):
            return None, None
        return Solution(lowered, float(per_option[self.selection(lowered)].sum()), best.predicted, priced,
                        best.refits, projected=True, scale=scale), None
