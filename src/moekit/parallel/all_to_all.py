"""The all-to-all dispatcher: tokens travel to the ranks holding their experts, and back.

Legend: T tokens of this rank, D model dim, K slots per token, E experts, R ranks of the
expert-parallel group, L = E / R experts per rank (rank r holds ``[r*L, (r+1)*L)``), P rows this
rank sends (distinct (token, destination rank) pairs), Q rows it receives.

One forward of a layer, on every rank::

    routes  = plan_routes(indices_TK, keep_TK, L, R)          # local: which token goes where
    counts  = all_reduce(one row per rank)                    # counts first: (R, 2R+1) int64
    x_QD    = all_to_all(x_TD[routes.token_P])                # each token once per destination
    meta_QM = all_to_all([weights | local expert ids])        # K combine weights, K ids per row
    y_QD    = the local dispatcher's own call on the received rows (dispatch -> experts ->
              combine, or its fused kernels): the weighted sum of this rank's experts for each
              row, one partial sum per row
    y_PD    = all_to_all(y_QD)                                # the partial sums go home
    y_TD    = sum over each token's rows

So a token whose k experts live on n distinct ranks crosses the wire n times each way, however
many of its experts a rank holds: bytes per direction are exactly ``distinct (token, rank) pairs *
D * element size`` (plus the small metadata rows; pairs a rank keeps for itself are copied
locally). No row is padded to a capacity. The count exchange is the one host sync per layer.

Gradients: the backward of each all-to-all is the reverse all-to-all (moekit's own
``autograd.Function``, :mod:`moekit.parallel.collectives`). Convention: each rank back-propagates
its own loss L_r and the objective is the mean over ranks, ``(1/R) * sum_r L_r`` (DDP's
averaging). An expert's weights see the tokens of every rank, so their gradient would be the sum
over ranks; the dispatcher divides the gradient by R between the two all-to-alls (and multiplies
it back on the way out), so expert gradients come out already averaged and token gradients are
exact. Replicated parameters (router, attention, shared experts) get each rank's own gradient,
which DDP averages.

Capacity (``capacity_factor``) is decided by the layer per source rank over its own tokens
(GShard's local groups): expert e takes at most C = ceil(cf * T_r * K / E) slots from rank r.
``expert_choice`` works the same way: each expert picks its tokens among each rank's tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.distributed as dist

from moekit.kernels.ops import gather_rows, sum_rows
from moekit.layers._checks import count_values, router_dtype
from moekit.layers.dispatch import Dispatcher, DispatchMetadata
from moekit.layers.routing import Routing
from moekit.layers.stats import CommStats
from moekit.parallel.collectives import all_to_all, collective, scale_grad

if TYPE_CHECKING:
    from moekit.layers.experts import Experts


@dataclass(frozen=True, kw_only=True)
class Routes:
    """Where this rank's tokens go: one row per distinct (token, destination rank) pair.

    Attributes
    ----------
    token_P : (P,) int64 token of each row, rows sorted by destination rank, then by token.
    dest_P : (P,) int64 destination rank of each row.
    row_TK : (T, K) int64 row of each slot (for every kept slot: the row of its token and rank).
    first_TK : (T, K) bool the slot that stands for its (token, rank) pair (the first kept slot
        of the token on that rank).
    send_R : (R,) int64 rows for each destination rank.
    """

    token_P: torch.Tensor
    dest_P: torch.Tensor
    row_TK: torch.Tensor
    first_TK: torch.Tensor
    send_R: torch.Tensor


def slot_ranks(indices_TK: torch.Tensor, keep_TK: torch.Tensor | None, experts_per_rank: int,
               num_ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dest_TK, first_TK)``: the rank of each slot's expert (``num_ranks`` for a dropped slot),
    and whether the slot is the first kept slot of its token on that rank."""
    K, device = indices_TK.shape[1], indices_TK.device
    kept_TK = torch.ones_like(indices_TK, dtype=torch.bool) if keep_TK is None else keep_TK
    dest_TK = torch.where(kept_TK, torch.div(indices_TK, experts_per_rank, rounding_mode="floor"),
                          num_ranks)
    same_TKK = dest_TK.unsqueeze(2) == dest_TK.unsqueeze(1)  # [t, k, j]: slots k and j share a rank
    earlier_KK = torch.ones(K, K, dtype=torch.bool, device=device).tril(-1)  # j < k
    return dest_TK, kept_TK & ~(same_TKK & earlier_KK).any(dim=2)


def plan_routes(indices_TK: torch.Tensor, keep_TK: torch.Tensor | None, experts_per_rank: int,
                num_ranks: int, num_rows: int | None = None) -> Routes:
    """The send plan of one rank (pure tensor code; no communication).

    ``num_rows`` is P when the caller already knows it (the dispatcher reads it on the host after
    the count exchange); without it P is read here.
    """
    dest_TK, first_TK = slot_ranks(indices_TK, keep_TK, experts_per_rank, num_ranks)
    return routes_of(dest_TK, first_TK, num_ranks, num_rows)


