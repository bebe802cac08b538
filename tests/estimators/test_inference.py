"""Standard errors: analytic information vs finite differences, vs statsmodels, penalties,
aliased columns, the summary's wording and table, lazy computation."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from moekit.estimators import (
    HierarchicalMixtureOfExpertsRegressor,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
    make_moe_regression,
)
from moekit.estimators._inference import (
    gradient,
    information,
    information_fd,
    loglik,
)
from moekit.estimators._params import pack


def _data():
    X, y, _ = make_moe_regression(400, 2, 2, noise=0.5, random_state=2, gate_strength=2.0)
    rng = np.random.default_rng(0)
    counts = rng.poisson(np.exp(np.where(X[:, 0] > 0, 1.0 + 0.3 * X[:, 1], 0.5)))
    labels = (X[:, 0] * X[:, 1] + 0.5 * rng.normal(size=400) > 0).astype(int)
    three = np.digitize(X[:, 0] + 0.3 * rng.normal(size=400), [-0.5, 0.5])
    return X, y, counts, labels, three


def _fitted(case):
    X, y, counts, labels, three = _data()
    est, target = {
        "linear": (MixtureOfExpertsRegressor(3, random_state=0), y),
        "poisson": (MixtureOfExpertsRegressor(2, expert="poisson", random_state=0), counts),
        "student_t": (MixtureOfExpertsRegressor(2, expert="student_t", random_state=0), y),
        "logistic": (MixtureOfExpertsClassifier(2, random_state=0), labels),
        "multinomial": (MixtureOfExpertsClassifier(2, random_state=0), three),
        "tree": (HierarchicalMixtureOfExpertsRegressor((2, 2), random_state=0), y),
    }[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, target)
    Z1 = est._design().transform(X)
    yy = est._prepare_y(target, reset=False)
    return est, est._make_family(), est._internal_state(), Z1, yy, np.ones(len(yy))


@pytest.mark.parametrize("case", ["linear", "poisson", "student_t", "logistic", "multinomial"])
def test_analytic_information_equals_differentiated_gradient(case):
    """The fast closed-form information against its slow twin (differences of the gradient)."""
    est, fam, state, Z1, y, sw = _fitted(case)
    fast = information(fam, Z1, y, sw, state, est.n_experts_, chunk=97)
    slow = information_fd(fam, Z1, y, sw, state, est.n_experts_, tuple(est.branching_))
    np.testing.assert_allclose(fast, slow, atol=1e-6 * np.abs(slow).max())


@pytest.mark.parametrize("case", ["linear", "student_t", "logistic", "tree"])
def test_gradient_is_the_derivative_of_the_log_likelihood(case):
    est, fam, state, Z1, y, sw = _fitted(case)
    K, br = est.n_experts_, tuple(est.branching_)
    theta = pack(fam, state, K) + 0.01 * np.random.default_rng(0).normal(size=len(
        pack(fam, state, K)))

    def f(t):
        return loglik(fam, Z1, y, sw, t, state, K)

    fd = np.array([(f(theta + e) - f(theta - e)) / 2e-5 for e in np.eye(len(theta)) * 1e-5])
    np.testing.assert_allclose(gradient(fam, Z1, y, sw, theta, state, K, br), fd, rtol=1e-5,
                               atol=1e-4)


def test_tree_information_is_minus_the_hessian():
    est, fam, state, Z1, y, sw = _fitted("tree")
    K = est.n_experts_
    theta = pack(fam, state, K)
    h, P = 1e-4, len(theta)
    E = np.eye(P) * h

    def f(t):
        return loglik(fam, Z1, y, sw, t, state, K)

    H = np.empty((P, P))
    for i in range(P):
        for j in range(i, P):
            H[i, j] = H[j, i] = (f(theta + E[i] + E[j]) - f(theta + E[i] - E[j])
                                 - f(theta - E[i] + E[j]) + f(theta - E[i] - E[j])) / (4 * h * h)
    info = information_fd(fam, Z1, y, sw, state, K, tuple(est.branching_))
    np.testing.assert_allclose(info, -H, atol=2e-3 * np.abs(H).max())
    assert np.all(np.isfinite(np.diag(est.covariance_))) and np.all(np.diag(est.covariance_) > 0)


# ----------------------------------------------------------------- against statsmodels
def _units_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 50.0, 0.02] + [1.0, 100.0, -5.0]
    Z = (X - X.mean(0)) / X.std(0)
    return X, Z, rng


def test_one_expert_regression_se_are_statsmodels_ols_with_the_mle_sigma():
    sm = pytest.importorskip("statsmodels.api")
    X, Z, rng = _units_data()
    y = 2.0 + Z @ [1.0, -0.5, 0.25] + rng.normal(size=len(X))
    m = MixtureOfExpertsRegressor(1, gate_alpha=0.0).fit(X, y)
    ols = sm.OLS(y, sm.add_constant(X)).fit()
    n, p = X.shape[0], 4
    se = np.sqrt(np.diag(m.covariance_))[:4]
    np.testing.assert_allclose(se, ols.bse * np.sqrt((n - p) / n), rtol=1e-6)
    np.testing.assert_allclose(m.expert_coef_[0], ols.params, rtol=1e-8)
    frame = m.summary_frame()
    assert frame["note"].eq("").all()
    np.testing.assert_allclose(frame["std_err"].to_numpy()[:4], se)


def test_one_expert_logit_and_poisson_se_are_statsmodels():
    sm = pytest.importorskip("statsmodels.api")
    X, Z, rng = _units_data(500, 1)
    y = (Z @ [1.0, -1.0, 0.5] + rng.logistic(size=500) > 0).astype(int)
    m = MixtureOfExpertsClassifier(1, gate_alpha=0.0, expert_alpha=0.0).fit(X, y)
    logit = sm.Logit(y, sm.add_constant(X)).fit(disp=0, tol=1e-12)
    np.testing.assert_allclose(m.expert_coef_[0, 1], logit.params, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(np.diag(m.covariance_)), logit.bse, rtol=1e-5)
    counts = rng.poisson(np.exp(0.5 + Z @ [0.3, -0.2, 0.1]))
    m = MixtureOfExpertsRegressor(1, expert="poisson", gate_alpha=0.0).fit(X, counts)
    glm = sm.GLM(counts, sm.add_constant(X), family=sm.families.Poisson()).fit(tol=1e-12)
    np.testing.assert_allclose(m.expert_coef_[0], glm.params, rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(m.covariance_)), glm.bse, rtol=1e-5)


def test_standardize_reports_coefficients_and_se_per_sd_of_each_column():
    sm = pytest.importorskip("statsmodels.api")
    X, Z, rng = _units_data()
    y = 2.0 + Z @ [1.0, -0.5, 0.25] + rng.normal(size=len(X))
    raw = MixtureOfExpertsRegressor(1, gate_alpha=0.0).fit(X, y)
    std = MixtureOfExpertsRegressor(1, gate_alpha=0.0, standardize=True).fit(X, y)
    np.testing.assert_array_equal(raw.predict(X), raw.predict(X))
    np.testing.assert_allclose(std.predict(X), raw.predict(X), rtol=1e-12)
    ols = sm.OLS(y, sm.add_constant(Z)).fit()
    np.testing.assert_allclose(std.expert_coef_[0], ols.params, rtol=1e-8)
    n = len(y)
    np.testing.assert_allclose(np.sqrt(np.diag(std.covariance_))[:4],
                               ols.bse * np.sqrt((n - 4) / n), rtol=1e-6)


# --------------------------------------------------------------------- penalised fits
def test_ridge_sandwich_is_the_sampling_covariance_of_the_penalised_estimate():
    """Monte Carlo: a ridge, many replicate targets; the sandwich SE is the spread of the
    estimates; the posterior one (what the summary used to report) is wider."""
    X, Z, rng = _units_data(80, 3)
    beta = np.array([1.0, 0.8, -0.6, 0.4])
    est_alpha = 30.0
    estimates, se_sandwich, se_posterior = [], [], []
    for r in range(120):
        y = beta[0] + Z @ beta[1:] + rng.normal(size=len(X))
        m = MixtureOfExpertsRegressor(1, expert_alpha=est_alpha, standardize=True).fit(X, y)
        estimates.append(m.expert_coef_[0])
        if r < 20:
            se_sandwich.append(m.summary_frame(se="sandwich")["std_err"].to_numpy()[:4])
            se_posterior.append(m.summary_frame(se="posterior")["std_err"].to_numpy()[:4])
    empirical = np.std(estimates, axis=0)
    np.testing.assert_allclose(np.mean(se_sandwich, axis=0)[1:], empirical[1:], rtol=0.2)
    assert np.all(np.mean(se_posterior, axis=0)[1:] > 1.02 * np.mean(se_sandwich, axis=0)[1:])


def test_penalised_summary_says_so_and_flags_penalty_dominated_parameters():
    X, y, _ = make_moe_regression(300, 2, 2, noise=0.3, random_state=0)
    m = MixtureOfExpertsRegressor(2, random_state=0, gate_alpha=0.01).fit(X, y)
    text = m.summary()
    assert "penalised fit: gate_alpha=0.01, expert_alpha=0" in text
    assert "sandwich" in text and "observed information" in text
    strong = MixtureOfExpertsRegressor(2, random_state=0, gate_alpha=1e4).fit(X, y)
    frame = strong.summary_frame()
    gate_slopes = frame.index.str.startswith("gate") & ~frame.index.str.endswith("intercept")
    assert (frame.loc[gate_slopes, "note"] == "penalty-dominated").all()
    assert "penalty-dominated" in strong.summary()
    free = MixtureOfExpertsRegressor(2, random_state=0, gate_alpha=0.0).fit(X, y)
    assert "unpenalised maximum likelihood" in free.summary()
    assert "inverse observed information" in free.summary()


# ------------------------------------------------------------------- aliased columns
def test_aliased_columns_are_reported_by_name_never_as_silent_nan():
    pd = pytest.importorskip("pandas")
    from sklearn.datasets import load_diabetes

    d = load_diabetes(as_frame=True, scaled=False).frame
    X = d.drop(columns="target").assign(bmi_copy=lambda f: 2 * f.bmi + 1, one=1.0)
    with pytest.warns(UserWarning, match=r"2 column\(s\) not defined because of singularities: "
                                         r"'bmi_copy' \(= 2 \* bmi \+ 1\); 'one' \(constant 1\)"):
        m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, d.target)
    assert [m.feature_names_in_[j] for j in m.aliased_features_] == ["bmi_copy", "one"]
    base = MixtureOfExpertsRegressor(2, random_state=0).fit(X.iloc[:, :10], d.target)
    np.testing.assert_allclose(m.predict(X), base.predict(X.iloc[:, :10]), rtol=1e-9)
    assert m.n_parameters_ == base.n_parameters_
    frame = m.summary_frame()
    aliased = frame.index.str.endswith(("bmi_copy", "one"))
    assert (frame.loc[aliased, "note"] == "aliased").all()
    assert frame.loc[~aliased, ["coef", "std_err"]].notna().all().all()
    text = m.summary()
    assert "2 not defined because of singularities (aliased, fixed at 0): 'bmi_copy', 'one'" in text
    assert "NA   (aliased" in text and " nan " not in text
    assert isinstance(frame, pd.DataFrame)


# ----------------------------------------------------------------- wording and table
def test_summary_wording():
    X, y, _ = make_moe_regression(500, 2, 2, noise=0.3, random_state=0)
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    text = m.summary()
    assert text.count("expert 1: ") == 4 and "gate expert 1 vs 0: x1" in text
    assert "gate child" not in text and "log-odds of each expert against expert 0" in text
    ll = m.log_likelihood(X, y)
    assert f"log-likelihood {ll:.4f} (training data)" in text
    assert f"penalised objective {m.lower_bound_:.4f} = log-likelihood - penalty" in text
    assert m.summary(X, y) == text
    assert "expert 0: dose" in m.summary(feature_names=["age", "dose"])
    one = MixtureOfExpertsRegressor(1).fit(X, y).summary()
    assert "gate" not in one.split("\n", 1)[1] and "reference" not in one


def test_summary_frame_columns_and_intervals():
    X, y, _ = make_moe_regression(500, 2, 2, noise=0.3, random_state=0)
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    f = m.summary_frame(level=0.9)
    assert list(f.columns) == ["coef", "std_err", "z", "p_value", "ci_lower", "ci_upper",
                               "penalty_share", "note"]
    assert len(f) == m.covariance_.shape[0] == 3 + 2 * 4
    np.testing.assert_allclose(f.ci_upper - f.coef, 1.6448536269514722 * f.std_err)
    np.testing.assert_allclose(f.z, f.coef / f.std_err)
    np.testing.assert_allclose(f.coef.to_numpy()[3:6], m.expert_coef_[0])


def test_covariance_is_computed_when_read_not_at_fit_and_pickles_hold_no_data():
    X, y, _ = make_moe_regression(500, 2, 2, noise=0.3, random_state=0)
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    assert "_covariance" not in vars(m)
    cov = m.covariance_
    assert "_covariance" in vars(m) and m.covariance_ is cov
    fresh = pickle.loads(pickle.dumps(MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)))
    assert "_train_data" not in vars(fresh)
    with pytest.raises(AttributeError, match=r"summary\(X, y\)"):
        fresh.covariance_
    np.testing.assert_allclose(fresh.summary_frame(X, y)["std_err"],
                               np.sqrt(np.diag(cov)), rtol=1e-10)
    kept = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(kept.covariance_, cov)
