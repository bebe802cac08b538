"""Building blocks shared by the reference models: attention, a pre-norm block, the MLP of a block.

Legend for tensor names: B batch, N sequence length (tokens, patches or frames), D model dim,
H heads, Dh head dim (D // H), Q rotary frequencies (Dh // 2).

The MLP of a block is any module mapping ``(B, N, D) -> (B, N, D)``. :func:`make_mlp` builds it
from the model config's ``moe`` field: None gives the dense :class:`moekit.layers.FeedForward`,
a :class:`moekit.layers.MoEConfig` a :class:`moekit.layers.MoELayer`, a
:class:`moekit.layers.SoftMoEConfig` a :class:`moekit.layers.SoftMoE`. The vocabulary (routers,
activations) and its checks are those of :mod:`moekit.layers`; nothing is redefined here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers import (
    DispatchConfig,
    ExpertsConfig,
    FeedForward,
    MoEConfig,
    MoELayer,
    RouterConfig,
    SharedExpertsConfig,
    SoftMoE,
    SoftMoEConfig,
)
from moekit.layers._checks import check_choice
from moekit.layers.experts import Activation

#: What a model config's ``moe`` field may hold (None = dense MLPs).
MLPConfig = MoEConfig | SoftMoEConfig | None


def check_dropout(value: object) -> None:
    """``dropout`` is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"dropout={value!r} must be a number in [0, 1); pass e.g. dropout=0.1")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout={value} must be in [0, 1); use 0 for no dropout")


def check_mlp_config(moe: object, d_model: int, *, allow_soft: bool, model: str) -> None:
    """The ``moe`` field of a model config: its type, and the cross-check of ``d_model``."""
    allowed: tuple[type, ...] = (MoEConfig, SoftMoEConfig) if allow_soft else (MoEConfig,)
    if moe is None:
        return
    if not isinstance(moe, (MoEConfig, SoftMoEConfig)) or not isinstance(moe, allowed):
        names = " or ".join(f"moekit.layers.{cls.__name__}" for cls in allowed)
        raise TypeError(f"{model} moe={moe!r} must be a {names}, or None for dense MLPs; build "
                        "one with MoEConfig.create(d_model=..., d_ff=..., num_experts=...)")
    if moe.d_model != d_model:
        raise ValueError(f"{model} has d_model={d_model} but its moe config has "
                         f"d_model={moe.d_model}; build the MoE config with d_model={d_model}")


def flat_moe_config(
    *,
    mlp: str,
    router: str,
    d_model: int,
    d_ff: int,
    num_experts: int,
    top_k: int,
    activation: Activation,
    capacity_factor: float | None,
    num_shared_experts: int,
    aux_loss_weight: float,
    z_loss_weight: float,
    slots_per_expert: int,
) -> MLPConfig:
    """The ``moe`` field from the flat keywords of the models' ``create`` (and of config files).

    ``mlp="dense"`` gives None; ``router="soft"`` a :class:`SoftMoEConfig` (which has no top_k,
    capacity or aux loss: those keywords do not apply to it); any other router an
    :class:`MoEConfig` through :meth:`MoEConfig.create`.
    """
    check_choice("mlp", mlp, ("moe", "dense"))
    if mlp == "dense":
        return None
    if router == "soft":
        return SoftMoEConfig(d_model=d_model, d_ff=d_ff, num_experts=num_experts,
                             slots_per_expert=slots_per_expert, activation=activation)
    return MoEConfig.create(
        d_model=d_model, d_ff=d_ff, num_experts=num_experts, top_k=top_k,
        router=router,  # type: ignore[arg-type]  # checked by RouterConfig
        activation=activation, capacity_factor=capacity_factor,
        num_shared_experts=num_shared_experts, aux_loss_weight=aux_loss_weight,
        z_loss_weight=z_loss_weight,
    )


_MOE_PARTS: dict[str, type] = {"router": RouterConfig, "experts": ExpertsConfig,
                               "dispatch": DispatchConfig, "shared": SharedExpertsConfig}


def mlp_config_from_dict(data: Mapping[str, Any] | None) -> MLPConfig:
    """The ``moe`` field back from ``dataclasses.asdict`` of it (a run's ``config.json``)."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise TypeError(f"moe={data!r} must be a mapping (as dataclasses.asdict writes) or None")
    if "router" in data:
        return MoEConfig(**{key: _MOE_PARTS[key](**value)
                            if key in _MOE_PARTS and isinstance(value, Mapping) else value
                            for key, value in data.items()})
    return SoftMoEConfig(**data)


def config_from_dict(cls: Any, data: Mapping[str, Any]) -> Any:
    """``cls`` (a model config) from a dict: nested, as ``dataclasses.asdict(config)`` writes
    it (``config.json`` of a run), or flat, as experiment files and moekit before 0.2 wrote it."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}")
    if "moe" in data:
        return cls(**{**data, "moe": mlp_config_from_dict(data["moe"])})
    return cls.create(**data)


