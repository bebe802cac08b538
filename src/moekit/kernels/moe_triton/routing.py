"""Routing metadata for the Triton MoE kernels, built on the device with no host sync.

Legend: T tokens, K slots per token, S = T*K token-slots (slot s = t*K + k), E experts, R rows of
the expert buffer (slots sorted by expert; R = S), G tiles (a host-computable bound on the number
of ``block_m``-row tiles).

Rows of expert e are ``offsets_E1[e]:offsets_E1[e+1]`` of the sorted buffer; dropped slots
(``keep_TK`` False) sort after every expert and belong to no tile. Tile g covers rows
``tile_row_G[g] : min(tile_row_G[g] + block_m, offsets_E1[e+1])`` of expert
``e = tile_expert_G[g]``; tiles past the last real one have ``tile_expert_G == E`` and do nothing.

The bound: expert e needs ``ceil(c_e / block_m) <= c_e // block_m + 1`` tiles, and only experts
with ``c_e > 0`` need any, so ``G = S // block_m + min(E, S)`` always suffices. Every size here
comes from shapes (T, K, E, block_m), so a CUDA graph or a compiled graph stays static.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RoutingMeta(NamedTuple):
    """What the kernels need to find their rows (all int32, on the routing's device).

    slot_R : (S,) the slot ``t*K + k`` held by sorted row r (its token is ``slot // K``).
    offsets_E1 : (E+1,) exclusive prefix sum of the kept slots per expert.
    tile_expert_G : (G,) expert of tile g, or E for a tile with no rows.
    tile_row_G : (G,) first row of tile g.
    """

    slot_R: torch.Tensor
    offsets_E1: torch.Tensor
    tile_expert_G: torch.Tensor
    tile_row_G: torch.Tensor


def num_tiles_bound(num_slots: int, num_experts: int, block_m: int) -> int:
    """``G = S // block_m + min(E, S)``: never fewer tiles than the routing can need."""
    return num_slots // block_m + min(num_experts, num_slots)


def routing_meta(indices_TK: torch.Tensor, keep_TK: torch.Tensor | None, num_experts: int,
                 block_m: int) -> RoutingMeta:
    """Sort the slots by expert and cut each expert's rows into ``block_m``-row tiles.

    Uses only device ops whose output sizes come from the input shapes (a scatter-add for the
    counts, a stable sort, cumulative sums, a sorted search): no ``.item()``, no ``nonzero``.
    Indices must lie in ``[0, E)``; :func:`~moekit.kernels.moe_triton.op.moe_ffn_triton` checks.
    """
    E = num_experts
    device = indices_TK.device
    key_S = indices_TK.reshape(-1)
    if keep_TK is not None:
        key_S = torch.where(keep_TK.reshape(-1), key_S, E)
    S = key_S.shape[0]
    # Stable: within an expert, rows keep slot order, so the layout (and every sum) is reproducible.
    slot_R = torch.argsort(key_S, stable=True).to(torch.int32)
    counts_E1 = torch.zeros(E + 1, dtype=torch.int32, device=device).scatter_add_(
        0, key_S, torch.ones(S, dtype=torch.int32, device=device))
    counts_E = counts_E1[:E]
    offsets_E1 = torch.zeros(E + 1, dtype=torch.int32, device=device)
    offsets_E1[1:] = torch.cumsum(counts_E, 0)
    tiles_E = torch.div(counts_E + (block_m - 1), block_m, rounding_mode="floor")
    tile_end_E = torch.cumsum(tiles_E, 0).to(torch.int32)
    G = num_tiles_bound(S, E, block_m)
    g_G = torch.arange(G, dtype=torch.int32, device=device)
    tile_expert_G = torch.searchsorted(tile_end_E, g_G, right=True, out_int32=True)
    e_G = tile_expert_G.clamp(max=E - 1).long()
    first_tile_G = tile_end_E[e_G] - tiles_E[e_G]
    tile_row_G = (offsets_E1[e_G] + (g_G - first_tile_G) * block_m).to(torch.int32)
    return RoutingMeta(slot_R, offsets_E1, tile_expert_G, tile_row_G)
