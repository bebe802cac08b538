"""Standard errors: the observed information, and the covariance a penalised fit deserves.

The free parameters are packed into one vector on the internal scale (standardised kept
columns): every gate level's non-reference rows, then for each expert its own free parameters
(``_families``: coefficients, then log(scale) for Gaussian and Student-t experts and log(df)
for Student-t). With l_i = log sum_k exp(a_ik), a_ik = log g_k(x_i) + log p_k(y_i | x_i) and
responsibilities h_ik, the Hessian of the log-likelihood is, row by row,

    sum_k h_k d2 a_k  +  sum_k h_k (d a_k)(d a_k)'  -  (sum_k h_k d a_k)(sum_k h_k d a_k)'

which for a flat softmax gate has closed-form blocks (``information``): gate-gate
``[diag(g) - gg' - diag(h) + hh'] kron xx'``, gate-expert ``h_k (h - e_k) kron x s_k'``,
expert-expert ``-h_k H_k - h_k s_k s_k'`` on the diagonal plus ``h_k h_l s_k s_l'``, with
``s_k`` / ``H_k`` the expert's row score / Hessian. It is built in row chunks from GEMMs. For
gate trees (and as the slow reference in the tests) :func:`information_fd` differentiates the
analytic gradient (Fisher's identity) by central differences.

Covariances (``se=``): ``observed`` I^-1 (the MLE's; the default without a penalty);
``sandwich`` A^-1 I A^-1 with A = I + P the penalised curvature (the penalised estimate's
covariance, ignoring its bias; the default with a penalty); ``robust`` A^-1 B A^-1 with B the
outer product of the per-row scores (Huber-White); ``posterior`` A^-1 (Laplace approximation
under the Gaussian prior the penalty implies). They are mapped to the reported scale by the
linear map of ``_design``; aliased coefficients get NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

from ._gate import tree_log_proba, tree_node_mass, tree_score
from ._logit import log_softmax, logsumexp
from ._params import pack, unpack
from ._solvers import ridge_vector, row_products, triu_index

SE_KINDS = ("auto", "observed", "sandwich", "robust", "posterior")
NO_DATA = ("standard errors need the training data, which this estimator does not hold (it was "
           "loaded from a file or unpickled): pass them, e.g. summary(X, y)")
CHUNK_ROWS = 2048


@dataclass(frozen=True, kw_only=True)
class Inference:
    """Estimates and their covariance on the reported scale, with what the summary must say."""

    theta: np.ndarray
    covariance: np.ndarray
    aliased: np.ndarray
    penalty_share: np.ndarray
    kind: str
    notes: tuple[str, ...]


# ------------------------------------------------------------------------ packing
def penalty_vector(family: Any, state: dict[str, Any], n_experts: int, gate_alpha: float,
                   d: int) -> np.ndarray:
    """Diagonal of the penalty's Hessian P in the packed order."""
    parts = [ridge_vector(d, gate_alpha, c[:, 1:, :].size // d)
             for c in state["gate_coefs_"]]
    parts += [family.penalty_free(d) for _ in range(n_experts)]
    return np.concatenate(parts)


# ------------------------------------------------------------- likelihood and gradient
def loglik(family, X1, y, sw, theta, state, n_experts) -> float:
    """Observed-data log-likelihood at ``theta`` (no penalty)."""
    s = unpack(family, theta, state, n_experts)
    lj = tree_log_proba(X1, s["gate_coefs_"]) + family.log_prob(X1, y, s)
    return float(np.sum(sw * logsumexp(lj, axis=1)))


def row_gradients(family, X1, y, state, n_experts, branching) -> np.ndarray:
    """Per-row gradients of log p(y_i | x_i), shape (n, n_free) (Fisher's identity)."""
    lj = tree_log_proba(X1, state["gate_coefs_"]) + family.log_prob(X1, y, state)
    resp = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
    n = X1.shape[0]
    parts = []
    for level, coef in enumerate(state["gate_coefs_"]):
        m, b, d = coef.shape
        mass = tree_node_mass(resp, branching, level)
        g = np.exp(log_softmax((X1 @ coef.reshape(m * b, d).T).reshape(n, m, b)))
        r = (mass - mass.sum(axis=2, keepdims=True) * g)[:, :, 1:]
        parts.append((r[:, :, :, None] * X1[:, None, None, :]).reshape(n, -1))
    for k in range(n_experts):
        parts.append(resp[:, k : k + 1] * family.row_score(X1, y, state, k))
    return np.concatenate(parts, axis=1)


def gradient(family, X1, y, sw, theta, state, n_experts, branching) -> np.ndarray:
    """Analytic gradient of :func:`loglik` (Fisher's identity)."""
    s = unpack(family, theta, state, n_experts)
    lj = tree_log_proba(X1, s["gate_coefs_"]) + family.log_prob(X1, y, s)
    resp = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
    parts = [g[:, 1:, :].ravel()
             for g in tree_score(X1, resp, sw, s["gate_coefs_"], branching)]
    for k in range(n_experts):
        parts.append((resp[:, k] * sw) @ family.row_score(X1, y, s, k))
    return np.concatenate(parts)


# ---------------------------------------------------------------------- information
def information_fd(family, X1, y, sw, state, n_experts, branching) -> np.ndarray:
    """Minus the Jacobian of :func:`gradient` by central differences (any gate tree)."""
    theta = pack(family, state, n_experts)
    H = np.empty((len(theta), len(theta)))
    for j in range(len(theta)):
        h = 1e-5 * max(1.0, abs(theta[j]))
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        H[:, j] = (gradient(family, X1, y, sw, tp, state, n_experts, branching)
                   - gradient(family, X1, y, sw, tm, state, n_experts, branching)) / (2 * h)
    return -0.5 * (H + H.T)


def _pairs_to_blocks(flat: np.ndarray, C1: int, d: int) -> np.ndarray:
    """(pairs a<=b, d_sym) -> the symmetric ((C1 d), (C1 d)) matrix of d x d blocks."""
    ja, jb = np.triu_indices(C1)
    blocks = flat[:, triu_index(d)[2]]
    M = np.empty((C1, C1, d, d))
    M[ja, jb] = blocks
    M[jb, ja] = blocks
    return M.transpose(0, 2, 1, 3).reshape(C1 * d, C1 * d)


def information(family, X1, y, sw, state, n_experts, *, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """Observed information (minus the Hessian of the log-likelihood) for a flat gate."""
    n, d = X1.shape
    K = n_experts
    C1 = K - 1
    V = state["gate_coefs_"][0][0]
    sizes = [family.n_free(d) for _ in range(K)]
    offsets = np.r_[0, np.cumsum(sizes)]
    n_gate = C1 * d
    ja, jb = np.triu_indices(max(C1, 1))
    gg = np.zeros((len(ja), d * (d + 1) // 2))
    ge = np.zeros((n_gate, offsets[-1]))
    ee = np.zeros((offsets[-1], offsets[-1]))
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        Z, yy, w = X1[sl], y[sl], sw[sl]
        logg = log_softmax(Z @ V.T)
        lj = logg + family.log_prob(Z, yy, state)
        h = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
        g = np.exp(logg)
        scores = [family.row_score(Z, yy, state, k) for k in range(K)]
        U = np.concatenate([(np.sqrt(w) * h[:, k])[:, None] * scores[k] for k in range(K)],
                           axis=1)
        ee += U.T @ U
        for k in range(K):
            c = w * h[:, k]
            blk = slice(offsets[k], offsets[k + 1])
            ee[blk, blk] -= family.weighted_hessian(Z, yy, state, k, c)
            ee[blk, blk] -= (scores[k] * c[:, None]).T @ scores[k]
            if C1:
                A = c[:, None] * (h[:, 1:] - (np.arange(1, K) == k))
                ge[:, blk] += (A[:, :, None] * Z[:, None, :]).reshape(len(Z), -1).T @ scores[k]
        if C1:
            W = w[:, None] * (h[:, 1:][:, ja] * h[:, 1:][:, jb] - g[:, 1:][:, ja] * g[:, 1:][:, jb])
            diag = ja == jb
            W[:, diag] += w[:, None] * (g[:, 1:] - h[:, 1:])
            gg += W.T @ row_products(Z)
    info = np.empty((n_gate + offsets[-1],) * 2)
    if C1:
        info[:n_gate, :n_gate] = _pairs_to_blocks(gg, C1, d)
        info[:n_gate, n_gate:] = ge
        info[n_gate:, :n_gate] = ge.T
    info[n_gate:, n_gate:] = ee
    return 0.5 * (info + info.T)


# ---------------------------------------------------------------------- covariances
def _inverse(M: np.ndarray) -> tuple[np.ndarray, bool]:
    """(M^-1, True) when M is positive definite, else (pseudo-inverse, False)."""
    try:
        cho = linalg.cho_factor(M, check_finite=False)
        return linalg.cho_solve(cho, np.eye(len(M)), check_finite=False), True
    except (linalg.LinAlgError, ValueError):
        return np.asarray(linalg.pinvh(M)), False


def resolve_kind(se: str, pen: np.ndarray) -> str:
    if se not in SE_KINDS:
        raise ValueError(f"se={se!r} is not supported; use one of {list(SE_KINDS)}")
    if se == "auto":
        return "sandwich" if np.any(pen > 0) else "observed"
    return se


def covariance(kind: str, info: np.ndarray, pen: np.ndarray,
               opg: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """The internal-scale covariance of ``kind`` and notes on what went wrong, if anything."""
    notes = []
    A = info + np.diag(pen)
    if kind == "observed":
        cov, ok = _inverse(info)
        if not ok:
            notes.append("the observed information is singular or not positive definite (a "
                         "boundary or unidentified optimum): standard errors are unreliable")
        return cov, notes
    A_inv, ok = _inverse(A)
    if not ok:
        notes.append("the penalised information is not positive definite (not a local "
                     "maximum?): standard errors are unreliable")
    if kind == "posterior":
        return A_inv, notes
    meat = info if kind == "sandwich" else opg
    return A_inv @ meat @ A_inv, notes


def reported_map(family, state, n_experts, design, standardize) -> tuple[np.ndarray, np.ndarray]:
    """(J, main): reported = J @ internal for packed vectors; ``main[i]`` the internal entry that
    reported entry i stands for (-1 for an aliased coefficient)."""
    T = design.jacobian(standardize)
    d_int = T.shape[1]
    blocks, mains = [], []
    aliased_cols = np.zeros(T.shape[0], dtype=bool)
    aliased_cols[1 + np.asarray(design.aliased, dtype=int)] = True
    column_of = np.full(T.shape[0], -1)
    column_of[0] = 0
    column_of[1 + design.kept] = np.arange(1, d_int)

    def coef_rows(count):
        blocks.extend([T] * count)
        mains.extend([np.where(aliased_cols, -1, column_of)] * count)

    for c in state["gate_coefs_"]:
        coef_rows(c[:, 1:, :].size // d_int)
    for _ in range(n_experts):
        n_free = family.n_free(d_int)
        rows = n_free // d_int
        coef_rows(rows)
        extra = n_free - rows * d_int
        if extra:
            blocks.append(np.eye(extra))
            mains.append(np.arange(extra))
    J = linalg.block_diag(*blocks)
    offsets_int = np.r_[0, np.cumsum([b.shape[1] for b in blocks])]
    main = np.concatenate([np.where(m >= 0, m + offsets_int[i], -1) for i, m in enumerate(mains)])
    return J, main


def infer(
    *,
    family: Any,
    state: dict[str, Any],
    branching: tuple[int, ...],
    design: Any,
    standardize: bool,
    gate_alpha: float,
    X: np.ndarray,
    y: np.ndarray,
    sw: np.ndarray,
    se: str,
) -> Inference:
    """Estimates, covariance and notes on the reported scale.

    ``state`` holds the fitted parameters on the internal scale of ``design`` (``_design``),
    ``family`` the experts (with their penalty), ``X`` / ``y`` / ``sw`` validated data in the
    units of X.
    """
    if family.name == "sklearn":
        raise ValueError("standard errors are not defined for expert=<scikit-learn estimator>; "
                         "use expert='linear', 'poisson' or 'student_t'")
    X1 = design.transform(X)
    K = int(np.prod(branching))
    pen = penalty_vector(family, state, K, float(gate_alpha), X1.shape[1])
    kind = resolve_kind(se, pen)
    if len(branching) == 1:
        info = information(family, X1, y, sw, state, K)
    else:
        info = information_fd(family, X1, y, sw, state, K, branching)
    opg = None
    if kind == "robust":
        G = row_gradients(family, X1, y, state, K, branching)
        opg = (G * sw[:, None]).T @ G
    cov, notes = covariance(kind, info, pen, opg)
    J, main = reported_map(family, state, K, design, standardize)
    theta = J @ pack(family, state, K)
    cov_rep = J @ cov @ J.T
    aliased = main < 0
    cov_rep[aliased, :] = np.nan
    cov_rep[:, aliased] = np.nan
    diag_A = np.diag(info) + pen
    at = np.maximum(main, 0)
    share = np.where(aliased, np.nan, pen[at] / np.where(diag_A[at] > 0, diag_A[at], np.inf))
    return Inference(theta=theta, covariance=cov_rep, aliased=aliased, penalty_share=share,
                     kind=kind, notes=tuple(notes))
