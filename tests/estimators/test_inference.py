"""Standard errors against a finite-difference Hessian; predictive intervals; summary()."""

from __future__ import annotations

import numpy as np
import pytest

from moekit.estimators import (
    HierarchicalMixtureOfExpertsRegressor,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
    make_moe_regression,
)
from moekit.estimators._base import add_intercept
from moekit.estimators._inference import (
    gradient,
    observed_information,
    pack,
    penalised_loglik,
)


def _models():
    X, y, _ = make_moe_regression(400, 2, 2, noise=0.5, random_state=2, gate_strength=2.0)
    rng = np.random.default_rng(0)
    counts = rng.poisson(np.exp(np.where(X[:, 0] > 0, 1.0 + 0.3 * X[:, 1], 0.5)))
    labels = (X[:, 0] * X[:, 1] + 0.5 * rng.normal(size=400) > 0).astype(int)
    X4, y4, _ = make_moe_regression(500, 2, 4, noise=0.5, random_state=4, gate_strength=2.0)
    kw = dict(gate_alpha=0.1, random_state=0)
    return [
        (MixtureOfExpertsRegressor(2, **kw), X, y),
        (MixtureOfExpertsRegressor(2, expert="poisson", **kw), X, counts),
        (MixtureOfExpertsRegressor(2, expert="student_t", **kw), X, y),
        (MixtureOfExpertsClassifier(2, expert_alpha=0.1, gate_alpha=0.1, random_state=0),
         X, labels),
        (HierarchicalMixtureOfExpertsRegressor((2, 2), gate_alpha=0.1, random_state=0), X4, y4),
    ]


def _fd_hessian(f, theta, h=1e-4):
    P = len(theta)
    H = np.empty((P, P))
    E = np.eye(P) * h
    for i in range(P):
        for j in range(i, P):
            H[i, j] = H[j, i] = (f(theta + E[i] + E[j]) - f(theta + E[i] - E[j])
                                 - f(theta - E[i] + E[j]) + f(theta - E[i] - E[j])) / (4 * h * h)
    return H


@pytest.mark.parametrize("case", range(5))
def test_standard_errors_match_finite_difference_hessian(case):
    est, X, y = _models()[case]
    est.fit(X, y)
    X1 = add_intercept(np.asarray(X, float))
    yy = est._prepare_y(y, reset=False)
    sw = np.ones(len(yy))
    state = est._get_state()
    theta = pack(est, state)

    def f(t):
        return penalised_loglik(est, X1, yy, sw, t, state)

    # the analytic gradient is the derivative of the log-likelihood ...
    t0 = theta + 0.01 * np.random.default_rng(0).normal(size=len(theta))
    fd_grad = np.array([(f(t0 + e) - f(t0 - e)) / 2e-5 for e in np.eye(len(theta)) * 1e-5])
    np.testing.assert_allclose(gradient(est, X1, yy, sw, t0, state), fd_grad,
                               rtol=1e-5, atol=1e-4)
    # ... and the observed information is minus its Hessian
    _, info = observed_information(est, X, y)
    H = _fd_hessian(f, theta)
    np.testing.assert_allclose(info, -H, rtol=2e-3, atol=2e-3 * np.abs(H).max())
    se_fd = np.sqrt(np.diag(np.linalg.inv(-H)))
    np.testing.assert_allclose(np.sqrt(np.diag(est.covariance_)), se_fd, rtol=1e-2)


def test_summary_table_lists_every_coefficient():
    X, y, _ = make_moe_regression(500, 2, 2, noise=0.3, random_state=0)
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    text = m.summary()
    assert "std err" in text and "P>|z|" in text
    assert text.count("expert 1:") == 4 and "gate child 1: x1" in text
    assert m.summary(X, y) == text
    named = m.summary(feature_names=["age", "dose"])
    assert "expert 0: dose" in named


def test_predict_interval_coverage():
    X, y, _ = make_moe_regression(8000, 2, 2, noise=0.5, random_state=5, gate_strength=2.0)
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X[:3000], y[:3000])
    lo, hi = m.predict_interval(X[3000:], alpha=0.1)
    coverage = np.mean((y[3000:] >= lo) & (y[3000:] <= hi))
    assert 0.88 <= coverage <= 0.92, coverage
    w, mu, s = m.predict_distribution(X[3000:])
    assert w.shape == mu.shape == s.shape == (5000, 2)
    np.testing.assert_allclose(m.predict(X[3000:3005]), np.sum(w[:5] * mu[:5], axis=1))


@pytest.mark.parametrize("expert", ["student_t", "poisson"])
def test_predict_interval_other_experts(expert):
    X, y, _ = make_moe_regression(3000, 2, 2, noise=0.5, random_state=6)
    if expert == "poisson":
        y = np.random.default_rng(0).poisson(np.exp(0.5 + 0.5 * np.tanh(X[:, 0])))
    m = MixtureOfExpertsRegressor(2, expert=expert, random_state=0).fit(X[:2000], y[:2000])
    lo, hi = m.predict_interval(X[2000:], alpha=0.2)
    coverage = np.mean((y[2000:] >= lo) & (y[2000:] <= hi))
    assert 0.75 <= coverage <= 0.95, coverage
