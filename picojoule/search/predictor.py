"""An accuracy predictor that pre-screens search candidates: measuring accuracy is the slow part of a search, and a
regressor fitted on the policies measured so far can say which new ones are not worth measuring.

Features of a choice-index vector (:func:`policy_features`): per knob, the capacity of its choice (bits, keep ratio,
rank with 0 = full, 1 - sparsity, as :func:`~picojoule.search.projection.knob_capacity` rates them) scaled to [0, 1]
over that knob's choices on a log scale (a step from 2 to 4 bits counts as one from 8 to 16: on random policies of
the digits CNN, held-out Spearman at n = 30 rose from 0.35 to 0.59 for the GP and from 0.49 to 0.50 for boosting,
means over six draws, against a linear scale); the mean of those per knob kind; and, given a
:class:`~picojoule.sensitivity.Sensitivity`, the additive sensitivity proxy: the sum over knobs of the chosen
choice's one-knob loss increase, the same of its KL, and the sum of HAWQ-V3's proxy over the weight widths.

:class:`AccuracyPredictor` fits a small gradient-boosting ensemble or a Gaussian process to measured accuracies;
:meth:`AccuracyPredictor.screen` keeps the candidates whose optimistic estimate reaches the best so far less a
margin. :func:`holdout_rank_correlation` says how well it ranks policies it has not seen (out-of-fold Spearman).

Only numpy here at import time: scikit-learn and scipy are imported where they are used, and never torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from picojoule.errors import PicojouleError
from picojoule.regression import MODELS, UncertainRegressor
from picojoule.search.ilp import choice_rows
from picojoule.search.projection import knob_capacity
from picojoule.spaces.space import KNOB_KINDS, Space

__all__ = ["AccuracyPredictor", "feature_names", "holdout_rank_correlation", "policy_features"]

#: the sensitivity proxy's features, in order (present only when a Sensitivity is given)
SENSITIVITY_FEATURES = ("sum_loss_increase", "sum_kl", "sum_hawq_v3")


# --------------------------------------------------------------------------------------------- features

class _Features:
    """Per-knob lookup tables of one space (and sensitivity), built once: a vector's features are then one fancy
    index per knob."""

    def __init__(self, space: Space, sensitivity: Any = None):
        self.space = space
        self.capacity = []  # per knob: each choice's capacity scaled to [0, 1] over the knob's choices
        for knob in space.knobs:
            cap = knob_capacity(knob, space)
            cap = np.log(cap) if (cap > 0).all() else cap  # capacities are ratios: 2 -> 4 bits as 8 -> 16
            span = cap.max() - cap.min()
            self.capacity.append((cap - cap.min()) / span if span > 0 else np.ones_like(cap))
        self.kinds = [kind for kind in KNOB_KINDS if any(k.kind == kind for k in space.knobs)]
        self.by_kind = [[d for d, k in enumerate(space.knobs) if k.kind == kind] for kind in self.kinds]
        self.proxy = None if sensitivity is None else _proxy_tables(space, sensitivity)

    @property
    def names(self) -> list[str]:
        return ([f"{k.name}.capacity" for k in self.space.knobs] + [f"mean_{kind}_capacity" for kind in self.kinds]
                + (list(SENSITIVITY_FEATURES) if self.proxy is not None else []))

    def __call__(self, vecs: np.ndarray) -> np.ndarray:
        vecs = self.space._check(vecs, 2)
        caps = np.empty((len(vecs), self.space.dim))
        for d, table in enumerate(self.capacity):
            caps[:, d] = table[vecs[:, d]]
        parts = [caps, np.stack([caps[:, dims].mean(1) for dims in self.by_kind], axis=1)
                 if self.kinds else np.empty((len(vecs), 0))]
        if self.proxy is not None:
            parts.append(np.stack([sum(table[d][vecs[:, d]] for d in range(self.space.dim))
                                   for table in self.proxy], axis=1))
        return np.concatenate(parts, axis=1)

    def loss_proxy(self, vecs: np.ndarray) -> np.ndarray:
        """The summed one-knob loss increase of each vector (the first sensitivity feature)."""
        return self(vecs)[:, self.space.dim + len(self.kinds)]


def _proxy_tables(space: Space, sensitivity: Any) -> list[list[np.ndarray]]:
    """For each of SENSITIVITY_FEATURES, per knob, its value at each choice: the table row's ``loss_increase``,
    ``kl``, and ``hawq_v3`` on w_bits knobs (0 where a row has none, and on other kinds)."""
    table = getattr(sensitivity, "table", None)
    if not isinstance(table, list):
        raise PicojouleError(f"sensitivity: expected a picojoule.Sensitivity (with a .table of rows), "
                             f"got {type(sensitivity).__name__}")
    names = {k.name for k in space.knobs}
    for row in table:
        if row.get("knob") not in names:
            raise PicojouleError(f"sensitivity: knob '{row.get('knob')}' is not a knob of the space "
                                 f"({space.graph.name} on {space.target.name}); was it measured on another space?")
    out = [[np.zeros(len(k.choices)) for k in space.knobs] for _ in SENSITIVITY_FEATURES]
    for d, (knob, rows) in enumerate(zip(space.knobs, choice_rows(space, sensitivity))):
        for i, (choice, row) in enumerate(zip(knob.choices, rows)):
            if row is None:
                raise PicojouleError(f"sensitivity: no row for knob '{knob.name}' at choice {choice!r}; "
                                     "was it measured on another space?")
            out[0][d][i] = float(row["loss_increase"])
            out[1][d][i] = float(row["kl"])
            if knob.kind == "w_bits":
                out[2][d][i] = float(row.get("hawq_v3") or 0.0)
    return out


def policy_features(space: Space, vecs: np.ndarray, sensitivity: Any = None) -> np.ndarray:
    """Features (N, F) of the choice-index vectors ``vecs`` (N, D) of ``space``, columns as :func:`feature_names`
    names them: D per-knob capacities in [0, 1] on a log scale (each knob's least-capacity choice 0, its greatest
1; a knob with a capacity of 0 among its choices, linear), the mean
    capacity of each knob kind present in the space (in ``KNOB_KINDS`` order), and with ``sensitivity`` (a
    :class:`~picojoule.sensitivity.Sensitivity` of this space) the summed loss increase, KL and HAWQ-V3 proxy of
    the chosen choices. A sensitivity measured on another space raises a one-line PicojouleError."""
    return _Features(space, sensitivity)(vecs)


def feature_names(space: Space, sensitivity: Any = None) -> list[str]:
    """The names of :func:`policy_features`' columns."""
    return _Features(space, sensitivity).names


