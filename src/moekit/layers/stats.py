"""Routing statistics of one forward: load per expert, drops, router entropy (all detached).

Legend: T tokens, E experts, K slots per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moekit.layers._checks import count_values


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
    """

    tokens_per_expert: torch.Tensor
    load: torch.Tensor
    dropped_fraction: torch.Tensor
    router_entropy: torch.Tensor
    indices: torch.Tensor

    def balance(self) -> float:
        """max load / mean load: 1.0 is perfectly balanced, E means one expert took everything."""
        load = self.load.float()
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
