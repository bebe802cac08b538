"""MoELayer: router + dispatcher + experts (+ optional shared experts), a drop-in for an MLP.

Legend: T tokens, D model dim, F expert hidden dim, E experts, K experts per token.

``y = moe(x)`` maps ``(..., d_model)`` to the same shape and dtype. After each forward the layer
keeps ``moe.aux_loss`` (a float32 scalar, already weighted; part of the autograd graph in
training) and ``moe.stats`` (:class:`RoutingStats`, detached). ``total_aux_loss(model)`` sums the
aux losses of every MoE layer in a model.

Two plain attributes let parallelism be applied from outside without this file knowing about it:
``moe.dispatcher`` (any :class:`~moekit.layers.dispatch.Dispatcher`) and ``moe.reduce_sums``
(None, or a :data:`~moekit.layers.losses.SumReducer` that makes the aux losses those of the whole
batch across processes; :mod:`moekit.parallel` installs an all-reduce).

Non-finite input: a token whose features contain NaN or Inf gets a non-finite output row; the
other tokens' outputs are unaffected (expert matmuls are row-wise), and a ``sigmoid_bias`` router
leaves its bias untouched for that batch. Check ``torch.isfinite`` upstream if you need to skip
such tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from moekit.kernels import choose_backend
from moekit.layers._checks import check_choice, check_dtype_matches, check_input
from moekit.layers.config import (
    BACKEND_NAMES,
    Backend,
    DispatchConfig,
    DropPolicy,
    MoEConfig,
)
from moekit.layers.dispatch import Dispatcher, capacity, capacity_keep, make_dispatcher
from moekit.layers.experts import Activation, FeedForward, GroupedExperts, ModuleExperts
from moekit.layers.losses import SumReducer, router_z_loss
from moekit.layers.routing import Router, RouterKind, Routing
from moekit.layers.stats import RoutingStats, routing_stats


class MoELayer(nn.Module):
    """Sparse Mixture-of-Experts feed-forward layer.

    The keywords below build one frozen :class:`~moekit.layers.MoEConfig` (``layer.config``);
    ``MoELayer.from_config(config)`` builds the same layer from a config. Forward: route,
    keep (capacity), dispatch, experts, combine (``layer.dispatcher``), plus the shared experts.

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
    n_group, topk_group, routed_scaling_factor, bias_update_rate : ``sigmoid_bias`` options; the
        bias moves when :func:`~moekit.layers.update_router_biases` is called (once per
        optimizer step; ``moekit train`` does it), from the counts of the training forwards.
    expert_bias : biases inside the expert FFNs.
    aux_loss_weight : weight of the balancing loss; None = 0.01, or 0 for the routers that
        balance without it (``sigmoid_bias``, ``expert_choice``).
    z_loss_weight : weight of the router z-loss.
    backend : None (automatic: :func:`moekit.kernels.choose_backend` for grouped experts, else
        ``"loop"``), ``"loop"`` (the readable reference), ``"grouped_mm"``, ``"cpu"`` (the fused
        CPU path; other devices and dtypes run ``grouped_mm``) or ``"triton"`` (fused Triton
        kernels on a CUDA GPU, by name only; elsewhere it falls back to ``"grouped_mm"`` and logs
        why); assign
        ``layer.backend = name`` to switch later (same weights).
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
        if experts is not None and len(experts) != num_experts:
            raise ValueError(
                f"experts has {len(experts)} modules but num_experts={num_experts}; "
                f"pass num_experts={len(experts)}"
            )
        if experts is not None and backend in ("grouped_mm", "cpu", "triton"):
            raise ValueError(f"backend={backend!r} needs grouped FFN experts; with experts=[...] "
                             "use backend='loop' or None")
        config = MoEConfig.create(
            d_model=d_model, d_ff=d_ff, num_experts=num_experts, top_k=top_k, router=router,
            activation=activation, capacity_factor=capacity_factor, drop_policy=drop_policy,
            num_shared_experts=num_shared_experts, shared_d_ff=shared_d_ff,
            shared_expert_gate=shared_expert_gate, normalize=normalize, n_group=n_group,
            topk_group=topk_group, routed_scaling_factor=routed_scaling_factor,
            bias_update_rate=bias_update_rate, expert_bias=expert_bias,
            aux_loss_weight=aux_loss_weight, z_loss_weight=z_loss_weight, backend=backend,
        )
        self._build(config, experts)

    @classmethod
    def from_config(cls, config: MoEConfig) -> MoELayer:
        """The layer described by ``config`` (fresh weights); ``layer.config == config``."""
        if not isinstance(config, MoEConfig):
            raise TypeError(f"config is a {type(config).__name__}; pass a moekit.layers.MoEConfig "
                            "(MoEConfig.create(d_model=..., d_ff=..., num_experts=...) builds one)")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._build(config, None)
        return layer

    def _build(self, config: MoEConfig, experts: Sequence[nn.Module] | None) -> None:
        self.config = config
        self.router = Router(config.router)
        self.experts: GroupedExperts | ModuleExperts
        if experts is not None:
            self.experts = ModuleExperts(experts)
        else:
            ex = config.experts
            self.experts = GroupedExperts(config.d_model, ex.d_ff, config.num_experts,
                                          ex.activation, bias=ex.bias)
        sh = config.shared
        self.shared_experts = (FeedForward(config.d_model, sh.d_ff, config.experts.activation)
                               if sh is not None else None)
        self.shared_gate = (nn.Linear(config.d_model, 1, bias=False)
                            if sh is not None and sh.gate else None)
        self.dispatcher: Dispatcher
        self._set_backend(config.dispatch.backend)
        self.aux_loss: torch.Tensor | None = None
        self.stats: RoutingStats | None = None
        self.reduce_sums: SumReducer | None = None

    # --- read-only views of the config ------------------------------------------------------

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def d_ff(self) -> int:
        return self.config.d_ff

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    @property
    def top_k(self) -> int:
        return self.config.top_k

    @property
    def capacity_factor(self) -> float | None:
        return self.config.capacity_factor

    @property
    def drop_policy(self) -> DropPolicy:
        return self.config.dispatch.drop_policy

    @property
    def aux_loss_weight(self) -> float:
        return float(self.config.aux_loss_weight or 0.0)

    @property
    def z_loss_weight(self) -> float:
        return float(self.config.z_loss_weight)

    @property
    def backend(self) -> Backend:
        """The backend in use; assign a name to switch (same weights): ``moe.backend = "loop"``."""
        return self._backend

    @backend.setter
    def backend(self, name: Backend | None) -> None:
        if name is not None:
            check_choice("backend", name, BACKEND_NAMES)
        self._set_backend(name)
        self.config = dataclasses.replace(
            self.config, dispatch=dataclasses.replace(self.config.dispatch, backend=name))

    def _set_backend(self, name: Backend | None) -> None:
        grouped = isinstance(self.experts, GroupedExperts)
        if name in ("grouped_mm", "cpu", "triton") and not grouped:
            raise ValueError(f"backend={name!r} needs grouped FFN experts; with experts=[...] "
                             "use backend='loop' or None")
        resolved: Backend = name or "loop"
        if name is None and isinstance(self.experts, GroupedExperts):
            w = self.experts.w_in
            resolved = choose_backend(w.device, w.dtype)[0]  # type: ignore[assignment]
        self._backend = resolved
        current: Dispatcher | None = getattr(self, "dispatcher", None)
        local = make_dispatcher(resolved)
        self.dispatcher = local if current is None else current.with_local(local)
        if isinstance(self.experts, GroupedExperts):
            self.experts.kernel = "loop" if resolved == "loop" else "grouped_mm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.d_model, "MoELayer")
        expert_param = next(self.experts.parameters(), None)
        if expert_param is not None:
            check_dtype_matches(x, expert_param, "MoELayer")
        x_TD = x.reshape(-1, self.d_model)
        routing = self.router(x_TD)
        keep_TK, cap = self._keep(routing)
        y_TD = self.dispatcher(x_TD, routing, keep_TK, self.experts, cap)
        if self.shared_experts is not None:
            shared_TD = self.shared_experts(x_TD)
            if self.shared_gate is not None:
                shared_TD = torch.sigmoid(self.shared_gate(x_TD)) * shared_TD
            y_TD = y_TD + shared_TD
        self.aux_loss = self._aux_loss(routing)
        stats = routing_stats(routing.indices_TK, keep_TK, self.router.token_distribution(routing),
                              self.num_experts, routing.keep_TK)
        comm = self.dispatcher.comm
        self.stats = stats if comm is None else dataclasses.replace(stats, comm=comm)
        return y_TD.view(x.shape)

    def _keep(self, routing: Routing) -> tuple[torch.Tensor | None, int | None]:
        """Slots that reach their expert (None = all) and the static per-expert bound, if any.

        The router's own selection (``expert_choice``) comes in ``routing.keep_TK``; token-choice
        capacity is applied here, over this call's tokens.
        """
        if routing.keep_TK is not None:
            return routing.keep_TK, None
        dispatch: DispatchConfig = self.config.dispatch
        T = routing.indices_TK.shape[0]
        cap = capacity(T, self.top_k, self.num_experts, dispatch.capacity_factor)
        if cap is None:
            return None, None
        keep_TK = capacity_keep(routing.indices_TK, routing.weights_TK, self.num_experts, cap,
                                dispatch.drop_policy)
        return keep_TK, cap

    def _aux_loss(self, routing: Routing) -> torch.Tensor:
        loss = routing.logits_TE.new_zeros(())
        if self.aux_loss_weight > 0:
            loss = loss + self.aux_loss_weight * self.router.balance_loss(routing, self.reduce_sums)
        if self.z_loss_weight > 0:
            loss = loss + self.z_loss_weight * router_z_loss(routing.logits_TE, self.reduce_sums)
        return loss

    def extra_repr(self) -> str:
        return (f"capacity_factor={self.capacity_factor}, drop_policy={self.drop_policy!r}, "
                f"backend={self.backend!r}, aux_loss_weight={self.aux_loss_weight}, "
                f"z_loss_weight={self.z_loss_weight}")


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
