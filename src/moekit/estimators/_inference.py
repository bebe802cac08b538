"""Standard errors from the observed information, and the ``summary()`` table.

The free parameters are packed into one vector: every gate level's non-reference rows, then
for each expert its own free parameters (coefficients, then log(scale) for Gaussian and
Student-t experts; Student-t degrees of freedom are held fixed). The gradient of the observed
log-likelihood is analytic (Fisher's identity: sum_i sum_k h_ik d/dtheta log[g_k p_k]); the
observed information is minus its Jacobian, taken by central differences of that analytic
gradient, which agrees with the true Hessian to ~1e-7 relative. L2 penalties are included,
so with ``gate_alpha > 0`` the standard errors are those of the penalised (MAP) estimate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg, stats

from ._base import add_intercept, check_sample_weight
from ._gate import logsumexp, tree_score

# fit() computes covariance_ only while n_samples * n_parameters_ stays below this.
AUTO_SE_MAX_WORK = 2.5e5  # ~ a second; summary(X, y) computes them for larger fits


def _family_for_se(est) -> Any:
    fam = est._make_family()
    if fam.name == "sklearn":
        raise ValueError("standard errors are not defined for expert=<scikit-learn estimator>; "
                         "use expert='linear', 'poisson' or 'student_t'")
    return fam


def pack(est, state: dict[str, Any]) -> np.ndarray:
    """Free parameters of ``state`` as one vector (see module docstring for the order)."""
    fam = _family_for_se(est)
    parts = [c[:, 1:, :].ravel() for c in state["gate_coefs_"]]
    parts += [fam.get_free(state, k) for k in range(est.n_experts_)]
    return np.concatenate(parts)


def unpack(est, theta: np.ndarray, state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`pack`, writing into copies of the arrays of ``state``."""
    fam = _family_for_se(est)
    new = {k: ([a.copy() for a in v] if isinstance(v, list) else np.array(v, copy=True))
           for k, v in state.items()}
    i = 0
    for c in new["gate_coefs_"]:
        m = c[:, 1:, :].size
        c[:, 1:, :] = theta[i : i + m].reshape(c[:, 1:, :].shape)
        i += m
    for k in range(est.n_experts_):
        m = len(fam.get_free(new, k))
        fam.set_free(new, k, theta[i : i + m])
        i += m
    return new


def parameter_names(est, feature_names=None) -> list[str]:
    fam = _family_for_se(est)
    p = est.n_features_in_
    if feature_names is None:
        feature_names = getattr(est, "feature_names_in_", [f"x{j}" for j in range(p)])
    terms = ["intercept", *[str(f) for f in feature_names]]
    names = []
    for level, c in enumerate(est.gate_coefs_):
        tag = "gate" if len(est.gate_coefs_) == 1 else f"gate L{level}"
        for a in range(c.shape[0]):
            node = "" if c.shape[0] == 1 else f" node {a}"
            names += [f"{tag}{node} child {b}: {t}" for b in range(1, c.shape[1]) for t in terms]
    for k in range(est.n_experts_):
        if fam.name == "multinomial":
            free = fam.free_names(terms, est.classes_)
        else:
            free = fam.free_names(terms)
        names += [f"expert {k}: {t}" for t in free]
    return names


def penalised_loglik(est, X1, y, sw, theta, state) -> float:
    """Penalised observed-data log-likelihood at ``theta``."""
    s = unpack(est, theta, state)
    fam = est._make_family()
    ll = float(np.sum(sw * logsumexp(est._log_joint(X1, y, s, fam), axis=1)))
    return ll - est._penalty(s)


