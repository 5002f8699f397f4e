"""Small regressors that say how sure they are: a bagged gradient-boosting ensemble or a Gaussian process, each
predicting ``(mean, std)``. The accuracy predictor of the search (:mod:`picojoule.search.predictor`) and the
latency predictor of the compilers (:mod:`picojoule.compilers.latency_predictor`) both use them.

Only numpy at import time: scikit-learn is imported where it is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from picojoule.errors import PicojouleError

__all__ = ["MODELS", "UncertainRegressor"]

MODELS = ("gbr", "gp")


class UncertainRegressor:
    """``model="gbr"``: an ensemble of ``members`` scikit-learn GradientBoostingRegressors (depth 2, 50 steps at a
    learning rate of 0.2, at least 3 samples a leaf, Huber loss), each fitted on a bootstrap resample with its own
    seed; the mean is the ensemble mean, and ``std`` combines the ensemble's spread with the members' out-of-bag
    error: ``sqrt(var over members + mean squared out-of-bag residual)``. The out-of-bag part is the same for every
    point, so only the spread grows away from the data. ``model="gp"``: a GaussianProcessRegressor on standardised
    features, a constant times an isotropic Matern 5/2 plus a WhiteKernel (the measurement noise), targets
    normalised, hyperparameters by marginal likelihood; ``std`` is the posterior standard deviation of the latent
    function (without the noise)."""

    def __init__(self, model: str = "gbr", seed: int = 0, members: int = 8, source: str = "predictor"):
        if model not in MODELS:
            raise PicojouleError(f"{source}: model: expected one of {', '.join(MODELS)}, got {model!r}")
        self.model, self.seed, self.members = model, seed, members
        self._regressors: list[Any] = []
        self._scale: tuple[np.ndarray, np.ndarray] | None = None
        self._y_std = 1.0  # gp: the targets' scale
        self._oob_var = 0.0  # gbr: the members' mean squared out-of-bag error

    def fit(self, x: np.ndarray, y: np.ndarray) -> UncertainRegressor:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float).reshape(-1)
        self._regressors = self._fit_gp(x, y) if self.model == "gp" else self._fit_gbr(x, y)
        return self

    def _fit_gbr(self, x: np.ndarray, y: np.ndarray) -> list[Any]:
        from sklearn.ensemble import GradientBoostingRegressor

        rng = np.random.default_rng(self.seed)
        out, residuals = [], []
        for m in range(self.members):
            rows = rng.integers(0, len(y), len(y))
            reg = GradientBoostingRegressor(loss="huber", n_estimators=50, learning_rate=0.2, max_depth=2,
                                            min_samples_leaf=3, random_state=self.seed + m)
            out.append(reg.fit(x[rows], y[rows]))
            oob = np.setdiff1d(np.arange(len(y)), rows)
            residuals.append(reg.predict(x[oob]) - y[oob])
        residuals = np.concatenate(residuals)
        self._oob_var = float(np.mean(residuals ** 2)) if len(residuals) else 0.0
        return out

    def _fit_gp(self, x: np.ndarray, y: np.ndarray) -> list[Any]:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        mean, std = x.mean(0), x.std(0)
        self._scale = (mean, np.where(std > 0, std, 1.0))
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(length_scale=3.0, length_scale_bounds=(1e-1, 1e3), nu=2.5)
                  + WhiteKernel(1e-2, (1e-6, 1.0)))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=self.seed)
        with warnings.catch_warnings():  # a hyperparameter at its bound is a fit, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(self._standardise(x), y)
        self._y_std = float(y.std()) or 1.0  # normalize_y's scale: the fitted noise is in its units
        return [gp]

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        mean, std = self._scale
        return (x - mean) / std

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of each row of ``x`` (N, F), each of shape (N,)."""
        x = np.asarray(x, dtype=float)
        if self.model == "gp":
            mean, std = self._regressors[0].predict(self._standardise(x), return_std=True)
            # the posterior of the latent function: take the fitted WhiteKernel's noise back out
            noise = self._regressors[0].kernel_.k2.noise_level * self._y_std ** 2
            return mean, np.sqrt(np.maximum(std ** 2 - noise, 0.0))
        preds = np.stack([reg.predict(x) for reg in self._regressors])
        return preds.mean(0), np.sqrt(preds.var(0) + self._oob_var)
