"""Routing by group: which experts each kind of input (a language, an accent, a class) reaches,
and how well the kind can be read back from the routing alone.

Legend: N tokens, L MoE layers, K slots per token, E experts, G groups, S segments (verses,
clips), F features (``L * E``).

The routing of N tokens through a model with L MoE layers is an integer array
``indices_NLK``: the expert of each token-slot in each layer, ``-1`` where a slot was dropped
(the convention of :attr:`moekit.layers.RoutingStats.indices`). Everything here is NumPy (and
scikit-learn for the read-out); the torch side that produces ``indices_NLK`` lives with the
model that is routed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["expert_counts", "expert_shares", "mutual_information_bits", "pooled_features",
           "readout", "routing_features"]


def _check_indices(indices_NLK: np.ndarray, num_experts: int) -> np.ndarray:
    idx = np.asarray(indices_NLK)
    if idx.ndim != 3:
        raise ValueError(f"indices must have shape (tokens, layers, top_k), got {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integers (expert ids, -1 for a dropped slot), got "
                        f"dtype {idx.dtype}")
    if idx.size and (idx.min() < -1 or idx.max() >= num_experts):
        raise ValueError(f"indices must lie in [-1, {num_experts - 1}] for num_experts="
                         f"{num_experts}, got values in [{idx.min()}, {idx.max()}]")
    return idx


def expert_counts(indices_NLK: np.ndarray, groups_N: np.ndarray, n_groups: int,
                  num_experts: int) -> np.ndarray:
    """Token-slots of each group that reached each expert, per layer.

    Parameters
    ----------
    indices_NLK : int array of shape (N, L, K)
        Expert of each token-slot per layer; ``-1`` (a dropped slot) is not counted.
    groups_N : int array of shape (N,)
        Group of each token, in ``0 .. n_groups - 1``.
    n_groups, num_experts : int

    Returns
    -------
    ndarray of shape (G, L, E), int64

    Examples
    --------
    >>> import numpy as np
    >>> idx = np.array([[[0]], [[1]], [[1]]])        # 3 tokens, 1 layer, top-1
    >>> expert_counts(idx, np.array([0, 0, 1]), 2, 2)[:, 0]
    array([[1, 1],
           [0, 1]])
    """
    idx = _check_indices(indices_NLK, num_experts)
    g = np.asarray(groups_N)
    if g.shape != (idx.shape[0],):
        raise ValueError(f"groups must have shape ({idx.shape[0]},) (one per token), got {g.shape}")
    if g.size and (g.min() < 0 or g.max() >= n_groups):
        raise ValueError(f"groups must lie in [0, {n_groups - 1}], got [{g.min()}, {g.max()}]")
    n, n_layers, k = idx.shape
    counts = np.zeros((n_groups, n_layers, num_experts + 1), dtype=np.int64)
    layer = np.broadcast_to(np.arange(n_layers)[None, :, None], idx.shape)
    group = np.broadcast_to(g[:, None, None], idx.shape)
    expert = np.where(idx < 0, num_experts, idx)  # dropped slots go to a column cut off below
    np.add.at(counts, (group.ravel(), layer.ravel(), expert.ravel()), 1)
    return counts[:, :, :num_experts]


def expert_shares(counts_GLE: np.ndarray) -> np.ndarray:
    """Normalise counts per group and layer: the share of a group's slots each expert took.

    Rows without any slot stay 0.
    """
    c = np.asarray(counts_GLE, dtype=np.float64)
    total = c.sum(axis=-1, keepdims=True)
    return np.divide(c, total, out=np.zeros_like(c), where=total > 0)


def mutual_information_bits(counts_GE: np.ndarray) -> float:
    """Mutual information (bits) between group and expert under the empirical joint of a layer.

    0 when every group spreads over the experts the same way; ``log2(G)`` at most, reached when
    the experts tell every group apart. A one-number summary of a routing heatmap.

    Examples
    --------
    >>> mutual_information_bits([[10, 0], [0, 10]])     # two groups, each its own expert
    1.0
    >>> mutual_information_bits([[5, 5], [5, 5]])
    0.0
    """
    c = np.asarray(counts_GE, dtype=np.float64)
    if c.ndim != 2 or (c < 0).any():
        raise ValueError(f"counts must be a non-negative (groups, experts) array, got shape "
                         f"{c.shape}")
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c / total
    pg = p.sum(axis=1, keepdims=True)
    pe = p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float(max(0.0, np.sum(p[nz] * np.log2(p[nz] / (pg @ pe)[nz]))))


def routing_features(indices_NLK: np.ndarray, num_experts: int,
                     layers: Sequence[int] | None = None) -> np.ndarray:
    """Multi-hot routing vector per token: 1 for each expert a token reached, per layer.

    Returns
    -------
    ndarray of shape (N, len(layers) * E), float32
        Column ``j * E + e`` is 1 when the token reached expert ``e`` in the ``j``-th layer
        asked for (all layers by default).
    """
    idx = _check_indices(indices_NLK, num_experts)
    chosen = list(range(idx.shape[1])) if layers is None else list(layers)
    n = idx.shape[0]
    out = np.zeros((n, len(chosen), num_experts + 1), dtype=np.float32)
    rows = np.arange(n)
    for j, layer in enumerate(chosen):
        for slot in range(idx.shape[2]):
            e = np.where(idx[:, layer, slot] < 0, num_experts, idx[:, layer, slot])
            out[rows, j, e] = 1.0
    return out[:, :, :num_experts].reshape(n, len(chosen) * num_experts)


def pooled_features(features_NF: np.ndarray, segments_N: np.ndarray) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Mean routing vector per segment (a verse, a clip): the share of its slots per expert.

    Returns
    -------
    pooled_SF : ndarray of shape (S, F)
        One row per distinct segment id, in increasing order of id.
    segment_ids_S : ndarray of shape (S,)
    """
    x = np.asarray(features_NF, dtype=np.float64)
    seg = np.asarray(segments_N)
    if seg.shape != (x.shape[0],):
        raise ValueError(f"segments must have shape ({x.shape[0]},), got {seg.shape}")
    ids, inverse = np.unique(seg, return_inverse=True)
    sums = np.zeros((len(ids), x.shape[1]))
    np.add.at(sums, inverse, x)
    return sums / np.bincount(inverse, minlength=len(ids))[:, None], ids


