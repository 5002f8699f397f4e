"""Calibrate a target's cost model against latencies measured on this machine.

1. :func:`sample_policies`: diverse policies of one model from its :class:`~picojoule.spaces.space.Space`
   (uniform float and 8-bit baselines, uniformly pruned ones, and samples whose pruning and rank levels
   spread from light to heavy; a quarter of the samples in float32).
2. :func:`measure_policies`: each policy applied, exported to ONNX, built with TVM for this CPU (the
   target's own ``tvm`` section when this CPU runs its code, else the host) and timed, beside the cost
   model's prediction.
3. :func:`fit_efficiency`: the target's ``compute.efficiency`` per op kind, ``layer_overhead_s``,
   ``channel_exponent`` and the effective rate of each narrower compute mode fitted so that the roofline's
   whole-model latency matches the measurements (least squares on log latency), with Spearman and MAPE before and after on held-out
   policies.
4. :func:`write_target_yaml`: the calibrated target as a YAML file ``load_target`` reads back.

The roofline latency of a layer is ``max(compute * (width / ref)^beta / (eff_kind * rate_mode), memory) +
overhead``, where ``compute`` is its work at the mode's datasheet peak and ``width`` the geometric mean of its
kept input and output channels (untuned TVM code slows per MAC as layers widen: beta about 0.6 here). TVM lowers
QuantizeLinear/DequantizeLinear to float arithmetic, so an 8-bit mode may run no faster than float: its *effective* peak (``rate_mode`` x datasheet,
kept between the next wider mode's effective peak and its own datasheet peak) is what the calibrated
target states for it, its source saying so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph
from picojoule.hwmodels.common import channel_width, compute_time
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.target import OP_KINDS, Target, load_target
from picojoule.hwmodels.workload import graph_arrays, policy_batch, workload
from picojoule.policy import FLOAT_BITS, Policy
from picojoule.spaces.space import Space

__all__ = ["FitStats", "Measurement", "fit_efficiency", "integer_or_float", "measure_policies", "noise_batch",
           "predict_latency",
           "runnable_tvm_target",
           "sample_policies", "write_target_yaml"]

EFF_FLOOR = 1e-5  # lowest efficiency the fit may reach
RIDGE = 1e-3  # pull of each log-parameter toward the fit's start, against over-fitting small sets


# ------------------------------------------------------------------------------------------ sampling


def _as_float(policy: Policy) -> Policy:
    """``policy`` with every layer at 32-bit weights and activations."""
    return Policy(replace(policy.default, w_bits=FLOAT_BITS, a_bits=FLOAT_BITS),
                  {n: replace(lp, w_bits=FLOAT_BITS, a_bits=FLOAT_BITS) for n, lp in policy.layers.items()},
                  dict(policy.meta))


def integer_or_float(policy: Policy) -> Policy:
    """``policy`` with every 9..16-bit width made float32: what ONNX Runtime runs (its integer kernels take 8-bit
    operands, sub-8-bit values carried in int8; wider ones would be emulated in float, slower than float)."""
    def fix(bits: int | None) -> int | None:
        return FLOAT_BITS if bits is not None and 8 < bits < FLOAT_BITS else bits

    def layer(lp: Any) -> Any:
        return replace(lp, w_bits=fix(lp.w_bits), a_bits=fix(lp.a_bits))

    return Policy(layer(policy.default), {n: layer(lp) for n, lp in policy.layers.items()}, dict(policy.meta))


def _named(policy: Policy, name: str) -> Policy:
    policy.meta["name"] = name
    return policy


def sample_policies(graph: LayerGraph, target: Target, n: int, seed: int = 0) -> list[Policy]:
    """``n`` policies (``meta['name']`` set) of ``graph``'s space on ``target``: the baselines fp32, w8a8,
    fp32/w8a8 at keep 0.5 and fp32 at keep 0.75 first, then seeded samples. Each sample draws a pruning
    level and a low-rank probability of its own, so total work spreads from light to heavy; every fourth
    sample is made float32."""
    if n < 1:
        raise PicojouleError(f"calibrate: the number of policies must be >= 1, got {n}")
    space = Space.build(graph, target)
    baselines = [("fp32", Policy()), ("w8a8", space.uniform_policy(8, 8)),
                 ("fp32-keep0.5", _as_float(space.uniform_policy(8, 8, 0.5))),
                 ("w8a8-keep0.5", space.uniform_policy(8, 8, 0.5)),
                 ("fp32-keep0.75", _as_float(space.uniform_policy(8, 8, 0.75)))]
    out = [_named(p, name) for name, p in baselines[:n]]
    rng = np.random.default_rng(seed)
    idx = space.sample(rng, max(0, n - len(out)))
    for i, vec in enumerate(idx):
        level, p_rank = rng.random(), rng.uniform(0.0, 0.6)
        for d, knob in enumerate(space.knobs):
            k = len(knob.choices)
            if knob.kind == "keep":
                vec[d] = int(np.clip(np.rint(level * (k - 1) + rng.normal(0.0, 1.0)), 0, k - 1))
            elif knob.kind == "rank" and 0 in knob.choices:
                none = knob.choices.index(0)
                vec[d] = rng.choice([c for c in range(k) if c != none]) if rng.random() < p_rank else none
        policy = space.decode(vec)
        out.append(_named(_as_float(policy) if i % 4 == 3 else policy, f"sample{i:03d}"))
    return out


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class Measurement:
    """One policy: its predicted and measured whole-model latency (s) at batch 1."""

    name: str
    policy: Policy
    predicted_s: float
    measured_s: float | None
    macs: int
    onnx: str | None = None
    compile_s: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["policy"] = self.policy.to_dict()
        return out


def runnable_tvm_target(target: Target) -> tuple[Any, str]:
    """(TVM target to build for this CPU, where the code runs in words): the target's own llvm section when
    this CPU runs its code, else the host (this CPU)."""
    from picojoule.compilers import tvm_build

    here = f"this CPU ({tvm_build.host_cpu()})"
    if target.tvm is not None and target.tvm.kind == "llvm":
        own = tvm_build.tvm_target(target)
        if not (missing := tvm_build.missing_isa(own)):
            return own, f"{here} with {target.name}'s own TVM target (llvm -mcpu={own.attrs['mcpu']})"
        why = f"its code needs {', '.join(missing[:4])}, which this CPU lacks"
    else:
        why = "TVM builds no llvm code for it"
    return tvm_build.host_target(), f"{here}, not on {target.name} ({why})"


def noise_batch(example: torch.Tensor) -> torch.Tensor:
    """Seeded noise for activation ranges: latency does not depend on the ranges' values."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn((4, *example.shape[1:]), generator=gen)