# --------------------------------------------------------------------------------------------- the predictor

class AccuracyPredictor:
    """Predicts a policy's accuracy from :func:`policy_features`, fitted on measured (vector, accuracy) pairs.

    The regressor is :class:`~picojoule.regression.UncertainRegressor`. ``model="gbr"``: a bagged ensemble of
    ``members`` small gradient-boosting models (100 steps at 0.1 ranked random digits-CNN policies no better than
    its 50 at 0.2, at twice the time); its ``std``, spread plus out-of-bag error, put all of 300 held-out synthetic
    truths (80 fitted) within 2 std where the spread alone put 74%: conservative, as a screen should be.
    ``model="gp"``: a Gaussian process; ``std`` is the posterior standard deviation of the latent accuracy.

    :meth:`fit` refuses (``fitted`` stays False, ``reason`` says why) with fewer than ``min_samples`` distinct
    measured policies; accuracies that are not finite (failed trials) are left out."""

    def __init__(self, space: Space, sensitivity: Any = None, model: str = "gbr", seed: int = 0, *,
                 min_samples: int = 8, members: int = 8):
        UncertainRegressor(model)  # checks the name
        if min_samples < 2:
            raise PicojouleError(f"predictor: min_samples: expected at least 2, got {min_samples}")
        self.space, self.model, self.seed = space, model, seed
        self.min_samples, self.members = min_samples, members
        self.features = _Features(space, sensitivity)
        self.fitted = False
        self.reason: str | None = "not fitted yet"
        self.n_samples = 0
        self._regressor: UncertainRegressor | None = None

    def fit(self, vecs: np.ndarray, accuracies: np.ndarray) -> AccuracyPredictor:
        """Fit on measured vectors (N, D) and their accuracies (N,); replaces any earlier fit."""
        x = self.features(vecs)
        y = np.asarray(accuracies, dtype=float).reshape(-1)
        if len(y) != len(x):
            raise PicojouleError(f"predictor: {len(x)} vectors but {len(y)} accuracies")
        ok = np.isfinite(y)
        x, y, vecs = x[ok], y[ok], np.asarray(vecs)[ok]
        distinct = len(np.unique(vecs, axis=0)) if len(vecs) else 0
        self.fitted, self._regressor, self.n_samples = False, None, int(len(y))
        if distinct < self.min_samples:
            self.reason = f"{distinct} distinct measured policies, fewer than min_samples = {self.min_samples}"
            return self
        self._regressor = UncertainRegressor(self.model, self.seed, self.members).fit(x, y)
        self.fitted, self.reason = True, None
        return self

    def predict(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the predicted accuracy of each vector (N, D), each of shape (N,)."""
        if not self.fitted or self._regressor is None:
            raise PicojouleError(f"predictor: not fitted ({self.reason})")
        return self._regressor.predict(self.features(vecs))

    def screen(self, vecs: np.ndarray, best_so_far: float, margin: float = 0.0, k: float = 2.0) -> np.ndarray:
        """Which vectors are worth measuring (a bool mask (N,)): those whose optimistic estimate ``mean + k * std``
        is not below ``best_so_far - margin``. All True when not fitted or ``best_so_far`` is not finite."""
        n = len(np.asarray(vecs))
        if not self.fitted or best_so_far is None or not np.isfinite(best_so_far):
            self.features(vecs)  # the same checks either way
            return np.ones(n, dtype=bool)
        mean, std = self.predict(vecs)
        return mean + k * std >= best_so_far - margin

    def __repr__(self) -> str:
        state = f"fitted on {self.n_samples}" if self.fitted else f"not fitted: {self.reason}"
        return f"AccuracyPredictor({self.model}, {len(self.features.names)} features, {state})"


# --------------------------------------------------------------------------------------------- hold-out check

def holdout_rank_correlation(space: Space, vecs: np.ndarray, accuracies: np.ndarray, sensitivity: Any = None,
                             model: str = "gbr", folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """How well the predictor ranks policies it was not fitted on: ``folds``-fold cross-validation (shuffled with
    ``seed``), each policy predicted by the model fitted on the other folds, then over all ``n`` samples the
    Spearman (``spearman``, ``spearman_p``) and Kendall (``kendall``) correlations of the out-of-fold predictions
    with the truth. With ``sensitivity``, the baseline that needs no fitting: the Spearman of minus the summed
    one-knob loss increase with the accuracy (``proxy_spearman``, over ``proxy_n`` samples). Samples whose
    accuracy is not finite are left out of everything."""
    from scipy.stats import kendalltau, spearmanr
    from sklearn.model_selection import KFold

    vecs = space._check(vecs, 2)
    y = np.asarray(accuracies, dtype=float).reshape(-1)
    if len(y) != len(vecs):
        raise PicojouleError(f"holdout_rank_correlation: {len(vecs)} vectors but {len(y)} accuracies")
    ok = np.isfinite(y)
    vecs, y = vecs[ok], y[ok]
    if not 2 <= folds <= len(y):
        raise PicojouleError(f"holdout_rank_correlation: folds: expected 2..{len(y)} (the samples), got {folds}")
    oof = np.empty(len(y))
    predictor = AccuracyPredictor(space, sensitivity, model=model, seed=seed)
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(vecs):
        predictor.fit(vecs[train], y[train])
        if not predictor.fitted:
            raise PicojouleError(f"holdout_rank_correlation: a training fold has {predictor.reason}; "
                                 "measure more policies or use fewer folds")
        oof[test] = predictor.predict(vecs[test])[0]
    rho = spearmanr(oof, y)
    out = {"model": model, "n": int(len(y)), "folds": folds, "spearman": float(rho.statistic),
           "spearman_p": float(rho.pvalue), "kendall": float(kendalltau(oof, y).statistic)}
    if sensitivity is not None:
        out.update(proxy_spearman=float(spearmanr(-predictor.features.loss_proxy(vecs), y).statistic),
                   proxy_n=int(len(y)))
    return out
