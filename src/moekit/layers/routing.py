"""Routers: which experts each token goes to, and with what combine weight.

Legend: T tokens, D model dim, E experts, K experts per token (for ``expert_choice`` K = E and
``keep_TK`` marks the (token, expert) pairs each expert picked), G expert groups (``n_group``).

All router maths runs in float32 whatever the input dtype (float64 inputs stay float64). A router never touches expert weights;
it returns a :class:`Routing` record that the dispatcher consumes and the losses read.

================  ==========================================  =============================================
router            selection                                   combine weights
================  ==========================================  =============================================
``topk``          top-k of softmax(logits)                    the k probabilities, renormalised if ``normalize``
``switch``        argmax (k = 1)                              the probability itself
``noisy_topk``    top-k of logits + N(0,1)·softplus(x·W_n)    softmax over the k kept (noisy) logits
``sigmoid_bias``  top-k of sigmoid(logits) + b (b a buffer),  sigmoid scores without b, renormalised if
                  optionally within the best ``topk_group``   ``normalize``, times ``routed_scaling_factor``
                  of ``n_group`` groups
``expert_choice`` each expert takes its top-C tokens          softmax probability
================  ==========================================  =============================================

Aux-loss-free balancing (``sigmoid_bias``): training forwards only *count* the slots each expert
received; the bias moves when :func:`update_router_biases` is called, once per optimizer step
(``b_e += rate * sign(mean load - load_e)`` over the counts since the last call). Counting happens
as the gradient flows back through the combine weights, so a forward recomputed by activation
checkpointing is not counted twice, and micro-batches of one step add up before the single
update. A forward without a backward (grad mode on, router frozen) is counted in the forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers import losses
from moekit.layers._checks import check_choice, check_positive_int, count_values, router_dtype

RouterKind = Literal["topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice"]
ROUTERS: tuple[str, ...] = get_args(RouterKind)


@dataclass(frozen=True)
class Routing:
    """What a router decided for a batch of T tokens.

    Attributes
    ----------
    indices_TK : (T, K) int64 expert of each token-slot.
    weights_TK : (T, K) float32 combine weight of each token-slot.
    logits_TE : (T, E) float32 raw router logits.
    probs_TE : (T, E) float32 router probabilities (softmax; for ``sigmoid_bias`` the sigmoid scores).
    keep_TK : (T, K) bool or None. Slots the router itself rules out (``expert_choice``); capacity
        drops are applied later by the dispatcher.
    load_E : (E,) float32 or None. Smooth load estimate (``noisy_topk`` in training).
    """

    indices_TK: torch.Tensor
    weights_TK: torch.Tensor
    logits_TE: torch.Tensor
    probs_TE: torch.Tensor
    keep_TK: torch.Tensor | None = None
    load_E: torch.Tensor | None = None


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    """Settings of a :class:`Router`; checked on construction.

    Parameters
    ----------
    kind : the selection rule (table above).
    d_model, num_experts, top_k : D, E and K.
    normalize : renormalise the top-k weights to sum 1 (``topk``, ``sigmoid_bias``).
    n_group, topk_group : ``sigmoid_bias`` group-limited routing (DeepSeek-V3): keep the best
        ``topk_group`` of ``n_group`` expert groups, scored by the sum of their top-2 scores.
    routed_scaling_factor : ``sigmoid_bias`` combine weights are multiplied by it.
    bias_update_rate : ``sigmoid_bias`` balancing step size (0 switches it off).
    capacity_factor : ``expert_choice`` only: each expert takes ``ceil(cf * T * K / E)`` tokens
        (None means 1.0). Token-choice capacity is a dispatch setting
        (:class:`moekit.layers.DispatchConfig`).
    noise_eps : ``noisy_topk``: floor added to the learned noise scale.
    """

    kind: RouterKind = "topk"
    d_model: int
    num_experts: int
    top_k: int = 2
    normalize: bool = True
    n_group: int | None = None
    topk_group: int | None = None
    routed_scaling_factor: float = 1.0
    bias_update_rate: float = 1e-3
    capacity_factor: float | None = None
    noise_eps: float = 1e-2

    def __post_init__(self) -> None:
        check_choice("router", self.kind, ROUTERS)
        check_positive_int("d_model", self.d_model)
        check_positive_int("num_experts", self.num_experts)
        check_positive_int("top_k", self.top_k)
        if self.top_k > self.num_experts:
            raise ValueError(
                f"top_k={self.top_k} must be <= num_experts={self.num_experts}; "
                "lower top_k or add experts"
            )
        if self.kind == "switch" and self.top_k != 1:
            raise ValueError(
                f"router='switch' routes each token to one expert, got top_k={self.top_k}; "
                "use top_k=1, or router='topk' for several experts per token"
            )
        if self.capacity_factor is not None:
            if self.kind != "expert_choice":
                raise ValueError(
                    f"RouterConfig capacity_factor={self.capacity_factor} applies to "
                    f"kind='expert_choice' only, got kind={self.kind!r}; token-choice capacity is "
                    "DispatchConfig(capacity_factor=...)")
            if not self.capacity_factor > 0:
                raise ValueError(
                    f"capacity_factor={self.capacity_factor} must be > 0 (or None); typical values "
                    "are 1.0 to 2.0")
        if self.bias_update_rate < 0:
            raise ValueError(f"bias_update_rate={self.bias_update_rate} must be >= 0")
        self._check_groups()

    def _check_groups(self) -> None:
        if self.n_group is None and self.topk_group is None:
            return
        if self.kind != "sigmoid_bias":
            raise ValueError(
                f"n_group/topk_group apply to router='sigmoid_bias' only, got router={self.kind!r}; "
                "drop n_group and topk_group or use router='sigmoid_bias'"
            )
        if self.n_group is None or self.topk_group is None:
            raise ValueError(
                f"n_group={self.n_group} and topk_group={self.topk_group} must be given together"
            )
        check_positive_int("n_group", self.n_group)
        check_positive_int("topk_group", self.topk_group)
        if self.num_experts % self.n_group:
            raise ValueError(
                f"n_group={self.n_group} must divide num_experts={self.num_experts}; "
                f"use a divisor of {self.num_experts} such as "
                f"{max(d for d in range(1, self.n_group + 1) if self.num_experts % d == 0)}"
            )
        if self.topk_group > self.n_group:
            raise ValueError(f"topk_group={self.topk_group} must be <= n_group={self.n_group}")
        if self.top_k > self.topk_group * (self.num_experts // self.n_group):
            raise ValueError(
                f"top_k={self.top_k} exceeds the {self.topk_group * (self.num_experts // self.n_group)} "
                f"experts in topk_group={self.topk_group} groups; raise topk_group or lower top_k"
            )


def expert_choice_capacity(num_tokens: int, num_experts: int, top_k: int,
                           capacity_factor: float | None) -> int:
    """Tokens each expert takes under expert-choice routing: ``ceil(cf * T * k / E)``, at most T."""
    factor = 1.0 if capacity_factor is None else capacity_factor
    return min(num_tokens, math.ceil(factor * num_tokens * top_k / num_experts))


class Router(nn.Module):
    """Linear router ``logits_TE = x_TD · W_ED^T`` followed by one of the selection rules above.

    Attributes
    ----------
    weight : (E, D) parameter.
    noise_weight : (E, D) parameter (``noisy_topk`` only).
    expert_bias : (E,) float32 buffer, saved in checkpoints (``sigmoid_bias`` only).
    pending_counts : (E,) float32 buffer, not saved: slots per expert counted since the last
        :meth:`update_bias` (``sigmoid_bias`` only).
    reduce_counts : None, or a function applied to the pending counts before the bias update
        (expert parallelism installs an all-reduce here so that every rank moves the same bias).
    """

    expert_bias: torch.Tensor
    pending_counts: torch.Tensor

    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        E, D = config.num_experts, config.d_model
        self.weight = nn.Parameter(torch.empty(E, D))
        nn.init.normal_(self.weight, std=D**-0.5)
        if config.kind == "noisy_topk":
            self.noise_weight = nn.Parameter(torch.zeros(E, D))  # zero init, as in Shazeer et al.
        if config.kind == "sigmoid_bias":
            self.register_buffer("expert_bias", torch.zeros(E, dtype=torch.float32))
            self.register_buffer("pending_counts", torch.zeros(E, dtype=torch.float32),
                                 persistent=False)
        self.reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x_TD: torch.Tensor) -> Routing:
        # float32 even under torch.autocast, which would otherwise run the linear in bf16/fp16
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            return self._route(x_TD)

    def _route(self, x_TD: torch.Tensor) -> Routing:
        cfg = self.config
        dt = router_dtype(x_TD.dtype)
        logits_TE = F.linear(x_TD.to(dt), self.weight.to(dt))
        if cfg.kind in ("topk", "switch"):
            return self._softmax_topk(logits_TE)
        if cfg.kind == "noisy_topk":
            return self._noisy_topk(x_TD, logits_TE)
        if cfg.kind == "sigmoid_bias":
            return self._sigmoid_bias(logits_TE)
        return self._expert_choice(logits_TE)

    def _softmax_topk(self, logits_TE: torch.Tensor) -> Routing:
        probs_TE = logits_TE.softmax(dim=-1)
        weights_TK, indices_TK = probs_TE.topk(self.config.top_k, dim=-1)
        if self.config.kind == "topk" and self.config.normalize:
            weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        return Routing(indices_TK, weights_TK, logits_TE, probs_TE)

    def _noisy_topk(self, x_TD: torch.Tensor, logits_TE: torch.Tensor) -> Routing:
        k, E = self.config.top_k, self.config.num_experts
        probs_TE = logits_TE.softmax(dim=-1)
        if not self.training:
            top_TK, indices_TK = logits_TE.topk(k, dim=-1)
            return Routing(indices_TK, top_TK.softmax(dim=-1), logits_TE, probs_TE)
        std_TE = F.softplus(F.linear(x_TD.to(logits_TE.dtype), self.noise_weight.to(logits_TE.dtype))) + self.config.noise_eps
        noisy_TE = logits_TE + torch.randn_like(logits_TE) * std_TE
        m = min(k + 1, E)
        top_TM, indices_TM = noisy_TE.topk(m, dim=-1)
        indices_TK = indices_TM[:, :k]
        weights_TK = top_TM[:, :k].softmax(dim=-1)
        # Smooth load (Shazeer et al. 2017, appendix A): P(expert e stays in the top k when its
        # noise is resampled) = Phi((clean_e - threshold_e) / std_e), where threshold_e is the k-th
        # largest noisy logit among the others: the (k+1)-th overall if e is in, else the k-th.
        if m > k:
            in_TE = noisy_TE > top_TM[:, k : k + 1]
            threshold_TE = torch.where(in_TE, top_TM[:, k : k + 1], top_TM[:, k - 1 : k])
            normal = torch.distributions.Normal(0.0, 1.0)
            load_E = normal.cdf((logits_TE - threshold_TE) / std_TE).sum(dim=0)
        else:  # k == E: every expert is always chosen
            load_E = torch.full((E,), float(logits_TE.shape[0]), device=logits_TE.device)
        return Routing(indices_TK, weights_TK, logits_TE, probs_TE, load_E=load_E)

    def _sigmoid_bias(self, logits_TE: torch.Tensor) -> Routing:
        cfg = self.config
        scores_TE = logits_TE.sigmoid()
        choice_TE = scores_TE + self.expert_bias.to(scores_TE.dtype)
        if cfg.n_group is not None and cfg.topk_group is not None and cfg.n_group > 1:
            T, E = choice_TE.shape
            per_group = E // cfg.n_group
            group_scores_TG = choice_TE.view(T, cfg.n_group, per_group).topk(
                min(2, per_group), dim=-1)[0].sum(dim=-1)
            group_idx = group_scores_TG.topk(cfg.topk_group, dim=-1, sorted=False)[1]
            group_mask_TG = torch.zeros_like(group_scores_TG).scatter_(1, group_idx, 1.0)
            score_mask_TE = group_mask_TG.unsqueeze(-1).expand(T, cfg.n_group, per_group).reshape(T, E)
            choice_TE = choice_TE.masked_fill(score_mask_TE == 0, float("-inf"))
        indices_TK = choice_TE.topk(cfg.top_k, dim=-1, sorted=False)[1]
        weights_TK = scores_TE.gather(1, indices_TK)
        if cfg.normalize:
            weights_TK = weights_TK / (weights_TK.sum(dim=-1, keepdim=True) + 1e-20)
        weights_TK = weights_TK * cfg.routed_scaling_factor
        if self.training and cfg.bias_update_rate > 0 and torch.is_grad_enabled():
            weights_TK = self._count_slots(indices_TK, weights_TK, logits_TE)
        return Routing(indices_TK, weights_TK, logits_TE, scores_TE)

    def _count_slots(self, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
                     logits_TE: torch.Tensor) -> torch.Tensor:
        """Add this batch's slots per expert to ``pending_counts`` (see the module docstring).

        A batch with a non-finite logit is not counted (a masked add: no host sync).
        """
        with torch.no_grad():
            counts_E = count_values(indices_TK, self.config.num_experts).float()
            counts_E = torch.where(torch.isfinite(logits_TE).all(), counts_E,
                                   torch.zeros_like(counts_E))
        if weights_TK.requires_grad:
            return _CountOnBackward.apply(weights_TK, counts_E, self.pending_counts)
        self.pending_counts.add_(counts_E)
        return weights_TK

    @torch.no_grad()
    def update_bias(self) -> None:
        """DeepSeek-V3's aux-loss-free step ``b_e += rate * sign(mean load - load_e)``.

        The load is ``pending_counts`` (passed through ``reduce_counts`` when set), which is then
        zeroed. No counts since the last call means no change. Only for ``sigmoid_bias``.
        """
        if self.config.kind != "sigmoid_bias":
            raise ValueError(f"update_bias applies to router='sigmoid_bias', this router is "
                             f"{self.config.kind!r}")
        load_E = self.pending_counts.clone()
        if self.reduce_counts is not None:
            load_E = self.reduce_counts(load_E)
        self.expert_bias.add_(self.config.bias_update_rate * torch.sign(load_E.mean() - load_E))
        self.pending_counts.zero_()

    def _expert_choice(self, logits_TE: torch.Tensor) -> Routing:
        cfg = self.config
        T, E = logits_TE.shape
        probs_TE = logits_TE.softmax(dim=-1)
        C = expert_choice_capacity(T, E, cfg.top_k, cfg.capacity_factor)
        indices_TK = torch.arange(E, device=logits_TE.device).expand(T, E)
        keep_TK = torch.zeros(T, E, dtype=torch.bool, device=logits_TE.device)
        if C > 0:
            token_idx_EC = probs_TE.t().topk(C, dim=-1)[1]
            keep_TK = keep_TK.t().scatter(1, token_idx_EC, True).t()
        return Routing(indices_TK, probs_TE, logits_TE, probs_TE, keep_TK=keep_TK)

    def token_distribution(self, routing: Routing) -> torch.Tensor:
        """(T, E) distribution over experts per token (``sigmoid_bias``: the normalised scores)."""
        probs_TE = routing.probs_TE
        if self.config.kind == "sigmoid_bias":
            probs_TE = probs_TE / probs_TE.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        return probs_TE

    def balance_loss(self, routing: Routing,
                     reduce_sums: losses.SumReducer | None = None) -> torch.Tensor:
        """The router's own balancing loss (unweighted); zero where none applies.

        ``reduce_sums`` (optional) makes it the loss of the whole batch across processes (see
        :mod:`moekit.layers.losses`).
        """
        kind = self.config.kind
        if kind == "expert_choice":
            return routing.logits_TE.new_zeros(())
        if kind == "noisy_topk":
            T, E = routing.probs_TE.shape
            gates_TE = routing.probs_TE.new_zeros(T, E).scatter(
                1, routing.indices_TK, routing.weights_TK)
            load_E = routing.load_E
            if load_E is None:
                load_E = count_values(routing.indices_TK, E).float()
            return losses.importance_load_loss(gates_TE, load_E, reduce_sums)
        probs_TE = routing.probs_TE
        if kind == "sigmoid_bias":  # DeepSeek-V3's complementary loss uses normalised scores
            probs_TE = probs_TE / (probs_TE.sum(dim=-1, keepdim=True) + 1e-20)
        return losses.switch_load_balancing_loss(probs_TE, routing.indices_TK, reduce_sums)

    def extra_repr(self) -> str:
        c = self.config
        return f"kind={c.kind!r}, d_model={c.d_model}, num_experts={c.num_experts}, top_k={c.top_k}"


class _CountOnBackward(torch.autograd.Function):
    """Identity on the combine weights; its backward adds the batch's counts to the router's
    pending counts. A forward that activation checkpointing recomputes is counted once: only
    the graph that gradients flow through counts."""

    @staticmethod
    def forward(ctx, weights_TK, counts_E, pending_E):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(counts_E)
        ctx.pending_E = pending_E
        return weights_TK.view_as(weights_TK)

    @staticmethod
    def backward(ctx, grad_TK):  # type: ignore[no-untyped-def, override]
        (counts_E,) = ctx.saved_tensors
        ctx.pending_E.add_(counts_E)
        return grad_TK, None, None


def update_router_biases(model: nn.Module,
                         reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         ) -> int:
    """Apply the aux-loss-free bias step of every ``sigmoid_bias`` router in ``model``.

    Call it once per optimizer step, after ``optimizer.step()`` (``moekit train`` does; so does
    :func:`register_router_bias_update`). Each router's counts since the last call are summed over
    all forwards of the step (micro-batches, checkpoint recomputation counted once) and reset.

    Parameters
    ----------
    model : any module holding routers (``MoELayer.router``).
    reduce_counts : optional function applied to the (E,) counts before the update, e.g. an
        all-reduce over data-parallel ranks so that every rank moves its bias identically;
        overrides a router's own ``reduce_counts``.

    Returns
    -------
    The number of routers updated.

    Examples
    --------
    >>> import torch
    >>> from moekit.layers import MoELayer, update_router_biases
    >>> moe = MoELayer(8, 16, 4, 1, router="sigmoid_bias")
    >>> moe(torch.randn(10, 8)).sum().backward()
    >>> update_router_biases(moe)
    1
    >>> bool(moe.router.expert_bias.abs().sum() > 0)
    True
    """
    updated = 0
    for module in model.modules():
        if isinstance(module, Router) and module.config.kind == "sigmoid_bias":
            own = module.reduce_counts
            if reduce_counts is not None:
                module.reduce_counts = reduce_counts
            try:
                module.update_bias()
            finally:
                module.reduce_counts = own
            updated += 1
    return updated


def register_router_bias_update(optimizer: torch.optim.Optimizer, model: nn.Module):  # type: ignore[no-untyped-def]
    """Call :func:`update_router_biases` on ``model`` after every ``optimizer.step()``.

    For training loops you do not write yourself (e.g. a Hugging Face ``Trainer``). Returns the
    hook handle; ``handle.remove()`` undoes it.
    """
    def hook(*_: object) -> None:
        update_router_biases(model)

    return optimizer.register_step_post_hook(hook)
