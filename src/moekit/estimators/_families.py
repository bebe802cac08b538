"""Expert densities p_k(y | x): small family objects over pure solvers (``_solvers``).

A family object holds configuration only (penalty, variance floor, number of classes, the
scikit-learn template); fitted values live in a parameter dict ``P`` whose keys are the fitted
attribute names of the estimator (``expert_coef_``, ``expert_scale_``, ``expert_df_``,
``experts_``). ``X1`` is the internal design with a leading column of ones; ``rw``
(n_samples, K) are responsibilities already multiplied by the sample weights.

For inference every family exposes its *free* parameters per expert (``get_free`` /
``set_free``), their per-row score ``d log p_k / d theta_k`` (``row_score``) and the weighted
sum of per-row Hessians ``sum_i c_i d^2 log p_k(y_i | x_i) / d theta_k^2``
(``weighted_hessian``). Free parameters: Gaussian (coef, log scale); Student-t (coef, log
scale, log df); Poisson (coef); multinomial (coef of classes 1..C-1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats
from scipy.special import digamma, gammaln

from ._logit import (
    CurvatureRows,
    expert_logits,
    experts_newton_step,
    log_softmax,
    multinomial_hessian,
)
from ._solvers import (
    DF_BOUNDS,
    poisson_irls,
    ridge_vector,
    row_products,
    student_t_ecm,
    student_t_logpdf,
    weighted_ridge_multi,
)

_LOG_2PI = float(np.log(2 * np.pi))


def _drop(P: dict[str, Any], k: int) -> dict[str, Any]:
    out = dict(P)
    for key in ("expert_coef_", "expert_scale_", "expert_df_"):
        if key in out:
            out[key] = np.delete(out[key], k, axis=0)
    if "experts_" in out:
        out["experts_"] = [m for i, m in enumerate(out["experts_"]) if i != k]
    return out


class GaussianFamily:
    """Gaussian linear regression experts, each with its own variance."""

    name = "linear"
    coef_keys: tuple[str, ...] = ("expert_coef_",)

    def __init__(self, alpha: float, scale_floor: float) -> None:
        self.alpha, self.scale_floor = alpha, scale_floor

    def means(self, X1, P):
        return X1 @ P["expert_coef_"].T

    def mean_scale(self, X1, P):
        mu = self.means(X1, P)
        return mu, np.broadcast_to(P["expert_scale_"], mu.shape).copy()

    def log_prob(self, X1, y, P):
        s = P["expert_scale_"]
        r = (y[:, None] - self.means(X1, P)) / s
        return -0.5 * r**2 - np.log(s) - 0.5 * _LOG_2PI

    def init_params(self, X1, y, K):
        return {"expert_coef_": np.zeros((K, X1.shape[1])), "expert_scale_": np.ones(K)}

    def m_step(self, X1, y, rw, P, *, products=None, curvature=None):
        coef = weighted_ridge_multi(X1, y, rw, self.alpha, products=products)
        var = np.einsum("nk,nk->k", rw, (y[:, None] - X1 @ coef.T) ** 2)
        var /= np.maximum(rw.sum(0), 1e-300)
        scale = np.sqrt(np.maximum(var, self.scale_floor**2))
        return {**P, "expert_coef_": coef, "expert_scale_": scale}

    def cdf(self, q, mu, s, P):
        return stats.norm.cdf((q - mu) / s)

    def is_collapsed(self, P, k):
        return bool(P["expert_scale_"][k] <= self.scale_floor * (1 + 1e-9))

    def remove(self, P, k):
        return _drop(P, k)

    # -- inference: free parameters per expert are (coef, log scale)
    def n_free(self, d: int) -> int:
        return d + 1

    def get_free(self, P, k):
        return np.append(P["expert_coef_"][k], np.log(P["expert_scale_"][k]))

    def set_free(self, P, k, v):
        P["expert_coef_"][k] = v[:-1]
        P["expert_scale_"][k] = np.exp(v[-1])

    def get_free_all(self, P):
        """Every expert's free parameters as rows of one (K, n_free) matrix."""
        return np.column_stack([P["expert_coef_"], np.log(P["expert_scale_"])])

    def set_free_all(self, P, M):
        P["expert_coef_"] = M[:, :-1].copy()
        P["expert_scale_"] = np.exp(M[:, -1])

    def free_names(self, terms):
        return [*terms, "log(scale)"]

    def penalty_free(self, d):
        return np.append(ridge_vector(d, self.alpha), 0.0)

    def row_score(self, X1, y, P, k):
        s = P["expert_scale_"][k]
        r = y - X1 @ P["expert_coef_"][k]
        return np.column_stack([X1 * (r / s**2)[:, None], r**2 / s**2 - 1.0])

    def weighted_hessian(self, X1, y, P, k, c):
        s2 = P["expert_scale_"][k] ** 2
        r = y - X1 @ P["expert_coef_"][k]
        d = X1.shape[1]
        H = np.empty((d + 1, d + 1))
        H[:d, :d] = -(X1 * (c / s2)[:, None]).T @ X1
        H[:d, d] = H[d, :d] = -2.0 * X1.T @ (c * r) / s2
        H[d, d] = -2.0 * float(np.sum(c * r**2)) / s2
        return H


