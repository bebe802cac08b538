"""Routing statistics of one forward: load per expert, drops, router entropy (all detached).

Legend: T tokens, E experts, K slots per token, R ranks of an expert-parallel group.

Under expert parallelism (:mod:`moekit.parallel`) the statistics describe this rank's tokens, and
``stats.comm`` (:class:`CommStats`) adds the token traffic of the forward; in a single process
``comm`` is None and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moekit.layers._checks import count_values


@dataclass(frozen=True)
class CommStats:
    """Token traffic of one forward of a layer under expert parallelism (CPU tensors).

    The dispatch sends each token once to every rank holding at least one of its kept experts;
    that rank returns one row, the weighted sum of its experts' outputs. So each direction moves
    ``pairs[s, d]`` rows from rank s to rank d (and back), ``row_bytes`` each; rows a rank keeps
    for itself (the diagonal) are copied locally and cross no wire.

    Attributes
    ----------
    rank : this rank's index in the expert-parallel group.
    pairs : (R, R) int64 distinct (token, destination rank) pairs source rank s sent to rank d.
    tokens : (R,) int64 tokens each rank routed in this forward.
    slots : (R,) int64 expert slots each rank computed (kept slots of the experts it holds).
    row_bytes : bytes of one token row (``d_model * element size`` of the layer's input).
    metadata_row_bytes : bytes of routing metadata sent with each row in the dispatch (the K
        combine weights and K local expert ids, in the router's float dtype).
    """

    rank: int
    pairs: torch.Tensor
    tokens: torch.Tensor
    slots: torch.Tensor
    row_bytes: int
    metadata_row_bytes: int

    @property
    def bytes_sent(self) -> torch.Tensor:
        """(R,) int64 token bytes each rank sends to other ranks, per direction."""
        return (self.pairs.sum(dim=1) - self.pairs.diagonal()) * self.row_bytes

    @property
    def bytes_received(self) -> torch.Tensor:
        """(R,) int64 token bytes each rank receives from other ranks, per direction."""
        return (self.pairs.sum(dim=0) - self.pairs.diagonal()) * self.row_bytes

    def imbalance(self) -> float:
        """max / mean of the expert slots per rank: 1.0 is balanced, R means one rank did all."""
        slots = self.slots.float()
        return float(slots.max() / slots.mean()) if float(slots.sum()) > 0 else 1.0


@dataclass(frozen=True)
class RoutingStats:
    """Routing statistics of one forward (all tensors detached).

    Attributes
    ----------
    tokens_per_expert : (E,) int64 token-slots each expert processed (after capacity drops).
    load : (E,) float32 fraction of processed slots per expert (sums to 1; uniform = 1/E).
    dropped_fraction : scalar, fraction of requested slots dropped by capacity (for
        ``expert_choice``: fraction of tokens no expert picked).
    router_entropy : scalar, mean entropy (nats) of the router's distribution per token.
    indices : (T, K) expert of each token-slot, -1 where the slot was dropped.
    comm : :class:`CommStats` of the forward under expert parallelism; None in a single process.
    """

    tokens_per_expert: torch.Tensor
    load: torch.Tensor
    dropped_fraction: torch.Tensor
    router_entropy: torch.Tensor
    indices: torch.Tensor
    comm: CommStats | None = None

    def balance(self) -> float:
        """max load / mean load: 1.0 is perfectly balanced, E means one expert took everything."""
        return load_balance(self.load)


def load_balance(load_E: torch.Tensor) -> float:
    """max / mean of a load per expert ``(E,)`` (shares or counts): 1.0 is perfectly balanced."""
    load = load_E.detach().float()
    return float(load.max() / load.mean().clamp_min(1e-12)) if load.numel() else 1.0


@torch.no_grad()
def routing_stats(indices_TK: torch.Tensor, keep_TK: torch.Tensor | None, probs_TE: torch.Tensor,
                  num_experts: int, router_keep_TK: torch.Tensor | None = None) -> RoutingStats:
    """Statistics of one routing decision.

    Parameters
    ----------
    indices_TK : (T, K) expert of each slot.
    keep_TK : (T, K) bool slots that reached their expert, or None for all.
    probs_TE : (T, E) the router's distribution over experts per token (rows sum to 1).
    num_experts : E.
    router_keep_TK : the router's own selection (``Routing.keep_TK``, expert choice) when there is
        one: the dropped fraction then counts tokens no expert picked.
    """
    if keep_TK is None:
        keep_TK = torch.ones_like(indices_TK, dtype=torch.bool)
    kept_TK = torch.where(keep_TK, indices_TK, -1)
    tokens_E = count_values(torch.where(keep_TK, indices_TK, num_experts), num_experts + 1)[:num_experts]
    load_E = tokens_E.float() / tokens_E.sum().clamp_min(1).float()
    if router_keep_TK is not None:
        dropped = (~keep_TK.any(dim=1)).sum().float() / max(keep_TK.shape[0], 1)
    else:
        dropped = 1.0 - keep_TK.float().sum() / max(keep_TK.numel(), 1)
    entropy = -(probs_TE * probs_TE.clamp_min(1e-20).log()).sum(dim=-1).mean() \
        if probs_TE.shape[0] else probs_TE.new_zeros(())
    dropped_t = torch.as_tensor(dropped, dtype=torch.float32, device=probs_TE.device)
    return RoutingStats(tokens_E, load_E, dropped_t, entropy, kept_TK)
