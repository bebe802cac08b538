"""Choosing the number of experts (or the tree's branching) by an information criterion."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

_CRITERIA = ("bic", "aic", "icl")


class NExpertsSelection(NamedTuple):
    """Result of :func:`select_n_experts`.

    Attributes
    ----------
    best_n_experts : int
        Experts of the chosen model (leaves, for a hierarchical one).
    scores : dict
        Criterion value per candidate (lower is better); keys are the numbers of experts, or
        the ``branching`` tuples for a hierarchical estimator.
    best_estimator : estimator
        The fitted model (or Pipeline) with the lowest criterion.
    """

    best_n_experts: int
    scores: dict[Any, float]
    best_estimator: Any


def _is_estimator(obj: Any) -> bool:
    return hasattr(obj, "fit") and hasattr(obj, "get_params")


def _final_step(estimator: Any) -> tuple[Any, str]:
    """The moekit estimator inside ``estimator`` and the prefix of its parameters."""
    if isinstance(estimator, Pipeline):
        name, last = estimator.steps[-1]
        inner, prefix = _final_step(last)
        return inner, f"{name}__{prefix}"
    return estimator, ""


def select_n_experts(
    X: Any,
    y: Any,
    n_experts_range: Iterable[Any] = range(1, 6),
    criterion: str = "bic",
    estimator: Any = None,
    sample_weight: Any = None,
) -> NExpertsSelection:
    """Fit one mixture per candidate size and keep the one with the lowest criterion.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    n_experts_range : iterable, default=range(1, 6)
        Numbers of experts; for a :class:`HierarchicalMixtureOfExpertsRegressor`, branching
        tuples such as ``[(2,), (3,), (2, 2)]`` (an int k means the flat ``(k,)``).
    criterion : {"bic", "aic", "icl"}, default="bic"
    estimator : estimator, optional
        A moekit estimator, or a :class:`~sklearn.pipeline.Pipeline` ending in one (e.g.
        ``make_pipeline(StandardScaler(), MixtureOfExpertsRegressor())``), whose other
        parameters are kept. Default ``MixtureOfExpertsRegressor(random_state=0)``. The
        criterion is computed on the data the final step sees.
    sample_weight : array-like of shape (n_samples,), optional
        Passed to the final step's ``fit``.

    Returns
    -------
    NExpertsSelection
        ``(best_n_experts, scores, best_estimator)``.

    Raises
    ------
    TypeError
        When the data and the estimator are swapped: the call is ``select_n_experts(X, y,
        estimator=est)``, not scikit-learn's ``cross_val_score(est, X, y)`` order.

    Examples
    --------
    >>> from moekit.estimators import make_moe_regression, select_n_experts
    >>> X, y, _ = make_moe_regression(n_samples=500, n_experts=2, random_state=0)
    >>> select_n_experts(X, y, [1, 2, 3]).best_n_experts
    2
    """
    if _is_estimator(X):
        raise TypeError(
            f"select_n_experts got an estimator ({type(X).__name__}) as X: the data come first "
            "and the estimator is a keyword, select_n_experts(X, y, estimator=est) (not "
            "scikit-learn's cross_val_score(est, X, y) order)")
    if _is_estimator(y) or _is_estimator(n_experts_range):
        raise TypeError("select_n_experts(X, y, n_experts_range, ...): pass the estimator as "
                        "estimator=est")
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not supported; use one of {list(_CRITERIA)}")
    if estimator is None:
        from ._regressor import MixtureOfExpertsRegressor

        estimator = MixtureOfExpertsRegressor(random_state=0)
    if not _is_estimator(estimator):
        raise TypeError(f"estimator={estimator!r} is not an estimator; pass a moekit "
                        "estimator or a Pipeline ending in one")
    inner, prefix = _final_step(estimator)
    from ._hierarchical import HierarchicalMixtureOfExpertsRegressor

    tree = isinstance(inner, HierarchicalMixtureOfExpertsRegressor)
    if not hasattr(inner, criterion):
        raise TypeError(f"the final step {type(inner).__name__} has no {criterion}(); pass a "
                        "moekit estimator or a Pipeline ending in one")
    candidates = list(n_experts_range)
    if not candidates:
        raise ValueError("n_experts_range is empty; pass e.g. range(1, 6)")
    scores: dict[Any, float] = {}
    best, best_score = None, np.inf
    for cand in candidates:
        if tree:
            key: Any = ((int(cand),) if isinstance(cand, (int, np.integer))
                        else tuple(int(b) for b in cand))
            params = {f"{prefix}branching": key}
        else:
            key = int(cand)
            params = {f"{prefix}n_experts": key}
        model = clone(estimator).set_params(**params)
        fit_kw = {} if sample_weight is None else {f"{prefix}sample_weight": sample_weight}
        if isinstance(model, Pipeline):
            model.fit(X, y, **fit_kw)
            final = _final_step(model)[0]
            Xt = model[:-1].transform(X) if len(model.steps) > 1 else X
        else:
            model.fit(X, y, sample_weight=sample_weight)
            final, Xt = model, X
        scores[key] = float(getattr(final, criterion)(Xt, y))
        if scores[key] < best_score:
            best, best_score = model, scores[key]
    if best is None:
        raise ValueError("every candidate's criterion was NaN; check the data")
    return NExpertsSelection(int(_final_step(best)[0].n_experts_), scores, best)
