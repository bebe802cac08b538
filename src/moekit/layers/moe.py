"""MoELayer: router + dispatcher + experts (+ optional shared experts), a drop-in for an MLP.

Legend: T tokens, D model dim, F expert hidden dim, E experts, K experts per token.

``y = moe(x)`` maps ``(..., d_model)`` to the same shape and dtype. After each forward the layer
keeps ``moe.aux_loss`` (a float32 scalar, already weighted; part of the autograd graph in
training) and ``moe.stats`` (:class:`RoutingStats`, detached). ``total_aux_loss(model)`` sums the
aux losses of every MoE layer in a model.

Non-finite input: a token whose features contain NaN or Inf gets a non-finite output row; the
other tokens' outputs are unaffected (expert matmuls are row-wise), and a ``sigmoid_bias`` router
leaves its bias untouched for that batch. Check ``torch.isfinite`` upstream if you need to skip
such tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from moekit.layers._checks import (
    check_choice,
    check_dtype_matches,
    check_input,
    check_positive_int,
    count_values,
)
from moekit.layers.dispatch import (
    BACKEND_NAMES,
    DROP_POLICIES,
    Backend,
    DropPolicy,
    capacity,
    capacity_keep,
    run_experts,
)
from moekit.layers.experts import Activation, FeedForward, GroupedExperts, ModuleExperts
from moekit.layers.losses import router_z_loss
from moekit.layers.routing import (
    Router,
    RouterConfig,
    RouterKind,
    Routing,
    expert_choice_capacity,
)


@dataclass
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


class MoELayer(nn.Module):
    """Sparse Mixture-of-Experts feed-forward layer.

    Parameters
    ----------
    d_model : input and output features D.
    d_ff : hidden features F of each expert.
    num_experts : number of routed experts E.
    top_k : experts per token K (for ``expert_choice``: the average experts per token).
    router : ``"topk"`` (Mixtral, Qwen-MoE, OLMoE), ``"switch"``, ``"noisy_topk"``,
        ``"sigmoid_bias"`` (DeepSeek-V3) or ``"expert_choice"``.
    activation : ``"swiglu"``, ``"geglu"``, ``"gelu"``, ``"relu"`` or ``"silu"``.
    capacity_factor : None for dropless routing, else ``C = ceil(capacity_factor * T * K / E)``.
    drop_policy : which slots an over-full expert keeps: ``"position"`` or ``"score"``.
    num_shared_experts, shared_d_ff : a dense FFN of hidden size ``num_shared_experts *
        shared_d_ff`` (default ``d_ff``) that every token passes through.
    shared_expert_gate : scale the shared output by ``sigmoid(x . w)`` (Qwen2-MoE).
    normalize : renormalise the top-k weights to sum 1 (``topk`` and ``sigmoid_bias``).
    n_group, topk_group, routed_scaling_factor, bias_update_rate : ``sigmoid_bias`` options.
    expert_bias : biases inside the expert FFNs.
    aux_loss_weight : weight of the balancing loss; None = 0.01, or 0 for the routers that
        balance without it (``sigmoid_bias``, ``expert_choice``).
    z_loss_weight : weight of the router z-loss.
    backend : None (automatic), ``"loop"`` or ``"grouped_mm"``.
    experts : optional list of modules to use as experts instead of grouped FFNs (any
        architecture, mapping (R, D) -> (R, D)); runs with the ``loop`` backend.

    Examples
    --------
    >>> import torch
    >>> from moekit.layers import MoELayer
    >>> moe = MoELayer(d_model=16, d_ff=32, num_experts=4, top_k=2)
    >>> y = moe(torch.randn(2, 5, 16))
    >>> y.shape, moe.stats.tokens_per_expert.sum().item()
    (torch.Size([2, 5, 16]), 20)
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        num_experts: int,
        top_k: int = 2,
        *,
        router: RouterKind = "topk",
        activation: Activation = "swiglu",
        capacity_factor: float | None = None,
        drop_policy: DropPolicy = "position",
        num_shared_experts: int = 0,
        shared_d_ff: int | None = None,
        shared_expert_gate: bool = False,
        normalize: bool = True,
        n_group: int | None = None,
        topk_group: int | None = None,
        routed_scaling_factor: float = 1.0,
        bias_update_rate: float = 1e-3,
        expert_bias: bool = False,
        aux_loss_weight: float | None = None,
        z_loss_weight: float = 0.0,
        backend: Backend | None = None,
        experts: Sequence[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        check_choice("drop_policy", drop_policy, DROP_POLICIES)
        if backend is not None:
            check_choice("backend", backend, BACKEND_NAMES)
        if isinstance(num_shared_experts, bool) or not isinstance(num_shared_experts, int) \
                or num_shared_experts < 0:
            raise ValueError(f"num_shared_experts={num_shared_experts!r} must be an int >= 0")
        if experts is not None and len(experts) != num_experts:
            raise ValueError(
                f"experts has {len(experts)} modules but num_experts={num_experts}; "
                f"pass num_experts={len(experts)}"
            )
        self.router = Router(RouterConfig(
            kind=router, d_model=d_model, num_experts=num_experts, top_k=top_k,
            normalize=normalize, n_group=n_group, topk_group=topk_group,
            routed_scaling_factor=routed_scaling_factor, bias_update_rate=bias_update_rate,
            capacity_factor=capacity_factor,
        ))
        check_positive_int("d_ff", d_ff)
        self.d_model, self.d_ff, self.num_experts, self.top_k = d_model, d_ff, num_experts, top_k
        self.capacity_factor = capacity_factor
        self.drop_policy: DropPolicy = drop_policy
        self.experts: GroupedExperts | ModuleExperts
        if experts is not None:
            if backend == "grouped_mm":
                raise ValueError("backend='grouped_mm' needs grouped FFN experts; with experts=[...] "
                                 "use backend='loop' or None")
            self.experts = ModuleExperts(experts)
        else:
            self.experts = GroupedExperts(d_model, d_ff, num_experts, activation, bias=expert_bias)
        self.backend: Backend = backend or ("loop" if experts is not None else "grouped_mm")
        self.shared_experts = (
            FeedForward(d_model, num_shared_experts * (shared_d_ff or d_ff), activation)
            if num_shared_experts > 0 else None
        )
        self.shared_gate = (nn.Linear(d_model, 1, bias=False)
                            if shared_expert_gate and self.shared_experts is not None else None)
        if aux_loss_weight is None:
            aux_loss_weight = 0.0 if router in ("sigmoid_bias", "expert_choice") else 0.01
        if aux_loss_weight < 0 or z_loss_weight < 0:
            raise ValueError(f"aux_loss_weight={aux_loss_weight} and z_loss_weight={z_loss_weight} "
                             "must be >= 0")
        self.aux_loss_weight = float(aux_loss_weight)
        self.z_loss_weight = float(z_loss_weight)
        self.aux_loss: torch.Tensor | None = None
        self.stats: RoutingStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.d_model, "MoELayer")
        expert_param = next(self.experts.parameters(), None)
        if expert_param is not None:
            check_dtype_matches(x, expert_param, "MoELayer")
        x_TD = x.reshape(-1, self.d_model)
        T, E = x_TD.shape[0], self.num_experts
        routing = self.router(x_TD)
        kind = self.router.config.kind
        cap: int | None
        keep_TK: torch.Tensor | None
        if kind == "expert_choice":
            cap = expert_choice_capacity(T, E, self.top_k, self.capacity_factor)
            keep_TK = routing.keep_TK
        else:
            cap = capacity(T, self.top_k, E, self.capacity_factor)
            keep_TK = None if cap is None else capacity_keep(
                routing.indices_TK, routing.weights_TK, E, cap, self.drop_policy)
        y_TD = run_experts(x_TD, routing.indices_TK, routing.weights_TK, keep_TK, self.experts,
                           self.backend, cap)
        if self.shared_experts is not None:
            shared_TD = self.shared_experts(x_TD)
            if self.shared_gate is not None:
                shared_TD = torch.sigmoid(self.shared_gate(x_TD)) * shared_TD
            y_TD = y_TD + shared_TD
        self.aux_loss = self._aux_loss(routing)
        self.stats = _routing_stats(routing.indices_TK, keep_TK, routing.probs_TE, E, kind)
        return y_TD.view(x.shape)

    def _aux_loss(self, routing: Routing) -> torch.Tensor:
        loss = routing.logits_TE.new_zeros(())
        if self.aux_loss_weight > 0:
            loss = loss + self.aux_loss_weight * self.router.balance_loss(routing)
        if self.z_loss_weight > 0:
            loss = loss + self.z_loss_weight * router_z_loss(routing.logits_TE)
        return loss

    def extra_repr(self) -> str:
        return (f"capacity_factor={self.capacity_factor}, drop_policy={self.drop_policy!r}, "
                f"backend={self.backend!r}, aux_loss_weight={self.aux_loss_weight}, "
                f"z_loss_weight={self.z_loss_weight}")


