"""The settings of a router: :class:`RouterConfig`, its options as ``Literal`` types, its checks.

Legend: T tokens, D model dim, E experts, K experts per token, G expert groups (``n_group``).
The rules themselves are in :mod:`moekit.layers.routing` (its module docstring has the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from moekit.layers._checks import check_choice, check_positive_int

RouterKind = Literal["topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice"]
ROUTERS: tuple[str, ...] = get_args(RouterKind)
Select = Literal["scores", "logits"]
GroupScore = Literal["top2_sum", "max"]
GroupFill = Literal["-inf", "zero"]
Precision = Literal["float32", "logits"]
WeightsPrecision = Literal["float32", "logits", "input"]
#: Routers whose selection is a per-token top-k (the options of ``select``, ``expert_bias``, ...).
TOKEN_CHOICE: frozenset[str] = frozenset({"topk", "switch", "sigmoid_bias"})



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
    select : token choice: ``"scores"`` (top k of the scores) or ``"logits"`` (top k of the raw
        logits; the weights are the score function of the k kept logits: softmax over them for
        ``topk``, sigmoid for ``sigmoid_bias``).
    expert_bias : a (E,) bias added to the scores (to the logits with ``select="logits"``) for the
        choice only, not to the weights; None means True for ``sigmoid_bias`` and False
        otherwise; allowed for ``topk`` too.
    group_score : how ``n_group`` groups are scored: ``"top2_sum"`` (DeepSeek-V3, the default for
        ``sigmoid_bias``) or ``"max"`` (DeepSeek-V2; ``topk`` needs it set to use groups).
    group_fill : what the experts of dropped groups score for the choice: ``"-inf"`` (never
        chosen) or ``"zero"`` (DeepSeek-V2, Mistral 4; differs only when kept scores go negative).
    normalize_eps, normalize_min, normalize_p : the renormalisation is
        ``w / (max(norm_p(w), normalize_min) + normalize_eps)``; ``normalize_eps`` None means 1e-20
        for ``sigmoid_bias`` and 0 otherwise.
    score_precision : ``"float32"`` (scores in float32, or float64 for float64 logits) or
        ``"logits"`` (in the dtype the logits come in, as DBRX and GPT-OSS do).
    weights_precision : round the combine weights to ``"float32"`` (no rounding), the
        ``"logits"`` dtype (Qwen-MoE, OLMoE) or the ``"input"`` dtype (Granite, Jamba).
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
    select: Select = "scores"
    expert_bias: bool | None = None
    group_score: GroupScore | None = None
    group_fill: GroupFill = "-inf"
    normalize_eps: float | None = None
    normalize_min: float = 0.0
    normalize_p: float = 1.0
    score_precision: Precision = "float32"
    weights_precision: WeightsPrecision = "float32"

    def __post_init__(self) -> None:
        check_choice("router", self.kind, ROUTERS)
        self._resolve_token_choice_options()
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

    def _resolve_token_choice_options(self) -> None:
        """Fill the kind-dependent defaults and check the token-choice options."""
        check_choice("select", self.select, get_args(Select))
        check_choice("group_fill", self.group_fill, get_args(GroupFill))
        check_choice("score_precision", self.score_precision, get_args(Precision))
        check_choice("weights_precision", self.weights_precision, get_args(WeightsPrecision))
        if self.expert_bias is None:
            object.__setattr__(self, "expert_bias", self.kind == "sigmoid_bias")
        if self.group_score is None:
            object.__setattr__(self, "group_score", "top2_sum" if self.kind == "sigmoid_bias" else None)
        else:
            check_choice("group_score", self.group_score, get_args(GroupScore))
        if self.normalize_eps is None:
            object.__setattr__(self, "normalize_eps", 1e-20 if self.kind == "sigmoid_bias" else 0.0)
        for name in ("normalize_eps", "normalize_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        if isinstance(self.normalize_p, bool) or not isinstance(self.normalize_p, (int, float)) \
                or not self.normalize_p > 0:
            raise ValueError(f"normalize_p={self.normalize_p!r} must be a number > 0 (1 is the sum)")
        changed = [name for name, default in (("select", "scores"), ("score_precision", "float32"),
                                              ("weights_precision", "float32"))
                   if getattr(self, name) != default]
        if self.routed_scaling_factor != 1.0:
            changed.append("routed_scaling_factor")
        if self.expert_bias:
            changed.append("expert_bias")
        if changed and self.kind not in TOKEN_CHOICE:
            raise ValueError(
                f"{', '.join(changed)} apply to the token-choice routers ('topk', 'switch', "
                f"'sigmoid_bias'), got router={self.kind!r}; drop them or change the router")
        if self.expert_bias and self.kind == "switch":
            raise ValueError("expert_bias=True applies to router='topk' or 'sigmoid_bias', got "
                             "router='switch'; use router='topk' with top_k=1")

    def _check_groups(self) -> None:
        if self.n_group is None and self.topk_group is None:
            return
        if self.kind != "sigmoid_bias" and not (self.kind == "topk" and self.group_score is not None):
            raise ValueError(
                f"n_group/topk_group apply to router='sigmoid_bias' only, or to router='topk' "
                f"with group_score='max' (DeepSeek-V2), got router={self.kind!r}; drop n_group "
                "and topk_group, use router='sigmoid_bias', or set group_score"
            )
        if self.select == "logits":
            raise ValueError("n_group/topk_group need select='scores' (groups are scored on the "
                             "scores); drop the groups or use select='scores'")
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
