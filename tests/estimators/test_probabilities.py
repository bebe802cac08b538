"""Probabilities are probabilities on every path: in [0, 1], rows summing to 1, logs <= 0."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import log_loss

from moekit.estimators import (
    HierarchicalMixtureOfExpertsRegressor,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
    make_moe_regression,
)


def _check(P, log_P=None):
    assert np.all(P >= 0.0) and np.all(P <= 1.0)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=4e-16 * P.shape[1])
    if log_P is not None:
        assert np.all(log_P <= 0.0)
        np.testing.assert_allclose(np.exp(log_P), P, atol=1e-15)


def test_classifier_probabilities_on_breast_cancer_are_scored_by_sklearn():
    """S1-2: predict_proba returned 1.000000000000001 and log_loss refused it."""
    X, y = load_breast_cancer(return_X_y=True)
    clf = MixtureOfExpertsClassifier(2, random_state=0, n_init=2).fit(X, y)
    P = clf.predict_proba(X)
    _check(P, clf.predict_log_proba(X))
    assert log_loss(y, P) < 0.2
    _check(clf.gate_proba(X))
    _check(clf.responsibilities(X, y))
    assert clf.gate_coef_.shape == (2, X.shape[1] + 1)


@pytest.mark.parametrize("seed", range(3))
def test_probabilities_at_the_extremes(seed):
    """Nearly separable classes and saturated gates: probabilities at 0 and 1 stay in range."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 3)) * 20
    y = np.select([X[:, 0] > 5, X[:, 0] < -5], [2, 1], 0)
    clf = MixtureOfExpertsClassifier(3, random_state=seed, gate_alpha=0.0,
                                     expert_alpha=1e-6, n_init=2).fit(X, y)
    far = X * 50
    _check(clf.predict_proba(far), clf.predict_log_proba(far))
    _check(clf.gate_proba(far))
    assert set(np.unique(clf.predict(far))) <= set(clf.classes_)


def test_regressor_weights_and_posteriors_are_probabilities():
    X, y, _ = make_moe_regression(500, 2, 3, random_state=0)
    for m in (MixtureOfExpertsRegressor(3, random_state=0).fit(X, y),
              HierarchicalMixtureOfExpertsRegressor((2, 2), random_state=0, n_init=2).fit(X, y)):
        _check(m.gate_proba(X * 100))
        _check(m.predict_distribution(X * 100).weights)
        _check(m.responsibilities(X, y))
