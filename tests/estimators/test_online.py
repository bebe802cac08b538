"""Online (stepwise) EM reaches close to the batch likelihood."""

from __future__ import annotations

import numpy as np

from moekit.estimators import MixtureOfExpertsRegressor, make_moe_regression


def test_partial_fit_close_to_batch():
    X, y, _ = make_moe_regression(20000, 3, 3, noise=0.3, random_state=0)
    batch = MixtureOfExpertsRegressor(3, n_init=2, random_state=0).fit(X, y)
    online = MixtureOfExpertsRegressor(3, n_init=2, random_state=0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(len(y))
        for chunk in np.array_split(order, 20):
            online.partial_fit(X[chunk], y[chunk])
    ll_batch = batch.log_likelihood(X, y) / len(y)
    ll_online = online.log_likelihood(X, y) / len(y)
    assert ll_online >= ll_batch - 0.02, (ll_online, ll_batch)
    assert online.n_batches_ == 60 and online.n_samples_seen_ == 3 * len(y)
    assert online.suff_xx_.shape == (3, 4, 4)


def test_partial_fit_rejects_wrong_feature_count():
    X, y, _ = make_moe_regression(500, 3, 2, random_state=0)
    m = MixtureOfExpertsRegressor(2, random_state=0).partial_fit(X, y)
    import pytest

    with pytest.raises(ValueError, match="features"):
        m.partial_fit(X[:, :2], y)
