"""EM properties: monotone likelihood, parameter recovery, equivalences with scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeRegressor

from moekit.estimators import (
    HierarchicalMixtureOfExpertsRegressor,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
    make_moe_regression,
    select_n_experts,
)


def _assert_monotone(history, breaks=()):
    h = np.asarray(history)
    assert len(h) > 3
    d = np.diff(h)
    allowed = np.zeros(len(d), dtype=bool)
    allowed[[b - 1 for b in breaks if b >= 1]] = True
    tol = 1e-9 * np.abs(h).max()
    assert np.all((d >= -tol) | allowed), d.min()


@pytest.mark.parametrize("accelerate", [True, False])
@pytest.mark.parametrize("expert", ["linear", "poisson", "student_t"])
def test_loglik_never_decreases_regressor(expert, accelerate, two_regimes, monkeypatch):
    X, y, _ = two_regimes
    if expert == "poisson":
        rng = np.random.default_rng(0)
        y = rng.poisson(np.exp(np.where(X[:, 0] > 0, 1.0 + 0.5 * X[:, 1], 0.2 - 0.3 * X[:, 1])))
    m = MixtureOfExpertsRegressor(3, expert=expert, init="random", random_state=1, max_iter=40,
                                  tol=0.0, n_init=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m._fit(X, y, None, accelerate=accelerate)
    assert m.n_reseeded_ == 0 and m.reseed_iterations_ == []
    _assert_monotone(m.loglik_history_)


def test_loglik_never_decreases_classifier():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 3))
    y = np.where(X[:, 0] > 0, X[:, 1] + 0.3 * rng.normal(size=800) > 0,
                 X[:, 2] + 0.3 * rng.normal(size=800) < 0).astype(int)
    clf = MixtureOfExpertsClassifier(3, init="random", random_state=0, max_iter=60, tol=0.0,
                                     n_init=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    _assert_monotone(clf.loglik_history_)
    assert clf.score(X, y) > 0.85


def test_loglik_never_decreases_hierarchical():
    X, y, _ = make_moe_regression(1200, 2, 4, noise=0.3, random_state=3)
    hme = HierarchicalMixtureOfExpertsRegressor((2, 2), init="random", random_state=0,
                                                max_iter=40, tol=0.0, n_init=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        hme.fit(X, y)
    _assert_monotone(hme.loglik_history_)


def test_history_is_monotone_between_reseeds_and_says_where_they_were():
    """A collapsing expert is re-seeded: the drop is recorded, everything else ascends."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2))
    y = 1.0 + X @ [2.0, -1.0] + 0.3 * rng.normal(size=300)
    y[:20] = 5.0  # a block of identical targets: an expert collapses onto it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureOfExpertsRegressor(3, random_state=0, n_init=1, init="random",
                                      max_iter=80).fit(X, y)
    assert m.n_reseeded_ > 0 and len(m.reseed_iterations_) >= m.n_reseeded_ // 2
    assert np.min(np.diff(m.loglik_history_)) < 0  # the re-seeds do cost likelihood ...
    _assert_monotone(m.loglik_history_, m.reseed_iterations_)  # ... and only they do


def test_parameter_recovery_up_to_permutation(best_permutation):
    X, y, truth = make_moe_regression(4000, 2, 3, noise=0.2, random_state=1)
    m = MixtureOfExpertsRegressor(3, random_state=0).fit(X, y)
    assert m.converged_
    p = best_permutation(m.expert_coef_, truth["expert_coef"])
    np.testing.assert_allclose(m.expert_coef_[p], truth["expert_coef"], atol=0.05)
    np.testing.assert_allclose(m.expert_scale_[p], truth["expert_scale"], rtol=0.1)
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