RUNTIMES = ("tvm", "onnxruntime")


def measure_policies(model_spec: str, weights: str | None, target: Target | str, policies: Sequence[Policy],
                     outdir: str | Path, repeat: int = 5, number: int = 2, rounds: int = 3,
                     progress: bool = True, runtime: str = "tvm") -> list[Measurement]:
    """Apply, export, build and time each policy of ``model_spec`` on this CPU; predict it on ``target``.

    ``runtime``: ``tvm`` (a TVM build for this CPU, untuned) or ``onnxruntime`` (the integer ONNX that
    ``compile`` writes for ONNX Runtime, one thread). Every policy is built first; then ``rounds`` passes time
    all of them in turn (median of ``repeat`` runs of ``number`` calls each) and a policy keeps its fastest
    pass: slow phases of other work on shared cores do not land on one policy. A policy that fails to build keeps
    its error and no measurement.
    """
    if runtime not in RUNTIMES:
        raise PicojouleError(f"calibrate: field 'runtime': expected one of {list(RUNTIMES)}, got {runtime!r}")
    from tqdm import tqdm

    from picojoule.compilers import tvm_build
    from picojoule.compilers.export import export_onnx
    from picojoule.graph import build_graph
    from picojoule.models import load_torch_model
    from picojoule.spaces.apply import apply_policy
    from picojoule.spaces.quantize import calibrate_activations

    if rounds < 1:
        raise PicojouleError(f"measure_policies: rounds must be >= 1, got {rounds}")
    target = load_target(target) if isinstance(target, str) else target
    outdir = Path(outdir)
    model, example = load_torch_model(model_spec, weights)
    graph = build_graph(model, example, name=model_spec)
    predicted = price(graph, target, list(policies)).total_latency_s
    tgt = runnable_tvm_target(target)[0] if runtime == "tvm" else None
    results, executables = [], {}
    for i, policy in enumerate(tqdm(policies, desc=f"build {model_spec}", disable=not progress, unit="policy")):
        name = str(policy.meta.get("name", f"policy{i:03d}"))
        m = Measurement(name, policy, float(predicted[i]), None, 0)
        try:
            compressed, info = apply_policy(model, example, policy, graph)
            if info.needs_calibration:
                calibrate_activations(compressed, [noise_batch(example)])
            m.macs = info.macs
            onnx = export_onnx(compressed, example, outdir / f"{name}.onnx")
            t0 = time.perf_counter()
            if runtime == "tvm":
                executables[i] = tvm_build.compile_onnx(onnx, tgt, tuple(example.shape))
            else:
                import onnx as onnx_lib

                from picojoule.compilers.integer_onnx import integer_onnx

                integer, _ = integer_onnx(onnx_lib.load(str(onnx)), [noise_batch(example)])
                onnx = outdir / f"{name}.ort.onnx"
                onnx_lib.save(integer, str(onnx))
                executables[i] = onnx
            m.onnx = str(onnx)
            m.compile_s = time.perf_counter() - t0
        except PicojouleError as exc:
            m.error = str(exc)
        results.append(m)
    times: dict[int, list[float]] = {i: [] for i in executables}
    passes = [(r, i) for r in range(rounds) for i in executables]
    for _, i in tqdm(passes, desc=f"time {model_spec}", disable=not progress, unit="run"):
        if runtime == "tvm":
            times[i].append(tvm_build.measure_latency(executables[i], example, repeat, number, warmup=2, target=tgt))
        else:
            from picojoule.compilers.export import measure_onnxruntime

            times[i].append(measure_onnxruntime(executables[i], example, repeat, number, warmup=5, threads=1))
    for i, ts in times.items():
        results[i].measured_s = min(ts)
    return results


