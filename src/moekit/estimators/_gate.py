"""Gate trees of multinomial logits (Jordan & Jacobs 1994); the flat gate is a one-level tree.

Conventions used across ``moekit.estimators``:

- ``X1`` is the design matrix with a leading column of ones, shape (n_samples, n_columns);
  column 0 of every coefficient array is therefore the intercept, and it is never penalised.
- A gate *tree* with ``branching=(b_0, ..., b_{L-1})`` has, at level ``l``,
  ``prod(b_0..b_{l-1})`` nodes each splitting into ``b_l`` children; its coefficients are a
  list with one array of shape (n_nodes_l, b_l, n_columns) per level, child 0 of every node the
  reference (zeros). Leaves are numbered in mixed radix (the first level is the most
  significant digit). A flat gate is ``branching=(K,)``.
"""

from __future__ import annotations

import numpy as np

from ._logit import CurvatureRows, Factor, log_softmax, newton


def tree_shapes(branching: tuple[int, ...]) -> list[tuple[int, int]]:
    """(n_nodes, n_children) of every level of a gate tree."""
    shapes, n_nodes = [], 1
    for b in branching:
        shapes.append((n_nodes, b))
        n_nodes *= b
    return shapes


def tree_log_proba(X1: np.ndarray, gate_coefs: list[np.ndarray]) -> np.ndarray:
    """Log prior probability of every leaf, shape (n_samples, n_leaves)."""
    n = X1.shape[0]
    log_path = np.zeros((n, 1))
    for coef in gate_coefs:
        n_nodes, b, _ = coef.shape
        logits = (X1 @ coef.reshape(n_nodes * b, -1).T).reshape(n, n_nodes, b)
        log_path = (log_path[:, :, None] + log_softmax(logits)).reshape(n, n_nodes * b)
    return log_path


def tree_node_mass(resp: np.ndarray, branching: tuple[int, ...], level: int) -> np.ndarray:
    """Posterior mass of each child of each node at ``level``: shape (n, n_nodes, b)."""
    n = resp.shape[0]
    n_nodes, b = tree_shapes(branching)[level]
    return resp.reshape(n, n_nodes, b, -1).sum(axis=3)


def flat_gate_step(
    X1: np.ndarray,
    resp: np.ndarray,
    sample_weight: np.ndarray,
    coef: np.ndarray,
    alpha: float,
    logp: np.ndarray,
    *,
    n_steps: int,
    curvature: CurvatureRows | None,
    factor: Factor | None = None,
    max_age: int = 0,
) -> tuple[np.ndarray, np.ndarray, Factor | None]:
    """ECM step of a flat gate: ``n_steps`` safeguarded Newton steps on the soft targets.

    ``coef`` (K, n_columns), ``logp`` its log-probabilities (n, K) from the E-step; ``factor``
    the curvature of an earlier step, reused while at most ``max_age`` steps old. Returns the
    new coefficients, their log-probabilities (the next E-step's gate, computed once) and the
    factor to pass next time.
    """
    new, new_logp, _, factor = newton(X1, resp, sample_weight, coef, alpha, max_iter=n_steps,
                                      curvature=curvature, logp=logp, factor=factor,
                                      max_age=max_age)
    return new, new_logp, factor


def tree_m_step(
    X1: np.ndarray,
    resp: np.ndarray,
    sample_weight: np.ndarray,
    gate_coefs: list[np.ndarray],
    branching: tuple[int, ...],
    alpha: float,
    *,
    n_steps: int = 1,
    curvature: CurvatureRows | None = None,
) -> list[np.ndarray]:
    """Refit every gate of the tree on the responsibilities ``resp`` (n_samples, n_leaves).

    The gate at node ``a`` is a multinomial logit with soft targets h_ab / h_a and row weights
    ``sample_weight * h_a`` (Jordan & Jacobs 1994); ``n_steps`` safeguarded Newton steps each
    (an ECM step: the gate part of Q never decreases). ``curvature``: the rows for the Newton
    curvature (built here when omitted).
    """
    new = []
    for level, coef in enumerate(gate_coefs):
        mass = tree_node_mass(resp, branching, level)
        node_mass = mass.sum(axis=2)
        out = np.empty_like(coef)
        rows = curvature or CurvatureRows.build(X1, coef.shape[1])
        for a in range(coef.shape[0]):
            h_a = node_mass[:, a]
            targets = mass[:, a, :] / np.maximum(h_a, 1e-300)[:, None]
            out[a] = newton(X1, targets, sample_weight * h_a, coef[a], alpha, max_iter=n_steps,
                            curvature=rows)[0]
        new.append(out)
    return new


def tree_score(
    X1: np.ndarray,
    resp: np.ndarray,
    sample_weight: np.ndarray,
    gate_coefs: list[np.ndarray],
    branching: tuple[int, ...],
) -> list[np.ndarray]:
    """Gradient of the observed log-likelihood w.r.t. each level's coefficients (Fisher's identity).

    Returns arrays shaped like ``gate_coefs`` (the reference rows get zero).
    """
    n = X1.shape[0]
    grads = []
    for level, coef in enumerate(gate_coefs):
        n_nodes, b, d = coef.shape
        mass = tree_node_mass(resp, branching, level) * sample_weight[:, None, None]
        logits = (X1 @ coef.reshape(n_nodes * b, d).T).reshape(n, n_nodes, b)
        g = np.exp(log_softmax(logits))
        r = mass - mass.sum(axis=2, keepdims=True) * g
        grad = np.einsum("nab,nd->abd", r, X1)
        grad[:, 0, :] = 0.0
        grads.append(grad)
    return grads
