"""MixtureOfExpertsRegressor: Gaussian, Student-t, Poisson or scikit-learn experts; softmax gate."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import RegressorMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ._base import BaseMixtureOfExperts, _check_number, add_intercept
from ._experts import GaussianFamily, PoissonFamily, SklearnFamily, StudentTFamily
from ._gate import tree_log_proba

_EXPERTS = ("linear", "poisson", "student_t")


class PredictiveDistribution(NamedTuple):
    """Per-row mixture: p(y|x) = sum_k weights[:, k] * p_k(y | means[:, k], scales[:, k]).

    Attributes
    ----------
    weights : ndarray of shape (n_samples, n_experts_)
        Gate probabilities (rows sum to 1).
    means : ndarray of shape (n_samples, n_experts_)
        Expert means E[y | x, expert].
    scales : ndarray of shape (n_samples, n_experts_)
        Expert standard deviations sd[y | x, expert] (sqrt(mean) for Poisson experts).
    """

    weights: np.ndarray
    means: np.ndarray
    scales: np.ndarray


class MixtureOfExpertsRegressor(RegressorMixin, BaseMixtureOfExperts):
    """Mixture of experts regression fitted by EM (Jacobs, Jordan, Nowlan & Hinton 1991).

    ``p(y | x) = sum_k g_k(x) p_k(y | x)`` with a multinomial-logit gate ``g`` and expert
    densities ``p_k``.

    Parameters
    ----------
    n_experts : int, default=3
        Number of experts K.
    expert : {"linear", "poisson", "student_t"} or regressor, default="linear"
        Gaussian linear experts each with its own variance, Poisson GLM (log link; counts),
        Student-t linear (robust, fitted by ECM), or any scikit-learn regressor whose ``fit``
        accepts ``sample_weight`` (generalised EM with Gaussian noise per expert).
    gate_alpha : float, default=1.0
        L2 penalty on the gate's non-intercept coefficients (on the summed log-likelihood).
    expert_alpha : float, default=0.0
        L2 penalty on each expert's non-intercept coefficients.
    n_init : int, default=3
        Number of EM runs from different initialisations; the best likelihood is kept. Above
        200,000 rows the restarts run on a 50,000-row subsample and only the best continues
        on all rows.
    init : {"auto", "kmeans", "kmeans_xy", "random"}, default="auto"
        Initial responsibilities: k-means on standardised X, on (X, y), or Dirichlet noise;
        ``"auto"`` cycles through the three across restarts (EM has local maxima, and each
        strategy finds different ones).
    max_iter : int, default=200
        Maximum EM iterations per run.
    tol : float, default=1e-6
        Stop when the penalised log-likelihood per unit sample weight changes by less.
    warm_start : bool, default=False
        Start from the previous fit's parameters (one run) instead of initialising.
    random_state : int, RandomState or None, default=None
    verbose : int, default=0
        1 prints one line per run, 2 one per iteration.

    Attributes
    ----------
    gate_coefs_ : list of ndarray
        One array of shape (1, n_experts_, n_features_in_ + 1) for this flat gate; column 0 the
        intercept, row 0 the reference expert (zeros). ``gate_coef_`` is its (K, p + 1) view.
    expert_coef_ : ndarray of shape (n_experts_, n_features_in_ + 1)
        Expert coefficients, column 0 the intercept (not for sklearn experts).
    expert_scale_ : ndarray of shape (n_experts_,)
        Noise standard deviation (t scale for Student-t); absent for Poisson.
    expert_df_ : ndarray of shape (n_experts_,)
        Degrees of freedom (Student-t only).
    experts_ : list of fitted regressors
        Only when ``expert`` is an estimator.
    n_experts_ : int
        Experts left after removing collapsed ones.
    loglik_history_ : list of float
        Penalised log-likelihood at each EM iteration of the kept run (never decreasing for
        exact M-steps). ``lower_bound_`` is its last value.
    n_iter_ : int
    converged_ : bool
    n_reseeded_ : int
        Collapsed experts re-seeded on the worst-fitted rows.
    removed_experts_ : list of int
        Original indices of experts removed after repeated collapse.
    n_parameters_ : int
        Free parameters (for BIC/AIC); for sklearn experts counts gate and scales only.
    scale_floor_ : float
        Lower bound on expert scales (1e-4 of the weighted sd of y); hitting it is a collapse.
    covariance_ : ndarray of shape (n_free, n_free)
        Inverse observed information of the free parameters (see ``summary``); shape (0, 0)
        when not computed at fit time (n_samples * n_parameters_ > 5e6, or sklearn experts).
    suff_h_, suff_xx_, suff_xy_, suff_yy_, n_samples_seen_, n_batches_
        Running sufficient statistics of online EM (only after ``partial_fit``).

    Notes
    -----
    Above 200,000 rows the restarts run EM on a random 50,000-row subsample and the best of
    them continues on all rows; the gate's Newton step then uses the exact Hessian on an evenly
    strided subset of rows, with the gradient and step-halving on every row, so the penalised
    log-likelihood still never decreases. Memory stays O(n_samples * n_experts).

    Examples
    --------
    >>> from moekit.estimators import MixtureOfExpertsRegressor, make_moe_regression
    >>> X, y, truth = make_moe_regression(n_samples=600, n_features=2, n_experts=2,
    ...                                   noise=0.1, random_state=0)
    >>> m = MixtureOfExpertsRegressor(n_experts=2, random_state=0).fit(X, y)
    >>> m.predict(X[:3]).shape
    (3,)
    >>> lo, hi = m.predict_interval(X[:3], alpha=0.1)
    >>> bool((lo <= hi).all())
    True
    """

    def __init__(
        self,
        n_experts: int = 3,
        *,
        expert: Any = "linear",
        gate_alpha: float = 1.0,
        expert_alpha: float = 0.0,
        n_init: int = 3,
        init: str = "auto",
        max_iter: int = 200,
        tol: float = 1e-6,
        warm_start: bool = False,
        random_state: Any = None,
        verbose: int = 0,
    ) -> None:
        self.n_experts = n_experts
        self.expert = expert
        self.gate_alpha = gate_alpha
        self.expert_alpha = expert_alpha
        self.n_init = n_init
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if isinstance(self.expert, str) and self.expert == "poisson":
            tags.target_tags.positive_only = True
        return tags

    def _validate_extra(self) -> None:
        if isinstance(self.expert, str):
            if self.expert not in _EXPERTS:
                raise ValueError(
                    f"expert={self.expert!r} is not supported; use one of {list(_EXPERTS)} "
                    "or a scikit-learn regressor whose fit accepts sample_weight")
        elif not (hasattr(self.expert, "fit") and hasattr(self.expert, "predict")):
            raise TypeError(
                f"expert={self.expert!r} is neither a name nor an estimator; use one of "
                f"{list(_EXPERTS)} or a scikit-learn regressor with fit(X, y, sample_weight)")

    def _make_family(self):
        floor = getattr(self, "scale_floor_", 0.0)
        if not isinstance(self.expert, str):
            return SklearnFamily(self.expert, floor)
        if self.expert == "poisson":
            return PoissonFamily(float(self.expert_alpha))
        if self.expert == "student_t":
            return StudentTFamily(float(self.expert_alpha), floor)
        return GaussianFamily(float(self.expert_alpha), floor)

    def _prepare_y(self, y, reset: bool):
        y = np.asarray(y, dtype=float).ravel()
        if isinstance(self.expert, str) and self.expert == "poisson" and np.any(y < 0):
            raise ValueError("expert='poisson' needs y >= 0 (counts); got negative values. "
                             "Use expert='linear' or shift the target")
        return y

    def _scale_floor(self, y, sw) -> float:
        mean = np.average(y, weights=sw)
        sd = float(np.sqrt(np.average((y - mean) ** 2, weights=sw)))
        return max(1e-4 * sd, 1e-10 * (1.0 + abs(float(mean))))

    def _count_parameters(self) -> int:
        if not isinstance(self.expert, str):
            d = self.n_features_in_ + 1
            return (self.n_experts_ - 1) * d + self.n_experts_
        return super()._count_parameters()

    @property
    def gate_coef_(self) -> np.ndarray:
        """Flat gate coefficients, shape (n_experts_, n_features_in_ + 1), row 0 zeros."""
        check_is_fitted(self)
        return self.gate_coefs_[0][0]

    # ------------------------------------------------------------------------ predicting
    def predict_distribution(self, X: ArrayLike) -> PredictiveDistribution:
        """Mixture weights, means and scales of p(y | x) for every row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        PredictiveDistribution
            NamedTuple ``(weights, means, scales)``, each of shape (n_samples, n_experts_).
        """
        check_is_fitted(self)
        X1 = add_intercept(self._validate_X(X, reset=False))
        weights = np.exp(tree_log_proba(X1, self.gate_coefs_))
        means, scales = self._make_family().mean_scale(X1, self._get_state())
        return PredictiveDistribution(weights, means, scales)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Mixture mean E[y | x] = sum_k g_k(x) mean_k(x), shape (n_samples,)."""
        w, mu, _ = self.predict_distribution(X)
        return np.einsum("nk,nk->n", w, mu)

    def predict_interval(self, X: ArrayLike, alpha: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """Central ``1 - alpha`` predictive interval from the mixture quantiles.

        The quantiles ``alpha/2`` and ``1 - alpha/2`` of the mixture CDF are found by
        vectorised bisection (all rows at once: a bracket grown by doubling, then 100
        halvings). For Poisson experts the bounds are integers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        alpha : float, default=0.1
            Miscoverage, 0 < alpha < 1.

        Returns
        -------
        lower, upper : ndarray of shape (n_samples,)
        """
        _check_number("alpha", alpha, 0, strict=True, fix="use 0 < alpha < 1, e.g. alpha=0.1")
        if alpha >= 1:
            raise ValueError(f"alpha={alpha!r} must be < 1; use 0 < alpha < 1, e.g. alpha=0.1")
        return self._quantile(X, alpha / 2), self._quantile(X, 1 - alpha / 2)

    def _quantile(self, X, q: float) -> np.ndarray:
        w, mu, s = self.predict_distribution(X)
        family = self._make_family()
        state = self._get_state()

        def cdf(t):
            return np.einsum("nk,nk->n", w, family.cdf(t[:, None], mu, s, state))

        # bracket: start a few scales around the means, then double outwards until it holds
        spread = np.where(np.isfinite(s), s, np.asarray(state.get("expert_scale_", 1.0)) * 1e3)
        width = 5.0 * np.max(spread, axis=1) + 1e-12
        lo, hi = np.min(mu, axis=1) - width, np.max(mu, axis=1) + width
        if family.name == "poisson":
            lo = np.full_like(lo, -1.0)
        for _ in range(200):
            low_bad, high_bad = cdf(lo) >= q, cdf(hi) < q
            if not (low_bad.any() or high_bad.any()):
                break
            lo = np.where(low_bad, lo - width, lo)
            hi = np.where(high_bad, hi + width, hi)
            width *= 2.0
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            below = cdf(mid) < q
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        return np.ceil(hi - 1e-9) if family.name == "poisson" else 0.5 * (lo + hi)

    # -------------------------------------------------------------------- online EM
    def _online_ok(self) -> bool:
        return isinstance(self.expert, str) and self.expert == "linear"

    @available_if(lambda self: self._online_ok())
    def partial_fit(
        self,
        X: ArrayLike,
        y: ArrayLike,
        sample_weight: ArrayLike | None = None,
    ) -> MixtureOfExpertsRegressor:
        """One step of online (stepwise) EM on a minibatch (Gaussian linear experts only).

        See :func:`moekit.estimators._online.online_step`: running sufficient statistics
        ``S <- (1 - g_t) S + g_t s(batch)`` with ``g_t = (t + 2) ** -0.6`` (Cappé & Moulines
        2009) for the experts, and one damped Newton step of the gate on the minibatch.
        """
        from ._online import online_step

        return online_step(self, X, y, sample_weight)
