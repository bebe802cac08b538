"""Differentiable collectives of expert parallelism, as moekit's own ``autograd.Function``\\ s.

Legend: P rows sent, Q rows received, D features.

torch's functional collectives (``torch.distributed.nn``, ``_functional_collectives``) changed
their autograd between releases (on torch 2.4 ``all_reduce`` and ``all_to_all_single`` return no
gradient and say nothing), so moekit defines the gradients itself, on plain
``torch.distributed`` calls that gloo (CPU) and NCCL (GPU) both support since torch 2.4:

- :func:`all_to_all` (``all_to_all_single`` with variable splits): its backward is the reverse
  all-to-all (splits swapped).
- :func:`all_reduce_sum`: its backward is an all-reduce (sum) of the incoming gradients, the
  adjoint of "every rank receives the sum". When every rank back-propagates the same function of
  the sum (an aux loss), each rank's gradient is the group size times its own share; averaging
  over the ranks (DDP) then gives the gradient of the single-process loss.
- :func:`scale_grad`: identity forward, gradient times a constant.

Every rank must call the same collectives in the same order, empty tensors included: a rank with
no tokens still sends and receives zero rows, so the next collective never waits on it. A failed
collective (a rank died, or the process group's timeout ran out) raises :class:`CollectiveError`
naming the operation, the layer and the rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


class CollectiveError(RuntimeError):
    """A collective of expert parallelism failed (a rank died, hung past the timeout, or the
    process group was torn down); the message says which operation, layer and rank."""


@contextmanager
def collective(what: str, group: dist.ProcessGroup, context: str) -> Iterator[None]:
    """Turn a failure inside a collective into a :class:`CollectiveError` that says where."""
    try:
        yield
    except CollectiveError:
        raise
    except RuntimeError as err:  # DistBackendError and gloo/NCCL errors are RuntimeErrors
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        raise CollectiveError(
            f"expert parallelism: {what} failed in {context} on rank {rank} of a group of {size}: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Another rank has "
            "probably died or stopped calling the model; the wait is bounded by the process "
            "group's timeout (torch.distributed.init_process_group(timeout=...))") from err


def _all_to_all(x_PD: torch.Tensor, out_splits: list[int], in_splits: list[int],
                group: dist.ProcessGroup, context: str) -> torch.Tensor:
    out_QD = x_PD.new_empty((sum(out_splits), *x_PD.shape[1:]))
    with collective("all_to_all", group, context):
        dist.all_to_all_single(out_QD, x_PD.contiguous(), out_splits, in_splits, group=group)
    return out_QD


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_PD, out_splits, in_splits, group, context):  # type: ignore[no-untyped-def, override]
        ctx.splits = (out_splits, in_splits)
        ctx.group, ctx.context = group, context
        return _all_to_all(x_PD, out_splits, in_splits, group, context)

    @staticmethod
    def backward(ctx, grad_QD):  # type: ignore[no-untyped-def, override]
        out_splits, in_splits = ctx.splits
        grad_PD = _all_to_all(grad_QD, in_splits, out_splits, ctx.group, ctx.context + " (backward)")
        return grad_PD, None, None, None, None


def all_to_all(x_PD: torch.Tensor, out_splits: list[int], in_splits: list[int],
               group: dist.ProcessGroup, context: str = "a layer") -> torch.Tensor:
    """Rows ``in_splits[d]`` of ``x_PD`` go to rank d; ``out_splits[s]`` rows arrive from rank s.

    Returns the received rows ``(sum(out_splits), ...)`` in source-rank order. Differentiable:
    the backward sends the gradients back the way the rows came.
    """
    return _AllToAll.apply(x_PD, out_splits, in_splits, group, context)


def _all_reduce(t: torch.Tensor, group: dist.ProcessGroup, context: str) -> torch.Tensor:
    out = t.detach().clone().contiguous()
    with collective("all_reduce", group, context):
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, group, context):  # type: ignore[no-untyped-def, override]
        ctx.group, ctx.context = group, context
        return _all_reduce(t, group, context)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        return _all_reduce(grad, ctx.group, ctx.context + " (backward)"), None, None


def all_reduce_sum(t: torch.Tensor, group: dist.ProcessGroup,
                   context: str = "a layer") -> torch.Tensor:
    """Sum of ``t`` over the ranks of ``group`` (a new tensor); the backward sums gradients too."""
    if not t.requires_grad:
        return _all_reduce(t, group, context)
    return _AllReduceSum.apply(t, group, context)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, factor):  # type: ignore[no-untyped-def, override]
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        return grad * ctx.factor, None


def scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` unchanged; its gradient is multiplied by ``factor``."""
    if factor == 1.0 or not t.requires_grad:
        return t
    return _ScaleGrad.apply(t, factor)


class SumOverGroup:
    """A :data:`moekit.layers.losses.SumReducer` over a process group (what ``MoELayer.reduce_sums``
    holds under expert parallelism): float32 token sums summed over the group, with gradients."""

    def __init__(self, group: dist.ProcessGroup, context: str) -> None:
        self.group, self.context = group, context

    def __call__(self, sums: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(sums, self.group, self.context + " (aux-loss statistics)")

    def __repr__(self) -> str:
        return f"SumOverGroup(size={dist.get_world_size(self.group)})"


class CountsOverGroup:
    """``Router.reduce_counts`` under expert parallelism: the ``sigmoid_bias`` load counts of
    every rank of the batch, summed, so every rank moves its bias identically."""

    def __init__(self, group: dist.ProcessGroup, context: str) -> None:
        self.group, self.context = group, context

    def __call__(self, counts_E: torch.Tensor) -> torch.Tensor:
        return _all_reduce(counts_E, self.group, self.context + " (router bias counts)")

    def __repr__(self) -> str:
        return f"CountsOverGroup(size={dist.get_world_size(self.group)})"
