"""Starting responsibilities for EM: hard random partitions and k-means (level by level)."""

from __future__ import annotations

import numpy as np

INITS = ("auto", "kmeans", "kmeans_xy", "random")
# init="auto": restart r uses AUTO_CYCLE[r % len(AUTO_CYCLE)]
AUTO_CYCLE = ("kmeans_xy", "random", "kmeans", "random")


def kmeans_labels(F: np.ndarray, sw: np.ndarray, K: int, rng: np.random.RandomState,
                  *, n_iter: int = 25, max_rows: int = 20_000) -> np.ndarray:
    """Weighted k-means (k-means++ seeding, then Lloyd's iterations): a label per row.

    The centres are fitted on at most ``max_rows`` random rows; every row gets the nearest.
    """
    n = F.shape[0]
    fit = F if n <= max_rows else F[np.sort(rng.choice(n, size=max_rows, replace=False))]
    w = sw if n <= max_rows else np.ones(len(fit))
    sq = np.einsum("nd,nd->n", fit, fit)
    centres = np.empty((K, F.shape[1]))
    centres[0] = fit[rng.choice(len(fit), p=w / np.sum(w))]
    dist = np.maximum(sq - 2 * fit @ centres[0] + centres[0] @ centres[0], 0.0)
    for k in range(1, K):
        weights = w * dist
        total = float(np.sum(weights))
        i = rng.choice(len(fit), p=weights / total) if total > 0 else rng.randint(len(fit))
        centres[k] = fit[i]
        dist = np.minimum(dist, np.maximum(sq - 2 * fit @ centres[k] + centres[k] @ centres[k],
                                           0.0))
    labels = np.full(len(fit), -1)
    onehot = np.zeros((len(fit), K))
    rows = np.arange(len(fit))
    for _ in range(n_iter):
        new = np.argmin(-2 * fit @ centres.T + np.einsum("kd,kd->k", centres, centres), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        onehot[:] = 0.0
        onehot[rows, labels] = w
        mass = onehot.sum(axis=0)
        filled = mass > 0
        centres[filled] = (onehot.T @ fit)[filled] / mass[filled, None]
    if fit is F:
        return labels
    return np.argmin(-2 * F @ centres.T + np.einsum("kd,kd->k", centres, centres), axis=1)


def tree_kmeans_labels(F: np.ndarray, sw: np.ndarray, branching: tuple[int, ...],
                       rng: np.random.RandomState) -> np.ndarray:
    """Leaf labels from k-means applied level by level (each node's rows split into its
    children), so that leaves that share a parent start from neighbouring clusters."""
    labels = np.zeros(F.shape[0], dtype=int)
    for b in branching:
        new = labels * b
        for node in np.unique(labels):
            rows = np.flatnonzero(labels == node)
            if len(rows) >= b:
                new[rows] += kmeans_labels(F[rows], sw[rows], b, rng)
            else:
                new[rows] += np.arange(len(rows)) % b
        labels = new
    return labels


def initial_resp(Z: np.ndarray, y_cluster: np.ndarray, sw: np.ndarray,
                 branching: tuple[int, ...], method: str,
                 rng: np.random.RandomState) -> np.ndarray:
    """Starting responsibilities (n, K), K = prod(branching).

    ``"random"``: a hard random partition into K groups of (almost) equal size (flexmix's
    default); ``"kmeans"``: k-means on the standardised features ``Z``; ``"kmeans_xy"``:
    k-means on (Z, standardised target), level by level for a gate tree. k-means labels are
    softened to 0.9 / 0.1 so that no expert starts empty.
    """
    n = Z.shape[0]
    K = int(np.prod(branching))
    if method == "random" or n < 2 * K:
        labels = rng.permutation(np.arange(n) % K)
        return np.eye(K)[labels]
    F = Z
    if method == "kmeans_xy":
        Y = y_cluster.reshape(n, -1)
        F = np.column_stack([Z, (Y - Y.mean(0)) / np.maximum(Y.std(0), 1e-12)])
    labels = tree_kmeans_labels(F, sw, branching, rng)
    return 0.9 * np.eye(K)[labels] + 0.1 / K
