"""Hierarchical mixture of experts (Jordan & Jacobs 1994): a tree of softmax gates."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._regressor import MixtureOfExpertsRegressor
from ._validation import check_number


class HierarchicalMixtureOfExpertsRegressor(MixtureOfExpertsRegressor):
    """Regression experts at the leaves of a tree of multinomial-logit gates.

    With ``branching=(b_0, ..., b_{L-1})`` the root gate splits into ``b_0`` children, each
    of which splits into ``b_1``, and so on; the ``prod(branching)`` leaves are experts and
    ``g_leaf(x)`` is the product of the gate probabilities on the path. EM (Jordan & Jacobs
    1994) refits every node gate on the posterior mass of its children (an exact M-step, so the
    penalised log-likelihood never decreases between re-seeds). ``branching=(K,)`` is the flat
    mixture. The tree has many parameters: on a few hundred rows a larger ``gate_alpha`` (or
    a flat gate) usually predicts held-out rows better.

    Parameters
    ----------
    branching : tuple of int, default=(2, 2)
        Children per node at each level; every entry >= 2 (or a single level >= 1).
    expert, gate_alpha, expert_alpha, n_init, init, max_iter, tol, warm_start, random_state,
    verbose, standardize
        As in :class:`MixtureOfExpertsRegressor` (experts are never removed here, only
        re-seeded, so that the tree keeps its shape; standard errors come from differentiating
        the analytic gradient, which costs 2 x n_parameters gradient passes).

    Attributes
    ----------
    gate_coefs_ : list of ndarray
        Level ``l`` has shape (prod(branching[:l]), branching[l], n_features_in_ + 1); column 0
        the intercept, child 0 of each node the reference (zeros).
    expert_coef_, expert_scale_, n_experts_, loglik_history_, ...
        As in :class:`MixtureOfExpertsRegressor`; leaves in mixed-radix order.

    Examples
    --------
    >>> from moekit.estimators import HierarchicalMixtureOfExpertsRegressor, make_moe_regression
    >>> X, y, _ = make_moe_regression(n_samples=800, n_features=2, n_experts=4, random_state=1)
    >>> hme = HierarchicalMixtureOfExpertsRegressor(branching=(2, 2), random_state=0).fit(X, y)
    >>> hme.gate_proba(X[:5]).shape
    (5, 4)
    """

    _allow_removal = False

    def __init__(
        self,
        branching: tuple[int, ...] = (2, 2),
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
        self.branching = branching
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

    def _validate_n_experts(self) -> None:
        b = self.branching
        if not isinstance(b, (tuple, list)) or len(b) == 0:
            raise TypeError(f"branching={b!r} must be a non-empty tuple of ints, e.g. (2, 2)")
        for v in b:
            check_number("branching entry", v, 1, integer=True, fix="e.g. branching=(2, 2)")
        if len(b) > 1 and min(b) < 2:
            raise ValueError(f"branching={tuple(b)!r}: every level of a tree needs >= 2 "
                             "children; drop the levels with 1, e.g. branching=(2, 2)")

    def _branching(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.branching)

    def _online_ok(self) -> bool:
        return False  # online EM is written for the flat gate only

    @property
    def gate_coef_(self) -> np.ndarray:
        """Not defined for a tree; use ``gate_coefs_`` (one array per level)."""
        raise AttributeError("a hierarchical gate has one coefficient array per level: "
                             "use gate_coefs_")
