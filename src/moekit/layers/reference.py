"""The slow, obviously correct oracle: one token and one slot at a time (differentiable).

Every fast path is tested against these functions on fresh random inputs. They share nothing
with the dispatcher beyond the expert weights: capacity, sorting and combining are re-done here
with plain Python loops, following the definitions in :mod:`moekit.layers.dispatch`.

Legend: T tokens, D model dim, E experts, K slots per token.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from moekit.layers.experts import GroupedExperts, ModuleExperts

if TYPE_CHECKING:
    from moekit.layers.moe import MoELayer


def reference_keep(indices_TK: torch.Tensor, weights_TK: torch.Tensor, num_experts: int,
                   capacity_factor: float | None, policy: str = "position") -> torch.Tensor:
    """Capacity by definition: each expert keeps its first C slots in priority order."""
    T, K = indices_TK.shape
    keep = torch.ones(T, K, dtype=torch.bool)
    if capacity_factor is None:
        return keep
    cap = math.ceil(capacity_factor * T * K / num_experts)
    slots = [(k, t) for k in range(K) for t in range(T)]  # first choices first, then by token
    if policy == "score":
        slots.sort(key=lambda kt: -float(weights_TK[kt[1], kt[0]].detach()))  # stable: ties keep position
    taken = [0] * num_experts
    for k, t in slots:
        e = int(indices_TK[t, k])
        keep[t, k] = taken[e] < cap
        taken[e] += 1
    return keep


def reference_combine(x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
                      keep_TK: torch.Tensor, experts: GroupedExperts | ModuleExperts) -> torch.Tensor:
    """``y_t = sum over kept slots k of w_tk * expert_{i_tk}(x_t)``, token by token."""
    T, K = indices_TK.shape
    rows = []
    for t in range(T):
        y = torch.zeros(x_TD.shape[-1], dtype=torch.float32 if x_TD.dtype != torch.float64
                        else torch.float64, device=x_TD.device)
        for k in range(K):
            if bool(keep_TK[t, k]):
                out = experts.forward_expert(int(indices_TK[t, k]), x_TD[t : t + 1])[0]
                y = y + weights_TK[t, k].to(y.dtype) * out.to(y.dtype)
        rows.append(y)
    if not rows:
        return x_TD * 0  # empty, but still part of the autograd graph
    return torch.stack(rows).to(x_TD.dtype)


def reference_moe_forward(moe: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """A whole :class:`~moekit.layers.MoELayer` forward re-done by the oracle (same router)."""
    x_TD = x.reshape(-1, moe.d_model)
    routing = moe.router(x_TD)
    if routing.keep_TK is not None:
        keep_TK = routing.keep_TK
    else:
        keep_TK = reference_keep(routing.indices_TK, routing.weights_TK, moe.num_experts,
                                 moe.capacity_factor, moe.drop_policy)
    y_TD = reference_combine(x_TD, routing.indices_TK, routing.weights_TK, keep_TK, moe.experts)
    if moe.shared_experts is not None:
        y_TD = y_TD + torch.stack([reference_shared(moe, x_TD[t]) for t in range(x_TD.shape[0])]) \
            if x_TD.shape[0] else y_TD
    return y_TD.view(x.shape)


def reference_shared(moe: MoELayer, x_D: torch.Tensor) -> torch.Tensor:
    """The shared experts of one token from their weights: ``g * down(act(x W_gate) * (x W_up))``
    (ungated activations: ``down(act(x W_up))``), ``g = sigmoid(x . w_gate)`` or 1."""
    ff = moe.shared_experts
    assert ff is not None
    w_gate, w_up = ff.w_gate, ff.w_up
    up_F = x_D @ w_up + (ff.b_up if ff.b_up is not None else 0)
    if w_gate is not None:
        gate_F = x_D @ w_gate + (ff.b_gate if ff.b_gate is not None else 0)
        hidden_F = ff.act(gate_F) * up_F
    else:
        hidden_F = ff.act(up_F)
    out_D = hidden_F @ ff.w_down + (ff.b_down if ff.b_down is not None else 0)
    if moe.shared_gate is not None:
        out_D = torch.sigmoid(x_D @ moe.shared_gate.weight[0]) * out_D
    return out_D
