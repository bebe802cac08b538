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

The token-choice rules (``topk``, ``switch``, ``sigmoid_bias``) take options that the routers of
published models differ by (``RouterConfig``): ``select="logits"`` picks the top k of the raw
logits and scores only those (softmax over the k, or sigmoid: GPT-OSS, Granite, Llama 4);
``expert_bias`` adds a choice-only bias (DeepSeek-V3's ``e_score_correction_bias``; also with
softmax scores, ERNIE 4.5); group-limited selection scores groups by the sum of their top two
(DeepSeek-V3) or by their maximum (DeepSeek-V2); the renormalisation has an epsilon, a floor and a
p-norm; ``routed_scaling_factor`` multiplies the weights; ``score_precision`` and
``weights_precision`` say where a model rounds to its own dtype. :meth:`Router.route_logits`
applies a rule to logits computed elsewhere (a transformers router module, say).

Aux-loss-free balancing (``sigmoid_bias``, or any router with ``expert_bias``): training forwards
only *count* the slots each expert received; the bias moves when :func:`update_router_biases` is called, once per optimizer step
(``b_e += rate * sign(mean load - load_e)`` over the counts since the last call). Counting happens
as the gradient flows back through the combine weights, so a forward recomputed by activation
checkpointing is not counted twice, and micro-batches of one step add up before the single
update. A forward without a backward (grad mode on, router frozen) is counted in the forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers import losses
from moekit.layers._checks import count_values, router_dtype
from moekit.layers.router_config import (
    ROUTERS,
    TOKEN_CHOICE,
    GroupFill,
    GroupScore,
    Precision,
    RouterConfig,
    RouterKind,
    Select,
    WeightsPrecision,
    expert_choice_capacity,
)

__all__ = ["ROUTERS", "TOKEN_CHOICE", "GroupFill", "GroupScore", "Precision", "Router",
           "RouterConfig", "RouterKind", "Routing", "Select", "TensorRef", "WeightsPrecision",
           "expert_choice_capacity", "register_router_bias_update", "update_router_biases"]

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


@dataclass(frozen=True)
class TensorRef:
    """A tensor owned by another module, read at call time: ``ref.get()`` is ``owner.<path>``.

    A router that *borrows* its choice bias (a transformers model's ``e_score_correction_bias``)
    holds one: the tensor stays registered (and saved) where it is, ``module.to(...)`` moves it
    there, and updates made through the router land in it. ``copy.deepcopy`` of a model copies
    the reference along with the owner.
    """

    owner: nn.Module
    path: str

    def get(self) -> torch.Tensor:
        obj: object = self.owner
        for part in self.path.split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, torch.Tensor):
            raise TypeError(f"{type(self.owner).__name__}.{self.path} is a {type(obj).__name__}, "
                            "not a tensor")
        return obj


