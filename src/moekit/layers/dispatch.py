"""Dispatch: from a :class:`~moekit.layers.routing.Routing` to expert outputs combined per token.

Legend: T tokens, D model dim, E experts, K slots per token, S = T*K token-slots, R rows of the
expert buffer (slots sorted by expert), C capacity (slots an expert takes at most).

Steps: (1) :func:`capacity_keep` decides which slots survive the capacity limit; (2) a backend runs
the experts on the kept slots and returns ``y_TD = sum_k w_TK * expert_{i_TK}(x_T)`` over kept
slots. Dropped slots contribute zero (the residual around the layer carries the token).

Backends (same signature ``(x_TD, indices_TK, weights_TK, keep_TK, experts) -> y_TD``):

- ``loop``: one expert at a time, gathering its tokens and adding back with ``index_add_``. Short
  and readable; a host sync per expert.
- ``grouped_mm``: sorts slots by expert on the device (no host sync), runs all experts as grouped
  matmuls over one buffer, and combines by gathering each token's K rows back (no atomics, so the
  result is deterministic).

Capacity: ``C = ceil(capacity_factor * T * K / E)``. With ``drop_policy="position"`` an expert
keeps slots in GShard/Switch priority order: every token's first choice before any second choice,
and within a choice rank earlier tokens first. With ``drop_policy="score"`` it keeps the slots
with the largest combine weights (ties by position).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

from moekit.kernels.grouped_mm import grouped_matmul
from moekit.layers._checks import count_values, router_dtype
from moekit.layers.experts import GroupedExperts, ModuleExperts

Backend = Literal["loop", "grouped_mm"]
BACKEND_NAMES: tuple[str, ...] = get_args(Backend)
DropPolicy = Literal["position", "score"]
DROP_POLICIES: tuple[str, ...] = get_args(DropPolicy)
Experts = GroupedExperts | ModuleExperts


def capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float | None) -> int | None:
    """Slots each expert may take: ``ceil(capacity_factor * T * K / E)``; None means dropless."""
    if capacity_factor is None:
        return None
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)


def _sort_by_expert(key_S: torch.Tensor) -> torch.Tensor:
    return torch.argsort(key_S, stable=True)


def capacity_keep(indices_TK: torch.Tensor, weights_TK: torch.Tensor, num_experts: int,
                  cap: int | None, policy: DropPolicy = "position",
                  keep_TK: torch.Tensor | None = None) -> torch.Tensor:
    """Which token-slots survive: (T, K) bool. Slots already excluded by ``keep_TK`` stay out
    and take no room. See the module docstring for the priority order."""
    T, K = indices_TK.shape
    valid_TK = torch.ones_like(indices_TK, dtype=torch.bool) if keep_TK is None else keep_TK
    if cap is None:
        return valid_TK
    # Priority order P = K*T: slot (t, k) sits at p = k*T + t.
    key_P = torch.where(valid_TK, indices_TK, num_experts).t().reshape(-1)
    if policy == "score":
        perm_P = torch.argsort(-weights_TK.t().reshape(-1).float(), stable=True)
    else:
        perm_P = torch.arange(T * K, device=indices_TK.device)
    order_P = perm_P[_sort_by_expert(key_P[perm_P])]
    key_sorted_P = key_P[order_P]
    counts = count_values(key_P, num_experts + 1)
    starts = torch.cumsum(counts, 0) - counts
    rank_P = torch.arange(T * K, device=indices_TK.device) - starts[key_sorted_P]
    keep_sorted_P = (rank_P < cap) & (key_sorted_P < num_experts)
    keep_P = torch.empty_like(keep_sorted_P).scatter_(0, order_P, keep_sorted_P)
    return keep_P.view(K, T).t()


def loop_backend(x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
                 keep_TK: torch.Tensor, experts: Experts) -> torch.Tensor:
    """Reference dispatch: for each expert, gather its tokens, run it, add the weighted output."""
    # An empty slice of x keeps y in the autograd graph even when no slot reaches an expert.
    acc = router_dtype(x_TD.dtype)
    y_TD = torch.zeros(x_TD.shape, dtype=acc, device=x_TD.device) + x_TD[:0].sum()
    for e in range(experts.num_experts):
        token_idx, slot_idx = torch.where((indices_TK == e) & keep_TK)
        if token_idx.numel() == 0:
            continue
        out = experts.forward_expert(e, x_TD[token_idx])
        y_TD = y_TD.index_add(0, token_idx, out.to(acc) * weights_TK[token_idx, slot_idx, None].to(acc))
    return y_TD.to(x_TD.dtype)


def _sum_rows(v_RD: torch.Tensor, rank_TK: torch.Tensor, valid_TK: torch.Tensor | None) -> torch.Tensor:
    """``out_TD[t] = sum_k v_RD[rank_TK[t, k]]`` over valid slots: a gather and a sum, no atomics."""
    T, K = rank_TK.shape
    if v_RD.shape[0] == 0:
        return v_RD.new_zeros(T, v_RD.shape[-1])
    g_TKD = v_RD[rank_TK.clamp(max=v_RD.shape[0] - 1).reshape(-1)].view(T, K, -1)
    if valid_TK is not None:
        g_TKD = g_TKD.masked_fill(~valid_TK.unsqueeze(-1), 0)
    return g_TKD.sum(dim=1)


class _GatherRows(torch.autograd.Function):
    """``x_RD = x_TD[token_R]``; the backward sums each token's rows by gathering (deterministic)."""

    @staticmethod
    def forward(ctx, x_TD, token_R, rank_TK, valid_TK):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(rank_TK, valid_TK)
        ctx.has_valid = valid_TK is not None
        return x_TD.index_select(0, token_R)

    @staticmethod
    def backward(ctx, grad_RD):  # type: ignore[no-untyped-def, override]
        rank_TK, valid_TK = ctx.saved_tensors
        return _sum_rows(grad_RD, rank_TK, valid_TK if ctx.has_valid else None), None, None, None


