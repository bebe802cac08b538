"""The internal design: standardisation and aliased columns, against a slow reference."""

from __future__ import annotations

import numpy as np
import pytest

from moekit.estimators._design import ALIAS_TOL, fit_design


def _reference_aliased(X, w, tol=ALIAS_TOL):
    """One QR of the whole standardised matrix, columns tested in order (R's lm rule)."""
    keep = w > 0
    X, w = X[keep], w[keep] / w[keep].sum()
    mean = w @ X
    sd = np.sqrt(w @ (X - mean) ** 2)
    aliased, kept = [], []
    for j in range(X.shape[1]):
        if sd[j] <= 1e-14 * abs(mean[j]):
            aliased.append(j)
            continue
        cols = [np.ones(len(X))] + [(X[:, c] - mean[c]) / sd[c] for c in kept]
        cols.append((X[:, j] - mean[j]) / sd[j])
        A = np.sqrt(w)[:, None] * np.column_stack(cols)
        r = np.abs(np.diag(np.linalg.qr(A, mode="r")))
        if len(r) < A.shape[1] or r[-1] <= tol:
            aliased.append(j)
        else:
            kept.append(j)
    return aliased


@pytest.mark.parametrize("seed", range(4))
def test_aliased_columns_match_the_one_qr_reference(seed):
    rng = np.random.default_rng(seed)
    n = 400
    X = rng.normal(size=(n, 6)) * rng.uniform(0.01, 100, size=6) + rng.normal(size=6) * 1e3
    X = np.column_stack([X, 2 * X[:, 1] - 3 * X[:, 4] + 7,  # exact combination: aliased
                         np.full(n, 2.5),  # constant: aliased
                         1e9 + 1e-3 * rng.normal(size=n),  # huge offset, real variation: kept
                         X[:, 0] + 1e-9 * X[:, 0].std() * rng.normal(size=n),  # aliased (tol)
                         X[:, 2] + 1e-5 * X[:, 2].std() * rng.normal(size=n)])  # kept
    w = rng.uniform(0.5, 2.0, size=n)
    w[rng.choice(n, 50, replace=False)] = 0.0
    expected = _reference_aliased(X, w)
    assert expected == [6, 7, 9]
    for chunk in (65536, 37):  # chunked QR of stacked R factors == one QR
        design = fit_design(X, w, chunk=chunk)
        assert list(design.aliased) == expected
    keep = w > 0
    np.testing.assert_allclose(design.mean, np.average(X[keep], axis=0, weights=w[keep]))
    sd = np.sqrt(np.average((X[keep] - design.mean) ** 2, axis=0, weights=w[keep]))
    np.testing.assert_allclose(design.scale[[0, 1, 8]], sd[[0, 1, 8]], rtol=1e-10)


def test_coefficient_maps_are_inverse_and_match_the_linear_predictor():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 5.0, -2.0, 1.0]
    X[:, 3] = 2 * X[:, 0]  # aliased
    design = fit_design(X, np.ones(50))
    Z1 = design.transform(X)
    c = rng.normal(size=(3, Z1.shape[1]))
    for standardize in (False, True):
        rep = design.to_reported(c, standardize)
        np.testing.assert_allclose(design.to_internal(rep, standardize), c, atol=1e-12)
        assert np.all(rep[:, 4] == 0)
        D = np.c_[np.ones(50), (X - design.mean) / design.scale if standardize else X]
        np.testing.assert_allclose(D @ rep.T, Z1 @ c.T, atol=1e-10)
