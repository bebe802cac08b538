"""The internal design: standardised columns, aliased columns dropped, and the maps back.

EM always runs on ``Z1 = [1, (X[:, kept] - mean) / scale]``: every column with (weighted)
mean 0 and standard deviation 1, so that L2 penalties mean the same thing whatever the units,
and without the columns that are constant or exact linear combinations of earlier ones (R's
``lm`` calls them *aliased*: "not defined because of singularities"). A linear predictor
``c @ [1, z]`` on that scale is the same function as ``b @ [1, x]`` with

    b_j = c_j / scale_j  (kept j),   b_0 = c_0 - sum_j c_j mean_j / scale_j,   b_aliased = 0,

so coefficients are reported either on the standardised scale (``standardize=True``) or in the
units of X (the default), and :meth:`Design.jacobian` maps covariances the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# |r_jj| of the QR decomposition below this fraction of the column's norm: aliased (R's lm: 1e-7)
ALIAS_TOL = 1e-7


@dataclass(frozen=True, kw_only=True)
class Design:
    """Column means and scales learnt at fit, and which columns the model uses.

    Attributes
    ----------
    mean, scale : ndarray of shape (n_features,)
        Weighted mean and standard deviation of each column (scale 1 for a constant column).
    kept : ndarray of int, shape (n_kept,)
        Columns in the model, in order.
    aliased : tuple of int
        Columns left out: constant, or a linear combination of the intercept and earlier columns.
    """

    mean: np.ndarray
    scale: np.ndarray
    kept: np.ndarray
    aliased: tuple[int, ...]

    @property
    def n_features(self) -> int:
        return len(self.mean)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The internal design ``Z1`` (n_samples, n_kept + 1), column 0 the intercept."""
        k = self.kept
        Z1 = np.empty((X.shape[0], len(k) + 1))
        Z1[:, 0] = 1.0
        np.subtract(X[:, k], self.mean[k], out=Z1[:, 1:])
        Z1[:, 1:] /= self.scale[k]
        return Z1

    def jacobian(self, standardize: bool) -> np.ndarray:
        """T of shape (n_features + 1, n_kept + 1) with ``reported = T @ internal`` per row."""
        p, k = self.n_features, self.kept
        T = np.zeros((p + 1, len(k) + 1))
        T[0, 0] = 1.0
        cols = np.arange(1, len(k) + 1)
        if standardize:
            T[1 + k, cols] = 1.0
        else:
            T[1 + k, cols] = 1.0 / self.scale[k]
            T[0, cols] = -self.mean[k] / self.scale[k]
        return T

    def to_reported(self, coef: np.ndarray, standardize: bool) -> np.ndarray:
        """Internal coefficients (..., n_kept + 1) -> reported (..., n_features + 1)."""
        return np.asarray(coef) @ self.jacobian(standardize).T

    def to_internal(self, coef: np.ndarray, standardize: bool) -> np.ndarray:
        """Reported coefficients (..., n_features + 1) -> internal (..., n_kept + 1).

        The exact inverse of :meth:`to_reported` on its range (aliased entries are ignored).
        """
        coef = np.asarray(coef, dtype=float)
        k = self.kept
        out = np.empty((*coef.shape[:-1], len(k) + 1))
        if standardize:
            out[..., 0] = coef[..., 0]
            out[..., 1:] = coef[..., 1 + k]
        else:
            out[..., 1:] = coef[..., 1 + k] * self.scale[k]
            out[..., 0] = coef[..., 0] + coef[..., 1 + k] @ self.mean[k]
        return out