class StudentTFamily(GaussianFamily):
    """Student-t linear regression experts (robust), fitted by ECM; df estimated per expert."""

    name = "student_t"

    def mean_scale(self, X1, P):
        mu, s = super().mean_scale(X1, P)
        df = P["expert_df_"]
        return mu, s * np.sqrt(np.where(df > 2, df / np.maximum(df - 2, 1e-12), np.inf))

    def log_prob(self, X1, y, P):
        r = y[:, None] - self.means(X1, P)
        return student_t_logpdf(r, P["expert_scale_"], P["expert_df_"])

    def init_params(self, X1, y, K):
        return {**super().init_params(X1, y, K), "expert_df_": np.full(K, 10.0)}

    def m_step(self, X1, y, rw, P, *, products=None, curvature=None):
        if not np.any(P["expert_coef_"]):  # first M-step: start from the Gaussian fit
            P = {**GaussianFamily.m_step(self, X1, y, rw, P, products=products),
                 "expert_df_": P["expert_df_"]}
        coef, scale, df = (np.array(P[k], copy=True) for k in
                           ("expert_coef_", "expert_scale_", "expert_df_"))
        for k in range(rw.shape[1]):
            coef[k], scale[k], df[k] = student_t_ecm(
                X1, y, rw[:, k], coef[k], scale[k], df[k], self.alpha, self.scale_floor
            )
        return {**P, "expert_coef_": coef, "expert_scale_": scale, "expert_df_": df}

    def cdf(self, q, mu, s, P):
        # ``s`` from mean_scale is the standard deviation; the cdf needs the t scale
        return stats.t.cdf((q - mu) / P["expert_scale_"], P["expert_df_"])

    # -- inference: (coef, log scale, log df)
    def n_free(self, d: int) -> int:
        return d + 2

    def get_free(self, P, k):
        return np.append(P["expert_coef_"][k], np.log([P["expert_scale_"][k],
                                                       P["expert_df_"][k]]))

    def set_free(self, P, k, v):
        P["expert_coef_"][k] = v[:-2]
        P["expert_scale_"][k] = np.exp(v[-2])
        P["expert_df_"][k] = np.exp(v[-1])

    def get_free_all(self, P):
        return np.column_stack([P["expert_coef_"], np.log(P["expert_scale_"]),
                                np.log(P["expert_df_"])])

    def set_free_all(self, P, M):
        P["expert_coef_"] = M[:, :-2].copy()
        P["expert_scale_"] = np.exp(M[:, -2])
        P["expert_df_"] = np.exp(M[:, -1])

    def free_names(self, terms):
        return [*terms, "log(scale)", "log(df)"]

    def penalty_free(self, d):
        return np.append(ridge_vector(d, self.alpha), [0.0, 0.0])

    def row_score(self, X1, y, P, k):
        s, nu = P["expert_scale_"][k], P["expert_df_"][k]
        r = y - X1 @ P["expert_coef_"][k]
        u = (r / s) ** 2
        d_log_df = 0.5 * nu * (digamma((nu + 1) / 2) - digamma(nu / 2) - 1.0 / nu
                               - np.log1p(u / nu) + (nu + 1) * u / (nu * (nu + u)))
        return np.column_stack([X1 * ((nu + 1) * r / (nu * s**2 + r**2))[:, None],
                                (nu + 1) * u / (nu + u) - 1.0, d_log_df])

    def weighted_hessian(self, X1, y, P, k, c):
        # central differences of the analytic weighted score (O(n p^2), ~1e-8 relative)
        v = self.get_free(P, k)
        H = np.empty((len(v), len(v)))
        Q = {key: np.array(val, copy=True) for key, val in P.items()}
        for j in range(len(v)):
            h = 1e-5 * max(1.0, abs(v[j]))
            cols = []
            for sign in (1.0, -1.0):
                t = v.copy()
                t[j] += sign * h
                self.set_free(Q, k, t)
                cols.append(c @ self.row_score(X1, y, Q, k))
            H[:, j] = (cols[0] - cols[1]) / (2 * h)
        return 0.5 * (H + H.T)


