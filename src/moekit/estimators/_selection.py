"""Choosing the number of experts by an information criterion."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
from sklearn.base import clone

_CRITERIA = ("bic", "aic", "icl")


class NExpertsSelection(NamedTuple):
    """Result of :func:`select_n_experts`.

    Attributes
    ----------
    best_n_experts : int
    scores : dict of int to float
        Criterion value per number of experts (lower is better).
    best_estimator : estimator
        The fitted model with ``best_n_experts``.
    """

    best_n_experts: int
    scores: dict[int, float]
    best_estimator: Any


def select_n_experts(
    X: Any,
    y: Any,
    n_experts_range: Iterable[int] = range(1, 6),
    criterion: str = "bic",
    estimator: Any = None,
    sample_weight: Any = None,
) -> NExpertsSelection:
    """Fit one mixture per number of experts and keep the one with the lowest criterion.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    n_experts_range : iterable of int, default=range(1, 6)
    criterion : {"bic", "aic", "icl"}, default="bic"
    estimator : MixtureOfExpertsRegressor or MixtureOfExpertsClassifier, optional
        Template whose other parameters are kept (default: ``MixtureOfExpertsRegressor(
        n_init=3, random_state=0)``).
    sample_weight : array-like of shape (n_samples,), optional

    Returns
    -------
    NExpertsSelection
        ``(best_n_experts, scores, best_estimator)``.

    Examples
    --------
    >>> from moekit.estimators import make_moe_regression, select_n_experts
    >>> X, y, _ = make_moe_regression(n_samples=500, n_experts=2, random_state=0)
    >>> select_n_experts(X, y, [1, 2, 3]).best_n_experts
    2
    """
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not supported; use one of {list(_CRITERIA)}")
    ks = [int(k) for k in n_experts_range]
    if not ks:
        raise ValueError("n_experts_range is empty; pass e.g. range(1, 6)")
    if estimator is None:
        from ._regressor import MixtureOfExpertsRegressor

        estimator = MixtureOfExpertsRegressor(n_init=3, random_state=0)
    scores: dict[int, float] = {}
    best, best_score = None, np.inf
    for k in ks:
        model = clone(estimator).set_params(n_experts=k).fit(X, y, sample_weight=sample_weight)
        scores[k] = float(getattr(model, criterion)(X, y))
        if scores[k] < best_score:
            best, best_score = model, scores[k]
    return NExpertsSelection(int(best.n_experts), scores, best)  # type: ignore[union-attr]
