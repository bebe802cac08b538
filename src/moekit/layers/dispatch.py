"""Dispatch and combine: from a :class:`~moekit.layers.routing.Routing` to expert rows and back.

Legend: T tokens, D model dim, E experts, K slots per token, S = T*K token-slots, R rows of the
expert buffer (kept slots sorted by expert, then any rows of dropped slots), C capacity (slots an
expert takes at most).

The seam between routing and experts (torchtitan's ``TokenDispatcher`` shape)::

    x_RD, tokens_per_expert_E, meta = dispatcher.dispatch(x_TD, routing, keep_TK)
    y_RD = experts(x_RD, tokens_per_expert_E)            # experts see nothing else
    y_TD = dispatcher.combine(y_RD, meta)                # sum_k w_TK * y of each kept slot

Rows of expert e are ``x_RD[n_0 + ... + n_{e-1} : n_0 + ... + n_e]``; rows past the last expert's
(dropped slots, when ``keep_TK`` drops some) are ignored by the experts and never reach a token.
``meta`` (:class:`DispatchMetadata`) is a frozen record of the permutation and the combine weights;
dispatchers hold no learnable state (they are not ``nn.Module``\\ s). ``dispatcher(x_TD, routing,
keep_TK, experts)`` runs the three steps; a fused implementation may override that call, never
the meaning. Expert parallelism (:mod:`moekit.parallel`) is another dispatcher with the same two
methods, wrapping a local one around its all-to-alls; :meth:`Dispatcher.with_local` keeps it in
place when the layer's backend changes, and :attr:`Dispatcher.comm` reports its traffic.

Implementations:

- :class:`SortedDispatcher` (``backend="grouped_mm"``): sorts slots by expert on the device (no
  host sync), gathers rows, combines by gathering each token's K rows back (no atomics, so the
  result is deterministic; the backward of dispatch is a combine and vice versa).
- :class:`LoopDispatcher` (``backend="loop"``): the readable reference, one expert at a time with
  ``torch.where`` and ``index_add`` (a host sync per expert).
- :class:`FusedCPUDispatcher` (``backend="cpu"``): overrides the call to run dispatch, experts and
  combine as one fused CPU op (:func:`moekit.kernels.fused_moe_cpu`); where that cannot run (other
  devices, dtypes, experts) it runs :class:`SortedDispatcher`'s three steps, and logs why once.
- :class:`TritonDispatcher` (``backend="triton"``, by name only): a fused call, dispatch + experts
  + combine in :func:`moekit.kernels.moe_triton.moe_ffn_triton` (the gather inside the first GEMM,
  the routing weight and the combine inside the second's epilogue and a deterministic sum). Its
  :meth:`~Dispatcher.dispatch` and :meth:`~Dispatcher.combine` are the sorted dispatcher's. Where
  the kernels cannot run (no CUDA GPU, no triton, float64, :class:`ModuleExperts`) the call falls
  back to the sorted path and logs why once; :func:`moekit.kernels.available_backends` says so too.

Capacity (token choice): ``C = ceil(capacity_factor * T * K / E)``. With ``drop_policy="position"``
an expert keeps slots in GShard/Switch priority order: every token's first choice before any
second choice, and within a choice rank earlier tokens first. With ``drop_policy="score"`` it keeps
the slots with the largest combine weights (ties by position). :func:`capacity_keep` decides which
slots survive; the dispatcher receives the result as ``keep_TK`` (None = every slot, dropless).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from moekit.kernels import fused_moe_cpu, fused_moe_cpu_reason
from moekit.kernels.moe_triton import moe_ffn_triton, triton_status
from moekit.kernels.ops import gather_rows, sum_rows
from moekit.layers._checks import count_values, router_dtype
from moekit.layers.config import DropPolicy
from moekit.layers.experts import GroupedExperts
from moekit.layers.routing import Routing

if TYPE_CHECKING:
    from moekit.layers.experts import Experts
    from moekit.layers.stats import CommStats


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


@dataclass(frozen=True, kw_only=True)
class DispatchMetadata:
    """How the rows of a dispatched buffer map back to tokens (a permutation record).

    Attributes
    ----------
    num_tokens : T.
    token_R : (R,) int64 token of each row.
    rank_TK : (T, K) int64 row of each slot.
    weight_R : (R,) combine weight of each row, float32 (float64 for float64 inputs); 0 for rows
        of dropped slots.
    keep_TK : (T, K) bool kept slots, or None when every slot is kept.
    out_dtype : dtype of the combined output (the input's).
    full : every row belongs to an expert (``sum(tokens_per_expert_E) == R``, dropless).
    """

    num_tokens: int
    token_R: torch.Tensor
    rank_TK: torch.Tensor
    weight_R: torch.Tensor
    keep_TK: torch.Tensor | None
    out_dtype: torch.dtype
    full: bool


class Dispatcher:
    """Base of every dispatcher: :meth:`dispatch`, :meth:`combine`, and the call composing them."""

    name: ClassVar[str] = "abstract"

    def dispatch(self, x_TD: torch.Tensor, routing: Routing, keep_TK: torch.Tensor | None,
                 capacity: int | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, DispatchMetadata]:
        """Rows for the experts: ``(x_RD, tokens_per_expert_E, meta)``.

        ``capacity`` (optional) is the static bound C per expert that ``keep_TK`` obeys (as
        :func:`capacity_keep` guarantees); it only sizes the buffer (``R = min(T*K, E*C)``), it
        never decides what drops, and it is ignored when ``keep_TK`` is None.
        """
        num_experts = routing.logits_TE.shape[-1]
        return self.dispatch_slots(x_TD, routing.indices_TK, routing.weights_TK, keep_TK,
                                   num_experts, capacity)

    def dispatch_slots(self, x_TD: torch.Tensor, indices_TK: torch.Tensor,
                       weights_TK: torch.Tensor, keep_TK: torch.Tensor | None, num_experts: int,
                       capacity: int | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, DispatchMetadata]:
        """:meth:`dispatch` from the slot tensors alone (what an outer dispatcher has)."""
        raise NotImplementedError

    def combine(self, y_RD: torch.Tensor, meta: DispatchMetadata) -> torch.Tensor:
        """``y_TD[t] = sum over kept slots k of weight * y_RD[row of (t, k)]``, in ``meta.out_dtype``."""
        raise NotImplementedError

    def __call__(self, x_TD: torch.Tensor, routing: Routing, keep_TK: torch.Tensor | None,
                 experts: Experts, capacity: int | None = None) -> torch.Tensor:
        x_RD, tokens_per_expert_E, meta = self.dispatch(x_TD, routing, keep_TK, capacity)
        y_RD = experts(x_RD, tokens_per_expert_E, full=meta.full)
        return self.combine(y_RD, meta)

    def with_local(self, local: Dispatcher) -> Dispatcher:
        """The dispatcher to use once the layer's local backend becomes ``local``.

        A local dispatcher is simply replaced; an outer one (expert parallelism) returns itself
        rebuilt around ``local``, so switching ``layer.backend`` never drops it.
        """
        return local

    @property
    def comm(self) -> CommStats | None:
        """Communication of the last call (:class:`~moekit.layers.stats.CommStats`); None for a
        dispatcher that moves no tokens between processes."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SortedDispatcher(Dispatcher):
    """Sort slots by expert on the device; gather rows; combine by gathering rows back.

    No host sync, no atomics. With ``keep_TK=None`` (dropless) the buffer holds exactly ``T*K``
    rows and nothing needs masking.
    """

    name: ClassVar[str] = "sorted"

    def dispatch_slots(self, x_TD: torch.Tensor, indices_TK: torch.Tensor,
                       weights_TK: torch.Tensor, keep_TK: torch.Tensor | None, num_experts: int,
                       capacity: int | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, DispatchMetadata]:
        T, K = indices_TK.shape
        E, S = num_experts, T * K
        full = keep_TK is None
        # Rows in the buffer: every slot when dropless, else at most E*C (a static bound, no sync).
        R = S if full or capacity is None else min(S, E * capacity)
        key_S = (indices_TK if keep_TK is None else torch.where(keep_TK, indices_TK, E)).reshape(-1)
        order_S = _sort_by_expert(key_S)
        row_order_R = order_S[:R]
        token_R = torch.div(row_order_R, K, rounding_mode="floor")
        tokens_per_expert_E = count_values(key_S, E + 1)[:E]
        rank_TK = torch.empty_like(order_S).scatter_(
            0, order_S, torch.arange(S, device=x_TD.device)).view(T, K)
        x_RD = gather_rows(x_TD, token_R, rank_TK, keep_TK)
        weight_R = weights_TK.reshape(-1)[row_order_R].to(router_dtype(x_TD.dtype))
        if not full:
            weight_R = weight_R.masked_fill(key_S[row_order_R] >= E, 0)  # rows of dropped slots
        meta = DispatchMetadata(num_tokens=T, token_R=token_R, rank_TK=rank_TK, weight_R=weight_R,
                                keep_TK=keep_TK, out_dtype=x_TD.dtype, full=full)
        return x_RD, tokens_per_expert_E, meta

    def combine(self, y_RD: torch.Tensor, meta: DispatchMetadata) -> torch.Tensor:
        weighted_RD = y_RD.to(meta.weight_R.dtype) * meta.weight_R.unsqueeze(-1)
        y_TD = sum_rows(weighted_RD, meta.rank_TK, meta.keep_TK, meta.token_R)
        return y_TD.to(meta.out_dtype)


class LoopDispatcher(Dispatcher):
    """The readable reference: for each expert, the slots routed to it (a host sync per expert)."""

    name: ClassVar[str] = "loop"

    def dispatch_slots(self, x_TD: torch.Tensor, indices_TK: torch.Tensor,
                       weights_TK: torch.Tensor, keep_TK: torch.Tensor | None, num_experts: int,
                       capacity: int | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, DispatchMetadata]:
        T, K = indices_TK.shape
        kept_TK = torch.ones_like(indices_TK, dtype=torch.bool) if keep_TK is None else keep_TK
        tokens, slots, counts = [], [], []
        for e in range(num_experts):
            token_idx, slot_idx = torch.where((indices_TK == e) & kept_TK)
            tokens.append(token_idx)
            slots.append(slot_idx)
            counts.append(token_idx.numel())
        token_R = torch.cat(tokens) if tokens else indices_TK.new_zeros(0)
        slot_R = torch.cat(slots) if slots else indices_TK.new_zeros(0)
        rank_TK = torch.zeros_like(indices_TK)
        rank_TK[token_R, slot_R] = torch.arange(token_R.numel(), device=x_TD.device)
        acc = router_dtype(x_TD.dtype)
        meta = DispatchMetadata(num_tokens=T, token_R=token_R, rank_TK=rank_TK,
                                weight_R=weights_TK[token_R, slot_R].to(acc), keep_TK=kept_TK,
                                out_dtype=x_TD.dtype, full=True)
        # x_TD[:0].sum() keeps the buffer in the autograd graph even when nothing is routed.
        x_RD = x_TD[token_R] + x_TD[:0].sum()
        return x_RD, torch.tensor(counts, dtype=torch.int64, device=x_TD.device), meta

    def combine(self, y_RD: torch.Tensor, meta: DispatchMetadata) -> torch.Tensor:
        acc = meta.weight_R.dtype
        zeros_TD = torch.zeros(meta.num_tokens, y_RD.shape[-1], dtype=acc, device=y_RD.device)
        y_TD = zeros_TD.index_add(0, meta.token_R, y_RD.to(acc) * meta.weight_R.unsqueeze(-1))
        return y_TD.to(meta.out_dtype)


_log = logging.getLogger("moekit.kernels")


@functools.cache
def _log_cpu_fallback(reason: str) -> None:
    _log.info("backend='cpu' runs the sorted grouped_mm path: %s", reason)


@functools.cache
def _log_triton_fallback(reason: str) -> None:
    _log.warning("backend='triton' falls back to the sorted grouped_mm path: %s", reason)


class FusedCPUDispatcher(SortedDispatcher):
    """Dispatch, experts and combine fused on CPU (``backend="cpu"``); see :mod:`moekit.kernels`.

    Same meaning as :class:`SortedDispatcher` (whose ``dispatch``/``combine`` it keeps for outer
    dispatchers); the call runs :func:`~moekit.kernels.fused_moe_cpu` with the experts' weights
    when the input and experts allow it, else the sorted path.
    """

    name: ClassVar[str] = "cpu"

    def __call__(self, x_TD: torch.Tensor, routing: Routing, keep_TK: torch.Tensor | None,
                 experts: Experts, capacity: int | None = None) -> torch.Tensor:
        if not isinstance(experts, GroupedExperts):
            _log_cpu_fallback(f"{type(experts).__name__} are not grouped FFN experts")
            return super().__call__(x_TD, routing, keep_TK, experts, capacity)
        reason = fused_moe_cpu_reason(x_TD.device, x_TD.dtype, experts.activation)
        if reason is not None:
            _log_cpu_fallback(reason)
            return super().__call__(x_TD, routing, keep_TK, experts, capacity)
        y_TD = fused_moe_cpu(x_TD, routing.indices_TK, routing.weights_TK, keep_TK,
                             experts.w_in, experts.w_down, experts.b_in, experts.b_down,
                             activation=experts.activation)
        return y_TD


class TritonDispatcher(SortedDispatcher):
    """The sorted dispatcher whose call runs dispatch, experts and combine as Triton kernels.

    Same meaning as :class:`SortedDispatcher` (kept slots only, weights and sum in float32,
    deterministic); different rounding order. Falls back to the sorted path where the kernels
    cannot run (see the module docstring).
    """

    name: ClassVar[str] = "triton"

    def __call__(self, x_TD: torch.Tensor, routing: Routing, keep_TK: torch.Tensor | None,
                 experts: Experts, capacity: int | None = None) -> torch.Tensor:
        from moekit.layers.experts import GroupedExperts

        reason = triton_status(x_TD.device, x_TD.dtype)
        if reason is None and isinstance(experts, GroupedExperts):
            return moe_ffn_triton(x_TD, routing.indices_TK, routing.weights_TK, keep_TK, experts.w_in,
                                  experts.b_in, experts.w_down, experts.b_down, experts.activation)
        _log_triton_fallback(reason or f"the experts are a {type(experts).__name__}; the kernels "
                             "run GroupedExperts")
        return super().__call__(x_TD, routing, keep_TK, experts, capacity)


_DISPATCHERS: dict[str, type[Dispatcher]] = {"loop": LoopDispatcher, "grouped_mm": SortedDispatcher,
                                             "cpu": FusedCPUDispatcher, "triton": TritonDispatcher}


def make_dispatcher(backend: str) -> Dispatcher:
    """The dispatcher of a backend name (``"loop"``, ``"grouped_mm"``, ``"cpu"`` or ``"triton"``)."""
    return _DISPATCHERS[backend]()