class PoissonFamily:
    """Poisson GLM experts with log link (counts)."""

    name = "poisson"
    coef_keys: tuple[str, ...] = ("expert_coef_",)

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def means(self, X1, P):
        return np.exp(np.clip(X1 @ P["expert_coef_"].T, -50, 50))

    def mean_scale(self, X1, P):
        mu = self.means(X1, P)
        return mu, np.sqrt(mu)

    def log_prob(self, X1, y, P):
        eta = np.clip(X1 @ P["expert_coef_"].T, -50, 50)
        return y[:, None] * eta - np.exp(eta) - gammaln(y + 1)[:, None]

    def init_params(self, X1, y, K):
        coef = np.zeros((K, X1.shape[1]))
        coef[:, 0] = np.log(max(float(np.mean(y)), 1e-3))
        return {"expert_coef_": coef}

    def m_step(self, X1, y, rw, P, *, products=None, curvature=None):
        coef = np.array(P["expert_coef_"], copy=True)
        for k in range(rw.shape[1]):
            coef[k] = poisson_irls(X1, y, rw[:, k], coef[k], self.alpha)
        return {**P, "expert_coef_": coef}

    def cdf(self, q, mu, s, P):
        return stats.poisson.cdf(np.floor(q), mu)

    def is_collapsed(self, P, k):
        return False

    def remove(self, P, k):
        return _drop(P, k)

    def n_free(self, d: int) -> int:
        return d

    def get_free(self, P, k):
        return np.array(P["expert_coef_"][k], copy=True)

    def set_free(self, P, k, v):
        P["expert_coef_"][k] = v

    def get_free_all(self, P):
        return np.array(P["expert_coef_"], copy=True)

    def set_free_all(self, P, M):
        P["expert_coef_"] = M.copy()

    def free_names(self, terms):
        return list(terms)

    def penalty_free(self, d):
        return ridge_vector(d, self.alpha)

    def row_score(self, X1, y, P, k):
        mu = np.exp(np.clip(X1 @ P["expert_coef_"][k], -50, 50))
        return X1 * (y - mu)[:, None]

    def weighted_hessian(self, X1, y, P, k, c):
        mu = np.exp(np.clip(X1 @ P["expert_coef_"][k], -50, 50))
        return -(X1 * (c * mu)[:, None]).T @ X1


