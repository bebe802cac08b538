"""The M-step maths as pure functions, against scikit-learn, NumPy and each other."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import PoissonRegressor, Ridge

from moekit.estimators import MixtureOfExpertsRegressor, make_moe_regression
from moekit.estimators._gate import flat_gate_step
from moekit.estimators._logit import (
    CurvatureRows,
    experts_newton_step,
    logsumexp,
    multinomial_hessian,
    multinomial_logit_newton,
    objective,
)
from moekit.estimators._solvers import (
    poisson_irls,
    row_products,
    solve_spd,
    weighted_grams,
    weighted_ridge,
    weighted_ridge_multi,
)

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
    cached = weighted_ridge_multi(X1, y, np.c_[w, 2 * w], alpha=3.0, products=row_products(X1))
    np.testing.assert_allclose(cached, multi, atol=1e-10)


def test_weighted_grams_three_ways_agree():
    """Cached outer products, row-chunked GEMM, and the naive sum over rows."""
    R = rng.dirichlet(np.ones(4), size=300)
    naive = np.einsum("nk,nd,ne->kde", R, X1, X1)
    np.testing.assert_allclose(weighted_grams(X1, R), naive, atol=1e-10)
    np.testing.assert_allclose(weighted_grams(X1, R, chunk=7), naive, atol=1e-10)
    np.testing.assert_allclose(weighted_grams(X1, R, products=row_products(X1)), naive,
                               atol=1e-10)


def test_solve_spd_against_numpy_single_batched_and_singular():
    A = rng.normal(size=(5, 6, 6))
    A = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(6)
    b = rng.normal(size=(5, 6))
    expected = np.linalg.solve(A, b[..., None])[..., 0]
    np.testing.assert_allclose(solve_spd(A, b), expected, rtol=1e-8)
    np.testing.assert_allclose(solve_spd(A[2], b[2]), expected[2], rtol=1e-8)
    # a singular (semi-definite) system in a batch: the minimum-norm solution, no exception
    S = A.copy()
    S[1] = np.outer(b[1], b[1])
    x = solve_spd(S, b, jitter=0.0)
    np.testing.assert_allclose(x[0], expected[0], rtol=1e-8)
    np.testing.assert_allclose(S[1] @ x[1], b[1], atol=1e-6 * np.abs(b[1]).max())


def test_poisson_irls_matches_sklearn():
    y = rng.poisson(np.exp(0.3 + X @ [0.5, -0.2, 0.1]))
    beta = poisson_irls(X1, y, w, np.zeros(4), alpha=0.5 * w.sum(), max_iter=50)
    sk = PoissonRegressor(alpha=0.5, tol=1e-12, max_iter=1000).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(beta, np.r_[sk.intercept_, sk.coef_], atol=1e-6)


def test_logsumexp_short_and_long_axes_against_scipy():
    from scipy.special import logsumexp as scipy_lse

    for shape, axis in [((50, 3), 1), ((20, 4, 2), -1), ((40, 60), 1), ((7, 5), 0)]:
        a = rng.normal(size=shape) * 30
        np.testing.assert_allclose(logsumexp(a, axis=axis), scipy_lse(a, axis=axis), rtol=1e-12)
    a = np.full((3, 4), -np.inf)
    assert np.all(logsumexp(a, axis=1) == -np.inf)


def test_symmetric_hessian_equals_the_full_kronecker_sum():
    P = rng.dirichlet(np.ones(4), size=300)
    H = multinomial_hessian(P, w, row_products(X1), 4)
    d = 4
    full = np.zeros((3 * d, 3 * d))
    for i in range(300):
        p = P[i, 1:]
        full += w[i] * np.kron(np.diag(p) - np.outer(p, p), np.outer(X1[i], X1[i]))
    np.testing.assert_allclose(H, full, atol=1e-10)


@pytest.mark.parametrize("hessian", ["exact", "subsample", "bound"])
def test_multinomial_solvers_reach_the_same_optimum(hessian):
    logits = X1 @ rng.normal(size=(4, 3))
    targets = np.exp(logits - logits.max(1, keepdims=True))
    targets /= targets.sum(1, keepdims=True)
    ref = multinomial_logit_newton(X1, targets, w, alpha=0.5, hessian="exact", max_iter=50)
    got = multinomial_logit_newton(X1, targets, w, alpha=0.5, hessian=hessian, max_iter=2000,
                                   tol=1e-14, max_work=300 * 30 / 4)  # stride 4
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.all(ref[0] == 0)


def test_gate_step_with_an_old_factor_still_ascends_and_converges():
    """ECM with curvature reused for several steps: every step increases f, same optimum."""
    logits = X1 @ rng.normal(size=(3, 4)).T
    resp = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    coef = np.zeros((3, 4))
    logp = np.full((300, 3), -np.log(3))
    curvature = CurvatureRows.build(X1, 3)
    factor, values = None, []
    for _ in range(40):
        coef, logp, factor = flat_gate_step(X1, resp, w, coef, 0.1, logp, n_steps=1,
                                            curvature=curvature, factor=factor, max_age=5)
        values.append(objective(X1, resp, w, coef, 0.1)[0])
        np.testing.assert_allclose(logp, objective(X1, resp, w, coef, 0.1)[1], atol=1e-12)
    assert np.all(np.diff(values) >= -1e-9)
    ref = multinomial_logit_newton(X1, resp, w, alpha=0.1, hessian="exact", max_iter=100)
    np.testing.assert_allclose(coef, ref, atol=1e-6)


def test_batched_expert_newton_equals_one_expert_at_a_time():
    labels = rng.integers(0, 3, size=300)
    onehot = np.eye(3)[labels]
    weights = rng.dirichlet(np.ones(4), size=300) * w[:, None]
    coef = 0.1 * rng.normal(size=(4, 3, 4))
    curvature = CurvatureRows.build(X1, 3, max_work=np.inf)
    batched = experts_newton_step(X1, labels, weights, coef, 0.2, curvature=curvature)
    for k in range(4):
        one = multinomial_logit_newton(X1, onehot, weights[:, k], coef[k], alpha=0.2,
                                       hessian="exact", max_iter=1)
        np.testing.assert_allclose(batched[k], one, atol=1e-10)
        assert (objective(X1, onehot, weights[:, k], batched[k], 0.2)[0]
                >= objective(X1, onehot, weights[:, k], coef[k], 0.2)[0])


def test_cached_products_stay_within_their_memory_budget():
    """S1-1's memory finding: 200k rows x 21 x 2 experts took +673 MiB in outer products."""
    from moekit.estimators._em import EMData

    big = np.c_[np.ones(20_000), rng.normal(size=(20_000, 20))]
    cur = CurvatureRows.build(big, 2, max_bytes=1e6)
    assert cur.products.nbytes <= 1e6 and cur.products.shape[0] >= 1e6 / (8 * 231) - 1
    data = EMData.build(big, np.zeros(20_000), np.ones(20_000), n_gate_outcomes=2,
                        products_max_bytes=1e6)
    assert data.products is None  # the expert M-step then works in row chunks
    full = EMData.build(big[:100], np.zeros(100), np.ones(100), n_gate_outcomes=2)
    np.testing.assert_array_equal(full.products, row_products(big[:100]))


def test_large_data_path_is_monotone_and_accurate():
    """Restarts on a subsample, continued on all rows, curvature from a strided subset."""
    Xl, yl, _ = make_moe_regression(3000, 3, 3, noise=0.3, random_state=0)
    big = MixtureOfExpertsRegressor(3, random_state=0, tol=0.0, max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        big._fit(Xl, yl, None, large_above=1000, subsample_rows=500, hessian_max_work=1e5)
    h = np.asarray(big.loglik_history_)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h).max())
    small = MixtureOfExpertsRegressor(3, random_state=0).fit(Xl, yl)
    assert big.log_likelihood(Xl, yl) >= small.log_likelihood(Xl, yl) - 1.0