class _SumRows(torch.autograd.Function):
    """``y_TD = sum_k v_RD[rank_TK[:, k]]``; the backward is the gather ``grad_TD[token_R]``."""

    @staticmethod
    def forward(ctx, v_RD, rank_TK, valid_TK, token_R):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(token_R)
        return _sum_rows(v_RD, rank_TK, valid_TK)

    @staticmethod
    def backward(ctx, grad_TD):  # type: ignore[no-untyped-def, override]
        (token_R,) = ctx.saved_tensors
        return grad_TD.index_select(0, token_R), None, None, None


def grouped_backend(x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
                    keep_TK: torch.Tensor | None, experts: Experts,
                    cap: int | None = None) -> torch.Tensor:
    """Sorted dispatch + grouped matmuls + gather combine; no host sync, no atomics.

    ``keep_TK=None`` means every slot is kept (dropless): the buffer then holds exactly S rows
    and no masking is needed.
    """
    if not isinstance(experts, GroupedExperts):
        raise TypeError("backend='grouped_mm' needs GroupedExperts; ModuleExperts run with backend='loop'")
    T, K = indices_TK.shape
    E = experts.num_experts
    S = T * K
    full = keep_TK is None
    # Rows in the buffer: every slot when dropless, else at most E*C (a static bound, no sync).
    R = S if cap is None else min(S, E * cap)
    key_S = indices_TK.reshape(-1) if keep_TK is None else torch.where(keep_TK, indices_TK, E).reshape(-1)
    order_S = _sort_by_expert(key_S)
    row_order_R = order_S[:R]
    token_R = torch.div(row_order_R, K, rounding_mode="floor")
    expert_R = key_S[row_order_R]
    counts_E = count_values(key_S, E + 1)[:E]
    offsets_E = torch.cumsum(counts_E, 0).to(torch.int32)
    rank_TK = torch.empty_like(order_S).scatter_(
        0, order_S, torch.arange(S, device=x_TD.device)).view(T, K)
    x_RD = _GatherRows.apply(x_TD, token_R, rank_TK, keep_TK)
    out_RD = experts.forward_grouped(x_RD, offsets_E, expert_R.clamp(max=E - 1),
                                     lambda a, w, o: grouped_matmul(a, w, o, full))
    acc = router_dtype(x_TD.dtype)
    w_R = weights_TK.reshape(-1)[row_order_R].to(acc)
    if not full:
        w_R = w_R.masked_fill(expert_R >= E, 0)  # rows of dropped slots (past the last group)
    y_TD = _SumRows.apply(out_RD.to(acc) * w_R.unsqueeze(-1), rank_TK, keep_TK, token_R)
    return y_TD.to(x_TD.dtype)


BackendFn = Callable[..., torch.Tensor]


def run_experts(x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
                keep_TK: torch.Tensor | None, experts: Experts, backend: Backend,
                cap: int | None = None) -> torch.Tensor:
    """Run ``experts`` on the kept slots with ``backend``; returns ``y_TD`` in ``x_TD``'s dtype.

    ``keep_TK=None`` means every slot is kept.
    """
    if backend == "loop":
        if keep_TK is None:
            keep_TK = torch.ones_like(indices_TK, dtype=torch.bool)
        return loop_backend(x_TD, indices_TK, weights_TK, keep_TK, experts)
    return grouped_backend(x_TD, indices_TK, weights_TK, keep_TK, experts, cap)
