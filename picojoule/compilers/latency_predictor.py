"""A learned latency predictor, fitted on measured whole-model timings: the "estimation" route of the
energy-estimation survey beside the calibrated analytic model (nn-Meter's lesson: what a runtime fuses and where
it changes layout decides latency as much as the MACs do).

Features of a policy (:func:`latency_features`, from the cost model's pure workload stage, no weights):

* the target's roofline latency (log) and the total MACs (log);
* per op kind (conv, depthwise, linear, matmul), the MACs of layers that run as integers (weights and inputs at 8
  bits or fewer) and of those that run in float (log1p of millions);
* the number of integer and of float MAC layers, and of **precision transitions**: consecutive MAC layers (in the
  graph's order) of which one is integer and the other float, each a Q/DQ pair and, in ONNX Runtime, a layout
  change between its NHWC integer kernels and NCHWc float ones;
* the number of low-rank layers (two kernels each) and of pruned layers.

:class:`LatencyPredictor` fits :class:`~picojoule.regression.UncertainRegressor` (bagged gradient boosting, or a
Gaussian process) to log latency and predicts ``(mean_s, std_log)``: the latency and the standard deviation of
its log, which a search can use as an uncertainty. :func:`compare_on_holdout` sets it beside the roofline, raw
and calibrated on the same training folds, on held-out MAPE and Spearman.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph
from picojoule.hwmodels.target import Target, load_target
from picojoule.hwmodels.workload import graph_arrays, policy_batch, workload
from picojoule.policy import Policy
from picojoule.regression import UncertainRegressor

__all__ = ["FEATURES", "LatencyPredictor", "compare_on_holdout", "latency_features"]

MAC_KINDS = ("conv", "depthwise", "linear", "matmul")
FEATURES = ("log_roofline_s", "log_macs", *[f"int_{k}_mmacs" for k in MAC_KINDS],
            *[f"float_{k}_mmacs" for k in MAC_KINDS], "int_layers", "float_layers", "transitions", "rank_layers",
            "pruned_layers")


def latency_features(graph: LayerGraph, target: Target | str, policies: Sequence[Policy]) -> np.ndarray:
    """(N, len(FEATURES)) features of ``policies`` on ``graph`` and ``target`` (see the module docstring)."""
    from picojoule.hwmodels.costs import price

    target = load_target(target) if isinstance(target, str) else target
    if not policies:
        raise PicojouleError("latency predictor: expected at least one policy")
    ga = graph_arrays(graph)
    pb = policy_batch(graph, list(policies))
    wl = workload(ga, target, pb)
    roof = price(graph, target, pb).total_latency_s
    kinds = np.array([layer.op for layer in graph.layers])
    mac = np.isin(kinds, MAC_KINDS)
    integer = (wl.w_bits <= 8) & (wl.a_bits <= 8)  # (N, L): the widths the target runs them at
    macs = wl.macs.astype(float)
    cols = [np.log(np.maximum(roof, 1e-12)), np.log(np.maximum(macs.sum(1), 1.0))]
    for want in (True, False):
        for k in MAC_KINDS:
            sel = (kinds == k)[None, :] & (integer == want)
            cols.append(np.log1p((macs * sel).sum(1) / 1e6))
    is_int = np.where(mac[None, :], integer, False)
    cols += [is_int[:, mac].sum(1), (~is_int[:, mac]).sum(1)]
    order = is_int[:, mac].astype(int)
    cols.append(np.abs(np.diff(order, axis=1)).sum(1) if order.shape[1] > 1 else np.zeros(len(policies)))
    cols.append((np.asarray(pb.rank)[:, mac] > 0).sum(1))
    cols.append((np.asarray(pb.keep)[:, mac] < 1).sum(1))
    return np.stack([np.asarray(c, dtype=float) for c in cols], axis=1)


class LatencyPredictor:
    """Predicts a policy's whole-model latency on one runtime from :func:`latency_features`, fitted on measured
    latencies (s). ``predict`` gives ``(latency_s, std_log)``: exp of the predicted mean log latency, and the
    standard deviation of the log (0.1 is about +-10%)."""

    def __init__(self, graph: LayerGraph, target: Target | str, model: str = "gbr", seed: int = 0):
        self.graph, self.target = graph, load_target(target) if isinstance(target, str) else target
        self.model, self.seed = model, seed
        self._regressor = UncertainRegressor(model, seed, source="latency predictor")
        self.n_samples = 0

    def fit(self, policies: Sequence[Policy], latencies_s: Sequence[float]) -> LatencyPredictor:
        y = np.asarray(latencies_s, dtype=float)
        if len(y) != len(policies):
            raise PicojouleError(f"latency predictor: {len(policies)} policies but {len(y)} latencies")
        if len(y) < 4 or not (np.isfinite(y).all() and (y > 0).all()):
            raise PicojouleError("latency predictor: needs at least 4 positive, finite measured latencies")
        self._regressor.fit(latency_features(self.graph, self.target, policies), np.log(y))
        self.n_samples = len(y)
        return self

    def predict(self, policies: Sequence[Policy]) -> tuple[np.ndarray, np.ndarray]:
        if not self.n_samples:
            raise PicojouleError("latency predictor: not fitted")
        mean, std = self._regressor.predict(latency_features(self.graph, self.target, policies))
        return np.exp(mean), std

    def __repr__(self) -> str:
        return f"LatencyPredictor({self.model}, {self.target.name}, fitted on {self.n_samples})"


def _mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - meas) / meas))


def _spearman(pred: np.ndarray, meas: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(pred, meas).statistic)


def compare_on_holdout(graph: LayerGraph, target: Target | str, policies: Sequence[Policy],
                       latencies_s: Sequence[float], folds: int = 4, seed: int = 0,
                       models: Sequence[str] = ("gbr", "gp")) -> dict[str, Any]:
    """K-fold comparison on held-out policies: the target's roofline as it is, the roofline calibrated on the
    training folds (:func:`~picojoule.compilers.calibrate.fit_efficiency`), and each learned ``model``. Returns,
    per method, MAPE and Spearman over all out-of-fold predictions (each policy predicted by a fit without it),
    the mean of the per-fold Spearman, the held-out count per fold, and for the learned models the share of
    measurements within 2 std of the prediction (in log)."""
    from sklearn.model_selection import KFold

    from picojoule.compilers.calibrate import fit_efficiency, predict_latency

    target = load_target(target) if isinstance(target, str) else target
    y = np.asarray(latencies_s, dtype=float)
    n = len(y)
    if n < 2 * folds or folds < 2:
        raise PicojouleError(f"compare_on_holdout: {n} policies for {folds} folds: need at least 2 per fold")
    policies = list(policies)
    preds = {"roofline": predict_latency(graph, target, policies), "calibrated roofline": np.empty(n)}
    stds = {}
    for m in models:
        preds[m], stds[m] = np.empty(n), np.empty(n)
    fold_rho: dict[str, list[float]] = {k: [] for k in preds}
    sizes = []
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)):
        sizes.append(len(test))
        tr = [policies[i] for i in train]
        te = [policies[i] for i in test]
        calibrated, _ = fit_efficiency(graph, target, tr, y[train], holdout=0.0, seed=seed)
        preds["calibrated roofline"][test] = predict_latency(graph, calibrated, te)
        for m in models:
            mean, std = LatencyPredictor(graph, target, m, seed).fit(tr, y[train]).predict(te)
            preds[m][test], stds[m][test] = mean, std
        for k in preds:
            fold_rho[k].append(_spearman(preds[k][test], y[test]))
    out: dict[str, Any] = {"n": n, "folds": folds, "held_out_per_fold": sizes, "methods": {}}
    for k, p in preds.items():
        row = {"mape": _mape(p, y), "spearman": _spearman(p, y), "mean_fold_spearman": float(np.mean(fold_rho[k]))}
        if k in stds:
            row["within_2std"] = float(np.mean(np.abs(np.log(y) - np.log(p)) <= 2 * stds[k]))
        out["methods"][k] = row
    return out