def routes_of(dest_TK: torch.Tensor, first_TK: torch.Tensor, num_ranks: int,
              num_rows: int | None = None) -> Routes:
    """:class:`Routes` from :func:`slot_ranks`'s output."""
    T, K = dest_TK.shape
    R, device = num_ranks, dest_TK.device
    same_TKK = dest_TK.unsqueeze(2) == dest_TK.unsqueeze(1)
    first_of_TK = same_TKK.to(torch.int8).argmax(dim=2)  # the first slot j on k's rank
    key_S = torch.where(first_TK, dest_TK * T + torch.arange(T, device=device).unsqueeze(1),
                        R * T).reshape(-1)
    order_S = torch.argsort(key_S, stable=True)
    send_R = count_values(torch.where(first_TK, dest_TK, R), R + 1)[:R]
    P = int(send_R.sum()) if num_rows is None else num_rows
    position_S = torch.empty_like(order_S).scatter_(0, order_S, torch.arange(T * K, device=device))
    row_TK = position_S.view(T, K).gather(1, first_of_TK)
    pair_P = order_S[:P]
    return Routes(token_P=torch.div(pair_P, K, rounding_mode="floor"),
                  dest_P=dest_TK.reshape(-1)[pair_P], row_TK=row_TK, first_TK=first_TK,
                  send_R=send_R)


@dataclass(frozen=True, kw_only=True)
class Trip:
    """What one rank received in the dispatch, and the way home.

    Attributes
    ----------
    x_QD : (Q, D) received token rows, in source-rank order.
    local_QK : (Q, K) int64 local expert (``[0, L)``) of each slot of a row; clamped to L-1
        where ``keep_QK`` is False.
    weights_QK : (Q, K) combine weights (0 where ``keep_QK`` is False).
    keep_QK : (Q, K) bool slots whose expert lives on this rank.
    routes : this rank's :class:`Routes`.
    send_splits, recv_splits : rows sent to / received from each rank in the dispatch.
    home_dtype : dtype of this rank's output.
    """

    x_QD: torch.Tensor
    local_QK: torch.Tensor
    weights_QK: torch.Tensor
    keep_QK: torch.Tensor
    routes: Routes
    send_splits: list[int]
    recv_splits: list[int]
    home_dtype: torch.dtype


@dataclass(frozen=True, kw_only=True)
class ExpertParallelMetadata(DispatchMetadata):
    """The local dispatch of the received rows (the inherited fields, with ``num_tokens`` = Q)
    plus the :class:`Trip` home."""

    trip: Trip


