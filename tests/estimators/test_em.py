"""EM properties: monotone likelihood, parameter recovery, equivalences with scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeRegressor

from moekit.estimators import (
    HierarchicalMixtureOfExpertsRegressor,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
    make_moe_regression,
    select_n_experts,
)


def _assert_monotone(history):
    h = np.asarray(history)
    assert len(h) > 3
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:]).max()), np.diff(h).min()


@pytest.mark.parametrize("expert", ["linear", "poisson", "student_t"])
def test_loglik_never_decreases_regressor(expert, two_regimes):
    X, y, _ = two_regimes
    if expert == "poisson":
        rng = np.random.default_rng(0)
        y = rng.poisson(np.exp(np.where(X[:, 0] > 0, 1.0 + 0.5 * X[:, 1], 0.2 - 0.3 * X[:, 1])))
    m = MixtureOfExpertsRegressor(3, expert=expert, init="random", random_state=1, max_iter=60,
                                  tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(X, y)
    assert m.n_reseeded_ == 0
    _assert_monotone(m.loglik_history_)


def test_loglik_never_decreases_classifier():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 3))
    y = np.where(X[:, 0] > 0, X[:, 1] + 0.3 * rng.normal(size=800) > 0,
                 X[:, 2] + 0.3 * rng.normal(size=800) < 0).astype(int)
    clf = MixtureOfExpertsClassifier(3, init="random", random_state=0, max_iter=60, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    _assert_monotone(clf.loglik_history_)
    assert clf.score(X, y) > 0.85


def test_loglik_never_decreases_hierarchical():
    X, y, _ = make_moe_regression(1200, 2, 4, noise=0.3, random_state=3)
    hme = HierarchicalMixtureOfExpertsRegressor((2, 2), init="random", random_state=0,
                                                max_iter=60, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        hme.fit(X, y)
    _assert_monotone(hme.loglik_history_)


def test_parameter_recovery_up_to_permutation(best_permutation):
    X, y, truth = make_moe_regression(4000, 2, 3, noise=0.2, random_state=1)
    m = MixtureOfExpertsRegressor(3, n_init=3, random_state=0).fit(X, y)
    assert m.converged_
    p = best_permutation(m.expert_coef_, truth["expert_coef"])
    np.testing.assert_allclose(m.expert_coef_[p], truth["expert_coef"], atol=0.05)
    np.testing.assert_allclose(m.expert_scale_[p], truth["expert_scale"], rtol=0.1)
    # gate log-odds against the true reference expert
    V = m.gate_coef_[p]
    np.testing.assert_allclose(V - V[0], truth["gate_coef"], atol=0.6)
    logits = np.c_[np.ones(len(X)), X] @ truth["gate_coef"].T
    g_true = np.exp(logits - logits.max(1, keepdims=True))
    g_true /= g_true.sum(1, keepdims=True)
    assert np.abs(m.gate_proba(X)[:, p] - g_true).mean() < 0.03


def test_one_expert_is_ordinary_least_squares(two_regimes):
    X, y, _ = two_regimes
    m = MixtureOfExpertsRegressor(1, random_state=0).fit(X, y)
    ols = LinearRegression().fit(X, y)
    np.testing.assert_allclose(m.expert_coef_[0], np.r_[ols.intercept_, ols.coef_], atol=1e-10)
    np.testing.assert_allclose(m.expert_scale_[0], np.sqrt(np.mean((y - ols.predict(X)) ** 2)))
    np.testing.assert_allclose(m.predict(X), ols.predict(X), atol=1e-10)
    assert m.n_parameters_ == 4


def test_one_expert_is_logistic_regression():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3))
    y = (X @ [1.0, -2.0, 0.5] + rng.logistic(size=400) > 0.3).astype(int)
    m = MixtureOfExpertsClassifier(1, expert_alpha=1.0).fit(X, y)
    lr = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit(X, y)
    np.testing.assert_allclose(m.expert_coef_[0, 1, 1:], lr.coef_[0], rtol=1e-5)
    np.testing.assert_allclose(m.expert_coef_[0, 1, 0], lr.intercept_[0], rtol=1e-5)
    np.testing.assert_allclose(m.predict_proba(X), lr.predict_proba(X), atol=1e-6)


def test_integer_weights_equal_repeated_rows(two_regimes):
    X, y, _ = two_regimes
    w = np.random.default_rng(0).integers(0, 3, size=len(y))
    a = MixtureOfExpertsRegressor(1).fit(X, y, sample_weight=w)
    b = MixtureOfExpertsRegressor(1).fit(np.repeat(X, w, 0), np.repeat(y, w))
    np.testing.assert_allclose(a.expert_coef_, b.expert_coef_, atol=1e-10)
    np.testing.assert_allclose(a.expert_scale_, b.expert_scale_, rtol=1e-10)
    assert a.log_likelihood(X, y, sample_weight=w) == pytest.approx(
        b.log_likelihood(np.repeat(X, w, 0), np.repeat(y, w)))


def test_fit_predict_equals_fit_then_predict(two_regimes):
    X, y, _ = two_regimes
    a = MixtureOfExpertsRegressor(2, random_state=0).fit_predict(X, y)
    b = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, b)


def test_restarts_keep_the_best_run(two_regimes):
    X, y, _ = two_regimes
    kw = dict(init="random", random_state=0, max_iter=30, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        first = MixtureOfExpertsRegressor(3, **kw).fit(X, y)  # the first of the restarts below
        best = MixtureOfExpertsRegressor(3, n_init=3, **kw).fit(X, y)
    assert best.lower_bound_ >= first.lower_bound_


def test_warm_start_continues(two_regimes):
    X, y, _ = two_regimes
    m = MixtureOfExpertsRegressor(2, random_state=0, warm_start=True).fit(X, y)
    first = m.lower_bound_
    m.fit(X, y)
    assert m.n_iter_ <= 2
    assert m.lower_bound_ >= first - 1e-6


def test_convergence_warning(two_regimes):
    X, y, _ = two_regimes
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=2"):
        m = MixtureOfExpertsRegressor(3, max_iter=2, tol=0.0, random_state=0).fit(X, y)
    assert not m.converged_ and m.n_iter_ == 2


def test_collapsing_experts_are_reported():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = 1.0 + X @ [2.0, -1.0]  # noise-free: every expert's variance collapses
    with pytest.warns(UserWarning, match="collapsed expert"):
        m = MixtureOfExpertsRegressor(3, random_state=0).fit(X, y)
    assert m.n_reseeded_ > 0 or m.removed_experts_
    assert m.score(X, y) > 0.999


def test_sklearn_estimator_as_expert(two_regimes):
    X, y, _ = two_regimes
    # one k-means start: the test is about trees as experts, not about restarts (with tree
    # experts a higher likelihood does not always mean a better mean prediction)
    m = MixtureOfExpertsRegressor(2, expert=DecisionTreeRegressor(max_depth=4, random_state=0),
                                  random_state=0, max_iter=20, n_init=1, init="kmeans")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(X, y)
    assert len(m.experts_) == 2 and m.score(X, y) > 0.6


def test_multiclass_classifier():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    clf = MixtureOfExpertsClassifier(2, random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert clf.score(X, y) > 0.95
    assert clf.expert_coef_.shape == (2, 3, 5)


def test_hierarchical_beats_or_equals_flat_on_nested_data():
    rng = np.random.default_rng(0)
    n = 3000
    X = rng.normal(size=(n, 2))
    left = X[:, 0] < 0
    # nested regimes: the right branch splits on x1 at 1, the left at -1 (not one softmax)
    leaf = np.where(left, (X[:, 1] > -1).astype(int), 2 + (X[:, 1] > 1).astype(int))
    coef = np.array([[2.0, 1.0, 0.0], [-2.0, 0.0, 1.0], [0.0, -1.0, -1.0], [4.0, 0.5, 0.5]])
    y = np.einsum("nd,nd->n", np.c_[np.ones(n), X], coef[leaf]) + 0.2 * rng.normal(size=n)
    kw = dict(n_init=3, random_state=0, gate_alpha=0.1)
    hme = HierarchicalMixtureOfExpertsRegressor((2, 2), **kw).fit(X, y)
    flat = MixtureOfExpertsRegressor(4, **kw).fit(X, y)
    assert hme.log_likelihood(X, y) >= flat.log_likelihood(X, y) - 1e-3 * abs(
        flat.log_likelihood(X, y))
    assert hme.n_experts_ == 4 and len(hme.gate_coefs_) == 2


def test_select_n_experts(two_regimes):
    X, y, _ = two_regimes
    sel = select_n_experts(X, y, [1, 2, 3], criterion="bic")
    assert sel.best_n_experts == 2
    assert set(sel.scores) == {1, 2, 3}
    assert sel.best_estimator.n_experts == 2


def test_information_criteria(two_regimes):
    X, y, _ = two_regimes
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    ll = m.log_likelihood(X, y)
    assert m.aic(X, y) == pytest.approx(-2 * ll + 2 * m.n_parameters_)
    assert m.bic(X, y) == pytest.approx(-2 * ll + m.n_parameters_ * np.log(len(y)))
    assert m.icl(X, y) >= m.bic(X, y)
    assert m.n_parameters_ == 3 + 2 * 4
    np.testing.assert_allclose(m.responsibilities(X, y).sum(1), 1.0)
    assert m.log_likelihood_samples(X, y).sum() == pytest.approx(ll)


def test_student_t_experts_resist_outliers():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 1))
    y = 1.0 + 2.0 * X[:, 0] + 0.2 * rng.normal(size=600)
    y[:30] += rng.choice([-1, 1], 30) * 30.0  # 5% gross outliers
    t = MixtureOfExpertsRegressor(1, expert="student_t").fit(X, y)
    g = MixtureOfExpertsRegressor(1).fit(X, y)
    err_t = np.abs(t.expert_coef_[0] - [1.0, 2.0]).max()
    err_g = np.abs(g.expert_coef_[0] - [1.0, 2.0]).max()
    assert err_t < 0.05 < err_g
    assert t.expert_df_[0] < 5


def test_poisson_experts_recover_rates(best_permutation):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 1))
    true = np.array([[0.5, 1.0], [2.0, -0.5]])
    z = (X[:, 0] + 0.3 * rng.normal(size=3000) > 0).astype(int)
    y = rng.poisson(np.exp(true[z, 0] + true[z, 1] * X[:, 0]))
    m = MixtureOfExpertsRegressor(2, expert="poisson", init="kmeans_xy", n_init=2,
                                  random_state=0).fit(X, y)
    p = best_permutation(m.expert_coef_, true)
    np.testing.assert_allclose(m.expert_coef_[p], true, atol=0.15)