def test_one_expert_is_logistic_regression_on_standardised_columns():
    """The penalty acts on the standardised scale: C = 1 / expert_alpha there."""
    rng = np.random.default_rng(1)
    Z0 = rng.normal(size=(400, 3))
    X = Z0 * [1.0, 100.0, 0.01] + [0.0, 5.0, -3.0]  # wildly different units
    y = (Z0 @ [1.0, -2.0, 0.5] + rng.logistic(size=400) > 0.3).astype(int)
    m = MixtureOfExpertsClassifier(1, expert_alpha=0.5).fit(X, y)
    Z = StandardScaler().fit_transform(X)
    lr = LogisticRegression(C=2.0, tol=1e-12, max_iter=10_000).fit(Z, y)
    np.testing.assert_allclose(m.predict_proba(X), lr.predict_proba(Z), atol=1e-6)
    s = MixtureOfExpertsClassifier(1, expert_alpha=0.5, standardize=True).fit(X, y)
    np.testing.assert_allclose(s.expert_coef_[0, 1, 1:], lr.coef_[0], rtol=1e-5)
    np.testing.assert_allclose(s.expert_coef_[0, 1, 0], lr.intercept_[0], rtol=1e-5)


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
        first = MixtureOfExpertsRegressor(3, n_init=1, **kw).fit(X, y)
        best = MixtureOfExpertsRegressor(3, n_init=3, **kw).fit(X, y)
    assert best.lower_bound_ >= first.lower_bound_


def test_verbose_prints_one_line_per_restart_to_stderr(two_regimes, capsys):
    X, y, _ = two_regimes
    MixtureOfExpertsRegressor(2, n_init=3, random_state=0, verbose=1).fit(X, y)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"restart {i + 1}/3 (") for i, line in
                                   enumerate(lines))
    assert "penalised log-likelihood" in lines[0] and "iterations" in lines[0]


def test_warm_start_continues(two_regimes):
    X, y, _ = two_regimes
    m = MixtureOfExpertsRegressor(2, random_state=0, warm_start=True).fit(X, y)
    first = m.lower_bound_
    m.fit(X, y)
    assert m.n_iter_ <= 3
    assert m.lower_bound_ >= first - 1e-6


def test_convergence_warning(two_regimes):
    X, y, _ = two_regimes
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=2"):
        m = MixtureOfExpertsRegressor(3, max_iter=2, tol=0.0, random_state=0).fit(X, y)
    assert not m.converged_ and m.n_iter_ == 2


