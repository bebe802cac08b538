"""The density baselines of the statistical showcases, against references and known truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from moekit.showcases._reading import coefficient_rows, model_coefficients
from moekit.showcases._stats import (
    GaussianLinear,
    HeteroscedasticLinear,
    StratifiedLinear,
    gaussian_logpdf,
    gbm_gaussian,
)


def test_gaussian_logpdf_matches_scipy():
    rng = np.random.default_rng(0)
    y, mu, sd = rng.normal(size=50), rng.normal(size=50), rng.uniform(0.1, 3, 50)
    np.testing.assert_allclose(gaussian_logpdf(y, mu, sd), stats.norm.logpdf(y, mu, sd))


def test_heteroscedastic_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    X1 = np.column_stack([np.ones(40), rng.normal(size=(40, 2))])
    y = rng.normal(size=40)
    theta = rng.normal(scale=0.3, size=6)

    def nll(t):
        return HeteroscedasticLinear.negative_log_likelihood(t, X1, y)[0]

    grad = HeteroscedasticLinear.negative_log_likelihood(theta, X1, y)[1]
    np.testing.assert_allclose(grad, optimize.approx_fprime(theta, nll, 1e-6), rtol=1e-4,
                               atol=1e-4)


def test_heteroscedastic_linear_recovers_known_parameters():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20000, 2))
    b, g = np.array([0.5, 1.0, -2.0]), np.array([-0.3, 0.6, 0.0])
    X1 = np.column_stack([np.ones(len(X)), X])
    y = X1 @ b + np.exp(X1 @ g) * rng.standard_normal(len(X))
    model = HeteroscedasticLinear().fit(X, y)
    np.testing.assert_allclose(model.coef_, b, atol=0.03)
    np.testing.assert_allclose(model.log_sd_coef_, g, atol=0.03)
    # the ML fit is at least as likely as the truth on its own data
    truth = stats.norm.logpdf(y, X1 @ b, np.exp(X1 @ g)).sum()
    assert model.log_likelihood_samples(X, y).sum() >= truth - 1e-6
    # and better than a constant-variance fit held out
    X2 = rng.normal(size=(5000, 2))
    X21 = np.column_stack([np.ones(len(X2)), X2])
    y2 = X21 @ b + np.exp(X21 @ g) * rng.standard_normal(len(X2))
    lin = GaussianLinear().fit(X, y)
    assert model.log_likelihood_samples(X2, y2).mean() > lin.log_likelihood_samples(X2,
                                                                                     y2).mean()


def test_gaussian_linear_is_least_squares_with_the_ml_scale():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(100, 3)), rng.normal(size=100)
    model = GaussianLinear().fit(X, y)
    from sklearn.linear_model import LinearRegression

    ref = LinearRegression().fit(X, y)
    np.testing.assert_allclose(model.predict(X), ref.predict(X))
    assert model.sd_ == pytest.approx(np.sqrt(np.mean((y - ref.predict(X)) ** 2)))
    assert model.n_parameters == 5


def test_stratified_linear_is_one_fit_per_group():
    rng = np.random.default_rng(4)
    X = np.column_stack([rng.normal(size=300), rng.integers(0, 2, 300)])
    groups = X[:, 1].astype(int)
    y = np.where(groups == 1, 3 + 2 * X[:, 0], -1 - X[:, 0]) + rng.normal(size=300) * np.where(
        groups == 1, 0.2, 1.0)
    model = StratifiedLinear(drop_columns=(1,)).fit(X, y, groups)
    ll = model.log_likelihood_samples(X, y, groups)
    for g in (0, 1):
        rows = groups == g
        ref = GaussianLinear().fit(X[rows][:, :1], y[rows])
        np.testing.assert_allclose(ll[rows], ref.log_likelihood_samples(X[rows][:, :1], y[rows]))
    assert model.n_parameters == 6
    with pytest.raises(ValueError, match=r"groups \[2\] were not in the training rows"):
        model.log_likelihood_samples(X[:3], y[:3], np.array([0, 1, 2]))


def test_gbm_noise_scale_is_out_of_fold():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 3))
    y = X[:, 0] + rng.normal(size=400)
    model, sd, n_params = gbm_gaussian(X, y, seed=0, n_estimators=50)
    in_sample = np.sqrt(np.mean((y - model.predict(X)) ** 2))
    assert sd > in_sample  # training residuals understate the error on new rows
    assert 0.8 < sd < 1.3 and n_params > 50


def test_coefficient_rows_read_an_estimators_summary():
    from moekit.estimators import MixtureOfExpertsRegressor, make_moe_regression

    X, y, _ = make_moe_regression(n_samples=300, n_features=2, n_experts=2, random_state=0)
    model = MixtureOfExpertsRegressor(n_experts=2, n_init=1, random_state=0).fit(X, y)
    rows = coefficient_rows(model.summary(X, y, feature_names=["a", "b"]))
    blocks = {r["block"] for r in rows}
    assert {"expert 0", "expert 1"} <= blocks and any(b.startswith("gate") for b in blocks)
    expert1 = {r["term"]: r for r in rows if r["block"] == "expert 1"}
    assert expert1["a"]["coef"] == pytest.approx(model.expert_coef_[1, 1], abs=1e-4)
    assert expert1["b"]["std_err"] > 0
    with pytest.raises(ValueError, match="layout changed"):
        coefficient_rows("no table here")


def test_unfitted_models_say_so():
    with pytest.raises(RuntimeError, match="HeteroscedasticLinear is not fitted yet"):
        HeteroscedasticLinear().predict(np.zeros((2, 1)))
    with pytest.raises(RuntimeError, match="StratifiedLinear is not fitted yet"):
        StratifiedLinear().n_parameters


def test_coefficient_rows_tolerate_a_trailing_note():
    text = ("parameter   coef   std err   z   P>|z|\n"
            "expert 0: age     0.5000     0.1000     5.00    0.000  penalty-dominated\n"
            "gate child 1: intercept  -1.0  nan  nan  nan")
    rows = coefficient_rows(text)
    assert rows[0] == {"block": "expert 0", "term": "age", "coef": 0.5, "std_err": 0.1,
                       "z": 5.0, "p_value": 0.0}
    assert rows[1]["std_err"] is None and rows[1]["block"] == "gate child 1"


def test_model_coefficients_prefer_a_summary_frame():
    pd = pytest.importorskip("pandas")

    class WithFrame:
        def summary(self, X, y, feature_names):
            return "a text table"

        def summary_frame(self, X, y, feature_names):
            index = pd.MultiIndex.from_tuples([("expert 0", "intercept"), ("expert 0", "x")])
            return pd.DataFrame({"coef": [1.0, 2.0], "std_err": [0.1, float("nan")],
                                 "z": [10.0, float("nan")], "p_value": [0.0, float("nan")],
                                 "note": ["", "aliased"]}, index=index)

    rows, text = model_coefficients(WithFrame(), None, None, ["x"])
    assert text == "a text table"
    assert [(r["block"], r["term"], r["coef"], r["std_err"]) for r in rows] == [
        ("expert 0", "intercept", 1.0, 0.1), ("expert 0", "x", 2.0, None)]