# ------------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class _Terms:
    """What the roofline needs per (policy, layer) at efficiency 1 and datasheet peaks."""

    compute: np.ndarray  # (N, L) s of compute
    floor: np.ndarray  # (N, L) s: max(compute, memory) = the latency at efficiency 1, no overhead
    kind: np.ndarray  # (L,) op-kind index
    mode: np.ndarray  # (N, L) compute-mode index
    width: np.ndarray  # (N, L) channel width / the target's reference_channels

    def rows(self, rows: np.ndarray) -> _Terms:
        return _Terms(self.compute[rows], self.floor[rows], self.kind, self.mode[rows], self.width[rows])

    def latency(self, eff: np.ndarray, overhead: float, rate: np.ndarray, beta: float) -> np.ndarray:
        """(N,) whole-model latency: sum over layers of max(compute * width^beta / (eff * rate), memory) +
        overhead. (max(c / e, max(c, m)) = max(c / e, m) for e <= 1 and a scale >= 1; the fit keeps it close.)"""
        scale = self.width ** beta
        t = np.maximum(self.compute * scale / (eff[self.kind][None, :] * rate[self.mode]), self.floor)
        return t.sum(axis=1) + overhead * self.compute.shape[1]


def _ideal(target: Target) -> Target:
    """``target`` with efficiency 1 for every op kind, no channel-width scale and no per-layer overhead."""
    compute = target.compute.model_copy(update={"efficiency": dict.fromkeys(OP_KINDS, 1.0), "layer_overhead_s": 0.0,
                                                "channel_exponent": 0.0})
    return target.model_copy(update={"compute": compute})


