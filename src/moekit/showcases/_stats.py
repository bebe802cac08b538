"""Density baselines for the statistical showcases: each gives log p(y_i | x_i) on held-out rows.

Every model here is a predictive *density* so that it can be compared with a mixture of experts
on held-out log-likelihood: a Gaussian around a point prediction (linear regression, gradient
boosting), a heteroscedastic Gaussian (mean and log standard deviation linear in x, fitted by
maximum likelihood), and a model stratified by a known group (one linear Gaussian per group).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from moekit.showcases._base import ModelResult

__all__ = ["GaussianLinear", "HeteroscedasticLinear", "Scoreboard", "StratifiedLinear",
           "gaussian_logpdf", "gbm_gaussian"]

_LOG_2PI = float(np.log(2.0 * np.pi))


def gaussian_logpdf(y: np.ndarray, mean: np.ndarray, sd: np.ndarray | float) -> np.ndarray:
    """log N(y | mean, sd^2) per row."""
    z = (np.asarray(y) - mean) / sd
    return -0.5 * _LOG_2PI - np.log(sd) - 0.5 * z**2


def _fitted(value, model: object):
    """``value`` of a fitted model; a clear error when ``fit`` was not called."""
    if value is None:
        raise RuntimeError(f"{type(model).__name__} is not fitted yet; call fit(X, y) first")
    return value


def _design(X: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(X)), np.asarray(X, dtype=np.float64)])


@dataclass
class GaussianLinear:
    """Least squares with a Gaussian of the training residuals' ML standard deviation."""

    coef_: np.ndarray | None = None
    sd_: float = 1.0

    def fit(self, X: np.ndarray, y: np.ndarray) -> GaussianLinear:
        X1 = _design(X)
        self.coef_ = np.linalg.lstsq(X1, y, rcond=None)[0]
        self.sd_ = float(np.sqrt(np.mean((y - X1 @ self.coef_) ** 2)))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _design(X) @ _fitted(self.coef_, self)

    def log_likelihood_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return gaussian_logpdf(y, self.predict(X), self.sd_)

    @property
    def n_parameters(self) -> int:
        return len(_fitted(self.coef_, self)) + 1


@dataclass
class HeteroscedasticLinear:
    """y ~ N(x·b, exp(x·g)^2): mean and log standard deviation both linear, fitted by ML.

    The negative log-likelihood is convex in ``g`` for fixed ``b`` and in ``b`` for fixed ``g``;
    L-BFGS-B on both with the analytic gradient, started from least squares, reaches the
    optimum on the showcases' tables in well under a second.
    """

    coef_: np.ndarray | None = None
    log_sd_coef_: np.ndarray | None = None
    max_iter: int = 500

    @staticmethod
    def negative_log_likelihood(theta: np.ndarray, X1: np.ndarray,
                                y: np.ndarray) -> tuple[float, np.ndarray]:
        """Summed negative log-likelihood and its gradient at ``theta = (b, g)``."""
        p = X1.shape[1]
        b, g = theta[:p], theta[p:]
        log_sd = X1 @ g
        inv_sd = np.exp(-log_sd)
        z = (y - X1 @ b) * inv_sd
        nll = float(np.sum(log_sd + 0.5 * z**2) + 0.5 * _LOG_2PI * len(y))
        grad_b = -(X1.T @ (z * inv_sd))
        grad_g = X1.T @ (1.0 - z**2)
        return nll, np.concatenate([grad_b, grad_g])

    def fit(self, X: np.ndarray, y: np.ndarray) -> HeteroscedasticLinear:
        X1 = _design(X)
        p = X1.shape[1]
        b0 = np.linalg.lstsq(X1, y, rcond=None)[0]
        g0 = np.zeros(p)
        g0[0] = np.log(max(float(np.std(y - X1 @ b0)), 1e-8))
        res = optimize.minimize(self.negative_log_likelihood, np.concatenate([b0, g0]),
                                args=(X1, y), jac=True, method="L-BFGS-B",
                                options={"maxiter": self.max_iter})
        self.coef_, self.log_sd_coef_ = res.x[:p], res.x[p:]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _design(X) @ _fitted(self.coef_, self)

    def predict_sd(self, X: np.ndarray) -> np.ndarray:
        return np.exp(_design(X) @ _fitted(self.log_sd_coef_, self))

    def log_likelihood_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return gaussian_logpdf(y, self.predict(X), self.predict_sd(X))

    @property
    def n_parameters(self) -> int:
        return 2 * len(_fitted(self.coef_, self))