def make_mlp(moe: MLPConfig, *, d_model: int, d_ff: int, activation: Activation) -> nn.Module:
    """The MLP of one block: a sparse MoE layer, a Soft MoE layer, or (``moe=None``) a dense FFN
    of hidden size ``d_ff``."""
    if moe is None:
        return FeedForward(d_model, d_ff, activation)
    if isinstance(moe, SoftMoEConfig):
        return SoftMoE.from_config(moe)
    return MoELayer.from_config(moe)


def rope_tables(n_positions: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables ``(N, Q)``, Q = Dh / 2, of rotary position embeddings (Su et al. 2021)."""
    inv_freq_Q = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles_NQ = torch.outer(torch.arange(n_positions, dtype=torch.float32), inv_freq_Q)
    return angles_NQ.cos(), angles_NQ.sin()


def apply_rope(x_BHND: torch.Tensor, cos_NQ: torch.Tensor, sin_NQ: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of channels of ``x`` by the position angle."""
    n = x_BHND.shape[-2]
    x1, x2 = x_BHND[..., 0::2].float(), x_BHND[..., 1::2].float()
    cos, sin = cos_NQ[:n], sin_NQ[:n]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x_BHND)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    ``causal=True`` for language models (each token sees only the past); ``rope_positions > 0``
    rotates queries and keys (rotary embeddings) for that many positions.
    """

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, d_model: int, n_heads: int, *, causal: bool, dropout: float = 0.0,
                 rope_positions: int = 0) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}; "
                             "change one of them")
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.use_rope = rope_positions > 0
        if self.use_rope:
            cos, sin = rope_tables(rope_positions, d_model // n_heads)
            # Not persistent: recomputed from the config, so checkpoints hold only learned weights.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        B, N, D = x_BND.shape
        q, k, v = self.qkv(x_BND).split(D, dim=-1)
        q_BHND, k_BHND, v_BHND = (t.view(B, N, self.n_heads, D // self.n_heads).transpose(1, 2)
                                  for t in (q, k, v))
        if self.use_rope:
            q_BHND = apply_rope(q_BHND, self.rope_cos, self.rope_sin)
            k_BHND = apply_rope(k_BHND, self.rope_cos, self.rope_sin)
        y_BHND = F.scaled_dot_product_attention(
            q_BHND, k_BHND, v_BHND, is_causal=self.causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y_BHND.transpose(1, 2).reshape(B, N, D))


def upgrade_dense_mlp_keys(state_dict: dict[str, Any], prefix: str) -> None:
    """Rewrite, in place, the weights of a dense MLP saved before moekit 0.2 (``DenseMLP``: three
    ``nn.Linear`` ``w_gate``, ``w_up``, ``w_down``) into :class:`moekit.layers.FeedForward`'s
    ``w_in`` ``(D, H)`` = ``[gate | up]`` and ``w_down`` ``(F, D)``, so old checkpoints load.
    """
    up, down, gate = prefix + "w_up.weight", prefix + "w_down.weight", prefix + "w_gate.weight"
    if up not in state_dict or down not in state_dict or prefix + "w_in" in state_dict:
        return
    w_up_FD = state_dict.pop(up)
    parts = [state_dict.pop(gate).T, w_up_FD.T] if gate in state_dict else [w_up_FD.T]
    state_dict[prefix + "w_in"] = torch.cat(parts, dim=-1).contiguous()
    state_dict[prefix + "w_down"] = state_dict.pop(down).T.contiguous()


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, attention: SelfAttention, mlp: nn.Module,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = attention
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = mlp
        self.drop = nn.Dropout(dropout)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        x_BND = x_BND + self.drop(self.attn(self.ln_1(x_BND)))
        return x_BND + self.drop(self.mlp(self.ln_2(x_BND)))

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        # torch's documented override point for upgrading old state dicts (as BatchNorm does).
        if isinstance(self.mlp, FeedForward):
            upgrade_dense_mlp_keys(state_dict, prefix + "mlp.")
        super()._load_from_state_dict(state_dict, prefix, *args)
