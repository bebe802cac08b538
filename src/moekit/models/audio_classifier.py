"""A mixture-of-experts classifier for spectrogram features.

Frames ``(B, N, n_features)`` (N time frames, e.g. log-mel bands) are projected to ``d_model``,
given a learned position embedding, passed through ``n_layers`` pre-norm transformer blocks
(bidirectional attention) whose MLPs are :class:`moekit.layers.MoELayer` (the router sees each
frame; ``moe`` an :class:`~moekit.layers.MoEConfig`) or :class:`moekit.layers.SoftMoE` (``moe`` a
:class:`~moekit.layers.SoftMoEConfig`), mean-pooled over time and classified. A ``(B, n_features)``
input is one frame per example. ``moe=None`` gives the dense model.

Example
-------
>>> import torch
>>> from moekit.models.audio_classifier import AudioClassifier, AudioClassifierConfig
>>> config = AudioClassifierConfig.create(n_features=16, max_frames=20, num_classes=4,
...                                       d_model=32, d_ff=32, n_heads=2)
>>> config.moe.num_experts, config.moe.top_k
(4, 2)
>>> AudioClassifier(config)(torch.zeros(3, 20, 16)).shape
torch.Size([3, 4])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from moekit.layers import MoEConfig, SoftMoEConfig
from moekit.layers._checks import check_choice, check_positive_int
from moekit.layers.experts import ACTIVATIONS, Activation
from moekit.layers.routing import RouterKind
from moekit.models.blocks import (
    Block,
    MLPConfig,
    SelfAttention,
    check_dropout,
    check_mlp_config,
    config_from_dict,
    flat_moe_config,
    make_mlp,
)


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
    d_model, n_layers, n_heads : int
        Width, depth and attention heads.
    moe : moekit.layers.MoEConfig, moekit.layers.SoftMoEConfig or None
        The MLP of every block (its ``d_model`` must be the model's); None builds dense MLPs.
    d_ff, activation : int, str
        Hidden size and activation of the dense MLPs (used when ``moe`` is None).
    dropout : float
        Dropout in the blocks.

    :meth:`create` builds the config from the flat keywords of experiment files.
    """

    n_features: int
    max_frames: int
    num_classes: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    moe: MoEConfig | SoftMoEConfig | None = None
    d_ff: int = 128
    activation: Activation = "gelu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_features", "max_frames", "num_classes", "d_model", "n_layers", "n_heads",
                     "d_ff"):
            check_positive_int(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_dropout(self.dropout)
        check_mlp_config(self.moe, self.d_model, allow_soft=True, model="AudioClassifier")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}; "
                             "change one of them")

    @property
    def tokens(self) -> int:
        """Tokens (frames) per clip the MLPs see at the longest input."""
        return self.max_frames

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AudioClassifierConfig:
        """The config from a dict: ``dataclasses.asdict(config)`` (a run's ``config.json``
        ``model`` entry, which round-trips) or the flat keywords of :meth:`create`."""
        return config_from_dict(cls, data)  # type: ignore[no-any-return]

    @classmethod
    def create(
        cls,
        *,
        n_features: int,
        max_frames: int,
        num_classes: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        d_ff: int = 128,
        num_experts: int = 4,
        top_k: int = 2,
        router: RouterKind | Literal["soft"] = "topk",
        activation: Activation = "gelu",
        capacity_factor: float | None = None,
        aux_loss_weight: float = 0.01,
        z_loss_weight: float = 0.0,
        slots_per_expert: int = 1,
        mlp: Literal["moe", "dense"] = "moe",
        dropout: float = 0.0,
    ) -> AudioClassifierConfig:
        """The config from flat keywords, as experiment files write them.

        ``router="soft"`` builds Soft MoE layers with ``slots_per_expert`` slots per expert
        (``top_k``, ``capacity_factor`` and the loss weights do not apply to them);
        ``mlp="dense"`` a dense model.
        """
        moe: MLPConfig = flat_moe_config(
            mlp=mlp, router=router, d_model=d_model, d_ff=d_ff, num_experts=num_experts,
            top_k=top_k, activation=activation, capacity_factor=capacity_factor,
            num_shared_experts=0, aux_loss_weight=aux_loss_weight, z_loss_weight=z_loss_weight,
            slots_per_expert=slots_per_expert)
        return cls(n_features=n_features, max_frames=max_frames, num_classes=num_classes,
                   d_model=d_model, n_layers=n_layers, n_heads=n_heads, moe=moe, d_ff=d_ff,
                   activation=activation, dropout=dropout)


class AudioClassifier(nn.Module):
    """``(B, N, n_features)`` frames -> ``(B, num_classes)`` logits."""

    def __init__(self, config: AudioClassifierConfig) -> None:
        super().__init__()
        if not isinstance(config, AudioClassifierConfig):
            raise TypeError(f"config is a {type(config).__name__}; pass an AudioClassifierConfig")
        self.config = c = config
        self.in_norm = nn.LayerNorm(c.n_features)
        self.stem = nn.Linear(c.n_features, c.d_model)
        self.pos_emb = nn.Parameter(torch.randn(c.max_frames, c.d_model) * 0.02)
        self.blocks = nn.ModuleList(
            Block(
                c.d_model,
                SelfAttention(c.d_model, c.n_heads, causal=False, dropout=c.dropout),
                make_mlp(c.moe, d_model=c.d_model, d_ff=c.d_ff, activation=c.activation),
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
