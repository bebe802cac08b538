"""Predictive intervals: model-based (exact under the model) and conformal (held-out coverage)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from moekit.estimators import MixtureOfExpertsRegressor, make_moe_regression


def test_model_interval_covers_nominal_when_the_model_is_right():
    X, y, _ = make_moe_regression(8000, 2, 2, noise=0.5, random_state=5, gate_strength=2.0)
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X[:3000], y[:3000])
    lo, hi = m.predict_interval(X[3000:], alpha=0.1)
    coverage = np.mean((y[3000:] >= lo) & (y[3000:] <= hi))
    assert 0.88 <= coverage <= 0.92, coverage
    w, mu, s = m.predict_distribution(X[3000:])
    assert w.shape == mu.shape == s.shape == (5000, 2)
    np.testing.assert_allclose(m.predict(X[3000:3005]), np.sum(w[:5] * mu[:5], axis=1))


@pytest.mark.parametrize("expert", ["student_t", "poisson"])
def test_interval_other_experts(expert):
    X, y, _ = make_moe_regression(3000, 2, 2, noise=0.5, random_state=6)
    if expert == "poisson":
        y = np.random.default_rng(0).poisson(np.exp(0.5 + 0.5 * np.tanh(X[:, 0])))
    m = MixtureOfExpertsRegressor(2, expert=expert, random_state=0).fit(X[:2000], y[:2000])
    lo, hi = m.predict_interval(X[2000:], alpha=0.2)
    coverage = np.mean((y[2000:] >= lo) & (y[2000:] <= hi))
    assert 0.75 <= coverage <= 0.95, coverage
    if expert == "poisson":
        assert np.all(lo == np.round(lo)) and not np.any(np.signbit(lo))  # no -0.0
        m.calibrate_intervals(X[2000:2500], y[2000:2500])
        lo, hi = m.predict_interval(X[2500:], alpha=0.2, method="conformal")
        assert np.all(lo == np.round(lo)) and np.all(hi >= lo)
        assert np.mean((y[2500:] >= lo) & (y[2500:] <= hi)) >= 0.75


def _diabetes_coverage(K, method, reps, alpha=0.1):
    """Mean held-out coverage over random splits of the bundled diabetes table."""
    X, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(K)
    hits = []
    for rep in range(reps):
        perm = rng.permutation(len(y))
        test, train = perm[:110], perm[110:]
        if method == "split":
            fit, cal = train[:220], train[220:]
            m = MixtureOfExpertsRegressor(K, random_state=rep, n_init=2).fit(X[fit], y[fit])
            m.calibrate_intervals(X[cal], y[cal])
        else:
            m = MixtureOfExpertsRegressor(K, random_state=rep, n_init=2).fit(X[train], y[train])
            if method == "cv":
                m.calibrate_intervals(X[train], y[train], cv=5)
        lo, hi = m.predict_interval(X[test], alpha, method="model" if method == "model"
                                    else "conformal")
        hits.append((y[test] >= lo) & (y[test] <= hi))
    return float(np.mean(hits))


@pytest.mark.parametrize("K", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_conformal_intervals_cover_nominal_on_held_out_diabetes(K):
    """Model-based 90% intervals under-cover held-out patients as K grows (S2-13: 0.80 at
    K = 4); both conformal calibrations come within 2 points of 90%."""
    split = _diabetes_coverage(K, "split", reps=12)
    cv = _diabetes_coverage(K, "cv", reps=12)
    assert abs(split - 0.9) <= 0.02, split
    assert abs(cv - 0.9) <= 0.02, cv
    if K == 4:
        assert _diabetes_coverage(K, "model", reps=6) < 0.86


def test_split_conformal_is_exact_under_exchangeability():
    """Heavy-tailed noise fitted by a Gaussian expert: the model interval is wrong, the
    calibrated one is not (mean coverage over many calibration sets in [1-a, 1-a+1/(m+1)])."""
    rng = np.random.default_rng(0)
    covs = []
    for _ in range(20):
        X = rng.normal(size=(2700, 3))
        y = X @ [1.0, 2.0, 3.0] + rng.standard_t(2.5, size=2700)
        m = MixtureOfExpertsRegressor(1).fit(X[:200], y[:200])
        m.calibrate_intervals(X[200:700], y[200:700])
        lo, hi = m.predict_interval(X[700:], 0.1, method="conformal")
        covs.append(np.mean((y[700:] >= lo) & (y[700:] <= hi)))
    assert 0.89 <= np.mean(covs) <= 0.905, np.mean(covs)


def test_conformal_needs_calibration_and_a_known_method():
    X, y, _ = make_moe_regression(200, 2, 2, random_state=0)
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match=r"method='conformal' needs calibration first: call "
                                         r"calibrate_intervals"):
        m.predict_interval(X, method="conformal")
    with pytest.raises(ValueError, match=r"method='bootstrap' is not supported; use one of "
                                         r"\['model', 'conformal'\]"):
        m.predict_interval(X, method="bootstrap")
    with pytest.raises(ValueError, match=r"cv=1 must be >= 2"):
        m.calibrate_intervals(X, y, cv=1)