def _terms(graph: LayerGraph, target: Target, policies: Sequence[Policy]) -> _Terms:
    ideal = _ideal(target)
    ga, pb = graph_arrays(graph), policy_batch(graph, list(policies))
    wl = workload(ga, ideal, pb)
    widths = np.asarray([m.bits for m in target.compute.modes], dtype=np.float64)
    return _Terms(compute_time(ga, ideal, wl), price(graph, ideal, pb).latency_s, ga.kind,
                  np.searchsorted(widths, wl.mode_bits), channel_width(wl, target.compute.reference_channels))


def _params(target: Target) -> tuple[np.ndarray, float, np.ndarray, float]:
    """(efficiency per OP_KINDS, overhead, rate per mode = 1, channel exponent) of ``target``."""
    c = target.compute
    eff = np.asarray([c.efficiency[k] for k in OP_KINDS])
    return eff, c.layer_overhead_s, np.ones(len(c.modes)), c.channel_exponent


def predict_latency(graph: LayerGraph, target: Target, policies: Sequence[Policy]) -> np.ndarray:
    """(N,) whole-model roofline latency of ``policies`` (s), as :func:`price` gives it."""
    return _terms(graph, target, policies).latency(*_params(target))


# ------------------------------------------------------------------------------------------ the fit


@dataclass
class FitStats:
    """How well the calibrated target predicts: Spearman rank correlation and MAPE (mean absolute percentage
    error, a fraction) of whole-model latency before and after, on the held-out policies."""

    model: str
    target: str
    method: str  # "holdout" (a random share held out) or "loo" (leave one out)
    n_policies: int
    n_train: int
    n_test: int
    spearman_before: float
    spearman_after: float
    mape_before: float
    mape_after: float
    mape_train: float
    efficiency: dict[str, float]
    layer_overhead_s: float
    mode_rates: dict[str, float]  # effective / datasheet peak of each mode
    channel_exponent: float = 0.0
    test_names: list[str] = field(default_factory=list)
    measured_on: str = "this CPU"
    date: str = field(default_factory=lambda: date.today().isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def split(self) -> str:
        if self.method == "loo":
            return f"leave-one-out over {self.n_test}"
        return f"fit on {self.n_train}, tested on {self.n_test} held out"

    def summary(self) -> str:
        return (f"{self.model} on {self.target}: {self.n_policies} policies, {self.split}: Spearman "
                f"{self.spearman_before:.3f} -> "
                f"{self.spearman_after:.3f}, MAPE {100 * self.mape_before:.1f}% -> {100 * self.mape_after:.1f}%")


def _spearman(pred: np.ndarray, meas: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(meas) == 0:
        return math.nan
    return float(spearmanr(pred, meas).statistic)


def _mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - meas) / meas))