class AllToAllDispatcher(Dispatcher):
    """Expert parallelism as a :class:`~moekit.layers.dispatch.Dispatcher` (module docstring).

    Built by :func:`moekit.parallel.apply_expert_parallel`; wraps the layer's local dispatcher,
    which arranges the received rows for the local experts.

    Parameters
    ----------
    local : the local dispatcher (``SortedDispatcher`` or the ``LoopDispatcher`` reference).
    group : the expert-parallel process group (R ranks).
    num_experts : E of the layer (a multiple of R).
    context : how errors name the layer (``"layer 'blocks.0.mlp'"``).
    """

    name: ClassVar[str] = "all_to_all"

    def __init__(self, local: Dispatcher, group: dist.ProcessGroup, *, num_experts: int,
                 context: str) -> None:
        self.local = local
        self.group = group
        self.num_ranks = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if num_experts % self.num_ranks:
            raise ValueError(f"{context}: num_experts={num_experts} is not divisible by the "
                             f"expert-parallel group size {self.num_ranks}")
        self.num_experts = num_experts
        self.experts_per_rank = num_experts // self.num_ranks
        self.context = context
        self._comm: CommStats | None = None

    @property
    def comm(self) -> CommStats | None:
        return self._comm

    def with_local(self, local: Dispatcher) -> Dispatcher:
        return AllToAllDispatcher(local, self.group, num_experts=self.num_experts,
                                  context=self.context)

    def __call__(self, x_TD: torch.Tensor, routing: Routing, keep_TK: torch.Tensor | None,
                 experts: Experts, capacity: int | None = None) -> torch.Tensor:
        """Send, run the local dispatcher's own call (a fused one included) on the received
        rows, bring the partial sums home."""
        trip = self.send(x_TD, routing.indices_TK, routing.weights_TK, keep_TK,
                         routing.logits_TE.shape[-1])
        Q, L = trip.x_QD.shape[0], self.experts_per_rank
        scores_QL = trip.weights_QK.new_zeros(1, L).expand(Q, L)  # only the shape is read
        local = Routing(trip.local_QK, trip.weights_QK, scores_QL, scores_QL)
        partial_QD = self.local(trip.x_QD, local, trip.keep_QK, experts)
        y_TD = self.home(partial_QD, trip)
        # Every local expert parameter joins the graph (a zero gradient when no row reached it),
        # as in the single-process model, so optimizers treat the shard alike on every rank.
        zero = sum((p.reshape(-1)[:0].sum() for p in experts.parameters()), y_TD.new_zeros(()))
        return y_TD + zero.to(y_TD.dtype)

    def dispatch_slots(self, x_TD: torch.Tensor, indices_TK: torch.Tensor,
                       weights_TK: torch.Tensor, keep_TK: torch.Tensor | None, num_experts: int,
                       capacity: int | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, DispatchMetadata]:
        trip = self.send(x_TD, indices_TK, weights_TK, keep_TK, num_experts)
        x_RD, tokens_per_expert_L, local_meta = self.local.dispatch_slots(
            trip.x_QD, trip.local_QK, trip.weights_QK, trip.keep_QK, self.experts_per_rank, None)
        local_fields = {f.name: getattr(local_meta, f.name)
                        for f in dataclasses.fields(DispatchMetadata)}
        return x_RD, tokens_per_expert_L, ExpertParallelMetadata(**local_fields, trip=trip)

    def combine(self, y_RD: torch.Tensor, meta: DispatchMetadata) -> torch.Tensor:
        if not isinstance(meta, ExpertParallelMetadata):
            raise TypeError(f"{self.context}: AllToAllDispatcher.combine needs the metadata of its "
                            f"own dispatch, got {type(meta).__name__}")
        return self.home(self.local.combine(y_RD, meta), meta.trip)

    def send(self, x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
             keep_TK: torch.Tensor | None, num_experts: int) -> Trip:
        """Counts first, then each token once to every rank holding one of its kept experts."""
        if num_experts != self.num_experts:
            raise ValueError(f"{self.context}: routing over {num_experts} experts, but the "
                             f"dispatcher was built for num_experts={self.num_experts}")
        T, K = indices_TK.shape
        R, L, r = self.num_ranks, self.experts_per_rank, self.rank
        dest_TK, first_TK = slot_ranks(indices_TK, keep_TK, L, R)
        # Counts first: one row per rank [T, rows to each rank, slots to each rank], summed.
        table_RC = torch.zeros(R, 2 * R + 1, dtype=torch.int64, device=x_TD.device)
        table_RC[r, 0] = T
        table_RC[r, 1:R + 1] = count_values(torch.where(first_TK, dest_TK, R), R + 1)[:R]
        table_RC[r, R + 1:] = count_values(dest_TK, R + 1)[:R]
        with collective("count exchange (all_reduce)", self.group, self.context):
            dist.all_reduce(table_RC, op=dist.ReduceOp.SUM, group=self.group)
        table = table_RC.cpu()  # the one host sync of the layer
        pairs_RR = table[:, 1:R + 1]
        send_splits, recv_splits = pairs_RR[r].tolist(), pairs_RR[:, r].tolist()
        routes = routes_of(dest_TK, first_TK, R, num_rows=sum(send_splits))

        acc = router_dtype(x_TD.dtype)
        x_PD = gather_rows(x_TD, routes.token_P, routes.row_TK, routes.first_TK)
        here_PK = dest_TK[routes.token_P] == routes.dest_P.unsqueeze(1)
        local_PK = torch.where(here_PK, indices_TK[routes.token_P] - routes.dest_P.unsqueeze(1) * L,
                               L)
        w_PK = weights_TK[routes.token_P].to(acc).masked_fill(~here_PK, 0)
        meta_PM = torch.cat([w_PK, local_PK.to(acc)], dim=1)  # M = 2K: weights | local ids
        # Between the two all-to-alls gradients are carried divided by R (module docstring).
        x_QD = scale_grad(all_to_all(x_PD, recv_splits, send_splits, self.group, self.context), R)
        meta_QM = scale_grad(all_to_all(meta_PM, recv_splits, send_splits, self.group,
                                        self.context), R)
        ids_QK = meta_QM[:, K:].detach().round().long()
        keep_QK = ids_QK < L
        self._comm = CommStats(rank=r, pairs=pairs_RR, tokens=table[:, 0],
                               slots=table[:, R + 1:].sum(dim=0),
                               row_bytes=x_TD.shape[-1] * x_TD.element_size(),
                               metadata_row_bytes=2 * K * torch.empty((), dtype=acc).element_size())
        return Trip(x_QD=x_QD, local_QK=ids_QK.clamp(max=L - 1), weights_QK=meta_QM[:, :K],
                    keep_QK=keep_QK, routes=routes, send_splits=send_splits,
                    recv_splits=recv_splits, home_dtype=x_TD.dtype)

    def home(self, partial_QD: torch.Tensor, trip: Trip) -> torch.Tensor:
        """The partial sums back to their ranks, summed per token: (T, D)."""
        partial_QD = scale_grad(partial_QD, 1.0 / self.num_ranks)
        home_PD = all_to_all(partial_QD, trip.send_splits, trip.recv_splits, self.group,
                             self.context)
        routes = trip.routes
        y_TD = sum_rows(home_PD.to(router_dtype(trip.home_dtype)), routes.row_TK,
                        routes.first_TK, routes.token_P)
        return y_TD.to(trip.home_dtype)

    def __repr__(self) -> str:
        return (f"AllToAllDispatcher(local={self.local!r}, rank={self.rank}, "
                f"ranks={self.num_ranks}, experts_per_rank={self.experts_per_rank})")
