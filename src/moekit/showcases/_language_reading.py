"""Reading the language from a trained MoE language model's routing.

A text of verses (one per line) is read by :func:`moekit.showcases._bytes_lm.route_text`; each
token's routing becomes a multi-hot vector (which experts it reached, per layer), each verse's
the mean of its tokens' vectors. A logistic regression fitted on the routing of one text
(the Old Testament) reads the language of the tokens and verses of another (the New
Testament): the accuracy against chance says how much of the language the gate encodes.

Legend: N tokens, L MoE layers, K experts per token, E experts, G languages, F features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moekit.showcases._bytes_lm import Routed, route_text
from moekit.showcases._routing_groups import (
    expert_counts,
    expert_shares,
    pooled_features,
    readout,
    routing_features,
)

__all__ = ["GroupRouting", "language_readout", "read_bytes", "read_texts", "read_user_texts",
           "verse_ids", "without_models"]


def verse_ids(ids_N: Any) -> np.ndarray:
    """Verse number of each byte of verses joined by newlines (a newline ends its verse).

    Examples
    --------
    >>> verse_ids(np.frombuffer(b"ab\\ncd", dtype=np.uint8)).tolist()
    [0, 0, 0, 1, 1]
    """
    arr = np.asarray(ids_N.numpy() if hasattr(ids_N, "numpy") else ids_N)
    if not len(arr):
        return np.zeros(0, dtype=np.int64)
    newline = (arr == 10).astype(np.int64)
    return np.concatenate([[0], np.cumsum(newline)[:-1]])


@dataclass
class GroupRouting:
    """Routing features of several groups' texts, ready for a read-out.

    ``token_X[i]``/``token_y[i]``: tokens of the i-th text added; ``verse_X``/``verse_y``: its
    verses (mean routing vector); ``indices``: the raw ``(N, L, K)`` routing, for per-layer
    read-outs.
    """

    num_experts: int
    token_X: list[np.ndarray] = field(default_factory=list)
    token_y: list[np.ndarray] = field(default_factory=list)
    verse_X: list[np.ndarray] = field(default_factory=list)
    verse_y: list[np.ndarray] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)

    def add(self, indices_NLK: np.ndarray, segment_N: np.ndarray, group: int) -> None:
        """Add a text's routing: its tokens' multi-hot vectors and its verses' means."""
        self.add_features(routing_features(indices_NLK, self.num_experts), segment_N, group)
        self.indices.append(np.asarray(indices_NLK))

    def add_features(self, feats_NF: np.ndarray, segment_N: np.ndarray, group: int) -> None:
        """Add any per-token features (e.g. the byte itself, for a control)."""
        pooled, _ = pooled_features(feats_NF, segment_N)
        self.token_X.append(feats_NF)
        self.token_y.append(np.full(len(feats_NF), group))
        self.verse_X.append(pooled)
        self.verse_y.append(np.full(len(pooled), group))

    def tokens(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.token_X), np.concatenate(self.token_y)

    def verses(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.verse_X), np.concatenate(self.verse_y)

    def layer_tokens(self, layer: int) -> np.ndarray:
        return routing_features(np.concatenate(self.indices), self.num_experts, [layer])


def read_texts(model: Any, texts: Mapping[str, Any], groups: Sequence[str], *,
               num_experts: int, device: Any = "cpu",
               autocast_dtype: Any = None) -> tuple[GroupRouting, dict[str, Routed]]:
    """Route each group's text (byte tensor of verses joined by newlines) through ``model``."""
    routing = GroupRouting(num_experts=num_experts)
    routed: dict[str, Routed] = {}
    for g, name in enumerate(groups):
        r = route_text(model, texts[name], device=device, autocast_dtype=autocast_dtype)
        routed[name] = r
        if r.indices_NLK.shape[1]:  # the last byte predicts nothing and is not routed
            routing.add(r.indices_NLK[:-1], verse_ids(texts[name])[:-1], g)
    return routing, routed


def read_bytes(texts: Mapping[str, Any], groups: Sequence[str]) -> GroupRouting:
    """The control: each token's feature is its byte (one-hot of 256), no model at all.

    The same positions as :func:`read_texts` (every byte but the last); a read-out on these
    says how much of the language the current byte alone gives away (a Cyrillic byte, an
    accented letter), which a router must beat to show it reads context.
    """
    out = GroupRouting(num_experts=256)
    for g, name in enumerate(groups):
        ids = np.asarray(texts[name].numpy() if hasattr(texts[name], "numpy") else texts[name],
                         dtype=np.int64)[:-1]
        feats = np.zeros((len(ids), 256), dtype=np.float32)
        feats[np.arange(len(ids)), ids] = 1.0
        out.add_features(feats, verse_ids(texts[name])[:-1], g)
    return out


def language_readout(fit: GroupRouting, held_out: GroupRouting, *, n_groups: int,
                     per_layer: bool, seed: int = 0) -> dict[str, Any]:
    """Accuracy of reading the group from routing: per token, per verse (and per layer).

    Returns the read-outs of :func:`moekit.showcases._routing_groups.readout` (the fitted
    ``model`` kept, for routing other texts) under ``per_token`` and ``per_verse``, and with
    ``per_layer`` the per-token accuracy from each layer's routing alone.
    """
    tX, ty = fit.tokens()
    hX, hy = held_out.tokens()
    vX, vy = fit.verses()
    wX, wy = held_out.verses()
    out: dict[str, Any] = {
        "per_token": readout(tX, ty, hX, hy, n_groups=n_groups, seed=seed),
        "per_verse": readout(vX, vy, wX, wy, n_groups=n_groups, seed=seed),
    }
    if per_layer:
        n_layers = fit.indices[0].shape[1]
        out["per_layer"] = [readout(fit.layer_tokens(layer), ty, held_out.layer_tokens(layer),
                                    hy, n_groups=n_groups, seed=seed)["accuracy"]
                            for layer in range(n_layers)]
    return out


def without_models(readouts: Mapping[str, Any]) -> dict[str, Any]:
    """The read-out record without its fitted classifiers (for JSON)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "model"} if isinstance(v, dict) else v)
            for k, v in readouts.items()}


def read_user_texts(model: Any, texts: Mapping[str, Any], readouts: Mapping[str, Any],
                    groups: Sequence[str], *, num_experts: int, device: Any = "cpu",
                    autocast_dtype: Any = None) -> dict[str, dict[str, Any]]:
    """Route a user's texts: share per layer and expert, and the language the read-out hears.

    ``readouts`` is a :func:`language_readout` result with its fitted classifiers. The whole
    text is read as one segment by the per-verse classifier (``read_as``), and token by token
    by the per-token one (``tokens_read_as``: share of the tokens given to each language).
    """
    out: dict[str, dict[str, Any]] = {}
    for label, ids in texts.items():
        r = route_text(model, ids, device=device, autocast_dtype=autocast_dtype)
        idx = r.indices_NLK
        counts = expert_counts(idx, np.zeros(len(idx), dtype=np.int64), 1, num_experts)[0]
        feats = routing_features(idx, num_experts)
        token_pred = readouts["per_token"]["model"].predict(feats)
        whole = readouts["per_verse"]["model"].predict(feats.mean(axis=0, keepdims=True))[0]
        shares = np.bincount(token_pred, minlength=len(groups)) / max(1, len(token_pred))
        out[label] = {
            "bytes": int(len(idx)), "counts": counts.tolist(),
            "share": expert_shares(counts).tolist(),
            "read_as": groups[int(whole)],
            "tokens_read_as": {g: float(v) for g, v in zip(groups, shares)},
        }
    return out
