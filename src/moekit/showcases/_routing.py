"""Reading what a trained network's routers did, for the neural showcases (speech, vision).

:func:`record_routing` runs a model over examples and keeps, for every MoE layer, the expert of
each token-slot (sparse :class:`~moekit.layers.MoELayer`, from ``layer.stats.indices``) or the
share of each example's output that each expert produced (:class:`~moekit.layers.SoftMoE`, from
its combine weights). The summaries below turn that into what a reader looks at: the share of
each group's (language's, class's, source's) token-slots per expert and layer, the information
the expert choice carries about the group, and how well a linear classifier reads the group
from the routing alone on held-out examples.

Legend: n examples, N tokens per example (frames, patches; 1 for a whole-example token),
K slots per token, E experts, G groups, S Soft MoE slots (E * P), D model dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers import MoELayer, SoftMoE

__all__ = ["ModelRouting", "expert_group_information", "group_counts", "group_readability",
           "group_sums",
           "record_routing", "routing_profile", "share_table", "soft_moe_weights", "top_experts_table"]


def soft_moe_weights(layer: SoftMoE, x_BND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The dispatch and combine weights a :class:`~moekit.layers.SoftMoE` uses on ``x``.

    Recomputed from the layer's public parameters ``phi`` and ``scale`` exactly as its forward
    does (a test rebuilds the layer's output from them, so a change there is caught).

    Returns
    -------
    dispatch_BNS, combine_BNS : tensors of shape (B, N, S), float32
        ``dispatch`` sums to 1 over the tokens of each slot, ``combine`` over the slots of each
        token; slot ``s`` belongs to expert ``s // slots_per_expert``.
    """
    xf = x_BND.float()
    phi_DS = layer.phi.float()
    if layer.scale is not None:
        xf = F.normalize(xf, dim=-1)
        phi_DS = layer.scale.float() * F.normalize(phi_DS, dim=0)
    logits_BNS = xf @ phi_DS
    return logits_BNS.softmax(dim=1), logits_BNS.softmax(dim=2)


@dataclass(frozen=True, kw_only=True)
class ModelRouting:
    """What :func:`record_routing` saw.

    Attributes
    ----------
    logits : ndarray of shape (n, C), float32
        The model's outputs (so accuracy and routing come from one pass).
    sparse : list of ndarray of shape (n, N, K), int64
        Per sparse MoE layer (in model order): the expert of each token-slot, -1 where dropped.
    soft : list of ndarray of shape (n, E), float64
        Per Soft MoE layer: each expert's share of the example's combine weight (mean over its
        tokens; rows sum to 1).
    num_experts : list of int
        Experts of each layer, sparse layers first, then soft ones (the order of the lists).
    """

    logits: np.ndarray
    sparse: list[np.ndarray]
    soft: list[np.ndarray]
    num_experts: list[int]