def fit_design(X: np.ndarray, sample_weight: np.ndarray, *, tol: float = ALIAS_TOL,
               chunk: int = 65536) -> Design:
    """Learn means and scales, and find aliased columns, from the rows with positive weight.

    A column is aliased when, after standardising, its distance from the span of the intercept
    and the earlier kept columns is below ``tol`` times its norm: the diagonal of the
    (unpivoted) QR decomposition of ``sqrt(w) [1, Z]`` gives exactly those distances, in column
    order, so the first of two identical columns is kept (as R's ``lm`` does).
    """
    w = sample_weight / np.sum(sample_weight)
    if not np.all(w > 0):
        X, w = X[w > 0], w[w > 0]
    n = X.shape[0]
    mean = w @ X
    var = np.zeros(len(mean))
    for start in range(0, n, chunk):  # two passes: no cancellation when mean >> sd
        centred = X[start : start + chunk] - mean
        var += w[start : start + chunk] @ (centred * centred)
    spread = np.sqrt(var)
    constant = spread <= 1e-14 * np.abs(mean)
    scale = np.where(constant, 1.0, spread)
    candidates = np.flatnonzero(~constant)
    aliased = set(np.flatnonzero(constant).tolist())
    if len(candidates):
        Xc = X if len(candidates) == X.shape[1] else X[:, candidates]
        blocks = _standardised_blocks(Xc, w, mean[candidates], scale[candidates], chunk)
        # Screen with the Gram matrix (cheap); only a column that is at all close to the span
        # of the earlier ones needs the QR decomposition, which decides.
        gram = sum(A.T @ A for A in blocks(None))
        if np.any(_sequential_pivots(gram) <= 1e-8):
            R = np.asarray(np.linalg.qr(np.vstack([np.asarray(np.linalg.qr(A, mode="r"))
                                                   for A in blocks(None)]), mode="r"))
            diag = np.zeros(len(candidates) + 1)
            diag[: min(R.shape)] = np.abs(np.diag(R))  # fewer rows than columns: rest are 0
            for i, j in enumerate(candidates):
                if diag[i + 1] <= tol:
                    aliased.add(int(j))
    kept = np.array([j for j in range(X.shape[1]) if j not in aliased], dtype=int)
    return Design(mean=mean, scale=scale, kept=kept, aliased=tuple(sorted(aliased)))


def _standardised_blocks(X, w, mean, scale, chunk):
    """Chunks of ``sqrt(w) [1, (X - mean) / scale]``, each of unit-norm columns overall.

    The R factor of the QR decomposition of the stacked R factors of the chunks is that of the
    whole matrix (up to signs), so no n x p copy is ever made.
    """
    def blocks(_):
        for start in range(0, X.shape[0], chunk):
            sqrt_w = np.sqrt(w[start : start + chunk])
            A = np.empty((len(sqrt_w), X.shape[1] + 1))
            A[:, 0] = sqrt_w
            np.subtract(X[start : start + chunk], mean, out=A[:, 1:])
            A[:, 1:] *= sqrt_w[:, None] / scale
            yield A
    return blocks


def _sequential_pivots(gram: np.ndarray) -> np.ndarray:
    """Cholesky pivots in column order, a pivot near 0 skipped: d_j = squared distance of
    column j from the span of the earlier non-negligible columns (norms are 1)."""
    p = len(gram)
    L = np.zeros((p, p))
    pivots = np.zeros(p)
    for j in range(p):
        d = gram[j, j] - L[j, :j] @ L[j, :j]
        pivots[j] = d
        if d > 1e-10:
            L[j + 1 :, j] = (gram[j + 1 :, j] - L[j + 1 :, :j] @ L[j, :j]) / np.sqrt(d)
            L[j, j] = np.sqrt(d)
    return pivots


def alias_relations(X: np.ndarray, design: Design, names: list[str]) -> dict[int, str]:
    """For each aliased column, a short text such as ``"= 2 * bmi - 1"`` or ``"constant 3.5"``."""
    out: dict[int, str] = {}
    earlier: list[int] = []
    for j in range(design.n_features):
        if j not in design.aliased:
            earlier.append(j)
            continue
        if np.ptp(X[:, j]) <= 1e-14 * np.abs(X[:, j]).max():
            out[j] = f"constant {X[0, j]:.6g}"
            continue
        cols = [c for c in earlier if c < j]
        A = np.column_stack([np.ones(len(X)), X[:, cols]]) if cols else np.ones((len(X), 1))
        coef = np.linalg.lstsq(A, X[:, j], rcond=None)[0]
        terms = sorted(((abs(c) * (X[:, cols[i]].std() if cols else 1.0), c, names[cols[i]])
                        for i, c in enumerate(coef[1:])), reverse=True)[:3]
        text = " + ".join(f"{c:.4g} * {n}" for _, c, n in terms if abs(c) > 1e-12)
        const = coef[0]
        if abs(const) > 1e-9 * (1.0 + abs(X[:, j]).max()):
            text = f"{text} + {const:.4g}" if text else f"{const:.4g}"
        out[j] = f"= {text}" if text else "constant"
    return out
