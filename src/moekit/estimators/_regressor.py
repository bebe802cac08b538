"""MixtureOfExpertsRegressor: Gaussian, Student-t, Poisson or scikit-learn experts; softmax gate."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import RegressorMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.metaestimators import available_if
from threadpoolctl import threadpool_limits

from ._base import BaseMixtureOfExperts
from ._families import GaussianFamily, PoissonFamily, SklearnFamily, StudentTFamily
from ._gate import tree_log_proba
from ._intervals import IntervalsMixin
from ._online import Statistics, online_step
from ._validation import check_sample_weight, validate_data

_EXPERTS = ("linear", "poisson", "student_t")


class PredictiveDistribution(NamedTuple):
    """Per-row mixture: p(y|x) = sum_k weights[:, k] * p_k(y | means[:, k], scales[:, k]).

    Attributes
    ----------
    weights : ndarray of shape (n_samples, n_experts_)
        Gate probabilities (rows in [0, 1], summing to 1).
    means : ndarray of shape (n_samples, n_experts_)
        Expert means E[y | x, expert].
    scales : ndarray of shape (n_samples, n_experts_)
        Expert standard deviations sd[y | x, expert] (sqrt(mean) for Poisson experts).
    """

    weights: np.ndarray
    means: np.ndarray
    scales: np.ndarray


class MixtureOfExpertsRegressor(IntervalsMixin, RegressorMixin, BaseMixtureOfExperts):
    """Mixture of experts regression fitted by EM (Jacobs, Jordan, Nowlan & Hinton 1991).

    The model, in statisticians' terms: a finite mixture of regressions whose mixing weights
    depend on the covariates through a multinomial logit (a "concomitant variable" model in
    flexmix's words),

        p(y | x) = sum_k g_k(x) p_k(y | x),   g(x) = softmax(V [1, x]),

    with, by default, Gaussian linear experts ``p_k = N(y; b_k'[1, x], s_k^2)`` each with its
    own variance. Expert 0 is the gate's reference (its row of V is zero). The fit maximises
    the log-likelihood minus a small ridge penalty ``gate_alpha/2 ||V||^2 + expert_alpha/2
    sum_k ||b_k||^2`` on the non-intercept coefficients of the *standardised* columns (mean
    0, sd 1, learnt at fit; expert slopes in units of sd(y)), so the answer does not depend on
    the units of X; ``gate_alpha=0, expert_alpha=0`` is plain maximum likelihood (flexmix's
    ``FLXPmultinom`` concomitant model with ``FLXMRglm`` components). Columns that are
    constant or linear combinations of earlier ones are left out and reported (as R's ``lm``).

    Parameters
    ----------
    n_experts : int, default=3
        Number of experts K.
    expert : {"linear", "poisson", "student_t"} or regressor, default="linear"
        Gaussian linear experts each with its own variance, Poisson GLM (log link; counts),
        Student-t linear (robust, fitted by ECM, one df per expert), or any scikit-learn
        regressor whose ``fit`` accepts ``sample_weight`` (generalised EM with Gaussian noise
        per expert; it sees the standardised columns).
    gate_alpha : float, default=0.1
        L2 penalty on the gate's non-intercept coefficients of the standardised columns (on the
        summed log-likelihood; a N(0, 1/gate_alpha) prior on log-odds per sd of each column,
        which a few hundred rows outweigh). 0: unpenalised.
    expert_alpha : float, default=0.0
        L2 penalty on each expert's non-intercept coefficients of the standardised columns (in
        units of sd(y) for linear and Student-t experts).
    n_init : int, default=5
        EM runs from different starts; the best penalised likelihood is kept. Above 50,000
        rows the restarts run on a 20,000-row subsample and only the best continues on all
        rows.
    init : {"auto", "kmeans", "kmeans_xy", "random"}, default="auto"
        Starting responsibilities: k-means on the standardised X, on (X, y), or a hard random
        partition (flexmix's default); ``"auto"`` cycles kmeans_xy, random, kmeans, random
        over the restarts (EM has local maxima, and each start finds different ones).
    max_iter : int, default=500
        Maximum EM iterations per run.
    tol : float, default=1e-6
        Stop when the gain still expected (Aitken's estimate from the last three iterations)
        is at most ``tol`` per unit of sample weight.
    warm_start : bool, default=False
        Start from the previous fit's parameters (one run) instead of initialising.
    random_state : int, RandomState or None, default=None
    verbose : int, default=0
        1 prints one line per restart to stderr, 2 also one per iteration.
    standardize : bool, default=False
        Report coefficients and standard errors on the standardised scale (per sd of each
        column, means removed) instead of the units of X. The fitted model, its predictions and
        likelihood are the same either way; predict always takes X in its own units.

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
    x_mean_, x_scale_ : ndarray of shape (n_features_in_,)
        The standardisation learnt at fit.
    aliased_features_ : list of int
        Columns left out (constant or linearly dependent on earlier ones); coefficient 0.
    y_scale_ : float
        Weighted standard deviation of y at fit (the unit of the expert penalty).
    n_experts_ : int
        Experts left after removing collapsed ones.
    loglik_history_ : list of float
        Penalised log-likelihood at each EM iteration of the kept run; never decreasing except
        at the indices in ``reseed_iterations_``. ``lower_bound_`` is its last value.
    reseed_iterations_ : list of int
        Indices of ``loglik_history_`` where a collapsed expert was re-seeded (or removed), so
        that EM restarted its ascent there.
    n_iter_ : int
    converged_ : bool
    n_reseeded_ : int
        Collapsed experts re-seeded on the worst-fitted rows.
    removed_experts_ : list of int
        Original indices of experts removed after repeated collapse.
    n_parameters_ : int
        Free parameters (for BIC/AIC): gate, expert coefficients, scales, and Student-t
        degrees of freedom; for sklearn experts the gate and scales only.
    scale_floor_ : float
        Lower bound on expert scales (1e-4 of the weighted sd of y); hitting it is a collapse.
    covariance_ : ndarray of shape (n_free, n_free)
        Covariance of the free parameters, computed when first read (see ``summary``).
    conformity_scores_ : ndarray
        Only after :meth:`calibrate_intervals`.
    suff_h_, suff_xx_, suff_xy_, suff_yy_, n_samples_seen_, n_batches_
        Running sufficient statistics of online EM (only after ``partial_fit``).

    Notes
    -----
    BLAS runs on one thread inside ``fit``. The gate's M-step is one Newton step per EM
    iteration (ECM) with step halving; on large data its curvature uses an evenly strided
    subset of rows, the gradient and the step size all rows, so the penalised log-likelihood
    never decreases between re-seeds. Memory stays O(n_samples * n_experts).

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
    >>> m.summary_frame().shape[1]
    8
    """

    def __init__(
        self,
        n_experts: int = 3,
        *,
        expert: Any = "linear",
        gate_alpha: float = 0.1,
        expert_alpha: float = 0.0,
        n_init: int = 5,
        init: str = "auto",
        max_iter: int = 500,
        tol: float = 1e-6,
        warm_start: bool = False,
        random_state: Any = None,
        verbose: int = 0,
        standardize: bool = False,
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
        self.standardize = standardize

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

    def _y_unit_penalty(self) -> bool:
        return isinstance(self.expert, str) and self.expert in ("linear", "student_t")

    def _expert_penalty(self) -> float:
        scale = float(getattr(self, "y_scale_", 1.0)) if self._y_unit_penalty() else 1.0
        return float(self.expert_alpha) / max(scale, 1e-300) ** 2

    def _make_family(self):
        floor = getattr(self, "scale_floor_", 0.0)
        alpha = self._expert_penalty()
        if not isinstance(self.expert, str):
            return SklearnFamily(self.expert, floor)
        if self.expert == "poisson":
            return PoissonFamily(alpha)
        if self.expert == "student_t":
            return StudentTFamily(alpha, floor)
        return GaussianFamily(alpha, floor)

    def _prepare_y(self, y, reset: bool):
        y = np.asarray(y, dtype=float).ravel()
        if isinstance(self.expert, str) and self.expert == "poisson" and np.any(y < 0):
            raise ValueError("expert='poisson' needs y >= 0 (counts); got negative values. "
                             "Use expert='linear' or shift the target")
        return y

    def _fit_target(self, y, sw) -> None:
        mean = np.average(y, weights=sw)
        sd = float(np.sqrt(np.average((y - mean) ** 2, weights=sw)))
        self.y_scale_ = sd if sd > 0 else 1.0
        self.scale_floor_ = max(1e-4 * sd, 1e-10 * (1.0 + abs(float(mean))))

    def _count_parameters(self) -> int:
        if not isinstance(self.expert, str):
            d = len(self._design().kept) + 1
            return (self.n_experts_ - 1) * d + self.n_experts_
        return super()._count_parameters()

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
        Z1 = self._Z1(X)
        state = self._internal_state()
        weights = np.exp(tree_log_proba(Z1, state["gate_coefs_"]))
        weights /= weights.sum(axis=1, keepdims=True)
        np.clip(weights, 0.0, 1.0, out=weights)
        means, scales = self._make_family().mean_scale(Z1, state)
        return PredictiveDistribution(weights, means, scales)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Mixture mean E[y | x] = sum_k g_k(x) mean_k(x), shape (n_samples,)."""
        w, mu, _ = self.predict_distribution(X)
        return np.einsum("nk,nk->n", w, mu)

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

        See :mod:`moekit.estimators._online`: running sufficient statistics
        ``S <- (1 - g_t) S + g_t s(batch)`` with ``g_t = (t + 2) ** -0.6`` (Cappé & Moulines
        2009) for the experts, and one damped Newton step of the gate on the minibatch. The
        first minibatch is fitted by batch EM (at most 50 iterations), which also learns the
        standardisation.
        """
        first = not hasattr(self, "suff_xx_")
        if first:
            self._validate_params()
        Xv, yv = validate_data(self, X, y, reset=first, dtype=np.float64, y_numeric=True)
        yv = np.asarray(yv, dtype=float).ravel()
        sw = check_sample_weight(sample_weight, Xv.shape[0])
        stats = None
        if first:
            init = clone(self).set_params(max_iter=min(int(self.max_iter), 50), warm_start=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                init.fit(Xv, yv, sample_weight=sw)
            for key, value in vars(init).items():
                if key.endswith("_") and not key.startswith("_"):
                    setattr(self, key, value)
            self.n_samples_seen_, self.n_batches_, self.loglik_history_ = 0.0, 0, []
        else:
            fitted = vars(self)
            stats = Statistics(h=fitted["suff_h_"], xx=fitted["suff_xx_"],
                               xy=fitted["suff_xy_"], yy=fitted["suff_yy_"])
        design = self._design()
        state = self._internal_state()
        with threadpool_limits(limits=1, user_api="blas"):
            gate, coef, scale, stats, ll = online_step(
                design.transform(Xv), yv, sw, gate=state["gate_coefs_"][0][0],
                coef=state["expert_coef_"], scale=state["expert_scale_"], stats=stats,
                n_batches=int(self.n_batches_), n_samples_seen=float(self.n_samples_seen_),
                gate_alpha=float(self.gate_alpha), expert_alpha=self._expert_penalty(),
                scale_floor=float(self.scale_floor_))
        self._set_reported({"gate_coefs_": [gate[None]], "expert_coef_": coef,
                            "expert_scale_": scale}, design)
        self.suff_h_, self.suff_xx_, self.suff_xy_, self.suff_yy_ = (
            stats.h, stats.xx, stats.xy, stats.yy)
        self.n_samples_seen_ = float(self.n_samples_seen_) + float(np.sum(sw))
        self.n_batches_ = int(self.n_batches_) + 1
        self.loglik_history_ = [*self.loglik_history_, ll]
        self.lower_bound_ = ll
        self.n_parameters_ = int(self._count_parameters())
        for key in ("_train_data", "_covariance"):  # SEs need the whole data: summary(X, y)
            self.__dict__.pop(key, None)
        return self
