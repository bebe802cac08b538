"""Expert densities p_e(y | x) and their M-steps, as pure functions plus small family objects.

A family object holds configuration only (penalty, variance floor, number of classes, the
scikit-learn template); fitted values live in a parameter dict ``P`` whose keys are the fitted
attribute names of the estimator (``expert_coef_``, ``expert_scale_``, ``expert_df_``,
``experts_``). ``X1`` has a leading column of ones (see ``_gate``); ``rw`` (n_samples, K) are
responsibilities already multiplied by the sample weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg, optimize, stats
from scipy.special import gammaln

from ._gate import log_softmax, multinomial_logit_newton

_LOG_2PI = float(np.log(2 * np.pi))


def weighted_ridge(X1: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float = 0.0) -> np.ndarray:
    """Weighted least squares with an L2 penalty on the non-intercept coefficients.

    Solves ``(X1' W X1 + alpha * D) beta = X1' W y`` with D = diag(0, 1, ..., 1).

    Parameters
    ----------
    X1 : ndarray of shape (n_samples, n_columns)
    y : ndarray of shape (n_samples,)
    w : ndarray of shape (n_samples,)
    alpha : float

    Returns
    -------
    beta : ndarray of shape (n_columns,)
    """
    Xw = X1 * w[:, None]
    A = Xw.T @ X1
    b = Xw.T @ y
    d = A.shape[0]
    A[np.diag_indices(d)] += alpha * np.r_[0.0, np.ones(d - 1)]
    A[np.diag_indices(d)] += 1e-12 * (1.0 + np.trace(A) / d)
    try:
        return np.asarray(linalg.solve(A, b, assume_a="pos"))
    except (linalg.LinAlgError, ValueError):
        return np.asarray(linalg.lstsq(A, b)[0])


def weighted_grams(X1: np.ndarray, rw: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
    """``X1' diag(rw[:, k]) X1`` for every column k, shape (K, d, d), by one GEMM per row chunk.

    Memory stays O(chunk * K * d) whatever n_samples is.
    """
    n, d = X1.shape
    K = rw.shape[1]
    out = np.zeros((d, K * d))
    for start in range(0, n, chunk):
        Xc, Rc = X1[start : start + chunk], rw[start : start + chunk]
        out += Xc.T @ (Rc[:, :, None] * Xc[:, None, :]).reshape(len(Xc), K * d)
    return out.reshape(d, K, d).transpose(1, 0, 2)


def weighted_ridge_multi(
    X1: np.ndarray, y: np.ndarray, rw: np.ndarray, alpha: float = 0.0
) -> np.ndarray:
    """:func:`weighted_ridge` for every column of ``rw`` (n_samples, K) at once: (K, d)."""
    A = weighted_grams(X1, rw)
    b = (rw * y[:, None]).T @ X1
    K, d, _ = A.shape
    coef = np.empty((K, d))
    pen = alpha * np.r_[0.0, np.ones(d - 1)]
    for k in range(K):
        Ak = A[k] + np.diag(pen + 1e-12 * (1.0 + np.trace(A[k]) / d))
        try:
            coef[k] = linalg.solve(Ak, b[k], assume_a="pos")
        except (linalg.LinAlgError, ValueError):
            coef[k] = linalg.lstsq(Ak, b[k])[0]
    return coef


def poisson_irls(
    X1: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    beta: np.ndarray,
    alpha: float = 0.0,
    max_iter: int = 10,
) -> np.ndarray:
    """Weighted Poisson GLM (log link) with L2 penalty by Newton/IRLS with step halving.

    Maximises ``sum w (y * eta - exp(eta)) - alpha/2 ||beta[1:]||^2``; never decreases it.
    """
    d = X1.shape[1]
    pen = alpha * np.r_[0.0, np.ones(d - 1)]

    def obj(b):
        eta = np.clip(X1 @ b, -50, 50)
        return float(np.sum(w * (y * eta - np.exp(eta))) - 0.5 * np.sum(pen * b**2)), eta

    f, eta = obj(beta)
    for _ in range(max_iter):
        mu = np.exp(eta)
        grad = X1.T @ (w * (y - mu)) - pen * beta
        H = (X1 * (w * mu)[:, None]).T @ X1
        H[np.diag_indices(d)] += pen + 1e-10 * (1.0 + np.trace(H) / d)
        try:
            step = linalg.solve(H, grad, assume_a="pos")
        except (linalg.LinAlgError, ValueError):
            step = linalg.lstsq(H, grad)[0]
        t = 1.0
        for _ in range(40):
            f_new, eta_new = obj(beta + t * step)
            if f_new >= f - 1e-12 * abs(f):
                break
            t *= 0.5
        else:
            break
        gain = f_new - f
        beta, f, eta = beta + t * step, f_new, eta_new
        if gain <= 1e-10 * (1.0 + abs(f)):
            break
    return beta


def student_t_logpdf(r: np.ndarray, scale: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Log density of residuals ``r`` under a scaled Student-t (broadcasting)."""
    return (
        gammaln((df + 1) / 2)
        - gammaln(df / 2)
        - 0.5 * np.log(df * np.pi)
        - np.log(scale)
        - (df + 1) / 2 * np.log1p((r / scale) ** 2 / df)
    )


def student_t_ecm(
    X1: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    beta: np.ndarray,
    scale: float,
    df: float,
    alpha: float = 0.0,
    scale_floor: float = 0.0,
) -> tuple[np.ndarray, float, float]:
    """One ECM step for a weighted Student-t regression (scale-mixture-of-normals trick).

    Latent precisions u_i = (df + 1) / (df + r_i^2 / scale^2) turn the step for (beta, scale)
    into weighted least squares; df then maximises the weighted t log-likelihood on [0.5, 200].
    Each part increases ``sum w log t(y; X1 beta, scale, df)`` (a majorise-minimise step).

    Returns
    -------
    beta : ndarray of shape (n_columns,)
    scale : float
    df : float
    """
    r = y - X1 @ beta
    u = (df + 1) / (df + (r / scale) ** 2)
    beta = weighted_ridge(X1, y, w * u, alpha)
    r = y - X1 @ beta
    sw = max(float(np.sum(w)), 1e-300)
    scale = float(np.sqrt(max(np.sum(w * u * r**2) / sw, scale_floor**2)))

    def neg(log_df):
        return -float(np.sum(w * student_t_logpdf(r, scale, np.exp(log_df))))

    res = optimize.minimize_scalar(neg, bounds=(np.log(0.5), np.log(200.0)), method="bounded",
                                   options={"xatol": 1e-6})
    if res.fun <= neg(np.log(df)):
        df = float(np.exp(res.x))
    return beta, scale, df


class GaussianFamily:
    """Gaussian linear regression experts, each with its own variance."""

    name = "linear"
    has_scale = True

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

    def m_step(self, X1, y, rw, P):
        coef = weighted_ridge_multi(X1, y, rw, self.alpha)
        var = np.einsum("nk,nk->k", rw, (y[:, None] - X1 @ coef.T) ** 2)
        var /= np.maximum(rw.sum(0), 1e-300)
        scale = np.sqrt(np.maximum(var, self.scale_floor**2))
        return {**P, "expert_coef_": coef, "expert_scale_": scale}

    def cdf(self, q, mu, s, P):
        return stats.norm.cdf((q - mu) / s)

    # -- inference: free parameters per expert are (coef, log scale)
    def get_free(self, P, k):
        return np.r_[P["expert_coef_"][k], np.log(P["expert_scale_"][k])]

    def set_free(self, P, k, v):
        P["expert_coef_"][k] = v[:-1]
        P["expert_scale_"][k] = np.exp(v[-1])

    def row_score(self, X1, y, P, k):
        s = P["expert_scale_"][k]
        r = y - X1 @ P["expert_coef_"][k]
        return np.column_stack([X1 * (r / s**2)[:, None], r**2 / s**2 - 1.0])

    def penalty_free(self, d):
        return np.r_[0.0, np.ones(d - 1), 0.0] * self.alpha

    def free_names(self, names):
        return [*names, "log(scale)"]

    def is_collapsed(self, P, k):
        return bool(P["expert_scale_"][k] <= self.scale_floor * (1 + 1e-9))


class StudentTFamily(GaussianFamily):
    """Student-t linear regression experts (robust), fitted by ECM."""

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

    def m_step(self, X1, y, rw, P):
        if not np.any(P["expert_coef_"]):  # first M-step: start from the Gaussian fit
            P = {**GaussianFamily.m_step(self, X1, y, rw, P), "expert_df_": P["expert_df_"]}
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

    def row_score(self, X1, y, P, k):
        s, df = P["expert_scale_"][k], P["expert_df_"][k]
        r = y - X1 @ P["expert_coef_"][k]
        den = df * s**2 + r**2
        return np.column_stack([X1 * ((df + 1) * r / den)[:, None], (df + 1) * r**2 / den - 1.0])


class PoissonFamily:
    """Poisson GLM experts with log link (counts)."""

    name = "poisson"
    has_scale = False

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

    def m_step(self, X1, y, rw, P):
        coef = np.array(P["expert_coef_"], copy=True)
        for k in range(rw.shape[1]):
            coef[k] = poisson_irls(X1, y, rw[:, k], coef[k], self.alpha)
        return {**P, "expert_coef_": coef}

    def cdf(self, q, mu, s, P):
        return stats.poisson.cdf(np.floor(q), mu)

    def get_free(self, P, k):
        return np.array(P["expert_coef_"][k], copy=True)

    def set_free(self, P, k, v):
        P["expert_coef_"][k] = v

    def row_score(self, X1, y, P, k):
        mu = np.exp(np.clip(X1 @ P["expert_coef_"][k], -50, 50))
        return X1 * (y - mu)[:, None]

    def penalty_free(self, d):
        return np.r_[0.0, np.ones(d - 1)] * self.alpha

    def free_names(self, names):
        return list(names)

    def is_collapsed(self, P, k):
        return False


class SklearnFamily(GaussianFamily):
    """Any scikit-learn regressor accepting ``sample_weight``, with a Gaussian noise per expert.

    The M-step refits each expert on weights ``resp * sample_weight`` (generalised EM: the
    likelihood need not increase monotonically since the regressor is not an exact maximiser).
    """

    name = "sklearn"

    def __init__(self, template: Any, scale_floor: float) -> None:
        super().__init__(0.0, scale_floor)
        self.template = template

    def means(self, X1, P):
        X = X1[:, 1:]
        return np.column_stack([m.predict(X) for m in P["experts_"]])

    def init_params(self, X1, y, K):
        return {"experts_": [None] * K, "expert_scale_": np.ones(K)}

    def m_step(self, X1, y, rw, P):
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


class MultinomialFamily:
    """Logistic (two classes) / multinomial (more) experts; ``y`` holds class codes 0..C-1."""

    name = "multinomial"
    has_scale = False

    def __init__(self, alpha: float, n_classes: int) -> None:
        self.alpha, self.n_classes = alpha, n_classes

    def class_log_proba(self, X1, P):
        """Log p_e(c | x), shape (n_samples, K, n_classes)."""
        return log_softmax(np.einsum("nd,kcd->nkc", X1, P["expert_coef_"]))

    def log_prob(self, X1, y, P):
        return self.class_log_proba(X1, P)[np.arange(len(y)), :, y]

    def init_params(self, X1, y, K):
        return {"expert_coef_": np.zeros((K, self.n_classes, X1.shape[1]))}

    def m_step(self, X1, y, rw, P):
        onehot = np.eye(self.n_classes)[y]
        coef = np.array(P["expert_coef_"], copy=True)
        for k in range(rw.shape[1]):
            coef[k] = multinomial_logit_newton(X1, onehot, rw[:, k], coef[k], self.alpha,
                                               max_iter=10)
        return {**P, "expert_coef_": coef}

    def get_free(self, P, k):
        return P["expert_coef_"][k, 1:].ravel().copy()

    def set_free(self, P, k, v):
        P["expert_coef_"][k, 1:] = v.reshape(self.n_classes - 1, -1)

    def row_score(self, X1, y, P, k):
        logp = log_softmax(X1 @ P["expert_coef_"][k].T)
        r = np.eye(self.n_classes)[y] - np.exp(logp)
        return np.einsum("nc,nd->ncd", r[:, 1:], X1).reshape(len(y), -1)

    def penalty_free(self, d):
        return np.tile(np.r_[0.0, np.ones(d - 1)], self.n_classes - 1) * self.alpha

    def free_names(self, names, classes=None):
        cls = list(range(self.n_classes)) if classes is None else list(classes)
        return [f"[{c}] {nm}" for c in cls[1:] for nm in names]

    def is_collapsed(self, P, k):
        return False