@torch.no_grad()
def _routing_stats(indices_TK: torch.Tensor, keep_TK: torch.Tensor | None, probs_TE: torch.Tensor,
                   num_experts: int, kind: str) -> RoutingStats:
    if keep_TK is None:
        keep_TK = torch.ones_like(indices_TK, dtype=torch.bool)
    kept_TK = torch.where(keep_TK, indices_TK, -1)
    tokens_E = count_values(torch.where(keep_TK, indices_TK, num_experts), num_experts + 1)[:num_experts]
    load_E = tokens_E.float() / tokens_E.sum().clamp_min(1).float()
    if kind == "expert_choice":
        requested = keep_TK.shape[0]
        dropped = (~keep_TK.any(dim=1)).sum().float() / max(requested, 1)
    else:
        dropped = 1.0 - keep_TK.float().sum() / max(keep_TK.numel(), 1)
    if kind == "sigmoid_bias":
        probs_TE = probs_TE / probs_TE.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    entropy = -(probs_TE * probs_TE.clamp_min(1e-20).log()).sum(dim=-1).mean() \
        if probs_TE.shape[0] else probs_TE.new_zeros(())
    dropped_t = torch.as_tensor(dropped, dtype=torch.float32, device=probs_TE.device)
    return RoutingStats(tokens_E, load_E, dropped_t, entropy, kept_TK)


def total_aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of ``aux_loss`` over every MoE layer in ``model`` from their last forward.

    Returns a float32 scalar (zero when the model has no MoE layer or none has run yet).
    """
    total: torch.Tensor | None = None
    for module in model.modules():
        loss = module.aux_loss if isinstance(module, MoELayer) else None
        if loss is not None:
            total = loss if total is None else total + loss
    if total is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else None
        return torch.zeros((), dtype=torch.float32, device=device)
    return total
