"""The units of X never change the answer: penalties act on standardised columns.

The fits here start from one k-means start and use a tight ``tol``, so that both runs climb to
the same maximum (with several restarts, two of them can end within 1e-5 nats of each other
at different maxima, and which one wins is then down to rounding; at the default tolerance
two runs stop within ``tol`` of the maximum, not at the same point).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

from moekit.estimators import (
    HierarchicalMixtureOfExpertsRegressor,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
)


def _rescaled(X, column, factor, shift=0.0):
    Xs = X.copy()
    Xs[:, column] = Xs[:, column] * factor + shift
    return Xs


@pytest.mark.parametrize("make", [
    lambda: MixtureOfExpertsRegressor(3, n_init=1, init="kmeans", tol=1e-11, random_state=0),
    lambda: MixtureOfExpertsRegressor(2, expert="student_t", n_init=1, init="kmeans", tol=1e-11,
                                      random_state=0),
    lambda: HierarchicalMixtureOfExpertsRegressor((2, 2), n_init=1, init="kmeans", tol=1e-11,
                                                  random_state=0),
], ids=["linear", "student_t", "hierarchical"])
def test_rescaling_a_column_leaves_held_out_predictions_unchanged(make):
    """The audit's case: diabetes' s5 times 1000 moved held-out predictions by up to 4.6."""
    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0)
    base = make().fit(Xtr, ytr)
    for column, factor, shift in [(8, 1000.0, 0.0), (2, 1e-3, 50.0)]:
        other = make().fit(_rescaled(Xtr, column, factor, shift), ytr)
        np.testing.assert_allclose(other.predict(_rescaled(Xte, column, factor, shift)),
                                   base.predict(Xte), rtol=0, atol=1e-4 * np.std(y))
        assert other.log_likelihood(_rescaled(Xtr, column, factor, shift), ytr) == pytest.approx(
            base.log_likelihood(Xtr, ytr), rel=1e-9)


def test_rescaling_leaves_classifier_probabilities_unchanged():
    X, y = load_breast_cancer(return_X_y=True)
    X = X[:, :10]  # with all 30 columns the maximum is too flat to reach to 1e-11 in a test
    kw = dict(random_state=0, n_init=1, init="kmeans", tol=1e-11, max_iter=3000)
    base = MixtureOfExpertsClassifier(2, **kw).fit(X, y)
    Xs = _rescaled(X, 0, 1000.0)
    other = MixtureOfExpertsClassifier(2, **kw).fit(Xs, y)
    np.testing.assert_allclose(other.predict_proba(Xs), base.predict_proba(X), atol=1e-5)


def test_coefficients_transform_with_the_units_and_standardize_reports_per_sd():
    X, y = load_diabetes(return_X_y=True)
    kw = dict(random_state=0, n_init=1, init="kmeans", tol=1e-11)
    raw = MixtureOfExpertsRegressor(2, **kw).fit(X, y)
    scaled = MixtureOfExpertsRegressor(2, **kw).fit(_rescaled(X, 3, 10.0), y)
    np.testing.assert_allclose(scaled.expert_coef_[:, 4], raw.expert_coef_[:, 4] / 10.0,
                               rtol=1e-6)
    np.testing.assert_allclose(scaled.gate_coef_[:, 4], raw.gate_coef_[:, 4] / 10.0, rtol=1e-6,
                               atol=1e-12)
    std = MixtureOfExpertsRegressor(2, standardize=True, **kw).fit(X, y)
    np.testing.assert_allclose(std.predict(X), raw.predict(X), rtol=1e-10)
    np.testing.assert_allclose(std.expert_coef_[:, 1:], raw.expert_coef_[:, 1:] * X.std(0),
                               rtol=1e-8)
    # the standardised coefficients do not depend on the units at all
    std10 = MixtureOfExpertsRegressor(2, standardize=True, **kw).fit(
        _rescaled(X, 3, 10.0, 7.0), y)
    np.testing.assert_allclose(std10.expert_coef_, std.expert_coef_, rtol=1e-6, atol=1e-9)