class SklearnFamily(GaussianFamily):
    """Any scikit-learn regressor accepting ``sample_weight``, with a Gaussian noise per expert.

    The M-step refits each expert on weights ``resp * sample_weight`` on the internal
    (standardised) features ``X1[:, 1:]`` (generalised EM: the likelihood need not increase
    monotonically since the regressor is not an exact maximiser).
    """

    name = "sklearn"
    coef_keys: tuple[str, ...] = ()

    def __init__(self, template: Any, scale_floor: float) -> None:
        super().__init__(0.0, scale_floor)
        self.template = template

    def means(self, X1, P):
        X = X1[:, 1:]
        return np.column_stack([m.predict(X) for m in P["experts_"]])

    def init_params(self, X1, y, K):
        return {"experts_": [None] * K, "expert_scale_": np.ones(K)}

    def m_step(self, X1, y, rw, P, *, products=None, curvature=None):
        from sklearn.base import clone

        X = X1[:, 1:]
        models, scale = [], np.empty(rw.shape[1])
        for k in range(rw.shape[1]):
            m = clone(self.template).fit(X, y, sample_weight=rw[:, k])
            r = y - m.predict(X)
            var = np.sum(rw[:, k] * r**2) / max(np.sum(rw[:, k]), 1e-300)
            scale[k] = np.sqrt(max(var, self.scale_floor**2))
            models.append(m)
        return {**P, "experts_": models, "expert_scale_": scale}

    def n_free(self, d: int) -> int:
        return 1  # the noise scale; the regressor's own parameters are not counted


class MultinomialFamily:
    """Logistic (two classes) / multinomial (more) experts; ``y`` holds class codes 0..C-1."""

    name = "multinomial"
    coef_keys: tuple[str, ...] = ("expert_coef_",)

    def __init__(self, alpha: float, n_classes: int) -> None:
        self.alpha, self.n_classes = alpha, n_classes

    def class_log_proba(self, X1, P):
        """Log p_k(c | x), shape (n_samples, K, n_classes)."""
        return log_softmax(expert_logits(X1, P["expert_coef_"]))

    def log_prob(self, X1, y, P):
        return self.class_log_proba(X1, P)[np.arange(len(y)), :, y]

    def init_params(self, X1, y, K):
        return {"expert_coef_": np.zeros((K, self.n_classes, X1.shape[1]))}

    def m_step(self, X1, y, rw, P, *, products=None, curvature=None):
        coef = P["expert_coef_"]
        curvature = curvature or CurvatureRows.build(X1, self.n_classes)
        # ECM: one safeguarded Newton step per EM iteration (three from the zero start)
        for _ in range(1 if np.any(coef) else 3):
            coef = experts_newton_step(X1, y, rw, coef, self.alpha, curvature=curvature)
        return {**P, "expert_coef_": coef}

    def is_collapsed(self, P, k):
        return False

    def remove(self, P, k):
        return _drop(P, k)

    def n_free(self, d: int) -> int:
        return (self.n_classes - 1) * d

    def get_free(self, P, k):
        return P["expert_coef_"][k, 1:].ravel().copy()

    def set_free(self, P, k, v):
        P["expert_coef_"][k, 1:] = v.reshape(self.n_classes - 1, -1)

    def get_free_all(self, P):
        coef = P["expert_coef_"]
        return coef[:, 1:].reshape(coef.shape[0], -1).copy()

    def set_free_all(self, P, M):
        coef = np.array(P["expert_coef_"], copy=True)
        coef[:, 1:] = M.reshape(coef.shape[0], self.n_classes - 1, -1)
        P["expert_coef_"] = coef

    def free_names(self, terms, classes=None):
        cls = list(range(self.n_classes)) if classes is None else list(classes)
        return [f"[{c}] {nm}" for c in cls[1:] for nm in terms]

    def penalty_free(self, d):
        return ridge_vector(d, self.alpha, self.n_classes - 1)

    def row_score(self, X1, y, P, k):
        logp = log_softmax(X1 @ P["expert_coef_"][k].T)
        r = np.eye(self.n_classes)[y] - np.exp(logp)
        return np.einsum("nc,nd->ncd", r[:, 1:], X1).reshape(len(y), -1)

    def weighted_hessian(self, X1, y, P, k, c):
        prob = np.exp(log_softmax(X1 @ P["expert_coef_"][k].T))
        return -multinomial_hessian(prob, c, row_products(X1), X1.shape[1])


def df_at_bound(df: float) -> bool:
    """Whether a Student-t df sits at an end of its search interval (its SE is then moot)."""
    lo, hi = DF_BOUNDS
    return bool(df <= lo * (1 + 1e-6) or df >= hi * (1 - 1e-6))
