"""Predictive intervals: mixture quantiles (model-based) and their conformal calibration.

Model-based intervals are the ``alpha/2`` and ``1 - alpha/2`` quantiles of the fitted mixture
p(y | x): exact under the model, but the model is fitted to the same rows, so held-out coverage
falls short as the number of experts grows (overfitting).

Conformal calibration (Vovk et al. 2005; in its distributional form, Chernozhukov, Wüthrich &
Zhu 2021) scores each calibration row by how far its probability integral transform is from
the median, ``s_i = max(1/2 - F(y_i | x_i), F(y_i- | x_i) - 1/2)`` (``F(y-)`` the left limit, so
that counts work too), and widens or narrows the model's interval to the quantile levels
``1/2 -+ q`` with ``q`` the ``ceil((1 - alpha)(m + 1))``-th smallest of the m scores. With
calibration rows not used in the fit (split conformal) the held-out coverage is at least
``1 - alpha`` for exchangeable data, whatever the model; with cross-fitted scores (each row
scored by the model refitted without its fold, cross-conformal) it is close to it.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_is_fitted

from ._validation import check_number

METHODS = ("model", "conformal")


def mixture_cdf(family: Any, state: dict[str, Any], w: np.ndarray, mu: np.ndarray,
                s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """F(t_i | x_i) = sum_k w_ik F_k(t_i), for one value per row."""
    return np.einsum("nk,nk->n", w, family.cdf(t[:, None], mu, s, state))


def mixture_quantile(family: Any, state: dict[str, Any], w: np.ndarray, mu: np.ndarray,
                     s: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The q_i-quantile of each row's mixture by vectorised bisection (integers for counts).

    A bracket a few scales around the means is doubled outwards until it holds, then halved
    100 times. Levels at or beyond 0 or 1 give -inf / inf (0 / inf for counts).
    """
    q = np.broadcast_to(np.asarray(q, dtype=float), (w.shape[0],)).copy()
    discrete = family.name == "poisson"
    lo_inf, hi_inf = q <= 0.0, q >= 1.0
    q = np.clip(q, 1e-12, 1 - 1e-12)
    spread = np.where(np.isfinite(s), s, np.asarray(state.get("expert_scale_", 1.0)) * 1e3)
    width = 5.0 * np.max(spread, axis=1) + 1e-12
    lo, hi = np.min(mu, axis=1) - width, np.max(mu, axis=1) + width
    if discrete:
        lo = np.full_like(lo, -1.0)
    for _ in range(200):
        low_bad = mixture_cdf(family, state, w, mu, s, lo) >= q
        high_bad = mixture_cdf(family, state, w, mu, s, hi) < q
        if not (low_bad.any() or high_bad.any()):
            break
        lo = np.where(low_bad, lo - width, lo)
        hi = np.where(high_bad, hi + width, hi)
        width = width * 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        below = mixture_cdf(family, state, w, mu, s, mid) < q
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    out = np.ceil(hi - 1e-9) if discrete else 0.5 * (lo + hi)
    out = np.where(lo_inf, 0.0 if discrete else -np.inf, out)
    out = np.where(hi_inf, np.inf, out)
    return out + 0.0  # no negative zeros