class _Fit:
    """Least squares on log latency over the free parameters: log efficiency of each op kind the graph
    has, the overhead (µs), for each narrower mode the policies use t in [0, 1] (its effective peak
    is the next wider used mode's effective peak x (own datasheet peak / that)^t), and the channel exponent."""

    def __init__(self, target: Target, terms: _Terms) -> None:
        self.target, self.terms = target, terms
        self.peaks = np.asarray([m.peak_macs_per_s for m in target.compute.modes])
        self.kinds = sorted({int(k) for k in terms.kind[(terms.compute > 0).any(axis=0)]})
        self.used = sorted({int(m) for m in np.unique(terms.mode)}, reverse=True)  # widest first

    def unpack(self, x: np.ndarray, eff0: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, float]:
        eff = eff0.copy()
        eff[self.kinds] = np.exp(x[: len(self.kinds)])
        overhead = x[len(self.kinds)] * 1e-6
        effective = self.peaks.copy()  # the widest used mode: its datasheet peak
        for wider, m, t in zip(self.used, self.used[1:], x[len(self.kinds) + 1:-1]):
            effective[m] = effective[wider] * (self.peaks[m] / effective[wider]) ** t
        for m in range(len(self.peaks) - 2, -1, -1):  # unused modes, wide to narrow: between their neighbours
            if m not in self.used:
                cap = min((effective[u] for u in self.used if u < m), default=self.peaks[m])
                effective[m] = max(min(self.peaks[m], cap), effective[m + 1])
        return eff, overhead, effective / self.peaks, float(x[-1])

    def run(self, meas: np.ndarray, rows: np.ndarray, eff0: np.ndarray, overhead0: float
            ) -> tuple[np.ndarray, float, np.ndarray, float]:
        from scipy.optimize import least_squares

        nk, nm = len(self.kinds), len(self.used) - 1
        x0 = np.concatenate([np.log(eff0[self.kinds]), [overhead0 * 1e6], np.full(nm, 0.5),
                             [self.target.compute.channel_exponent]])
        sub = self.terms.rows(rows)
        top = float(meas[rows].min()) / self.terms.compute.shape[1] * 1e6

        def residuals(x: np.ndarray) -> np.ndarray:
            pred = sub.latency(*self.unpack(x, eff0))
            return np.concatenate([np.log(pred) - np.log(meas[rows]), math.sqrt(RIDGE) * (x[:nk] - x0[:nk])])

        lo = np.concatenate([np.full(nk, math.log(EFF_FLOOR)), [0.0], np.zeros(nm), [-1.0]])
        hi = np.concatenate([np.zeros(nk), [max(top, 1e-9)], np.ones(nm), [1.0]])
        x0 = np.clip(x0, lo, hi)
        return self.unpack(least_squares(residuals, x0, bounds=(lo, hi)).x, eff0)


