"""Multinomial logits: the softmax maths and a safe Newton solver (gates and classifier experts).

A multinomial logit over ``C`` outcomes has coefficients of shape (C, n_columns) whose row 0 is
held at zero (the reference outcome), so it is identified without a penalty. The solver
maximises

    f(coef) = sum_i w_i sum_c t_ic log softmax(X1 coef')_ic - alpha / 2 ||coef[1:, 1:]||^2

for soft targets ``t`` (rows summing to 1). The Newton system is built from its
(C - 1) C / 2 distinct blocks only (the Hessian is symmetric), as one GEMM of the per-row
weights against the rows' symmetric outer products; on many rows it uses an evenly strided
subset for the curvature (never for the gradient or the objective). A step that does not
increase ``f`` is halved, and if halving fails the majorising bound of Böhning (1992) gives a
step that provably increases it, so ``f`` never decreases whatever the curvature used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from ._solvers import ridge_vector, row_products, solve_spd, triu_index

# Curvature rows: at most this many multiply-adds per Hessian, else a strided subset of rows.
HESSIAN_MAX_WORK = 2e8
# ... and their outer products may take at most this much memory.
CURVATURE_MAX_BYTES = 64 * 2**20


def logsumexp(a: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(a))) along ``axis``, stable for large |a|.

    A short axis (experts, classes) is reduced by a loop of element-wise operations over its
    slices, which NumPy runs far faster than a reduction along a short strided axis; on many
    rows, a block of rows at a time, so that the slices stay in cache.
    """
    ax = axis % a.ndim
    k = a.shape[ax]
    if k > 32:
        m = np.max(a, axis=ax, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        out = np.log(np.sum(np.exp(a - m), axis=ax, keepdims=True)) + m
        return out if keepdims else np.squeeze(out, axis=ax)
    if ax == a.ndim - 1 and a.ndim == 2 and a.shape[0] > _LSE_ROWS:
        out = np.empty(a.shape[0])
        for start in range(0, a.shape[0], _LSE_ROWS):
            out[start : start + _LSE_ROWS] = _lse_short(a[start : start + _LSE_ROWS], 1)
        return out[:, None] if keepdims else out
    out = _lse_short(a, ax)
    return np.expand_dims(out, ax) if keepdims else out


_LSE_ROWS = 8192


def _lse_short(a: np.ndarray, ax: int) -> np.ndarray:
    k = a.shape[ax]
    lead: tuple[slice, ...] = (slice(None),) * ax
    parts = [a[lead + (i,)] for i in range(k)]
    m = np.array(parts[0], dtype=float)
    for p in parts[1:]:
        np.maximum(m, p, out=m)
    m[~np.isfinite(m)] = 0.0
    total = np.exp(parts[0] - m)
    for p in parts[1:]:
        total += np.exp(p - m)
    with np.errstate(divide="ignore"):  # rows of -inf only: log(0) = -inf is the answer
        out = np.log(total)
    out += m
    return out


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically safe log of the softmax along ``axis``."""
    return logits - logsumexp(logits, axis=axis, keepdims=True)


def softmax_proba(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax probabilities in [0, 1] whose rows sum to 1 up to one rounding error."""
    p = np.exp(log_softmax(logits, axis=axis))
    p /= np.sum(p, axis=axis, keepdims=True)
    return np.clip(p, 0.0, 1.0, out=p)


@dataclass(frozen=True, kw_only=True)
class CurvatureRows:
    """Rows used for the Newton curvature, with their outer products computed once.

    ``rows`` indexes X1: every row, or an evenly strided subset so that one Hessian costs at
    most ``max_work`` multiply-adds and the products take at most ``max_bytes`` (the
    objective, the gradient and the step size always use every row). ``products`` are
    :func:`row_products` of ``X1[rows]``.
    """

    rows: slice
    products: np.ndarray

    @classmethod
    def build(cls, X1: np.ndarray, n_outcomes: int, *, max_work: float = HESSIAN_MAX_WORK,
              max_bytes: float = CURVATURE_MAX_BYTES) -> CurvatureRows:
        n, d = X1.shape
        pairs = max(n_outcomes - 1, 1) * n_outcomes // 2
        per_row = pairs * d * (d + 1) / 2
        stride = max(1, int(np.ceil(n * per_row / max_work)),
                     int(np.ceil(n * 8.0 * d * (d + 1) / 2 / max_bytes)))
        rows = slice(None, None, stride)
        return cls(rows=rows, products=row_products(X1[rows]))


def objective(X1, targets, weights, coef, alpha) -> tuple[float, np.ndarray]:
    """(f(coef), log softmax(X1 coef')) of the module docstring."""
    logp = log_softmax(X1 @ coef.T)
    return _value(targets, weights, logp, coef, alpha), logp


def _value(targets, weights, logp, coef, alpha) -> float:
    ll = float(np.einsum("n,nc,nc->", weights, targets, logp))
    return ll - 0.5 * alpha * float(np.sum(coef[1:, 1:] ** 2))


def multinomial_hessian(P: np.ndarray, weights: np.ndarray, products: np.ndarray,
                        d: int) -> np.ndarray:
    """``sum_i w_i (diag(p_i) - p_i p_i')[1:, 1:] kron x_i x_i'``: shape ((C-1) d, (C-1) d).

    ``P`` (n, C) are probabilities of the rows whose outer products are ``products``.
    """
    C1 = P.shape[1] - 1
    ja, jb = np.triu_indices(C1)
    Pf = P[:, 1:] * np.sqrt(weights)[:, None]
    W = -Pf[:, ja] * Pf[:, jb]
    diag = ja == jb
    W[:, diag] += P[:, 1:] * weights[:, None]
    _, _, back = triu_index(d)
    blocks = (W.T @ products)[:, back]  # (pairs, d, d), each block symmetric
    H = np.empty((C1, C1, d, d))
    H[ja, jb] = blocks
    H[jb, ja] = blocks
    return H.transpose(0, 2, 1, 3).reshape(C1 * d, C1 * d)


def bound_hessian(X1: np.ndarray, weights: np.ndarray, C: int) -> np.ndarray:
    """Böhning's bound ``1/2 (I - 11'/C) kron X1' W X1`` (>= the Hessian, in Loewner order)."""
    gram = (X1 * weights[:, None]).T @ X1
    return np.kron(0.5 * (np.eye(C - 1) - 1.0 / C), gram)


@dataclass(frozen=True, kw_only=True)
class Factor:
    """A Cholesky factor of a Newton system, kept between ECM steps, and how old it is."""

    cho: tuple[np.ndarray, bool]
    age: int


def _factor(H: np.ndarray) -> tuple[np.ndarray, bool] | None:
    try:
        return linalg.cho_factor(H, check_finite=False)
    except (linalg.LinAlgError, ValueError):
        return None


def newton(
    X1: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    coef: np.ndarray,
    alpha: float,
    *,
    max_iter: int,
    tol: float = 1e-10,
    curvature: CurvatureRows | None = None,
    hessian: str = "exact",
    logp: np.ndarray | None = None,
    factor: Factor | None = None,
    max_age: int = 0,
) -> tuple[np.ndarray, np.ndarray, float, Factor | None]:
    """Newton ascent of f; returns ``(coef, log softmax(X1 coef'), f(coef), factor)``.

    ``logp`` (optional) is ``log_softmax(X1 @ coef.T)`` already computed by the caller.
    ``factor``: the factorised curvature of an earlier call, reused while it is at most
    ``max_age`` steps old (a quasi-Newton step; the line search still guarantees ascent, and a
    step that fails with an old factor is retried with a fresh one). ``hessian="bound"`` uses
    Böhning's bound for every step.
    """
    n, d = X1.shape
    C = targets.shape[1]
    coef = np.array(coef, dtype=float)
    coef[0] = 0.0
    if logp is None:
        logp = log_softmax(X1 @ coef.T)
    f = _value(targets, weights, logp, coef, alpha)
    if C == 1:
        return coef, logp, f, factor
    m = (C - 1) * d
    pen = ridge_vector(d, alpha, C - 1)
    # a tiny ridge on every free parameter keeps the system solvable when a class has no mass
    jitter = 1e-10 * (1.0 + float(np.sum(weights)))
    rows_for_curvature = curvature
    if hessian == "bound":
        factor = Factor(cho=linalg.cho_factor(bound_hessian(X1, weights, C) + np.diag(pen + jitter),
                                              check_finite=False), age=0)
        max_age = max_iter
    elif rows_for_curvature is None:
        rows_for_curvature = CurvatureRows.build(X1, C)

    def fresh(P: np.ndarray) -> Factor | None:
        if rows_for_curvature is None:  # "bound": its factor never ages out
            return None
        rows = rows_for_curvature.rows
        w_rows = weights[rows]
        w_rows = w_rows * (float(np.sum(weights)) / max(float(np.sum(w_rows)), 1e-300))
        H = multinomial_hessian(P[rows], w_rows, rows_for_curvature.products, d)
        H[np.diag_indices(m)] += pen + jitter
        cho = _factor(H)
        return None if cho is None else Factor(cho=cho, age=0)

    for _ in range(max_iter):
        P = np.exp(logp)
        grad = (((targets - P)[:, 1:] * weights[:, None]).T @ X1).ravel() - pen * coef[1:].ravel()
        if factor is None or factor.age > max_age:
            factor = fresh(P)
        trial = None
        if factor is not None:
            step = linalg.cho_solve(factor.cho, grad, check_finite=False)
            trial_f, trial, trial_logp = _line_search(X1, targets, weights, coef, alpha, f, step)
            if trial is None and factor.age > 0:
                factor = fresh(P)
                if factor is not None:
                    step = linalg.cho_solve(factor.cho, grad, check_finite=False)
                    trial_f, trial, trial_logp = _line_search(X1, targets, weights, coef, alpha,
                                                              f, step)
        if trial is None:
            # curvature from a subset (or a wild step) failed: the bound step always ascends
            bound = bound_hessian(X1, weights, C) + np.diag(pen + jitter)
            step = solve_spd(bound, grad, jitter=0.0)
            trial_f, trial, trial_logp = _line_search(X1, targets, weights, coef, alpha, f, step)
            factor = None
        if trial is None or trial_logp is None:
            break
        if factor is not None:
            factor = Factor(cho=factor.cho, age=factor.age + 1)
        gain = trial_f - f
        coef, f, logp = trial, trial_f, trial_logp
        if gain <= tol * (1.0 + abs(f)):
            break
    return coef, logp, f, factor


def _line_search(X1, targets, weights, coef, alpha, f, step):
    t = 1.0
    C, d = coef.shape
    for _ in range(30):
        trial = coef.copy()
        trial[1:] += t * step.reshape(C - 1, d)
        trial_f, trial_logp = objective(X1, targets, weights, trial, alpha)
        if np.isfinite(trial_f) and trial_f >= f:
            return trial_f, trial, trial_logp
        t *= 0.5
    return f, None, None


def multinomial_logit_newton(
    X1: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    coef: np.ndarray | None = None,
    alpha: float = 0.0,
    max_iter: int = 20,
    tol: float = 1e-10,
    hessian: str = "auto",
    max_work: float = HESSIAN_MAX_WORK,
) -> np.ndarray:
    """Fit a weighted multinomial logit with soft targets and an L2 penalty by Newton's method.

    Maximises ``sum_i weights_i * sum_c targets_ic * log softmax(X1 @ coef.T)_ic
    - alpha / 2 * ||coef[1:, 1:]||^2`` (see the module docstring); the objective never
    decreases from ``coef``.

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
        Curvature: every row ("exact"), an evenly strided subset of rows when the exact Hessian
        would cost more than ``max_work`` multiply-adds ("auto"), always that subset
        ("subsample", for tests), or Böhning's bound ("bound").
    max_work : float
        Budget of the curvature (see ``hessian``).

    Returns
    -------
    coef : ndarray of shape (C, n_columns)
        Fitted coefficients, row 0 zero.
    """
    n, d = X1.shape
    C = targets.shape[1]
    coef = np.zeros((C, d)) if coef is None else coef
    curvature = None
    if hessian in ("auto", "subsample"):
        curvature = CurvatureRows.build(X1, C, max_work=max_work)
    elif hessian == "exact":
        curvature = CurvatureRows.build(X1, C, max_work=np.inf)
    elif hessian != "bound":
        raise ValueError(f"hessian={hessian!r} must be 'auto', 'exact', 'subsample' or 'bound'")
    return newton(X1, targets, weights, coef, alpha, max_iter=max_iter, tol=tol,
                  curvature=curvature, hessian="bound" if hessian == "bound" else "exact")[0]


def expert_logits(X1: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Logits of K multinomial logits ``coef`` (K, C, d) on ``X1``: shape (n, K, C), one GEMM."""
    K, C, d = coef.shape
    return (X1 @ coef.reshape(K * C, d).T).reshape(X1.shape[0], K, C)


def experts_newton_step(
    X1: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    coef: np.ndarray,
    alpha: float,
    *,
    curvature: CurvatureRows,
) -> np.ndarray:
    """One safeguarded Newton step of K independent multinomial logits at once.

    Expert k maximises ``f_k(B_k) = sum_i weights_ik log softmax(B_k x_i)_{labels_i}
    - alpha/2 ||B_k[1:, 1:]||^2``; ``coef`` (K, C, d), ``labels`` class codes (n,). All K
    Hessians come from one GEMM and are solved as one batch; each expert's step is halved
    until its own f_k does not decrease (an expert whose step keeps failing keeps its
    coefficients), so every f_k, and their sum, never decreases.
    """
    n, d = X1.shape
    K, C, _ = coef.shape
    if C == 1:
        return coef
    C1, m = C - 1, (C - 1) * d
    coef = np.array(coef, dtype=float)
    coef[:, 0] = 0.0
    rows_n = np.arange(n)
    logp = log_softmax(expert_logits(X1, coef))

    def values(lp: np.ndarray, B: np.ndarray) -> np.ndarray:
        ll = np.sum(weights * lp[rows_n, :, labels], axis=0)
        return ll - 0.5 * alpha * np.sum(B[:, 1:, 1:] ** 2, axis=(1, 2))

    f = values(logp, coef)
    P = np.exp(logp)
    resid = -P[:, :, 1:]
    hit = labels > 0
    resid[hit, :, labels[hit] - 1] += 1.0
    resid *= weights[:, :, None]
    grad = (resid.reshape(n, K * C1).T @ X1).reshape(K, C1, d)
    grad[:, :, 1:] -= alpha * coef[:, 1:, 1:]
    rows = curvature.rows
    w_rows = weights[rows]
    w_rows = w_rows * (np.sum(weights, axis=0) / np.maximum(np.sum(w_rows, axis=0), 1e-300))
    Pr = P[rows][:, :, 1:]  # (r, K, C-1)
    ja, jb = np.triu_indices(C1)
    W = -Pr[:, :, ja] * Pr[:, :, jb] * w_rows[:, :, None]
    W[:, :, ja == jb] += Pr * w_rows[:, :, None]
    _, _, back = triu_index(d)
    flat = (W.reshape(len(Pr), -1).T @ curvature.products)[:, back]  # (K * pairs, d, d)
    if C1 == 1:
        H = flat.reshape(K, d, d)
    else:
        blocks = flat.reshape(K, len(ja), d, d)
        H4 = np.empty((K, C1, C1, d, d))
        H4[:, ja, jb] = blocks
        H4[:, jb, ja] = blocks
        H = H4.transpose(0, 1, 3, 2, 4).reshape(K, m, m)
    pen = ridge_vector(d, alpha, C1)
    jitter = 1e-10 * (1.0 + np.sum(weights, axis=0))
    idx = np.arange(m)
    H[:, idx, idx] += pen + jitter[:, None]
    step = solve_spd(H, grad.reshape(K, m), jitter=0.0).reshape(K, C1, d)
    t = np.ones(K)
    pending = np.ones(K, dtype=bool)
    out = coef.copy()
    for _ in range(30):
        trial = coef.copy()
        trial[:, 1:] += t[:, None, None] * step
        trial_f = values(log_softmax(expert_logits(X1, trial)), trial)
        ok = pending & np.isfinite(trial_f) & (trial_f >= f)
        out[ok] = trial[ok]
        pending &= ~ok
        if not pending.any():
            break
        t = np.where(pending, 0.5 * t, t)
    return out
