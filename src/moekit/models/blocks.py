"""Building blocks shared by the reference models: attention, a dense MLP, a pre-norm block.

Legend for tensor names: B batch, N sequence length (tokens, patches or frames), D model dim,
H heads, Dh head dim (D // H), F hidden dim of an MLP.

The MLP of a block is any module mapping ``(B, N, D) -> (B, N, D)``: a dense :class:`DenseMLP`,
a :class:`moekit.layers.MoELayer` or a :class:`moekit.layers.SoftMoE`. :func:`make_mlp` picks one
from the shared knobs of the model configs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers import MoELayer, SoftMoE

RouterName = Literal["topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice"]
Activation = Literal["swiglu", "geglu", "gelu", "relu", "silu"]

ROUTERS: tuple[str, ...] = ("topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice")
ACTIVATIONS: tuple[str, ...] = ("swiglu", "geglu", "gelu", "relu", "silu")
_GATED: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"swiglu": F.silu, "geglu": F.gelu}
_PLAIN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}; pick one of these")


def check_positive(name: str, value: int | float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value > 0``."""
    if not value > 0:
        raise ValueError(f"{name}={value!r} must be > 0; pass a positive value")


class DenseMLP(nn.Module):
    """A dense feed-forward network with the same parameter layout as one expert.

    Gated activations (``swiglu``, ``geglu``) compute ``w_down(act(x w_gate) * (x w_up))``, the
    others ``w_down(act(x w_up))``; no biases, like the experts of :class:`moekit.layers.MoELayer`.
    """

    def __init__(self, d_model: int, d_ff: int, activation: Activation = "swiglu") -> None:
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        self.activation = activation
        self.w_gate = nn.Linear(d_model, d_ff, bias=False) if activation in _GATED else None
        self.w_up = nn.Linear(d_model, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w_gate is not None:
            return self.w_down(_GATED[self.activation](self.w_gate(x)) * self.w_up(x))
        return self.w_down(_PLAIN[self.activation](self.w_up(x)))


def make_mlp(
    *,
    kind: Literal["moe", "soft", "dense"],
    d_model: int,
    d_ff: int,
    num_experts: int,
    top_k: int,
    router: RouterName,
    activation: Activation,
    capacity_factor: float | None,
    num_shared_experts: int,
    aux_loss_weight: float,
    z_loss_weight: float,
    slots_per_expert: int = 1,
) -> nn.Module:
    """Build the MLP of one block: a sparse MoE layer, a Soft MoE layer or a dense MLP."""
    if kind == "dense":
        return DenseMLP(d_model, d_ff, activation)
    if kind == "soft":
        soft_activation = activation if activation in _PLAIN else "gelu"
        return SoftMoE(d_model, d_ff, num_experts, slots_per_expert=slots_per_expert,
                       activation=soft_activation)
    return MoELayer(
        d_model=d_model, d_ff=d_ff, num_experts=num_experts, top_k=top_k, router=router,
        activation=activation, capacity_factor=capacity_factor,
        num_shared_experts=num_shared_experts, aux_loss_weight=aux_loss_weight,
        z_loss_weight=z_loss_weight,
    )


def rope_tables(n_positions: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables ``(N, Dh/2)`` of rotary position embeddings (Su et al. 2021)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles_NF = torch.outer(torch.arange(n_positions, dtype=torch.float32), inv_freq)
    return angles_NF.cos(), angles_NF.sin()


def apply_rope(x_BHND: torch.Tensor, cos_NF: torch.Tensor, sin_NF: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of channels of ``x`` by the position angle."""
    n = x_BHND.shape[-2]
    x1, x2 = x_BHND[..., 0::2].float(), x_BHND[..., 1::2].float()
    cos, sin = cos_NF[:n], sin_NF[:n]
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
