"""Online (stepwise) EM for Gaussian linear experts: ``partial_fit`` on minibatches.

Cappé & Moulines (2009): keep running averages of the complete-data sufficient statistics,
``S <- (1 - g_t) S + g_t s(batch)`` with step ``g_t = (t + 2) ** -0.6``, and set the expert
parameters to the M-step of ``S``. Per expert k the statistics are

- ``suff_h_[k]``  = mean of w h_k,
- ``suff_xx_[k]`` = mean of w h_k x1 x1' (n_features + 1 square),
- ``suff_xy_[k]`` = mean of w h_k x1 y,
- ``suff_yy_[k]`` = mean of w h_k y^2,

all fitted attributes (plain arrays), so a saved model can resume. The gate has no finite
sufficient statistics; it moves a fraction g_t of the way to the minibatch's Newton/IRLS
solution. Memory is O(batch_size * K) whatever the data size.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from sklearn.base import clone

from ._base import _sk_validate_data, add_intercept, check_sample_weight
from ._gate import logsumexp, multinomial_logit_newton

_STEP_EXPONENT = 0.6


def batch_statistics(X1: np.ndarray, y: np.ndarray, rw: np.ndarray):
    """Mean sufficient statistics of a batch with weighted responsibilities rw (n, K)."""
    n = max(float(np.sum(rw)), 1e-300)
    s_h = rw.sum(0) / n
    s_xx = np.stack([(X1 * rw[:, k : k + 1]).T @ X1 for k in range(rw.shape[1])]) / n
    s_xy = (rw * y[:, None]).T @ X1 / n
    s_yy = rw.T @ (y**2) / n
    return s_h, s_xx, s_xy, s_yy


def experts_from_statistics(s_h, s_xx, s_xy, s_yy, ridge: float, scale_floor: float):
    """M-step of Gaussian linear experts from (averaged) sufficient statistics."""
    K, d, _ = s_xx.shape
    coef, scale = np.empty((K, d)), np.empty(K)
    D = np.r_[0.0, np.ones(d - 1)] * ridge
    for k in range(K):
        A = s_xx[k] + np.diag(D + 1e-12 * (1.0 + np.trace(s_xx[k]) / d))
        try:
            coef[k] = linalg.solve(A, s_xy[k], assume_a="pos")
        except (linalg.LinAlgError, ValueError):
            coef[k] = linalg.lstsq(A, s_xy[k])[0]
        rss = s_yy[k] - 2 * coef[k] @ s_xy[k] + coef[k] @ s_xx[k] @ coef[k]
        scale[k] = np.sqrt(max(rss / max(s_h[k], 1e-300), scale_floor**2))
    return coef, scale


def online_step(est, X, y, sample_weight=None):
    """One stepwise-EM update of ``est`` (a MixtureOfExpertsRegressor) on the batch (X, y)."""
    first = not hasattr(est, "suff_xx_")
    if first:
        est._validate_params()
    X, y = _sk_validate_data(est, X, y, reset=first, dtype=np.float64, y_numeric=True)
    y = np.asarray(y, dtype=float).ravel()
    sw = check_sample_weight(sample_weight, X.shape[0])
    X1 = add_intercept(X)
    if first:
        # initialise by a short batch EM on the first minibatch
        init = clone(est).set_params(max_iter=min(int(est.max_iter), 50), warm_start=False)
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            init.fit(X, y, sample_weight=sw)
        for key, value in vars(init).items():
            if key.endswith("_") and not key.startswith("_"):
                setattr(est, key, value)
        est.n_samples_seen_ = 0.0
        est.n_batches_ = 0
        est.loglik_history_ = []
    family = est._make_family()
    state = est._get_state()
    log_joint = est._log_joint(X1, y, state, family)
    ll_rows = logsumexp(log_joint, axis=1)
    resp = np.exp(log_joint - ll_rows[:, None])
    rw = resp * sw[:, None]
    stats = batch_statistics(X1, y, rw)
    batch_w = float(np.sum(sw))
    if first:
        est.suff_h_, est.suff_xx_, est.suff_xy_, est.suff_yy_ = stats
        gamma = 1.0
    else:
        gamma = (est.n_batches_ + 2.0) ** -_STEP_EXPONENT
        names = ("suff_h_", "suff_xx_", "suff_xy_", "suff_yy_")
        for name, s in zip(names, stats):
            setattr(est, name, (1 - gamma) * getattr(est, name) + gamma * s)
    est.n_samples_seen_ = float(est.n_samples_seen_) + batch_w
    est.n_batches_ = int(est.n_batches_) + 1
    est.expert_coef_, est.expert_scale_ = experts_from_statistics(
        est.suff_h_, est.suff_xx_, est.suff_xy_, est.suff_yy_,
        float(est.expert_alpha) / est.n_samples_seen_, float(est.scale_floor_))
    g = est.gate_coefs_[0][0]
    alpha = float(est.gate_alpha) * batch_w / est.n_samples_seen_
    target = multinomial_logit_newton(X1, resp, sw, g, alpha, max_iter=1)
    est.gate_coefs_ = [(g + gamma * (target - g))[None]]
    est.loglik_history_ = [*est.loglik_history_, float(np.sum(sw * ll_rows) / batch_w)]
    est.lower_bound_ = est.loglik_history_[-1]
    est.n_parameters_ = int(est._count_parameters())
    return est