def test_default_fits_converge_well_before_max_iter():
    """S3-22: at the defaults the usual fits converge (the warning is not the normal case)."""
    from sklearn.datasets import load_breast_cancer, load_diabetes

    Xd, yd = load_diabetes(return_X_y=True)
    Xb, yb = load_breast_cancer(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert MixtureOfExpertsRegressor(3, random_state=0).fit(Xd, yd).converged_
        assert MixtureOfExpertsClassifier(2, random_state=0).fit(Xb, yb).converged_


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
    assert clf.score(X, y) > 0.95
    assert clf.expert_coef_.shape == (2, 3, 5)
    assert clf.gate_coef_.shape == (2, 5) and np.all(clf.gate_coef_[0] == 0)


def test_hierarchical_beats_or_equals_flat_on_nested_data():
    rng = np.random.default_rng(0)
    n = 3000
    X = rng.normal(size=(n, 2))
    left = X[:, 0] < 0
    leaf = np.where(left, (X[:, 1] > -1).astype(int), 2 + (X[:, 1] > 1).astype(int))
    coef = np.array([[2.0, 1.0, 0.0], [-2.0, 0.0, 1.0], [0.0, -1.0, -1.0], [4.0, 0.5, 0.5]])
    y = np.einsum("nd,nd->n", np.c_[np.ones(n), X], coef[leaf]) + 0.2 * rng.normal(size=n)
    kw = dict(n_init=3, random_state=0, gate_alpha=0.1)
    hme = HierarchicalMixtureOfExpertsRegressor((2, 2), **kw).fit(X, y)
    flat = MixtureOfExpertsRegressor(4, **kw).fit(X, y)
    assert hme.log_likelihood(X, y) >= flat.log_likelihood(X, y) - 1e-3 * abs(
        flat.log_likelihood(X, y))
    assert hme.n_experts_ == 4 and len(hme.gate_coefs_) == 2
    with pytest.raises(AttributeError, match="use gate_coefs_"):
        hme.gate_coef_


def test_information_criteria(two_regimes):
    X, y, _ = two_regimes
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    ll = m.log_likelihood(X, y)
    assert m.aic(X, y) == pytest.approx(-2 * ll + 2 * m.n_parameters_)
    assert m.bic(X, y) == pytest.approx(-2 * ll + m.n_parameters_ * np.log(len(y)))
    resp = m.responsibilities(X, y)
    entropy = -np.sum(resp * np.log(np.clip(resp, 1e-300, None)))
    assert m.icl(X, y) == pytest.approx(m.bic(X, y) + 2 * entropy)
    assert m.n_parameters_ == 3 + 2 * 4
    np.testing.assert_allclose(resp.sum(1), 1.0)
    assert m.log_likelihood_samples(X, y).sum() == pytest.approx(ll)


@pytest.mark.parametrize(("expert", "per_expert"), [("linear", 4), ("student_t", 5),
                                                    ("poisson", 3)])
def test_parameter_count_of_every_family(expert, per_expert):
    """Gate (K-1)(p+1) + K x per-expert (coef, scale, and the Student-t df)."""
    X, y, _ = make_moe_regression(400, 2, 2, random_state=0)
    if expert == "poisson":
        y = np.random.default_rng(0).poisson(np.exp(0.5 + 0.3 * X[:, 0]))
    m = MixtureOfExpertsRegressor(2, expert=expert, random_state=0, n_init=1).fit(X, y)
    assert m.n_parameters_ == 3 + 2 * per_expert
    assert m.bic(X, y) == pytest.approx(-2 * m.log_likelihood(X, y) + m.n_parameters_
                                        * np.log(len(y)))


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
    m = MixtureOfExpertsRegressor(2, expert="poisson", random_state=0).fit(X, y)
    p = best_permutation(m.expert_coef_, true)
    np.testing.assert_allclose(m.expert_coef_[p], true, atol=0.15)


def test_acceleration_reaches_the_same_optimum_in_fewer_steps():
    """Overlapping regimes make plain EM slow; SQUAREM gets to the same maximum faster."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 2))
    z = X[:, 0] + 0.5 * rng.normal(size=2000) > 0
    y = np.where(z, 1 + 0.5 * X[:, 1], 2.0 - 0.5 * X[:, 1]) + 0.7 * rng.normal(size=2000)
    kw = dict(n_init=1, init="kmeans", random_state=0, tol=1e-9, max_iter=5000)
    fast = MixtureOfExpertsRegressor(2, **kw)._fit(X, y, None, accelerate=True)
    slow = MixtureOfExpertsRegressor(2, **kw)._fit(X, y, None, accelerate=False)
    assert fast.converged_ and slow.converged_
    assert fast.lower_bound_ == pytest.approx(slow.lower_bound_, abs=1e-4)
    assert fast.n_iter_ < slow.n_iter_ / 2


def test_select_n_experts(two_regimes):
    X, y, _ = two_regimes
    sel = select_n_experts(X, y, [1, 2, 3], criterion="bic")
    assert sel.best_n_experts == 2
    assert set(sel.scores) == {1, 2, 3}
    assert sel.best_estimator.n_experts == 2
    assert sel.scores[2] == pytest.approx(sel.best_estimator.bic(X, y))


def test_select_n_experts_takes_a_pipeline_and_a_tree(two_regimes):
    """S3-16: a Pipeline (parameter prefix) and HME (search over branching)."""
    from sklearn.pipeline import make_pipeline

    X, y, _ = two_regimes
    pipe = make_pipeline(StandardScaler(), MixtureOfExpertsRegressor(random_state=0, n_init=2))
    sel = select_n_experts(X * 100, y, [1, 2], estimator=pipe)
    assert sel.best_n_experts == 2 and sel.best_estimator[-1].n_experts == 2
    tree = HierarchicalMixtureOfExpertsRegressor(random_state=0, n_init=2)
    sel = select_n_experts(X, y, [(1,), 2, (2, 2)], criterion="aic", estimator=tree)
    assert set(sel.scores) == {(1,), (2,), (2, 2)}
    assert sel.best_n_experts == int(np.prod(sel.best_estimator.branching))
