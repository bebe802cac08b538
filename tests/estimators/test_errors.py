"""Bad input gives ValueError/TypeError that names the parameter, the value and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from moekit.estimators import (
    HierarchicalMixtureOfExpertsRegressor,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
    make_moe_regression,
    select_n_experts,
)

X, y, _ = make_moe_regression(60, 2, 2, random_state=0)


@pytest.mark.parametrize(
    ("params", "exc", "message"),
    [
        ({"n_experts": 0}, ValueError, r"n_experts=0 must be >= 1; use at least one expert"),
        ({"n_experts": 2.5}, TypeError, r"n_experts=2.5 must be an int"),
        ({"gate_alpha": -1.0}, ValueError, r"gate_alpha=-1.0 must be >= 0"),
        ({"expert_alpha": "big"}, TypeError, r"expert_alpha='big' must be a real number"),
        ({"n_init": 0}, ValueError, r"n_init=0 must be >= 1"),
        ({"max_iter": 0}, ValueError, r"max_iter=0 must be >= 1"),
        ({"tol": -1e-3}, ValueError, r"tol=-0.001 must be >= 0"),
        ({"gate_alpha": float("nan")}, ValueError, r"gate_alpha=nan must be finite"),
        ({"init": "pca"}, ValueError, r"init='pca' is not supported; use one of \['auto', 'kmeans'"),
        ({"expert": "ridge"}, ValueError,
         r"expert='ridge' is not supported; use one of \['linear', 'poisson', 'student_t'\]"),
        ({"expert": 3}, TypeError, r"expert=3 is neither a name nor an estimator"),
    ],
)
def test_bad_parameters(params, exc, message):
    with pytest.raises(exc, match=message):
        MixtureOfExpertsRegressor(**params).fit(X, y)


def test_nan_in_X():
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        MixtureOfExpertsRegressor(2).fit(Xn, y)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, -0.1])
def test_bad_interval_alpha(alpha):
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match=rf"alpha={alpha} must be [<>] [01]; use 0 < alpha < 1"):
        m.predict_interval(X, alpha=alpha)


def test_more_experts_than_rows():
    with pytest.raises(ValueError, match=r"n_samples=4 is smaller than n_experts=5; use fewer"):
        MixtureOfExpertsRegressor(5).fit(X[:4], y[:4])


def test_sample_weight_shape():
    with pytest.raises(ValueError, match=r"sample_weight.shape=\(3,\) does not match X"):
        MixtureOfExpertsRegressor(2).fit(X, y, sample_weight=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="sample_weight must be finite and >= 0"):
        MixtureOfExpertsRegressor(2).fit(X, y, sample_weight=-np.ones(len(y)))


def test_poisson_needs_counts():
    with pytest.raises(ValueError, match=r"expert='poisson' needs y >= 0"):
        MixtureOfExpertsRegressor(2, expert="poisson").fit(X, y - 100)


def test_classifier_errors():
    with pytest.raises(ValueError, match=r"y has 1 class"):
        MixtureOfExpertsClassifier(2).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match=r"expert='linear' is not supported by the classifier"):
        MixtureOfExpertsClassifier(2, expert="linear").fit(X, (y > 0).astype(int))
    clf = MixtureOfExpertsClassifier(2, random_state=0).fit(X, (y > 0).astype(int))
    with pytest.raises(ValueError, match=r"y contains labels \[7\] not seen in fit"):
        clf.responsibilities(X[:2], [0, 7])


def test_hierarchical_branching():
    with pytest.raises(ValueError, match=r"branching=\(2, 1\): every level of a tree needs >= 2"):
        HierarchicalMixtureOfExpertsRegressor(branching=(2, 1)).fit(X, y)
    with pytest.raises(TypeError, match=r"branching=4 must be a non-empty tuple"):
        HierarchicalMixtureOfExpertsRegressor(branching=4).fit(X, y)


def test_selection_criterion():
    with pytest.raises(ValueError, match=r"criterion='r2' is not supported; use one of"):
        select_n_experts(X, y, [1, 2], criterion="r2")


def test_selection_in_scikit_learn_argument_order_is_a_clear_type_error():
    """S3-16: select_n_experts(est, X, y) used to die in float()."""
    with pytest.raises(TypeError, match=r"got an estimator \(MixtureOfExpertsRegressor\) as X: "
                                        r"the data come first .* select_n_experts\(X, y, "
                                        r"estimator=est\)"):
        select_n_experts(MixtureOfExpertsRegressor(), X, y)
    with pytest.raises(TypeError, match=r"estimator=3 is not an estimator"):
        select_n_experts(X, y, estimator=3)


@pytest.mark.parametrize(("kwargs", "exc", "message"), [
    ({"se": "bootstrap"}, ValueError, r"se='bootstrap' is not supported; use one of \['auto'"),
    ({"level": 1.5}, ValueError, r"level=1.5 must be < 1"),
    ({"feature_names": ["a"]}, ValueError, r"feature_names has 1 names but the model has 2 "
                                           r"features"),
])
def test_summary_frame_arguments(kwargs, exc, message):
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, y)
    with pytest.raises(exc, match=message):
        m.summary_frame(**kwargs)


def test_standardize_must_be_a_bool():
    with pytest.raises(TypeError, match=r"standardize='yes' must be True or False"):
        MixtureOfExpertsRegressor(2, standardize="yes").fit(X, y)


def test_sklearn_experts_have_no_standard_errors():
    from sklearn.tree import DecisionTreeRegressor

    m = MixtureOfExpertsRegressor(2, expert=DecisionTreeRegressor(max_depth=2), random_state=0,
                                  n_init=1).fit(X, y)
    with pytest.raises(ValueError, match=r"standard errors are not defined for "
                                         r"expert=<scikit-learn estimator>"):
        m.summary()


def test_partial_fit_only_for_linear_experts():
    assert not hasattr(MixtureOfExpertsRegressor(expert="poisson"), "partial_fit")
    assert hasattr(MixtureOfExpertsRegressor(), "partial_fit")
