"""Online (stepwise) EM for Gaussian linear experts: the maths of ``partial_fit``.

Cappé & Moulines (2009): keep running averages of the complete-data sufficient statistics,
``S <- (1 - g_t) S + g_t s(batch)`` with step ``g_t = (t + 2) ** -0.6``, and set the expert
parameters to the M-step of ``S``. Per expert k the statistics are

- ``h[k]``  = mean of w h_k,
- ``xx[k]`` = mean of w h_k x1 x1' (internal design, n_kept + 1 square),
- ``xy[k]`` = mean of w h_k x1 y,
- ``yy[k]`` = mean of w h_k y^2,

(the estimator stores them as ``suff_h_`` ... ``suff_yy_``, plain arrays, so a saved model can
resume). The gate has no finite sufficient statistics; it moves a fraction g_t of the way to
the minibatch's Newton/IRLS solution. Memory is O(batch_size * K) whatever the data size.
Every function takes and returns plain values; nothing here touches an estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._logit import logsumexp, multinomial_logit_newton
from ._solvers import solve_spd, weighted_grams

STEP_EXPONENT = 0.6


@dataclass(frozen=True, kw_only=True)
class Statistics:
    """Averaged sufficient statistics of the experts (see the module docstring)."""

    h: np.ndarray
    xx: np.ndarray
    xy: np.ndarray
    yy: np.ndarray

    def blend(self, other: Statistics, gamma: float) -> Statistics:
        """``(1 - gamma) * self + gamma * other``."""
        return Statistics(**{k: (1 - gamma) * getattr(self, k) + gamma * getattr(other, k)
                             for k in ("h", "xx", "xy", "yy")})


def batch_statistics(X1: np.ndarray, y: np.ndarray, rw: np.ndarray) -> Statistics:
    """Mean sufficient statistics of a batch with weighted responsibilities rw (n, K)."""
    n = max(float(np.sum(rw)), 1e-300)
    return Statistics(h=rw.sum(0) / n, xx=weighted_grams(X1, rw) / n,
                      xy=(rw * y[:, None]).T @ X1 / n, yy=rw.T @ (y**2) / n)


def experts_from_statistics(S: Statistics, ridge: float,
                            scale_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """M-step of Gaussian linear experts from (averaged) sufficient statistics."""
    K, d, _ = S.xx.shape
    A = S.xx.copy()
    A[:, np.arange(1, d), np.arange(1, d)] += ridge
    coef = solve_spd(A, S.xy)
    rss = S.yy - 2 * np.einsum("kd,kd->k", coef, S.xy) + np.einsum("kd,kde,ke->k", coef, S.xx,
                                                                    coef)
    scale = np.sqrt(np.maximum(rss / np.maximum(S.h, 1e-300), scale_floor**2))
    return coef, scale


def step_size(n_batches: int) -> float:
    """g_t of the t-th batch (t = n_batches, counting from 0 for the first)."""
    return 1.0 if n_batches == 0 else (n_batches + 2.0) ** -STEP_EXPONENT


def online_step(
    X1: np.ndarray,
    y: np.ndarray,
    sw: np.ndarray,
    *,
    gate: np.ndarray,
    coef: np.ndarray,
    scale: np.ndarray,
    stats: Statistics | None,
    n_batches: int,
    n_samples_seen: float,
    gate_alpha: float,
    expert_alpha: float,
    scale_floor: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Statistics, float]:
    """One stepwise-EM update on the batch (internal scale).

    Parameters
    ----------
    X1 : ndarray of shape (n, d)
        Internal design of the batch.
    gate : ndarray of shape (K, d)
        Flat gate coefficients, row 0 zeros.
    coef, scale : ndarray of shape (K, d) and (K,)
        Expert parameters.
    stats : Statistics or None
        The running statistics (None before the first batch).
    n_batches, n_samples_seen : int, float
        Batches and total weight seen *before* this batch.

    Returns
    -------
    gate, coef, scale, stats, mean_loglik
        New parameters and statistics, and the batch's mean log-likelihood under the old ones.
    """
    logits = X1 @ gate.T
    log_gate = logits - logsumexp(logits, axis=1, keepdims=True)
    r = (y[:, None] - X1 @ coef.T) / scale
    log_joint = log_gate - 0.5 * r**2 - np.log(scale) - 0.5 * np.log(2 * np.pi)
    ll_rows = logsumexp(log_joint, axis=1)
    resp = np.exp(log_joint - ll_rows[:, None])
    batch = batch_statistics(X1, y, resp * sw[:, None])
    gamma = step_size(n_batches)
    stats = batch if stats is None else stats.blend(batch, gamma)
    batch_w = float(np.sum(sw))
    seen = n_samples_seen + batch_w
    coef, scale = experts_from_statistics(stats, expert_alpha / seen, scale_floor)
    target = multinomial_logit_newton(X1, resp, sw, gate, gate_alpha * batch_w / seen,
                                      max_iter=1)
    gate = gate + gamma * (target - gate)
    return gate, coef, scale, stats, float(sw @ ll_rows) / batch_w