def _start(terms: _Terms, target: Target, meas: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """The target's efficiencies times one factor that matches the geometric mean of the measurements."""
    eff, overhead, rate, beta = _params(target)
    for _ in range(3):
        ratio = math.exp(np.mean(np.log(terms.latency(eff, overhead, rate, beta)[rows] / meas[rows])))
        eff = np.clip(eff * ratio, EFF_FLOOR, 1.0)
    return eff, overhead


def _calibrated(target: Target, eff: np.ndarray, overhead: float, rate: np.ndarray, beta: float,
                stats: FitStats) -> Target:
    note = (f"calibrated {stats.date} with picojoule calibrate: {stats.model}, {stats.n_policies} policies "
            f"built and timed on {stats.measured_on}; held-out Spearman {stats.spearman_after:.3f}, "
            f"MAPE {100 * stats.mape_after:.1f}%")
    modes = [m if math.isclose(r, 1.0) else m.model_copy(update={
        "peak_macs_per_s": float(m.peak_macs_per_s * r),
        "source": f"effective rate, {r:.3g} x the datasheet peak {m.peak_macs_per_s:.4g} ({note}). {m.source}"})
        for m, r in zip(target.compute.modes, rate)]
    compute = target.compute.model_copy(update={
        "efficiency": {k: float(v) for k, v in zip(OP_KINDS, eff)}, "layer_overhead_s": float(overhead),
        "channel_exponent": beta, "modes": modes, "source": f"{note}. Before calibration: {target.compute.source}"})
    data = target.model_copy(update={"compute": compute}).model_dump()
    data["name"] = target.name if target.name.endswith("-calibrated") else f"{target.name}-calibrated"
    data["description"] = f"{target.description} (calibrated {stats.date})"
    return Target.model_validate(data)


def _split(n: int, holdout: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) pairs: one random split, or n leave-one-out folds (``holdout`` 0)."""
    rows = np.arange(n)
    if holdout == 0:
        return [(np.delete(rows, i), rows[i:i + 1]) for i in rows]
    n_test = min(n - 2, max(1, round(holdout * n)))
    test = np.sort(np.random.default_rng(seed).choice(n, n_test, replace=False))
    return [(np.setdiff1d(rows, test), test)]


def fit_efficiency(graph: LayerGraph, target: Target | str, policies: Sequence[Policy],
                   measured: Sequence[float], holdout: float = 0.25, seed: int = 0,
                   names: Sequence[str] | None = None, measured_on: str = "this CPU") -> tuple[Target, FitStats]:
    """Fit ``target``'s efficiencies, per-layer overhead, channel exponent and narrower modes' effective rates to
    the measured whole-model latencies (s) of ``policies`` on ``graph``; returns the calibrated target and its statistics.

    ``holdout`` in (0, 1): that share of the policies (seeded) is held out, the returned target is fitted on
    the rest and the statistics are on the held-out ones. ``holdout`` 0: leave-one-out, each policy predicted
    by a fit without it (the statistics), the returned target fitted on all. The fit starts from the target's
    efficiencies times one common factor; op kinds the graph lacks keep that start.
    """
    target = load_target(target) if isinstance(target, str) else target
    meas = np.asarray(measured, dtype=np.float64)
    if len(meas) != len(policies) or len(meas) < 3 or not (meas > 0).all():
        raise PicojouleError(f"calibrate: need >= 3 policies with positive measured latencies, one per policy; "
                             f"got {len(policies)} policies and {len(meas)} latencies")
    if not 0 <= holdout < 1:
        raise PicojouleError(f"calibrate: holdout must be in [0, 1) (0: leave-one-out), got {holdout}")
    terms = _terms(graph, target, policies)
    fit = _Fit(target, terms)
    before = terms.latency(*_params(target))
    pred, tests, params = np.empty_like(meas), [], None
    for train, test in _split(len(meas), holdout, seed):
        params = fit.run(meas, train, *_start(terms, target, meas, train))
        pred[test] = terms.latency(*params)[test]
        tests.append(test)
    test = np.concatenate(tests)
    train = np.setdiff1d(np.arange(len(meas)), test) if holdout else np.arange(len(meas))
    if not holdout:
        params = fit.run(meas, train, *_start(terms, target, meas, train))
    eff, overhead, rate, beta = params
    labels = list(names) if names is not None else [str(p.meta.get("name", i)) for i, p in enumerate(policies)]
    stats = FitStats(
        model=graph.name, target=target.name, method="holdout" if holdout else "loo", n_policies=len(meas),
        n_train=len(train) if holdout else len(meas) - 1, n_test=len(test),
        spearman_before=_spearman(before[test], meas[test]), spearman_after=_spearman(pred[test], meas[test]),
        mape_before=_mape(before[test], meas[test]), mape_after=_mape(pred[test], meas[test]),
        mape_train=_mape(terms.latency(eff, overhead, rate, beta)[train], meas[train]),
        efficiency={k: float(v) for k, v in zip(OP_KINDS, eff)}, layer_overhead_s=float(overhead),
        mode_rates={m.name: float(r) for m, r in zip(target.compute.modes, rate)}, channel_exponent=beta,
        test_names=[labels[i] for i in test], measured_on=measured_on)
    return _calibrated(target, eff, overhead, rate, beta, stats), stats


# ------------------------------------------------------------------------------------------ output


def write_target_yaml(target: Target, path: str | Path, stats: FitStats | None = None) -> Path:
    """Write ``target`` as a YAML target file (a comment header with the fit when ``stats`` is given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ""
    if stats is not None:
        eff = ", ".join(f"{k} {v:.4g}" for k, v in stats.efficiency.items())
        header = (f"# Calibrated by 'picojoule calibrate' on {stats.date}: {stats.model}, {stats.n_policies} "
                  f"policies built\n# and timed on {stats.measured_on}; {stats.split}.\n"
                  f"# Spearman {stats.spearman_before:.3f} -> {stats.spearman_after:.3f}; MAPE {100 * stats.mape_before:.1f}% -> "
                  f"{100 * stats.mape_after:.1f}% (train {100 * stats.mape_train:.1f}%).\n"
                  f"# efficiency: {eff}; layer overhead {stats.layer_overhead_s * 1e6:.2f} us; channel exponent "
                  f"{stats.channel_exponent:.3f}.\n")
    body = yaml.safe_dump(target.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=120)
    path.write_text(header + body)
    return path