def gradient(est, X1, y, sw, theta, state) -> np.ndarray:
    """Analytic gradient of :func:`penalised_loglik` (Fisher's identity)."""
    s = unpack(est, theta, state)
    fam = est._make_family()
    lj = est._log_joint(X1, y, s, fam)
    resp = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
    parts = []
    for c, g in zip(s["gate_coefs_"], tree_score(X1, resp, sw, s["gate_coefs_"],
                                                 tuple(est.branching_))):
        parts.append((g[:, 1:, :] - est.gate_alpha * np.concatenate(
            [np.zeros_like(c[:, 1:, :1]), c[:, 1:, 1:]], axis=2)).ravel())
    d = X1.shape[1]
    for k in range(est.n_experts_):
        v = fam.get_free(s, k)
        parts.append((resp[:, k] * sw) @ fam.row_score(X1, y, s, k) - fam.penalty_free(d) * v)
    return np.concatenate(parts)


def observed_information(est, X, y, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Observed information of the penalised log-likelihood at the fitted parameters.

    Returns
    -------
    theta : ndarray of shape (n_free,)
    information : ndarray of shape (n_free, n_free)
        Minus the Hessian, symmetrised.
    """
    X1 = add_intercept(est._validate_X(X, reset=False))
    y = est._prepare_y(y, reset=False)
    sw = check_sample_weight(sample_weight, X1.shape[0])
    state = est._get_state()
    theta = pack(est, state)
    H = np.empty((len(theta), len(theta)))
    for j in range(len(theta)):
        h = 1e-5 * max(1.0, abs(theta[j]))
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        H[:, j] = (gradient(est, X1, y, sw, tp, state) - gradient(est, X1, y, sw, tm, state)) / (
            2 * h)
    return theta, -0.5 * (H + H.T)


def covariance(information: np.ndarray) -> np.ndarray:
    """Inverse of the information (pseudo-inverse when singular)."""
    try:
        return np.asarray(linalg.inv(information))
    except linalg.LinAlgError:
        return np.asarray(linalg.pinvh(information))


def fit_covariance(est, X, y, sample_weight=None) -> np.ndarray:
    """Covariance of the free parameters; shape (0, 0) when too costly or undefined."""
    if est._make_family().name == "sklearn" or X.shape[0] * est.n_parameters_ > AUTO_SE_MAX_WORK:
        return np.empty((0, 0))
    return covariance(observed_information(est, X, y, sample_weight)[1])


def summary_text(est, X=None, y=None, sample_weight=None, feature_names=None) -> str:
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    if X is not None:
        cov = covariance(observed_information(est, X, y, sample_weight)[1])
    elif getattr(est, "covariance_", np.empty((0, 0))).size:
        cov = est.covariance_
    else:
        raise ValueError("standard errors were not computed at fit time (large data or "
                         "sklearn experts); call summary(X, y) with the training data")
    theta = pack(est, est._get_state())
    se = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.nan))
    z = theta / se
    p = 2 * stats.norm.sf(np.abs(z))
    names = parameter_names(est, feature_names)
    width = max(len(n) for n in names) + 2
    plural = "s" if est.n_experts_ != 1 else ""
    head = (f"{type(est).__name__}: {est.n_experts_} expert{plural} ({est._make_family().name}), "
            f"n_features={est.n_features_in_}, n_parameters={est.n_parameters_}\n"
            f"penalised log-likelihood {est.lower_bound_:.4f}, iterations {est.n_iter_}, "
            f"converged {est.converged_}\n")
    lines = [head, f"{'parameter':<{width}}{'coef':>11}{'std err':>11}{'z':>9}{'P>|z|':>9}",
             "-" * (width + 40)]
    for n, t, s_, z_, p_ in zip(names, theta, se, z, p):
        lines.append(f"{n:<{width}}{t:>11.4f}{s_:>11.4f}{z_:>9.2f}{p_:>9.3f}")
    if hasattr(est, "expert_scale_"):
        lines.append("expert scales: " + ", ".join(f"{v:.4g}" for v in est.expert_scale_))
    if hasattr(est, "expert_df_"):
        lines.append("expert df: " + ", ".join(f"{v:.4g}" for v in est.expert_df_))
    lines.append("gate child 0 of each node is the reference; SEs from the observed information.")
    return "\n".join(lines)
