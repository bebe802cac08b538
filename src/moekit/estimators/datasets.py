"""Synthetic mixtures of experts with known parameters, for tests and demos."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils import check_random_state


def make_moe_regression(
    n_samples: int = 1000,
    n_features: int = 2,
    n_experts: int = 3,
    noise: float = 0.1,
    random_state: Any = None,
    gate_strength: float = 4.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Draw (X, y) from a Gaussian mixture of linear experts with a softmax gate.

    ``x ~ N(0, I)``, expert ``z ~ softmax(gate_coef @ [1, x])``, and
    ``y = expert_coef[z] @ [1, x] + noise * N(0, 1)``.

    Parameters
    ----------
    n_samples, n_features, n_experts : int
    noise : float
        Standard deviation of every expert's Gaussian noise (> 0).
    random_state : int, RandomState or None
    gate_strength : float
        Scale of the gate coefficients: larger means sharper regimes.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
    truth : dict
        ``gate_coef`` (n_experts, n_features + 1), row 0 zeros (reference), column 0 the
        intercept; ``expert_coef`` (n_experts, n_features + 1); ``expert_scale``
        (n_experts,); ``labels`` (n_samples,) the expert that generated each row.

    Examples
    --------
    >>> X, y, truth = make_moe_regression(n_samples=100, n_features=3, n_experts=2,
    ...                                   random_state=0)
    >>> X.shape, y.shape, truth["expert_coef"].shape
    ((100, 3), (100,), (2, 4))
    """
    for name, v in (("n_samples", n_samples), ("n_features", n_features),
                    ("n_experts", n_experts)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={v!r} must be an int >= 1")
    if not noise > 0:
        raise ValueError(f"noise={noise!r} must be > 0, e.g. noise=0.1")
    rng = check_random_state(random_state)
    d = n_features + 1
    X = rng.normal(size=(n_samples, n_features))
    X1 = np.hstack([np.ones((n_samples, 1)), X])
    gate = np.zeros((n_experts, d))
    if n_experts > 1:
        directions = rng.normal(size=(n_experts - 1, n_features))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        gate[1:, 1:] = gate_strength * directions
        gate[1:, 0] = rng.normal(scale=0.5, size=n_experts - 1)
    expert = rng.normal(scale=2.0, size=(n_experts, d))
    expert[:, 0] = 3.0 * np.arange(n_experts) - 1.5 * (n_experts - 1)  # distinct levels
    logits = X1 @ gate.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.uniform(size=(n_samples, 1))).argmax(1)
    y = np.einsum("nd,nd->n", X1, expert[labels]) + noise * rng.normal(size=n_samples)
    truth = {"gate_coef": gate, "expert_coef": expert,
             "expert_scale": np.full(n_experts, float(noise)), "labels": labels}
    return X, y, truth