def readout(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, test_y: np.ndarray,
            *, n_groups: int, seed: int = 0, max_iter: int = 500,
            C: float = 1.0) -> dict[str, Any]:
    """Fit a multinomial logistic regression on routing features; score it on held-out rows.

    Chance is what a reader that ignores the routing scores: always the most frequent training
    group, evaluated on the test rows. ``C`` is the inverse L2 strength of the regression.

    Returns
    -------
    dict
        ``accuracy``, ``chance``, ``n_train``, ``n_test``, ``confusion`` (G x G counts, rows the
        true group, columns the predicted one) and ``model`` (the fitted classifier; drop it
        before writing JSON).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    ytr, yte = np.asarray(train_y), np.asarray(test_y)
    if len(np.unique(ytr)) < 2:
        raise ValueError("the read-out needs training rows of at least two groups, got "
                         f"{np.unique(ytr).tolist()}")
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(np.asarray(train_X), ytr)
    pred = clf.predict(np.asarray(test_X))
    confusion = np.zeros((n_groups, n_groups), dtype=np.int64)
    np.add.at(confusion, (yte, pred), 1)
    majority = np.bincount(ytr, minlength=n_groups).argmax()
    return {"accuracy": float(np.mean(pred == yte)) if len(yte) else math.nan,
            "chance": float(np.mean(yte == majority)) if len(yte) else math.nan,
            "n_train": int(len(ytr)), "n_test": int(len(yte)),
            "confusion": confusion.tolist(), "model": clf}