@dataclass
class StratifiedLinear:
    """One :class:`GaussianLinear` per known group (the model that is *told* the groups).

    ``drop_columns`` removes features that are constant within a group (such as the group's
    own indicator), which least squares could not estimate there.
    """

    drop_columns: tuple[int, ...] = ()
    models_: dict[int, GaussianLinear] | None = None

    def _keep(self, X: np.ndarray) -> np.ndarray:
        keep = [j for j in range(X.shape[1]) if j not in self.drop_columns]
        return X[:, keep]

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> StratifiedLinear:
        Xk = self._keep(X)
        self.models_ = {int(g): GaussianLinear().fit(Xk[groups == g], y[groups == g])
                        for g in np.unique(groups)}
        return self

    def log_likelihood_samples(self, X: np.ndarray, y: np.ndarray,
                               groups: np.ndarray) -> np.ndarray:
        models = _fitted(self.models_, self)
        unseen = sorted(set(np.unique(groups).tolist()) - set(models))
        if unseen:
            raise ValueError(f"groups {unseen} were not in the training rows")
        Xk = self._keep(X)
        out = np.empty(len(y))
        for g, model in models.items():
            rows = groups == g
            out[rows] = model.log_likelihood_samples(Xk[rows], y[rows])
        return out

    def predict(self, X: np.ndarray, groups: np.ndarray) -> np.ndarray:
        Xk = self._keep(X)
        out = np.empty(len(X))
        for g, model in _fitted(self.models_, self).items():
            rows = groups == g
            out[rows] = model.predict(Xk[rows])
        return out

    @property
    def n_parameters(self) -> int:
        return sum(m.n_parameters for m in _fitted(self.models_, self).values())


def gbm_gaussian(X: np.ndarray, y: np.ndarray, *, seed: int, n_estimators: int = 200):
    """Gradient boosting with a Gaussian whose sd comes from 5-fold out-of-fold residuals.

    Training residuals of a boosted model understate its error on new rows, so the noise scale
    is estimated out of fold, as a fair density for held-out log-likelihood.

    Returns
    -------
    model : fitted sklearn GradientBoostingRegressor
    sd : float
    n_parameters : int
        Nodes of all trees (a split threshold or a leaf value each).
    """
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import KFold, cross_val_predict

    model = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=3, learning_rate=0.05,
                                      random_state=seed)
    oof = cross_val_predict(model, X, y, cv=KFold(5, shuffle=True, random_state=seed))
    sd = float(np.sqrt(np.mean((y - oof) ** 2)))
    model.fit(X, y)
    n_params = int(sum(t.tree_.node_count for t in model.estimators_.ravel()))
    return model, sd, n_params


class Scoreboard:
    """Held-out log-likelihood, RMSE, fit time and parameter count of each model, per replicate.

    ``names`` maps a model's key to its label; :meth:`record` adds one replicate of one model and
    :meth:`models` turns the board into :class:`~moekit.showcases.ModelResult` records (keys in
    ``moe_keys`` are the mixtures, every other one a baseline).
    """

    def __init__(self, names: dict[str, str]) -> None:
        self.names = dict(names)
        self.ll: dict[str, list[float]] = {k: [] for k in names}
        self.rmse: dict[str, list[float]] = {k: [] for k in names}
        self.secs: dict[str, list[float]] = {k: [] for k in names}
        self.params: dict[str, int] = {}

    def record(self, key: str, started: float, loglik: np.ndarray, pred: np.ndarray,
               y_test: np.ndarray, n_params: int) -> None:
        """One replicate of model ``key``: ``started`` is its ``time.perf_counter()`` at the
        start of the fit; ``loglik`` per held-out row, ``pred`` its point predictions."""
        import time

        self.secs[key].append(time.perf_counter() - started)
        self.ll[key].append(float(np.mean(loglik)))
        self.rmse[key].append(float(np.sqrt(np.mean((pred - y_test) ** 2))))
        self.params[key] = n_params

    def models(self, moe_keys: set[str],
               details: dict[str, dict[str, object]] | None = None) -> tuple[ModelResult, ...]:
        return tuple(ModelResult(
            name=label, kind="moe" if key in moe_keys else "baseline",
            values=tuple(self.ll[key]), other={"rmse": tuple(self.rmse[key])},
            parameters_total=self.params[key], parameters_active=self.params[key],
            train_time_s=float(np.mean(self.secs[key])), details=(details or {}).get(key, {}))
            for key, label in self.names.items())
