"""The row plan of the fused CPU MoE path: which rows each expert takes, padded, and which thread.

Legend: T tokens, K slots per token, S = T*K slots, E experts, A active experts, P planned rows
(the kept slots sorted by expert, each expert's block padded by :func:`bucketed`).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Fixed cost of an expert call, in rows (for dealing experts to threads).
_EXPERT_OVERHEAD_ROWS = 16


@dataclass(frozen=True, kw_only=True)
class RowPlan:
    """Which planned rows each active expert takes, and which thread runs it (Python loop).

    Attributes
    ----------
    experts : active experts (at least one kept slot), ascending.
    counts, starts, padded : kept slots, first planned row and padded row count of each.
    slot_P : (P,) int64 slot (``t * K + k``) of each planned row; a pad row repeats a kept slot
        of its expert.
    valid_P : (P,) bool, False on pad rows.
    row_TK : (T, K) int64 planned row of each slot; P (the table's zero row) for dropped slots.
    parts : for each thread, the positions into ``experts`` it runs.
    """

    experts: list[int]
    counts: list[int]
    starts: list[int]
    padded: list[int]
    slot_P: torch.Tensor
    valid_P: torch.Tensor
    row_TK: torch.Tensor
    parts: list[list[int]]

    @property
    def rows(self) -> int:
        """P."""
        return int(self.slot_P.shape[0])


def deal(costs: Sequence[int], workers: int) -> list[list[int]]:
    """Largest job first to the least loaded worker (ties: lowest index); deterministic."""
    heap = [(0, w) for w in range(workers)]
    parts: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, w = heapq.heappop(heap)
        parts[w].append(i)
        heapq.heappush(heap, (load + costs[i], w))
    return [p for p in parts if p]


def bucketed(n: int) -> int:
    """``n`` rounded up to a multiple of 1/8 of the power of two at or below it (n < 16: n).

    Pads by less than 1/8 (~6 % on average) and leaves 8 sizes per octave: about 90 distinct
    row counts up to 2048, so oneDNN's primitive cache (1024 entries by default; one per shape,
    layout and thread count) stops thrashing when routing changes every step. Small blocks
    (decode) are not padded at all.
    """
    step = max(1, (1 << (n.bit_length() - 1)) >> 3) if n > 0 else 1
    return -(-n // step) * step


def plan_rows(indices_TK: torch.Tensor, keep_TK: torch.Tensor | None, num_experts: int,
              bucket: bool, workers: int) -> RowPlan:
    """The :class:`RowPlan` of a routing (one host sync, for the counts); ``bucket`` pads each
    expert's rows by :func:`bucketed` (for oneDNN)."""
    E = num_experts
    T, K = indices_TK.shape
    key_S = indices_TK.reshape(-1)
    if keep_TK is not None:
        key_S = torch.where(keep_TK.reshape(-1), key_S, E)
    order_S = torch.argsort(key_S, stable=True)
    counts_E = torch.bincount(key_S, minlength=E + 1)[:E]
    all_counts = counts_E.tolist()
    experts = [e for e, n in enumerate(all_counts) if n > 0]
    counts = [all_counts[e] for e in experts]
    padded = [bucketed(n) for n in counts] if bucket else list(counts)
    starts, total = [], 0
    for n in padded:
        starts.append(total)
        total += n
    device = indices_TK.device

    def i64(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    first_E = torch.cumsum(counts_E, 0) - counts_E  # first sorted slot of each expert
    if total == sum(counts):  # nothing padded
        slot_P = order_S[:total]
        valid_P = torch.ones(total, dtype=torch.bool, device=device)
    else:
        n_A = i64(counts)
        start_A = i64(starts)
        expert_P = torch.repeat_interleave(torch.arange(len(experts), device=device),
                                           i64(padded))
        local_P = torch.arange(total, device=device) - start_A[expert_P]
        n_P = n_A[expert_P]
        valid_P = local_P < n_P
        first_A = first_E[i64(experts)] if experts else n_A
        slot_P = order_S[first_A[expert_P] + torch.minimum(local_P, n_P - 1)]
    rank_S = torch.empty_like(order_S).scatter_(0, order_S, torch.arange(T * K, device=device))
    start_E = torch.zeros(E, dtype=torch.int64, device=device)
    if experts:
        start_E[i64(experts)] = i64(starts)
    kept_S = key_S < E
    key_c = key_S.clamp(max=E - 1)
    row_S = torch.where(kept_S, rank_S - first_E[key_c] + start_E[key_c], total)
    costs = [p + _EXPERT_OVERHEAD_ROWS for p in padded]
    return RowPlan(experts=experts, counts=counts, starts=starts, padded=padded, slot_P=slot_P,
                   valid_P=valid_P, row_TK=row_S.view(T, K),
                   parts=deal(costs, max(1, min(workers, len(experts)))))
