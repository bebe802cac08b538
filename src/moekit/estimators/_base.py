"""The estimator shell shared by every mixture of experts: validation, fit, the statistician's API.

The EM maths lives in ``_em`` (the loop, restarts), ``_families`` (experts) and ``_gate``;
this class validates input, learns the internal design (``_design``: standardised columns,
aliased columns dropped), runs EM on it with BLAS limited to one thread (the M-step is many
skinny matrix products, which multi-threaded BLAS slows down), and stores the result in the
reported scale.

Fitted state (persistence hook): every fitted value is an attribute ending in ``_`` holding a
numpy array, a number, a string, or a list of those, so a generic saver can round-trip it:

- ``gate_coefs_``: list, one array (n_nodes, n_children, n_features + 1) per gate level;
  column 0 is the intercept, child 0 of every node is the reference (zeros).
- ``expert_coef_``: (n_experts_, n_features + 1) for linear / student_t / poisson experts,
  (n_experts_, n_classes, n_features + 1) for the classifier; column 0 the intercept.
- ``expert_scale_``: (n_experts_,) noise standard deviation (linear, student_t scale, sklearn).
- ``expert_df_``: (n_experts_,) degrees of freedom (student_t only).
- ``experts_``: list of fitted scikit-learn regressors (``expert=<estimator>`` only), fitted on
  the standardised kept columns.
- ``x_mean_``, ``x_scale_`` (n_features,): the standardisation learnt at fit;
  ``aliased_features_`` (list of int): columns left out of the model (coefficients 0).
- ``classes_`` (classifier), ``y_scale_`` (regressor), ``scale_floor_``, ``n_features_in_``,
  ``feature_names_in_``, ``n_experts_``, ``n_parameters_``, ``n_iter_``, ``converged_``,
  ``lower_bound_``, ``loglik_history_`` (list of float), ``reseed_iterations_`` (list of
  int), ``n_reseeded_``, ``removed_experts_`` (list of int), ``branching_`` (list of int).
- online EM (``partial_fit``) adds ``suff_h_`` (K,), ``suff_xx_`` (K, d, d), ``suff_xy_``
  (K, d), ``suff_yy_`` (K,), ``n_samples_seen_`` (float), ``n_batches_`` (int), on the
  internal scale.

``covariance_`` is computed when first read, from the training data the estimator keeps a
reference to (dropped when pickled); see ``_inference``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from ._design import Design, alias_relations, fit_design
from ._em import EMData, EMRun, EMSettings, run_restarts
from ._gate import tree_log_proba, tree_shapes
from ._init import INITS
from ._logit import HESSIAN_MAX_WORK, logsumexp
from ._summary import InferenceMixin
from ._validation import check_number, check_sample_weight, validate_data

LARGE_ABOVE = 50_000
SUBSAMPLE_ROWS = 20_000
_FIT_KEYS = ("expert_coef_", "expert_scale_", "expert_df_", "experts_")


class BaseMixtureOfExperts(InferenceMixin, BaseEstimator):
    """Shared EM machinery; see :class:`MixtureOfExpertsRegressor` for the parameters."""

    _allow_removal = True

    # ----------------------------------------------------------------- hooks for subclasses
    def _branching(self) -> tuple[int, ...]:
        return (int(self.n_experts),)  # type: ignore[attr-defined]

    def _make_family(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare_y(self, y: Any, reset: bool) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_target(self, y: np.ndarray, sw: np.ndarray) -> None:
        """Learn what the family needs from y at fit (scale floor, y scale)."""

    def _expert_penalty(self) -> float:
        """The expert penalty on the internal scale."""
        return float(self.expert_alpha)  # type: ignore[attr-defined]

    def _n_expert_classes(self) -> int | None:
        return None

    def _y_for_kmeans(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=float).reshape(len(y), -1)

    def _validate_extra(self) -> None:
        pass

    def _validate_n_experts(self) -> None:
        check_number("n_experts", self.n_experts, 1, integer=True,  # type: ignore[attr-defined]
                     fix="use at least one expert, e.g. n_experts=3")

    def _is_classifier(self) -> bool:
        return False

    # ----------------------------------------------------------------------- validation
    def _validate_params(self) -> None:
        self._validate_n_experts()
        check_number("gate_alpha", self.gate_alpha, 0.0,  # type: ignore[attr-defined]
                     fix="use a non-negative L2 penalty, e.g. gate_alpha=0.1 (0: none)")
        check_number("expert_alpha", self.expert_alpha, 0.0,  # type: ignore[attr-defined]
                     fix="use a non-negative L2 penalty, e.g. expert_alpha=0.0")
        check_number("n_init", self.n_init, 1, integer=True,  # type: ignore[attr-defined]
                     fix="use at least one initialisation, e.g. n_init=1")
        check_number("max_iter", self.max_iter, 1, integer=True,  # type: ignore[attr-defined]
                     fix="e.g. max_iter=500")
        check_number("tol", self.tol, 0.0, fix="e.g. tol=1e-6")  # type: ignore[attr-defined]
        if self.init not in INITS:  # type: ignore[attr-defined]
            raise ValueError(f"init={self.init!r} is not supported; "  # type: ignore[attr-defined]
                             f"use one of {list(INITS)}")
        if not isinstance(self.standardize, (bool, np.bool_)):  # type: ignore[attr-defined]
            raise TypeError(f"standardize={self.standardize!r} must be True or False")  # type: ignore[attr-defined]
        self._validate_extra()

    def _validate_X(self, X: ArrayLike, reset: bool) -> np.ndarray:
        return validate_data(self, X, reset=reset, dtype=np.float64)

    # ------------------------------------------------------------ internal <-> reported
    def _design(self) -> Design:
        aliased = tuple(int(j) for j in getattr(self, "aliased_features_", []))
        p = len(self.x_mean_)
        kept = np.array([j for j in range(p) if j not in aliased], dtype=int)
        return Design(mean=np.asarray(self.x_mean_, float), scale=np.asarray(self.x_scale_, float),
                      kept=kept, aliased=aliased)

    def _internal_state(self) -> dict[str, Any]:
        """Fitted parameters on the internal (standardised, aliased-free) scale."""
        design, st = self._design(), bool(self.standardize)  # type: ignore[attr-defined]
        state: dict[str, Any] = {"gate_coefs_": [design.to_internal(c, st)
                                                 for c in self.gate_coefs_]}
        if hasattr(self, "expert_coef_"):
            state["expert_coef_"] = design.to_internal(self.expert_coef_, st)
        for key in ("expert_scale_", "expert_df_"):
            if hasattr(self, key):
                state[key] = np.array(getattr(self, key), dtype=float)
        if hasattr(self, "experts_"):
            state["experts_"] = list(self.experts_)
        return state

    def _set_reported(self, state: dict[str, Any], design: Design) -> None:
        st = bool(self.standardize)  # type: ignore[attr-defined]
        self.gate_coefs_ = [design.to_reported(c, st) for c in state["gate_coefs_"]]
        for key in _FIT_KEYS:
            self.__dict__.pop(key, None)
        if "expert_coef_" in state:
            self.expert_coef_ = design.to_reported(state["expert_coef_"], st)
        for key in ("expert_scale_", "expert_df_"):
            if key in state:
                setattr(self, key, np.array(state[key], dtype=float))
        if "experts_" in state:
            self.experts_ = list(state["experts_"])

    def _Z1(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self)
        return self._design().transform(self._validate_X(X, reset=False))

    # ------------------------------------------------------------------------- fitting
    def fit(
        self,
        X: ArrayLike,
        y: ArrayLike,
        sample_weight: ArrayLike | None = None,
    ) -> BaseMixtureOfExperts:
        """Fit the mixture by EM (``n_init`` restarts, the best penalised likelihood kept).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), optional
            Row weights; an integer weight behaves like repeating the row.

        Returns
        -------
        self : object
        """
        return self._fit(X, y, sample_weight)

    def _fit(
        self,
        X: ArrayLike,
        y: ArrayLike,
        sample_weight: ArrayLike | None,
        *,
        large_above: int = LARGE_ABOVE,
        subsample_rows: int = SUBSAMPLE_ROWS,
        hessian_max_work: float = HESSIAN_MAX_WORK,
        accelerate: bool = True,
    ) -> BaseMixtureOfExperts:
        """:meth:`fit` with its thresholds as arguments (restarts on a subsample of
        ``subsample_rows`` rows above ``large_above`` rows; Newton curvature on at most
        ``hessian_max_work`` multiply-adds; SQUAREM extrapolation when ``accelerate``)."""
        self._validate_params()
        warm = bool(self.warm_start) and hasattr(self, "gate_coefs_")  # type: ignore[attr-defined]
        Xv, yv = validate_data(self, X, y, reset=not warm, dtype=np.float64,
                               y_numeric=not self._is_classifier())
        yv = self._prepare_y(yv, reset=not warm)
        sw = check_sample_weight(sample_weight, Xv.shape[0])
        branching = tuple(self.branching_) if warm else self._branching()
        K = int(np.prod(branching))
        if Xv.shape[0] < K:
            raise ValueError(f"n_samples={Xv.shape[0]} is smaller than n_experts={K}; "
                             "use fewer experts or more rows")
        with threadpool_limits(limits=1, user_api="blas"):
            if warm:
                design = self._design()
            else:
                design = fit_design(Xv, sw)
                self.x_mean_, self.x_scale_ = design.mean, design.scale
                self.aliased_features_ = [int(j) for j in design.aliased]
                self._fit_target(yv, sw)
            family = self._make_family()
            data = EMData.build(design.transform(Xv), yv, sw, n_gate_outcomes=max(branching),
                                n_expert_classes=self._n_expert_classes(),
                                hessian_max_work=hessian_max_work)
            settings = EMSettings(gate_alpha=float(self.gate_alpha),  # type: ignore[attr-defined]
                                  expert_alpha=self._expert_penalty(),
                                  max_iter=int(self.max_iter),  # type: ignore[attr-defined]
                                  tol=float(self.tol),  # type: ignore[attr-defined]
                                  allow_removal=self._allow_removal,
                                  accelerate=accelerate,
                                  verbose=int(self.verbose or 0))  # type: ignore[attr-defined]
            run = run_restarts(data, family, branching, settings,
                               n_init=int(self.n_init),  # type: ignore[attr-defined]
                               init=self.init,  # type: ignore[attr-defined]
                               rng=check_random_state(self.random_state),  # type: ignore[attr-defined]
                               y_cluster=self._y_for_kmeans(yv),
                               warm_state=self._internal_state() if warm else None,
                               large_above=large_above, subsample_rows=subsample_rows)
        self._store_run(run, design)
        for key in ("suff_h_", "suff_xx_", "suff_xy_", "suff_yy_", "n_samples_seen_",
                    "n_batches_"):
            self.__dict__.pop(key, None)
        self._train_data = (Xv, yv, sw)
        self.__dict__.pop("_covariance", None)
        self._warn_after_fit(run, design, Xv, warm)
        return self

    def _store_run(self, run: EMRun, design: Design) -> None:
        self._set_reported(run.state, design)
        self.branching_ = [int(b) for b in run.branching]
        self.n_experts_ = int(np.prod(run.branching))
        self.loglik_history_ = [float(v) for v in run.history]
        self.reseed_iterations_ = [int(i) for i in run.reseed_iterations]
        self.lower_bound_ = float(run.lower_bound)
        self.converged_, self.n_iter_ = bool(run.converged), int(run.n_iter)
        self.n_reseeded_ = int(run.n_reseeded)
        self.removed_experts_ = [int(r) for r in run.removed]
        self.n_parameters_ = int(self._count_parameters())

    def _warn_after_fit(self, run: EMRun, design: Design, X: np.ndarray, warm: bool) -> None:
        if design.aliased and not warm:
            names = self._feature_names()
            relations = alias_relations(X, design, names)
            listed = "; ".join(f"{names[j]!r} ({relations[j]})" for j in design.aliased)
            warnings.warn(
                f"{len(design.aliased)} column(s) not defined because of singularities: "
                f"{listed}. Their coefficients are fixed at 0 (as R's lm reports NA); see "
                "aliased_features_. Drop or recode them to silence this warning",
                UserWarning, stacklevel=3)
        if run.n_reseeded or run.removed:
            warnings.warn(
                f"{run.n_reseeded} collapsed expert(s) were re-seeded and {len(run.removed)} "
                f"removed (experts {list(run.removed)}); the data may support fewer than "
                f"n_experts={int(np.prod(self._branching()))}: see n_reseeded_, "
                "removed_experts_ and reseed_iterations_", UserWarning, stacklevel=3)
        if not run.converged:
            warnings.warn(
                f"EM did not converge in max_iter={self.max_iter} iterations "  # type: ignore[attr-defined]
                f"(tol={self.tol}); increase max_iter or tol",  # type: ignore[attr-defined]
                ConvergenceWarning, stacklevel=3)

    def _feature_names(self) -> list[str]:
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            return [f"x{j}" for j in range(self.n_features_in_)]
        return [str(v) for v in names]

    def _count_parameters(self) -> int:
        d = len(self._design().kept) + 1
        gate = sum(m * (b - 1) * d for m, b in tree_shapes(tuple(self.branching_)))
        return gate + self.n_experts_ * int(self._make_family().n_free(d))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_train_data", None)  # pickles hold the model, not the training set
        return state

    # ---------------------------------------------------------------- statistician's API
    def _log_joint(self, X: ArrayLike, y: ArrayLike) -> np.ndarray:
        Z1 = self._Z1(X)
        yy = self._prepare_y(y, reset=False)
        state = self._internal_state()
        return tree_log_proba(Z1, state["gate_coefs_"]) + self._make_family().log_prob(
            Z1, yy, state)

    def gate_proba(self, X: ArrayLike) -> np.ndarray:
        """Gate (prior) probability of each expert, shape (n_samples, n_experts_).

        Rows are in [0, 1] and sum to 1.
        """
        g = np.exp(tree_log_proba(self._Z1(X), self._internal_state()["gate_coefs_"]))
        g /= g.sum(axis=1, keepdims=True)
        return np.clip(g, 0.0, 1.0, out=g)

    def responsibilities(self, X: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Posterior probability of each expert given (x, y), shape (n_samples, n_experts_)."""
        lj = self._log_joint(X, y)
        h = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
        h /= h.sum(axis=1, keepdims=True)
        return np.clip(h, 0.0, 1.0, out=h)

    def log_likelihood_samples(self, X: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Log-likelihood log p(y_i | x_i) of each row, shape (n_samples,)."""
        return logsumexp(self._log_joint(X, y), axis=1)

    def log_likelihood(
        self,
        X: ArrayLike,
        y: ArrayLike,
        sample_weight: ArrayLike | None = None,
    ) -> float:
        """Total (weighted) log-likelihood of (X, y) under the fitted model (no penalty)."""
        ll = self.log_likelihood_samples(X, y)
        return float(np.sum(check_sample_weight(sample_weight, len(ll)) * ll))

    def bic(self, X: ArrayLike, y: ArrayLike) -> float:
        """Bayesian information criterion ``-2 log L + n_parameters_ log n`` (lower is better)."""
        ll = self.log_likelihood_samples(X, y)
        return -2.0 * float(np.sum(ll)) + self.n_parameters_ * np.log(len(ll))

    def aic(self, X: ArrayLike, y: ArrayLike) -> float:
        """Akaike information criterion ``-2 log L + 2 n_parameters_`` (lower is better)."""
        return -2.0 * self.log_likelihood(X, y) + 2.0 * self.n_parameters_

    def icl(self, X: ArrayLike, y: ArrayLike) -> float:
        """Integrated completed likelihood: BIC plus twice the responsibilities' entropy."""
        lj = self._log_joint(X, y)
        ll = logsumexp(lj, axis=1)
        resp = np.exp(lj - ll[:, None])
        entropy = -float(np.sum(resp * np.log(np.clip(resp, 1e-300, None))))
        bic = -2.0 * float(np.sum(ll)) + self.n_parameters_ * np.log(len(ll))
        return bic + 2.0 * entropy

    @property
    def gate_coef_(self) -> np.ndarray:
        """Flat gate coefficients, shape (n_experts_, n_features_in_ + 1), row 0 zeros."""
        check_is_fitted(self)
        return self.gate_coefs_[0][0]

    def fit_predict(
        self,
        X: ArrayLike,
        y: ArrayLike,
        sample_weight: ArrayLike | None = None,
    ) -> np.ndarray:
        """Fit, then predict on the same X; identical to ``fit(X, y).predict(X)``."""
        return self.fit(X, y, sample_weight=sample_weight).predict(X)  # type: ignore[attr-defined]