class Router(nn.Module):
    """Linear router ``logits_TE = x_TD · W_ED^T`` followed by one of the selection rules above.

    Parameters
    ----------
    config : the rule (:class:`RouterConfig`).
    own_weight : False builds a router without ``weight``: its logits come from elsewhere and are
        passed to :meth:`route_logits` (calling the router on inputs is then an error).
    bias_from : a :class:`TensorRef` to a (E,) tensor (or any shape with E elements) to use as the
        choice bias instead of an own ``expert_bias`` buffer; it is read at every call and moved
        in place by :meth:`update_bias`.

    Attributes
    ----------
    weight : (E, D) parameter.
    noise_weight : (E, D) parameter (``noisy_topk`` only).
    expert_bias : (E,) float32 buffer, saved in checkpoints (routers with
        ``config.expert_bias``, unless ``bias_from`` is given).
    pending_counts : (E,) float32 buffer, not saved: slots per expert counted since the last
        :meth:`update_bias` (routers with ``config.expert_bias``).
    reduce_counts : None, or a function applied to the pending counts before the bias update
        (expert parallelism installs an all-reduce here so that every rank moves the same bias).
    """

    expert_bias: torch.Tensor
    pending_counts: torch.Tensor

    def __init__(self, config: RouterConfig, *, own_weight: bool = True,
                 bias_from: TensorRef | None = None) -> None:
        super().__init__()
        if not isinstance(config, RouterConfig):
            raise TypeError(f"config is a {type(config).__name__}; pass a moekit RouterConfig")
        self.config = config
        E, D = config.num_experts, config.d_model
        self.own_weight = bool(own_weight)
        if self.own_weight:
            self.weight = nn.Parameter(torch.empty(E, D))
            nn.init.normal_(self.weight, std=D**-0.5)
        if config.kind == "noisy_topk":
            if not self.own_weight:
                raise ValueError("router='noisy_topk' computes its noise from the input; it needs "
                                 "own_weight=True")
            self.noise_weight = nn.Parameter(torch.zeros(E, D))  # zero init, as in Shazeer et al.
        if bias_from is not None and not config.expert_bias:
            raise ValueError(f"bias_from is given but the router config has expert_bias=False "
                             f"(router={config.kind!r}); set RouterConfig(expert_bias=True)")
        self.bias_from = bias_from
        if config.expert_bias:
            if bias_from is None:
                self.register_buffer("expert_bias", torch.zeros(E, dtype=torch.float32))
            self.register_buffer("pending_counts", torch.zeros(E, dtype=torch.float32),
                                 persistent=False)
        self.reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None

    def bias(self) -> torch.Tensor | None:
        """The (E,) choice bias in use (own buffer or borrowed tensor), or None without one."""
        if not self.config.expert_bias:
            return None
        if self.bias_from is not None:
            return self.bias_from.get().view(-1)
        return self.expert_bias

    def forward(self, x_TD: torch.Tensor) -> Routing:
        if not self.own_weight:
            raise TypeError("this Router has no weight (own_weight=False): compute the logits "
                            "elsewhere and call router.route_logits(logits_TE)")
        # float32 even under torch.autocast, which would otherwise run the linear in bf16/fp16
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            dt = router_dtype(x_TD.dtype)
            logits_TE = F.linear(x_TD.to(dt), self.weight.to(dt))
            if self.config.kind == "noisy_topk":
                return self._noisy_topk(x_TD, logits_TE)
            return self.route_logits(logits_TE)

    def route_logits(self, logits_TE: torch.Tensor, *,
                     input_dtype: torch.dtype | None = None) -> Routing:
        """Apply the selection rule to (T, E) logits computed elsewhere.

        The logits keep their dtype where ``score_precision="logits"`` asks for it; otherwise the
        maths runs in float32 (float64 for float64 logits). ``input_dtype`` is the dtype the
        ``weights_precision="input"`` option rounds to (default: the logits' dtype).
        """
        kind = self.config.kind
        if kind == "noisy_topk":
            raise ValueError("router='noisy_topk' needs the input for its noise; call the router "
                             "on the input instead of route_logits")
        with torch.autocast(device_type=logits_TE.device.type, enabled=False):
            if kind == "expert_choice":
                return self._expert_choice(logits_TE.to(router_dtype(logits_TE.dtype)))
            return self._token_choice(logits_TE, input_dtype or logits_TE.dtype)

    def _token_choice(self, logits_TE: torch.Tensor, input_dtype: torch.dtype) -> Routing:
        """``topk``, ``switch`` and ``sigmoid_bias``: one code path, the options as data."""
        cfg = self.config
        acc = router_dtype(logits_TE.dtype)
        work_TE = logits_TE if cfg.score_precision == "logits" else logits_TE.to(acc)
        sigmoid = cfg.kind == "sigmoid_bias"

        def score(t: torch.Tensor) -> torch.Tensor:
            return t.sigmoid() if sigmoid else t.softmax(dim=-1)

        scores_TE = score(work_TE)
        bias_E = self.bias()
        if cfg.select == "logits":
            if bias_E is None:
                top_TK, indices_TK = work_TE.topk(cfg.top_k, dim=-1)
            else:
                indices_TK = (work_TE + bias_E.to(work_TE.dtype)).topk(cfg.top_k, dim=-1)[1]
                top_TK = work_TE.gather(1, indices_TK)
            weights_TK = score(top_TK)
        else:
            choice_TE = scores_TE
            if bias_E is not None:
                choice_TE = scores_TE + bias_E.to(scores_TE.dtype)
            if cfg.n_group is not None and cfg.topk_group is not None and cfg.n_group > 1:
                choice_TE = self._limit_groups(choice_TE)
            if choice_TE is scores_TE:  # plain top-k: the sorted values are the weights
                weights_TK, indices_TK = scores_TE.topk(cfg.top_k, dim=-1)
            else:
                indices_TK = choice_TE.topk(cfg.top_k, dim=-1, sorted=False)[1]
                weights_TK = scores_TE.gather(1, indices_TK)
        # (a softmax over the k kept logits sums to 1 already: no second renormalisation)
        if cfg.normalize and cfg.kind != "switch" and not (cfg.select == "logits" and not sigmoid):
            weights_TK = weights_TK / self._norm(weights_TK)
        if cfg.routed_scaling_factor != 1.0:
            weights_TK = weights_TK * cfg.routed_scaling_factor
        if cfg.weights_precision != "float32":
            rounded = logits_TE.dtype if cfg.weights_precision == "logits" else input_dtype
            weights_TK = weights_TK.to(rounded)
        weights_TK = weights_TK.to(acc)
        if (cfg.expert_bias and self.training and cfg.bias_update_rate > 0
                and torch.is_grad_enabled()):
            weights_TK = self._count_slots(indices_TK, weights_TK, logits_TE)
        return Routing(indices_TK, weights_TK, logits_TE.to(acc), scores_TE.to(acc))

    def _limit_groups(self, choice_TE: torch.Tensor) -> torch.Tensor:
        """Keep the best ``topk_group`` of ``n_group`` expert groups; mask the rest to -inf."""
        cfg = self.config
        T, E = choice_TE.shape
        G = int(cfg.n_group or 1)
        per_group = E // G
        grouped_TGX = choice_TE.view(T, G, per_group)
        if cfg.group_score == "max":
            group_scores_TG = grouped_TGX.max(dim=-1).values
        else:
            group_scores_TG = grouped_TGX.topk(min(2, per_group), dim=-1)[0].sum(dim=-1)
        group_idx = group_scores_TG.topk(int(cfg.topk_group or 1), dim=-1, sorted=False)[1]
        group_mask_TG = torch.zeros_like(group_scores_TG).scatter_(1, group_idx, 1.0)
        score_mask_TE = group_mask_TG.unsqueeze(-1).expand(T, G, per_group).reshape(T, E)
        fill = float("-inf") if cfg.group_fill == "-inf" else 0.0
        return choice_TE.masked_fill(score_mask_TE == 0, fill)

    def _norm(self, weights_TK: torch.Tensor) -> torch.Tensor:
        """The renormalisation denominator ``max(norm_p(w), normalize_min) + normalize_eps``."""
        cfg = self.config
        if cfg.normalize_p == 1.0:
            denom = weights_TK.sum(dim=-1, keepdim=True)
        else:
            denom = torch.linalg.vector_norm(weights_TK, ord=cfg.normalize_p, dim=-1, keepdim=True)
        if cfg.normalize_min:
            denom = denom.clamp_min(cfg.normalize_min)
        if cfg.normalize_eps:
            denom = denom + cfg.normalize_eps
        return denom

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
        zeroed. No counts since the last call means no change. Only for routers with a choice
        bias (``sigmoid_bias``, or ``expert_bias=True``); a borrowed bias is moved in place.
        """
        bias_E = self.bias()
        if bias_E is None:
            raise ValueError(f"update_bias applies to routers with a choice bias "
                             f"(router='sigmoid_bias' or expert_bias=True), this router is "
                             f"{self.config.kind!r} without one")
        load_E = self.pending_counts.clone()
        if self.reduce_counts is not None:
            load_E = self.reduce_counts(load_E)
        step_E = self.config.bias_update_rate * torch.sign(load_E.mean() - load_E)
        bias_E.add_(step_E.to(device=bias_E.device, dtype=bias_E.dtype))
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

    def extra_repr(self) -> str:
        c = self.config
        extra = "" if self.own_weight else ", own_weight=False"
        return (f"kind={c.kind!r}, d_model={c.d_model}, num_experts={c.num_experts}, "
                f"top_k={c.top_k}{extra}")

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
    """Apply the aux-loss-free bias step of every router with a choice bias in ``model``.

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
        if isinstance(module, Router) and module.config.expert_bias:
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
