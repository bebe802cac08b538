"""Pure numerical solvers of the M-steps (no estimator, no family objects).

- :func:`solve_spd`: the one symmetric positive (semi-)definite solve every M-step uses
  (Cholesky, a tiny relative jitter, least squares when even that fails), batched.
- :func:`row_products`, :func:`weighted_grams`: ``X1' diag(w_k) X1`` for many weight columns,
  from the rows' symmetric outer products (one GEMM) or one GEMM per column.
- :func:`weighted_ridge`, :func:`weighted_ridge_multi`: weighted least squares with an L2
  penalty on the non-intercept coefficients (one weight vector, or one per expert).
- :func:`poisson_irls`: weighted Poisson GLM by Newton with step halving.
- :func:`student_t_logpdf`, :func:`student_t_ecm`: the scaled Student-t and one ECM step.

``X1`` always has a leading column of ones; column 0 of every coefficient is the intercept and
is never penalised.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, optimize
from scipy.special import gammaln


def solve_spd(A: np.ndarray, b: np.ndarray, *, jitter: float = 1e-12) -> np.ndarray:
    """Solve ``A x = b`` for symmetric positive (semi-)definite ``A``, batched over axis 0.

    A relative jitter ``jitter * (1 + trace(A) / d)`` on the diagonal keeps a semi-definite
    system solvable (a column with no weight); if the Cholesky factorisation still fails, the
    minimum-norm least-squares solution is returned.

    Parameters
    ----------
    A : ndarray of shape (d, d) or (K, d, d)
    b : ndarray of shape (d,) or (K, d)

    Returns
    -------
    x : ndarray shaped like ``b``
    """
    A = np.array(A, dtype=float)
    d = A.shape[-1]
    idx = np.arange(d)
    A[..., idx, idx] += (jitter * (1.0 + np.abs(np.trace(A, axis1=-2, axis2=-1)) / d))[..., None]
    if A.ndim == 2:
        try:
            return np.asarray(linalg.cho_solve(linalg.cho_factor(A, check_finite=False), b,
                                               check_finite=False))
        except (linalg.LinAlgError, ValueError):
            return np.asarray(linalg.lstsq(A, b, check_finite=False)[0])
    try:
        x = np.linalg.solve(A, b[..., None])[..., 0]
        if np.all(np.isfinite(x)):
            return x
        raise np.linalg.LinAlgError("non-finite solution")
    except np.linalg.LinAlgError:
        return np.stack([solve_spd(A[k], b[k], jitter=0.0) for k in range(A.shape[0])])


def triu_index(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle indices (i, j) of a d x d matrix, and the (d, d) map back to them."""
    iu, ju = np.triu_indices(d)
    back = np.empty((d, d), dtype=int)
    back[iu, ju] = np.arange(len(iu))
    back[ju, iu] = np.arange(len(iu))
    return iu, ju, back


def row_products(X1: np.ndarray) -> np.ndarray:
    """Upper triangles of the rows' outer products x_i x_i': shape (n, d (d + 1) / 2).

    Column order is that of ``np.triu_indices(d)`` (row-major upper triangle).
    """
    n, d = X1.shape
    # column-major: each block below is written contiguously, and the GEMMs that read it
    # (a few weight columns against all products) run faster on it
    out = np.empty((n, d * (d + 1) // 2), order="F")
    start = 0
    for i in range(d):
        np.multiply(X1[:, i : i + 1], X1[:, i:], out=out[:, start : start + d - i])
        start += d - i
    return out


def weighted_grams(
    X1: np.ndarray,
    weights: np.ndarray,
    *,
    products: np.ndarray | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """``X1' diag(weights[:, k]) X1`` for every column k: shape (K, d, d).

    One GEMM ``weights' @ products`` on the rows' symmetric outer products when they are
    given (from :func:`row_products`), else one GEMM ``X1' [w_1 X1, ..., w_K X1]`` per
    ``chunk`` rows, so that memory stays O(chunk * K * d) whatever n_samples is.
    """
    n, d = X1.shape
    K = weights.shape[1]
    if products is not None:
        return (weights.T @ products)[:, triu_index(d)[2]]
    out = np.zeros((d, K * d))
    for start in range(0, n, chunk):
        Xc, Wc = X1[start : start + chunk], weights[start : start + chunk]
        out += Xc.T @ (Wc[:, :, None] * Xc[:, None, :]).reshape(len(Xc), K * d)
    return out.reshape(d, K, d).transpose(1, 0, 2)


def ridge_vector(d: int, alpha: float, repeats: int = 1) -> np.ndarray:
    """``[0, alpha, ..., alpha]`` (intercept unpenalised) for each of ``repeats`` rows of d."""
    v = np.full(d * repeats, float(alpha))
    v[::d] = 0.0
    return v


def _ridge_penalty(d: int, alpha: float) -> np.ndarray:
    return ridge_vector(d, alpha)


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
    A[np.diag_indices_from(A)] += _ridge_penalty(A.shape[0], alpha)
    return solve_spd(A, Xw.T @ y)


def weighted_ridge_multi(
    X1: np.ndarray,
    y: np.ndarray,
    rw: np.ndarray,
    alpha: float = 0.0,
    *,
    products: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`weighted_ridge` for every column of ``rw`` (n_samples, K) at once: (K, d)."""
    A = weighted_grams(X1, rw, products=products)
    A[:, np.arange(X1.shape[1]), np.arange(X1.shape[1])] += _ridge_penalty(X1.shape[1], alpha)
    return solve_spd(A, (rw * y[:, None]).T @ X1)


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
    pen = _ridge_penalty(X1.shape[1], alpha)

    def obj(b):
        eta = np.clip(X1 @ b, -50, 50)
        return float(np.sum(w * (y * eta - np.exp(eta))) - 0.5 * np.sum(pen * b**2)), eta

    f, eta = obj(beta)
    for _ in range(max_iter):
        mu = np.exp(eta)
        grad = X1.T @ (w * (y - mu)) - pen * beta
        H = (X1 * (w * mu)[:, None]).T @ X1
        H[np.diag_indices_from(H)] += pen
        step = solve_spd(H, grad, jitter=1e-10)
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


DF_BOUNDS = (0.5, 200.0)


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
    into weighted least squares; df then maximises the weighted t log-likelihood on
    ``DF_BOUNDS``. Each part increases ``sum w log t(y; X1 beta, scale, df)`` (a
    majorise-minimise step).

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

    res = optimize.minimize_scalar(neg, bounds=tuple(np.log(DF_BOUNDS)), method="bounded",
                                   options={"xatol": 1e-6})
    if res.fun <= neg(np.log(df)):
        df = float(np.exp(res.x))
    return beta, scale, df
