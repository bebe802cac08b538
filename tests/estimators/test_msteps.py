"""The M-step maths as pure functions, against scikit-learn and against each other."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import PoissonRegressor, Ridge

from moekit.estimators import MixtureOfExpertsRegressor, _base, _gate, make_moe_regression
from moekit.estimators._experts import poisson_irls, weighted_ridge, weighted_ridge_multi
from moekit.estimators._gate import multinomial_logit_newton

rng = np.random.default_rng(0)
X = rng.normal(size=(300, 3))
X1 = np.c_[np.ones(300), X]
w = rng.uniform(0.1, 2.0, size=300)


def test_weighted_ridge_matches_sklearn():
    y = X @ [1.0, -2.0, 0.5] + rng.normal(size=300)
    beta = weighted_ridge(X1, y, w, alpha=3.0)
    ridge = Ridge(alpha=3.0).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(beta, np.r_[ridge.intercept_, ridge.coef_], atol=1e-8)
    multi = weighted_ridge_multi(X1, y, np.c_[w, 2 * w], alpha=3.0)
    np.testing.assert_allclose(multi[0], beta, atol=1e-10)


def test_poisson_irls_matches_sklearn():
    y = rng.poisson(np.exp(0.3 + X @ [0.5, -0.2, 0.1]))
    beta = poisson_irls(X1, y, w, np.zeros(4), alpha=0.5 * w.sum(), max_iter=50)
    sk = PoissonRegressor(alpha=0.5, tol=1e-12, max_iter=1000).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(beta, np.r_[sk.intercept_, sk.coef_], atol=1e-6)


@pytest.mark.parametrize("hessian", ["exact", "subsample", "bound"])
def test_multinomial_solvers_reach_the_same_optimum(hessian, monkeypatch):
    monkeypatch.setattr(_gate, "_EXACT_HESSIAN_MAX_WORK", 300 * 12**2 / 4)  # stride 4
    logits = X1 @ rng.normal(size=(4, 3))
    targets = np.exp(logits - logits.max(1, keepdims=True))
    targets /= targets.sum(1, keepdims=True)
    ref = multinomial_logit_newton(X1, targets, w, alpha=0.5, hessian="exact", max_iter=50)
    got = multinomial_logit_newton(X1, targets, w, alpha=0.5, hessian=hessian, max_iter=2000,
                                   tol=1e-14)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.all(ref[0] == 0)


def test_large_data_path_is_monotone_and_accurate(monkeypatch):
    """Subsample warm-up and subsampled gate Hessian, exercised on small data."""
    monkeypatch.setattr(_base, "_WARMUP_ABOVE", 1000)
    monkeypatch.setattr(_base, "_WARMUP_ROWS", 500)
    monkeypatch.setattr(_gate, "_EXACT_HESSIAN_MAX_WORK", 1e5)
    Xl, yl, _ = make_moe_regression(3000, 3, 3, noise=0.3, random_state=0)
    big = MixtureOfExpertsRegressor(3, random_state=0, tol=0.0, max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        big.fit(Xl, yl)
    h = np.asarray(big.loglik_history_)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h).max())
    monkeypatch.undo()
    small = MixtureOfExpertsRegressor(3, random_state=0, n_init=2).fit(Xl, yl)
    assert big.log_likelihood(Xl, yl) >= small.log_likelihood(Xl, yl) - 1.0