@torch.no_grad()
def record_routing(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 512,
                   device: str | torch.device = "cpu") -> ModelRouting:
    """Run ``model`` in eval mode over ``inputs`` (in batches) and record every layer's routing.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of ``inputs`` to logits ``(B, C)``; its MoE layers are found by type.
    inputs : tensor of shape (n, ...)
    batch_size : int
    device : str or torch.device
        Where the model is; batches are moved there.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    sparse_layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    soft_layers = [m for m in model.modules() if isinstance(m, SoftMoE)]
    soft_inputs: dict[int, torch.Tensor] = {}

    def keep_input(index: int) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            soft_inputs[index] = args[0].detach()
        return hook

    handles = [layer.register_forward_pre_hook(keep_input(i))
               for i, layer in enumerate(soft_layers)]
    logits: list[np.ndarray] = []
    sparse: list[list[np.ndarray]] = [[] for _ in sparse_layers]
    soft: list[list[np.ndarray]] = [[] for _ in soft_layers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start: start + batch_size].to(device)
            out = model(batch)
            logits.append(out.float().cpu().numpy())
            for i, moe in enumerate(sparse_layers):
                if moe.stats is None:
                    raise RuntimeError("an MoE layer recorded no routing in the forward")
                idx_TK = moe.stats.indices
                sparse[i].append(idx_TK.reshape(len(batch), -1, idx_TK.shape[-1]).cpu().numpy())
            for i, soft_layer in enumerate(soft_layers):
                _, combine_BNS = soft_moe_weights(soft_layer, soft_inputs[i])
                B, N, S = combine_BNS.shape
                per_expert_BNE = combine_BNS.view(B, N, soft_layer.num_experts, -1).sum(dim=-1)
                soft[i].append(per_expert_BNE.mean(dim=1).double().cpu().numpy())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ModelRouting(
        logits=np.concatenate(logits),
        sparse=[np.concatenate(parts).astype(np.int64) for parts in sparse],
        soft=[np.concatenate(parts) for parts in soft],
        num_experts=[int(m.num_experts) for m in sparse_layers]
        + [int(m.num_experts) for m in soft_layers])


def _check_groups(groups: np.ndarray, n: int, n_groups: int) -> np.ndarray:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}; give one group per example ({n})")
    if n and (g.min() < 0 or g.max() >= n_groups):
        raise ValueError(f"groups must be integers in [0, n_groups={n_groups})")
    return g.astype(np.int64)


def group_counts(indices_nNK: np.ndarray, groups: np.ndarray, *, n_groups: int,
                 n_experts: int) -> np.ndarray:
    """How many token-slots of each group's examples went to each expert.

    Every token-slot of an example counts for the example's group; dropped slots (-1) count for
    none.

    Returns
    -------
    ndarray of shape (G, E), float64

    Examples
    --------
    >>> idx = np.array([[[0], [1]], [[1], [-1]]])  # 2 examples, 2 tokens, top-1
    >>> group_counts(idx, np.array([0, 1]), n_groups=2, n_experts=2)
    array([[1., 1.],
           [0., 1.]])
    """
    from moekit.showcases._routing_groups import expert_counts

    idx = np.asarray(indices_nNK)
    if idx.ndim != 3:
        raise ValueError(f"indices must have shape (n, N, K), got {idx.shape}")
    g = _check_groups(groups, idx.shape[0], n_groups)
    n, N, K = idx.shape
    counts_G1E = expert_counts(idx.reshape(n * N, 1, K), np.repeat(g, N), n_groups, n_experts)
    return counts_G1E[:, 0, :].astype(np.float64)


def group_sums(profile_nE: np.ndarray, groups: np.ndarray, *, n_groups: int) -> np.ndarray:
    """Sum of each group's examples' expert shares (for Soft MoE: expected counts per expert).

    Examples
    --------
    >>> group_sums(np.array([[0.75, 0.25], [0.5, 0.5], [0.0, 1.0]]), np.array([0, 0, 1]),
    ...            n_groups=2)
    array([[1.25, 0.75],
           [0.  , 1.  ]])
    """
    prof = np.asarray(profile_nE, dtype=np.float64)
    if prof.ndim != 2:
        raise ValueError(f"profile must have shape (n, E), got {prof.shape}")
    g = _check_groups(groups, prof.shape[0], n_groups)
    out = np.zeros((n_groups, prof.shape[1]))
    np.add.at(out, g, prof)
    return out


def routing_profile(indices_nNK: np.ndarray, *, n_experts: int) -> np.ndarray:
    """Each example's share of token-slots per expert (rows sum to 1; 0 where all dropped).

    Returns
    -------
    ndarray of shape (n, E), float64

    Examples
    --------
    >>> routing_profile(np.array([[[0, 2], [2, -1]]]), n_experts=3)
    array([[0.33333333, 0.        , 0.66666667]])
    """
    idx = np.asarray(indices_nNK)
    if idx.ndim != 3:
        raise ValueError(f"indices must have shape (n, N, K), got {idx.shape}")
    n = idx.shape[0]
    counts = np.zeros((n, n_experts))
    rows = np.broadcast_to(np.arange(n)[:, None, None], idx.shape)
    kept = idx >= 0
    np.add.at(counts, (rows[kept], idx[kept]), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def expert_group_information(counts_GE: np.ndarray) -> float:
    """Share of the group's entropy that the expert choice removes: I(group; expert) / H(group).

    Computed from the joint counts of token-slots (:func:`group_counts`): 1 when every expert
    serves one group only, 0 when the experts are chosen independently of the group.

    Examples
    --------
    >>> expert_group_information(np.array([[5, 0], [0, 5]]))
    1.0
    >>> expert_group_information(np.array([[3, 1], [3, 1]]))
    0.0
    """
    from moekit.showcases._routing_groups import mutual_information_bits

    c = np.asarray(counts_GE, dtype=np.float64)
    if c.ndim != 2 or (c < 0).any() or c.sum() <= 0:
        raise ValueError("counts must be a (G, E) array of non-negative counts, not all zero")
    pg = c.sum(axis=1) / c.sum()
    h_bits = float(-(pg[pg > 0] * np.log2(pg[pg > 0])).sum())
    return 0.0 if h_bits <= 0 else max(0.0, min(1.0, mutual_information_bits(c) / h_bits))


def group_readability(profile_train: np.ndarray, groups_train: np.ndarray,
                      profile_test: np.ndarray, groups_test: np.ndarray, *,
                      seed: int = 0) -> dict[str, float]:
    """How well a group can be read from routing alone, on held-out examples.

    A multinomial logistic regression is fitted on the training examples' routing profiles
    (:func:`routing_profile` of every layer, side by side) and scored on the test examples.

    Returns
    -------
    dict
        ``accuracy`` on the test examples, ``chance`` (the most frequent training group's share
        of the test examples) and ``n_groups``.
    """
    from moekit.showcases._routing_groups import readout

    Xtr, Xte = np.asarray(profile_train, float), np.asarray(profile_test, float)
    ytr, yte = np.asarray(groups_train), np.asarray(groups_test)
    if Xtr.ndim != 2 or Xte.ndim != 2 or Xtr.shape[1] != Xte.shape[1]:
        raise ValueError(f"profiles must be 2-D with the same columns, got {Xtr.shape} and "
                         f"{Xte.shape}")
    if len(Xtr) != len(ytr) or len(Xte) != len(yte):
        raise ValueError("give one group per profile row")
    if len(np.unique(ytr)) < 2:
        chance = float(np.mean(yte == ytr[0])) if len(ytr) else 0.0
        return {"accuracy": chance, "chance": chance, "n_groups": 1.0}
    n_groups = int(max(ytr.max(), yte.max() if len(yte) else 0)) + 1
    result = readout(Xtr, ytr, Xte, yte, n_groups=n_groups, seed=seed, C=10.0, max_iter=2000)
    return {"accuracy": result["accuracy"], "chance": result["chance"],
            "n_groups": float(len(np.unique(np.concatenate([ytr, yte]))))}


def share_table(counts_GE: np.ndarray, group_names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows for a report table: each group's share of token-slots per expert (percent)."""
    c = np.asarray(counts_GE, dtype=np.float64)
    totals = c.sum(axis=1, keepdims=True)
    share = np.divide(c, totals, out=np.zeros_like(c), where=totals > 0)
    return [{"group": name, **{f"e{e}": round(100 * float(v), 1) for e, v in enumerate(row)}}
            for name, row in zip(group_names, share)]


def top_experts_table(counts_GE: np.ndarray, group_names: Sequence[str], *,
                      top: int = 3) -> list[dict[str, Any]]:
    """Rows for a report table: each group's ``top`` most used experts with their share.

    Compact where :func:`share_table` would need a column per expert (32 experts and more).

    Examples
    --------
    >>> top_experts_table(np.array([[1, 6, 3]]), ["de"], top=2)
    [{'group': 'de', 'most used': 'expert 1: 60.0%', 'next': 'expert 2: 30.0%', 'together': '90.0%'}]
    """
    c = np.asarray(counts_GE, dtype=np.float64)
    labels = ["most used"] + ["next"] * (top > 1) + [f"#{i + 1}" for i in range(2, top)]
    rows = []
    for name, row in zip(group_names, c):
        total = row.sum()
        order = np.argsort(-row, kind="stable")[:top]
        share = row[order] / total if total > 0 else np.zeros(len(order))
        rows.append({"group": name, **{label: f"expert {int(e)}: {100 * v:.1f}%"
                                       for label, e, v in zip(labels, order, share)},
                     "together": f"{100 * share.sum():.1f}%"})
    return rows