def pit_scores(family: Any, state: dict[str, Any], w: np.ndarray, mu: np.ndarray,
               s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Conformity scores ``max(1/2 - F(y), F(y-) - 1/2)`` of observed targets, shape (n,)."""
    F = mixture_cdf(family, state, w, mu, s, y)
    F_left = mixture_cdf(family, state, w, mu, s, y - 1.0) if family.name == "poisson" else F
    return np.maximum(0.5 - F, F_left - 0.5)


def conformal_level(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((1 - alpha)(m + 1))``-th smallest score (1/2, an unbounded interval, if none)."""
    m = len(scores)
    rank = int(np.ceil((1.0 - alpha) * (m + 1)))
    if rank > m or m == 0:
        return 0.5
    return float(np.sort(scores)[rank - 1])


def _check_alpha(alpha: float) -> None:
    check_number("alpha", alpha, 0, strict=True, fix="use 0 < alpha < 1, e.g. alpha=0.1")
    if alpha >= 1:
        raise ValueError(f"alpha={alpha!r} must be < 1; use 0 < alpha < 1, e.g. alpha=0.1")


class IntervalsMixin:
    """``predict_interval`` and ``calibrate_intervals`` of the regressors (see the module
    docstring); they read ``predict_distribution`` and the family of the estimator."""

    if TYPE_CHECKING:  # provided by the estimator this is mixed into
        def predict_distribution(self, X: Any) -> Any: ...
        def _make_family(self) -> Any: ...
        def _internal_state(self) -> dict[str, Any]: ...
        def _validate_X(self, X: Any, reset: bool) -> Any: ...
        def _prepare_y(self, y: Any, reset: bool) -> Any: ...

    def predict_interval(
        self,
        X: ArrayLike,
        alpha: float = 0.1,
        *,
        method: str = "model",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Central ``1 - alpha`` predictive interval.

        ``method="model"``: the ``alpha/2`` and ``1 - alpha/2`` quantiles of the fitted mixture
        p(y | x). They are exact *under the model*; on rows not used in the fit they cover less
        than ``1 - alpha`` when the model overfits (more so as K grows).
        ``method="conformal"``: the model's quantiles at the levels that reached ``1 - alpha``
        on calibration rows (see :meth:`calibrate_intervals`, which must be called first):
        held-out coverage ``1 - alpha`` (at least, with a held-out calibration set).

        Quantiles are found by vectorised bisection; for Poisson experts they are integers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        alpha : float, default=0.1
            Miscoverage, 0 < alpha < 1.
        method : {"model", "conformal"}, default="model"

        Returns
        -------
        lower, upper : ndarray of shape (n_samples,)
        """
        _check_alpha(alpha)
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not supported; use one of "
                             f"{list(METHODS)}")
        if method == "conformal":
            if not hasattr(self, "conformity_scores_"):
                raise ValueError("method='conformal' needs calibration first: call "
                                 "calibrate_intervals(X_cal, y_cal) with held-out rows, or "
                                 "calibrate_intervals(X, y, cv=5) with the training rows")
            q = conformal_level(self.conformity_scores_, alpha)
            levels = (0.5 - q, 0.5 + q)
        else:
            levels = (alpha / 2, 1 - alpha / 2)
        w, mu, s = self.predict_distribution(X)
        family, state = self._make_family(), self._internal_state()
        return tuple(mixture_quantile(family, state, w, mu, s, np.full(len(w), lv))  # type: ignore[return-value]
                     for lv in levels)

    def calibrate_intervals(
        self,
        X: ArrayLike,
        y: ArrayLike,
        *,
        cv: int | None = None,
    ) -> Any:
        """Calibrate ``predict_interval(..., method="conformal")`` on (X, y).

        ``cv=None``: (X, y) are calibration rows *not used in the fit* (split conformal:
        held-out coverage at least ``1 - alpha`` for exchangeable rows, and less than
        ``1 - alpha + 1 / (m + 1)`` with m calibration rows). ``cv=k``: (X, y) are the
        training rows; each of k folds is scored by this model refitted without that fold
        (warm-started from this fit, so that every refit stays at the same maximum), which
        costs k short fits and gives close to nominal coverage (cross-conformal; no finite-
        sample guarantee).

        Returns
        -------
        self
        """
        check_is_fitted(self)
        if cv is None:
            self.conformity_scores_ = np.sort(self._scores(X, y))
            return self
        check_number("cv", cv, 2, integer=True, fix="use cv >= 2 folds, e.g. cv=5, or None")
        Xv = self._validate_X(X, reset=False)
        yv = np.asarray(y)
        if len(yv) != len(Xv):
            raise ValueError(f"X has {len(Xv)} rows but y has {len(yv)}; pass matching data")
        scores = np.empty(len(yv))
        fitted = {k: copy.deepcopy(v) for k, v in vars(self).items()
                  if k.endswith("_") and not k.startswith("_") and k != "conformity_scores_"}
        for train, test in KFold(int(cv), shuffle=True, random_state=0).split(Xv):
            model = clone(self).set_params(warm_start=True, verbose=0)
            for key, value in fitted.items():
                setattr(model, key, copy.deepcopy(value))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(Xv[train], yv[train])
            scores[test] = model._scores(Xv[test], yv[test])
        self.conformity_scores_ = np.sort(scores)
        return self

    def _scores(self, X: ArrayLike, y: ArrayLike) -> np.ndarray:
        w, mu, s = self.predict_distribution(X)
        yy = self._prepare_y(y, reset=False)
        if len(yy) != len(w):
            raise ValueError(f"X has {len(w)} rows but y has {len(yy)}; pass matching data")
        return pit_scores(self._make_family(), self._internal_state(), w, mu, s, yy)
