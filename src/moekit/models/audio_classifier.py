"""A mixture-of-experts classifier for spectrogram features.

Frames ``(B, N, n_features)`` (N time frames, e.g. log-mel bands) are projected to ``d_model``,
given a learned position embedding, passed through ``n_layers`` pre-norm transformer blocks
(bidirectional attention) whose MLPs are :class:`moekit.layers.MoELayer` (the router sees each
frame) or :class:`moekit.layers.SoftMoE` (``router="soft"``), mean-pooled over time and classified.
A ``(B, n_features)`` input is one frame per example.

Example
-------
>>> import torch
>>> from moekit.models.audio_classifier import AudioClassifier, AudioClassifierConfig
>>> config = AudioClassifierConfig(n_features=16, max_frames=20, num_classes=4, d_model=32,
...                                d_ff=32, n_heads=2)
>>> AudioClassifier(config)(torch.zeros(3, 20, 16)).shape
torch.Size([3, 4])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from moekit.models.blocks import (
    ACTIVATIONS,
    ROUTERS,
    Activation,
    Block,
    SelfAttention,
    check_choice,
    check_positive,
    make_mlp,
)

AudioRouter = Literal["topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice", "soft"]


@dataclass(frozen=True, kw_only=True)
class AudioClassifierConfig:
    """Shape of an :class:`AudioClassifier`.

    Parameters
    ----------
    n_features : int
        Features per frame (e.g. mel bands).
    max_frames : int
        Longest input in frames (size of the position table).
    num_classes : int
        Number of classes.
    d_model, n_layers, n_heads, d_ff : int
        Width, depth, attention heads and expert hidden size.
    num_experts, top_k : int
        Experts per layer and experts per frame.
    router : {"topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice", "soft"}
        Routing rule; ``"soft"`` uses Soft MoE layers.
    activation : {"swiglu", "geglu", "gelu", "relu", "silu"}
        Expert activation.
    capacity_factor : float or None
        None = dropless.
    aux_loss_weight, z_loss_weight : float
        Weights of the balancing loss and router z-loss.
    slots_per_expert : int
        Soft MoE slots per expert.
    dropout : float
        Dropout in the blocks.
    """

    n_features: int
    max_frames: int
    num_classes: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    num_experts: int = 4
    top_k: int = 2
    router: AudioRouter = "topk"
    activation: Activation = "gelu"
    capacity_factor: float | None = None
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 0.0
    slots_per_expert: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_features", "max_frames", "num_classes", "d_model", "n_layers", "n_heads",
                     "d_ff", "num_experts", "top_k", "slots_per_expert"):
            check_positive(name, getattr(self, name))
        check_choice("router", self.router, (*ROUTERS, "soft"))
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.router != "soft" and self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be <= num_experts={self.num_experts}; "
                             "lower top_k or add experts")
        if self.router == "switch" and self.top_k != 1:
            raise ValueError(f"router='switch' needs top_k=1, got top_k={self.top_k}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


class AudioClassifier(nn.Module):
    """``(B, N, n_features)`` frames -> ``(B, num_classes)`` logits."""

    def __init__(self, config: AudioClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        mlp_kind: Literal["moe", "soft"] = "soft" if c.router == "soft" else "moe"
        self.in_norm = nn.LayerNorm(c.n_features)
        self.stem = nn.Linear(c.n_features, c.d_model)
        self.pos_emb = nn.Parameter(torch.randn(c.max_frames, c.d_model) * 0.02)
        self.blocks = nn.ModuleList(
            Block(
                c.d_model,
                SelfAttention(c.d_model, c.n_heads, causal=False, dropout=c.dropout),
                make_mlp(kind=mlp_kind, d_model=c.d_model, d_ff=c.d_ff, num_experts=c.num_experts,
                         top_k=c.top_k, router="topk" if c.router == "soft" else c.router,
                         activation=c.activation, capacity_factor=c.capacity_factor,
                         num_shared_experts=0, aux_loss_weight=c.aux_loss_weight,
                         z_loss_weight=c.z_loss_weight, slots_per_expert=c.slots_per_expert),
                c.dropout,
            )
            for _ in range(c.n_layers)
        )
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.num_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        c = self.config
        if frames.dim() == 2:
            frames = frames.unsqueeze(1)
        if frames.dim() != 3 or frames.shape[-1] != c.n_features or frames.shape[1] > c.max_frames:
            raise ValueError(f"expected frames of shape (B, N <= {c.max_frames}, {c.n_features}), "
                             f"got {tuple(frames.shape)}; match n_features/max_frames to the data")
        x_BND = self.stem(self.in_norm(frames)) + self.pos_emb[: frames.shape[1]]
        for block in self.blocks:
            x_BND = block(x_BND)
        return self.head(self.ln_f(x_BND).mean(dim=1))
