"""The EM loop shared by every mixture-of-experts estimator.

The base class owns validation, initialisation (k-means on x or on (x, y), or random),
restarts keeping the best run, the E-step in log space, convergence (``tol`` on the change of
the mean penalised log-likelihood), warm starts, and collapsed experts. Subclasses own the
expert maths through a *family* object (``_experts``) and the gate layout through
``_branching()`` (``_gate``).

Fitted state (persistence hook): every fitted value is an attribute ending in ``_`` holding a
numpy array, a number, a string, or a list of those, so a generic saver can round-trip it:

- ``gate_coefs_``: list, one array (n_nodes, n_children, n_features + 1) per gate level;
  column 0 is the intercept, child 0 of every node is the reference (zeros).
- ``expert_coef_``: (n_experts_, n_features + 1) for linear / student_t / poisson experts,
  (n_experts_, n_classes, n_features + 1) for the classifier; column 0 the intercept.
- ``expert_scale_``: (n_experts_,) noise standard deviation (linear, student_t scale, sklearn).
- ``expert_df_``: (n_experts_,) degrees of freedom (student_t only).
- ``experts_``: list of fitted scikit-learn regressors (``expert=<estimator>`` only; this one
  is *not* a plain array and needs the estimator's own persistence).
- ``classes_`` (classifier), ``scale_floor_``, ``n_features_in_``, ``feature_names_in_``,
  ``n_experts_``, ``n_parameters_``, ``n_iter_``, ``converged_``, ``lower_bound_``,
  ``loglik_history_`` (list of float), ``n_reseeded_``, ``removed_experts_`` (list of int),
  ``branching_`` (list of int), ``covariance_`` (n_free,
  n_free) covariance of the free parameters, shape (0, 0) when not computed at fit time.
- online EM (``partial_fit``) adds ``suff_h_`` (K,), ``suff_xx_`` (K, d, d), ``suff_xy_``
  (K, d), ``suff_yy_`` (K,), ``n_samples_seen_`` (float), ``n_batches_`` (int).

Private attributes (leading underscore) are scratch space during ``fit`` and deleted after it.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._gate import logsumexp, tree_log_proba, tree_m_step, tree_shapes

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _sk_validate_data(est, *args, **kwargs):  # type: ignore[no-redef]
        return est._validate_data(*args, **kwargs)


_INITS = ("auto", "kmeans", "kmeans_xy", "random")
# init="auto": restart r uses _AUTO_CYCLE[r % 3], so three restarts try each strategy once.
_AUTO_CYCLE = ("kmeans", "kmeans_xy", "random")
# Above this many rows the n_init restarts run EM on one random subsample of _WARMUP_ROWS rows
# (tol at least 1e-4, at most 100 iterations) and only the best continues on all rows: far
# fewer full-data iterations, and restarts cost a subsample fit each.
_WARMUP_ABOVE = 200_000
_WARMUP_ROWS = 50_000


def add_intercept(X: np.ndarray) -> np.ndarray:
    """Prepend a column of ones: (n, p) -> (n, p + 1)."""
    return np.hstack([np.ones((X.shape[0], 1)), X])


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """Validate ``sample_weight``: None -> ones; else finite, non-negative, shape (n_samples,)."""
    if sample_weight is None:
        return np.ones(n_samples)
    sw = np.asarray(sample_weight, dtype=float)
    if sw.ndim == 0:
        return np.full(n_samples, float(sw))
    if sw.shape != (n_samples,):
        raise ValueError(
            f"sample_weight.shape={sw.shape} does not match X: expected ({n_samples},); "
            "pass one weight per row of X"
        )
    if not np.all(np.isfinite(sw)) or np.any(sw < 0):
        raise ValueError("sample_weight must be finite and >= 0; remove NaN/inf/negative weights")
    if not np.any(sw > 0):
        raise ValueError(
            "sample_weight: every weight is zero; at least one row needs a positive weight")
    return sw


def _check_number(name, value, low, *, integer=False, strict=False, fix=""):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if integer else "a real number"
        raise TypeError(f"{name}={value!r} must be {what}; {fix}")
    if (value <= low) if strict else (value < low):
        rel = ">" if strict else ">="
        raise ValueError(f"{name}={value!r} must be {rel} {low}; {fix}")


class BaseMixtureOfExperts(BaseEstimator):
    """Shared EM machinery; see :class:`MixtureOfExpertsRegressor` for the parameters."""

    _allow_removal = True

    # ----------------------------------------------------------------- hooks for subclasses
    def _branching(self) -> tuple[int, ...]:
        return (int(self.n_experts),)  # type: ignore[attr-defined]

    def _make_family(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare_y(self, y, reset: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    def _validate_extra(self) -> None:
        pass

    def _validate_n_experts(self) -> None:
        _check_number("n_experts", self.n_experts, 1, integer=True,  # type: ignore[attr-defined]
                      fix="use at least one expert, e.g. n_experts=3")

    # ----------------------------------------------------------------------- validation
    def _validate_params(self) -> None:
        self._validate_n_experts()
        _check_number("gate_alpha", self.gate_alpha, 0.0,
                      fix="use a non-negative L2 penalty, e.g. gate_alpha=1.0")
        _check_number("expert_alpha", self.expert_alpha, 0.0,
                      fix="use a non-negative L2 penalty, e.g. expert_alpha=0.0")
        _check_number("n_init", self.n_init, 1, integer=True,
                      fix="use at least one initialisation, e.g. n_init=1")
        _check_number("max_iter", self.max_iter, 1, integer=True, fix="e.g. max_iter=200")
        _check_number("tol", self.tol, 0.0, fix="e.g. tol=1e-6")
        if self.init not in _INITS:
            raise ValueError(f"init={self.init!r} is not supported; use one of {list(_INITS)}")
        self._validate_extra()

    def _validate_X(self, X, reset: bool):
        return _sk_validate_data(self, X, reset=reset, dtype=np.float64)

    # ------------------------------------------------------------------------- state
    def _state_keys(self) -> list[str]:
        return ["gate_coefs_", "expert_coef_", "expert_scale_", "expert_df_", "experts_"]

    def _get_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self._state_keys():
            if hasattr(self, k):
                v = getattr(self, k)
                out[k] = [a.copy() for a in v] if k == "gate_coefs_" else (
                    list(v) if isinstance(v, list) else np.array(v, copy=True))
        return out

    def _set_state(self, state: dict[str, Any]) -> None:
        for k in self._state_keys():
            if k in state:
                setattr(self, k, state[k])

    def _log_joint(self, X1, y, state, family) -> np.ndarray:
        return tree_log_proba(X1, state["gate_coefs_"]) + family.log_prob(X1, y, state)

    def _penalty(self, state) -> float:
        pen = 0.5 * self.gate_alpha * sum(float(np.sum(c[..., 1:] ** 2))
                                          for c in state["gate_coefs_"])
        if "expert_coef_" in state:
            pen += 0.5 * self.expert_alpha * float(np.sum(state["expert_coef_"][..., 1:] ** 2))
        return pen

    def _m_step(self, X1, y, sw, resp, state, family) -> dict[str, Any]:
        state = family.m_step(X1, y, resp * sw[:, None], state)
        state["gate_coefs_"] = tree_m_step(X1, resp, sw, state["gate_coefs_"],
                                           self._current_branching, float(self.gate_alpha),
                                           cache=self._gate_cache)
        return state

    # ------------------------------------------------------------------------- fitting
    def _initial_resp(self, X, y, sw, K, rng) -> np.ndarray:
        n = X.shape[0]
        method = self.init if self.init != "auto" else _AUTO_CYCLE[self._restart % len(_AUTO_CYCLE)]
        if method == "random" or n < 2 * K:
            return rng.dirichlet(np.ones(K), size=n)
        from sklearn.cluster import KMeans

        Z = (X - X.mean(0)) / np.maximum(X.std(0), 1e-12)
        if method == "kmeans_xy":
            Y = self._y_for_kmeans(y)
            Z = np.column_stack([Z, (Y - Y.mean(0)) / np.maximum(Y.std(0), 1e-12)])
        sub = rng.choice(n, size=min(n, 50_000), replace=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(K, n_init=1, random_state=rng.randint(2**31 - 1))
            km.fit(Z[sub], sample_weight=sw[sub])
        labels = km.predict(Z) if len(sub) < n else km.labels_[np.argsort(sub)]
        # softened hard assignment: keeps every expert and gate away from the boundary
        return 0.9 * np.eye(K)[labels] + 0.1 / K

    def _y_for_kmeans(self, y) -> np.ndarray:
        return np.asarray(y, dtype=float).reshape(len(y), -1)

    def _initialise(self, X1, y, sw, family, rng) -> dict[str, Any]:
        K = int(np.prod(self._current_branching))
        state = family.init_params(X1, y, K)
        state["gate_coefs_"] = [np.zeros((m, b, X1.shape[1]))
                                for m, b in tree_shapes(self._current_branching)]
        resp = self._initial_resp(X1[:, 1:], y, sw, K, rng)
        return self._m_step(X1, y, sw, resp, state, family)

    def _reseed(self, resp, ll_rows, k, rng) -> np.ndarray:
        n, K = resp.shape
        m = max(n // max(K, 1), 2)
        rows = np.argsort(ll_rows)[:m]  # the worst-explained rows
        resp = resp.copy()
        resp[rows] = 0.0
        resp[rows, k] = 1.0
        resp[:, k] = np.maximum(resp[:, k], 1e-6)
        return resp / resp.sum(1, keepdims=True)

    def _remove(self, state, resp, k, family):
        state = dict(state)
        for key in ("expert_coef_", "expert_scale_", "expert_df_"):
            if key in state:
                state[key] = np.delete(state[key], k, axis=0)
        if "experts_" in state:
            state["experts_"] = [m for i, m in enumerate(state["experts_"]) if i != k]
        g = np.delete(state["gate_coefs_"][0], k, axis=1)
        g -= g[:, :1, :]  # keep child 0 the reference (softmax is shift invariant)
        state["gate_coefs_"] = [g]
        resp = np.delete(resp, k, axis=1)
        resp = resp / np.maximum(resp.sum(1, keepdims=True), 1e-300)
        self._current_branching = (resp.shape[1],)
        return state, resp

    def _em(self, X1, y, sw, family, state, rng, max_iter=None, tol=None):
        max_iter = int(self.max_iter if max_iter is None else max_iter)
        tol = float(self.tol if tol is None else tol)
        total_w = float(np.sum(sw))
        history: list[float] = []
        n_reseeded, alive = 0, list(range(int(np.prod(self._current_branching))))
        removed: list[int] = []
        converged, n_iter = False, 0
        for it in range(max_iter + 1):
            log_joint = self._log_joint(X1, y, state, family)
            ll_rows = logsumexp(log_joint, axis=1)
            ll = float(np.sum(sw * ll_rows)) - self._penalty(state)
            history.append(ll)
            if self.verbose and self.verbose > 1:
                print(f"  iter {it:4d}  penalised log-likelihood {ll:.6f}")
            if it > 0 and abs(ll - history[-2]) <= tol * total_w:
                converged = True
                break
            if it == max_iter:
                break
            resp = np.exp(log_joint - ll_rows[:, None])
            mass = (resp * sw[:, None]).sum(0)
            K = resp.shape[1]
            for k in range(K - 1, -1, -1):
                if K == 1 or not (mass[k] < 1e-8 * total_w or family.is_collapsed(state, k)):
                    continue
                if n_reseeded < 2 * len(alive) or not self._allow_removal:
                    if n_reseeded < 4 * len(alive):
                        resp = self._reseed(resp, ll_rows, k, rng)
                        n_reseeded += 1
                elif resp.shape[1] > 1:
                    state, resp = self._remove(state, resp, k, family)
                    removed.append(alive.pop(k))
                    K = resp.shape[1]
            state = self._m_step(X1, y, sw, resp, state, family)
            n_iter += 1
        return state, history, converged, n_iter, n_reseeded, removed

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
        self._validate_params()
        warm = bool(self.warm_start) and hasattr(self, "gate_coefs_")
        Xv, yv = _sk_validate_data(self, X, y, reset=not warm, dtype=np.float64,
                                   y_numeric=not self._is_classifier())
        y_raw = yv
        yv = self._prepare_y(yv, reset=not warm)
        sw = check_sample_weight(sample_weight, Xv.shape[0])
        K = int(np.prod(self._branching()))
        if Xv.shape[0] < K:
            raise ValueError(
                f"n_samples={Xv.shape[0]} is smaller than n_experts={K}; "
                "use fewer experts or more rows")
        if not warm:
            self.scale_floor_ = self._scale_floor(yv, sw)
        family = self._make_family()
        rng = check_random_state(self.random_state)
        X1 = add_intercept(Xv)
        self._gate_cache: dict = {}
        best = None
        large = not warm and X1.shape[0] > _WARMUP_ABOVE
        starts = [None] if large else range(1 if warm else int(self.n_init))
        if large:
            # Large data: every restart runs on one random subsample; only the best of them
            # continues on all rows (restarts cost a subsample fit each, not a full fit).
            sub = rng.choice(X1.shape[0], size=_WARMUP_ROWS, replace=False)
            cache, self._gate_cache = self._gate_cache, {}
            sub_best = None
            for restart in range(int(self.n_init)):
                self._current_branching = self._branching()
                self._restart = restart
                state = self._initialise(X1[sub], yv[sub], sw[sub], family, rng)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    sub_result = self._em(X1[sub], yv[sub], sw[sub], family, state, rng,
                                          max_iter=min(int(self.max_iter), 100),
                                          tol=max(float(self.tol), 1e-4))
                if sub_best is None or sub_result[1][-1] > sub_best[1][-1]:
                    sub_best = sub_result
            self._gate_cache = cache
            assert sub_best is not None  # n_init >= 1 was validated
            large_start = sub_best[0]
        for run, _ in enumerate(starts):
            previous: list[int] = getattr(self, "branching_", [])
            self._current_branching = tuple(previous) if warm else self._branching()
            if warm:
                state = self._get_state()
            elif large:
                state = large_start
            else:
                self._restart = run
                state = self._initialise(X1, yv, sw, family, rng)
            result = self._em(X1, yv, sw, family, state, rng)
            if self.verbose:
                print(f"init {run}: penalised log-likelihood {result[1][-1]:.6f} "
                      f"after {result[3]} iterations")
            if best is None or result[1][-1] > best[0][1][-1]:
                best = (result, self._current_branching)
        assert best is not None  # n_init >= 1 was validated
        (state, history, converged, n_iter, n_reseeded, removed), branching = best
        self._set_state(state)
        self.branching_ = [int(b) for b in branching]
        self.n_experts_ = int(np.prod(branching))
        self.loglik_history_ = [float(v) for v in history]
        self.lower_bound_ = float(history[-1])
        self.converged_, self.n_iter_ = bool(converged), int(n_iter)
        self.n_reseeded_, self.removed_experts_ = int(n_reseeded), [int(r) for r in removed]
        self.n_parameters_ = int(self._count_parameters())
        del self._current_branching, self._gate_cache
        self.__dict__.pop("_restart", None)
        from ._inference import fit_covariance

        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ill-conditioned information: reported as large SEs
            self.covariance_ = fit_covariance(self, Xv, y_raw, sample_weight)
        if n_reseeded or removed:
            warnings.warn(
                f"{n_reseeded} collapsed expert(s) were re-seeded and {len(removed)} removed "
                f"(experts {removed}); the data may support fewer than n_experts="
                f"{int(np.prod(self._branching()))}: see n_reseeded_ and removed_experts_",
                UserWarning,
                stacklevel=2)
        if not converged:
            warnings.warn(
                f"EM did not converge in max_iter={self.max_iter} iterations (tol={self.tol}); "
                "increase max_iter or tol, or scale the inputs", ConvergenceWarning,
                stacklevel=2)
        return self

    def _scale_floor(self, y, sw) -> float:
        return 0.0

    def _count_parameters(self) -> int:
        d = self.n_features_in_ + 1
        n = sum(m * (b - 1) * d for m, b in tree_shapes(tuple(self.branching_)))
        fam = self._make_family()
        return n + self.n_experts_ * len(fam.get_free(self._get_state(), 0))

    def _is_classifier(self) -> bool:
        return False

    # ---------------------------------------------------------------- statistician's API
    def _Xy(self, X, y):
        check_is_fitted(self)
        X1 = add_intercept(self._validate_X(X, reset=False))
        return X1, self._prepare_y(y, reset=False)

    def gate_proba(self, X: ArrayLike) -> np.ndarray:
        """Gate (prior) probability of each expert, shape (n_samples, n_experts_)."""
        check_is_fitted(self)
        X1 = add_intercept(self._validate_X(X, reset=False))
        return np.exp(tree_log_proba(X1, self.gate_coefs_))

    def responsibilities(self, X: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Posterior probability of each expert given (x, y), shape (n_samples, n_experts_)."""
        X1, y = self._Xy(X, y)
        lj = self._log_joint(X1, y, self._get_state(), self._make_family())
        return np.exp(lj - logsumexp(lj, axis=1, keepdims=True))

    def log_likelihood_samples(self, X: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Log-likelihood log p(y_i | x_i) of each row, shape (n_samples,)."""
        X1, y = self._Xy(X, y)
        return logsumexp(self._log_joint(X1, y, self._get_state(), self._make_family()), axis=1)

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
        ll = self.log_likelihood(X, y)
        return -2.0 * ll + self.n_parameters_ * np.log(len(self.log_likelihood_samples(X, y)))

    def aic(self, X: ArrayLike, y: ArrayLike) -> float:
        """Akaike information criterion ``-2 log L + 2 n_parameters_`` (lower is better)."""
        return -2.0 * self.log_likelihood(X, y) + 2.0 * self.n_parameters_

    def icl(self, X: ArrayLike, y: ArrayLike) -> float:
        """Integrated completed likelihood: BIC plus twice the responsibilities' entropy."""
        resp = self.responsibilities(X, y)
        entropy = -float(np.sum(resp * np.log(np.clip(resp, 1e-300, None))))
        return self.bic(X, y) + 2.0 * entropy

    def summary(
        self,
        X: ArrayLike | None = None,
        y: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        feature_names: list[str] | None = None,
    ) -> str:
        """Text table of gate and expert coefficients with standard errors, z and p-values.

        Standard errors come from the observed information (minus the Hessian of the penalised
        observed-data log-likelihood, by differentiating its analytic gradient); see
        ``moekit.estimators._inference``. Small fits store the covariance at fit time
        (``covariance_``); otherwise pass the training data ``X, y``.

        Returns
        -------
        str
        """
        from ._inference import summary_text

        return summary_text(self, X, y, sample_weight, feature_names)

    def fit_predict(
        self,
        X: ArrayLike,
        y: ArrayLike,
        sample_weight: ArrayLike | None = None,
    ) -> np.ndarray:
        """Fit, then predict on the same X; identical to ``fit(X, y).predict(X)``."""
        return self.fit(X, y, sample_weight=sample_weight).predict(X)  # type: ignore[attr-defined]
