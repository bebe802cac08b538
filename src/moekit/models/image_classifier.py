"""Mixture-of-experts classifiers for small images: an MLP-MoE and a small ViT.

``architecture="mlp"``: the flattened image goes through a linear stem and ``n_layers`` residual
MoE blocks (``x + moe(ln(x))``), then a linear head. Each image is one token for the router.

``architecture="vit"``: the image is cut into ``patch_size x patch_size`` patches (tokens) with a
learned position embedding, then ``n_layers`` pre-norm transformer blocks (bidirectional attention)
whose MLPs are :class:`moekit.layers.MoELayer` (any router) or :class:`moekit.layers.SoftMoE`
(``router="soft"``), then mean pooling and a linear head.

Example
-------
>>> import torch
>>> from moekit.models.image_classifier import ImageClassifier, ImageClassifierConfig
>>> config = ImageClassifierConfig(image_size=8, num_classes=10, architecture="vit",
...                                router="soft", d_model=32, d_ff=32, n_heads=2)
>>> ImageClassifier(config)(torch.zeros(5, 1, 8, 8)).shape
torch.Size([5, 10])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
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

ImageRouter = Literal["topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice", "soft"]


@dataclass(frozen=True, kw_only=True)
class ImageClassifierConfig:
    """Shape of an :class:`ImageClassifier`.

    Parameters
    ----------
    image_size : int
        Height and width of the (square) input images.
    in_channels : int
        Channels of the input (1 for grey scale).
    num_classes : int
        Number of classes (size of the logits).
    architecture : {"mlp", "vit"}
        Residual MLP-MoE on flattened pixels, or a small vision transformer on patches.
    patch_size : int
        Side of a ViT patch; must divide ``image_size``.
    d_model, n_layers, n_heads, d_ff : int
        Width, depth, attention heads (ViT only) and expert hidden size.
    num_experts, top_k : int
        Experts per layer and experts per token (ignored by ``router="soft"``).
    router : {"topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice", "soft"}
        ``"soft"`` (ViT only) uses Soft MoE layers with ``slots_per_expert`` slots per expert.
    activation : {"swiglu", "geglu", "gelu", "relu", "silu"}
        Expert activation (Soft MoE uses gelu for gated choices).
    capacity_factor : float or None
        None = dropless.
    aux_loss_weight, z_loss_weight : float
        Weights of the balancing loss and router z-loss.
    slots_per_expert : int
        Soft MoE slots per expert.
    dropout : float
        Dropout in the blocks.
    """

    image_size: int = 8
    in_channels: int = 1
    num_classes: int = 10
    architecture: Literal["mlp", "vit"] = "vit"
    patch_size: int = 2
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    num_experts: int = 4
    top_k: int = 2
    router: ImageRouter = "topk"
    activation: Activation = "gelu"
    capacity_factor: float | None = None
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 0.0
    slots_per_expert: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "num_classes", "patch_size", "d_model",
                     "n_layers", "n_heads", "d_ff", "num_experts", "top_k", "slots_per_expert"):
            check_positive(name, getattr(self, name))
        check_choice("architecture", self.architecture, ("mlp", "vit"))
        check_choice("router", self.router, (*ROUTERS, "soft"))
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.router == "soft" and self.architecture != "vit":
            raise ValueError("router='soft' mixes tokens within an image and needs "
                             f"architecture='vit', got architecture={self.architecture!r}; "
                             "set architecture='vit' or pick another router")
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}; "
                             "pick a divisor")
        if self.architecture == "vit" and self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.router != "soft" and self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be <= num_experts={self.num_experts}; "
                             "lower top_k or add experts")
        if self.router == "switch" and self.top_k != 1:
            raise ValueError(f"router='switch' needs top_k=1, got top_k={self.top_k}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


class ImageClassifier(nn.Module):
    """``(B, C, H, W)`` (or ``(B, H, W)`` for one channel) images -> ``(B, num_classes)`` logits."""

    def __init__(self, config: ImageClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        mlp_kind: Literal["moe", "soft"] = "soft" if c.router == "soft" else "moe"

        def mlp() -> nn.Module:
            return make_mlp(
                kind=mlp_kind, d_model=c.d_model, d_ff=c.d_ff, num_experts=c.num_experts,
                top_k=c.top_k, router="topk" if c.router == "soft" else c.router,
                activation=c.activation, capacity_factor=c.capacity_factor,
                num_shared_experts=0, aux_loss_weight=c.aux_loss_weight,
                z_loss_weight=c.z_loss_weight, slots_per_expert=c.slots_per_expert,
            )

        if c.architecture == "mlp":
            self.stem = nn.Linear(c.in_channels * c.image_size**2, c.d_model)
            self.norms = nn.ModuleList(nn.LayerNorm(c.d_model) for _ in range(c.n_layers))
            self.mlps = nn.ModuleList(mlp() for _ in range(c.n_layers))
        else:
            n_patches = (c.image_size // c.patch_size) ** 2
            self.stem = nn.Linear(c.in_channels * c.patch_size**2, c.d_model)
            self.pos_emb = nn.Parameter(torch.randn(n_patches, c.d_model) * 0.02)
            self.blocks = nn.ModuleList(
                Block(c.d_model, SelfAttention(c.d_model, c.n_heads, causal=False,
                                               dropout=c.dropout), mlp(), c.dropout)
                for _ in range(c.n_layers)
            )
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        c = self.config
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"expected images of shape (B, {c.in_channels}, {c.image_size}, "
                             f"{c.image_size}), got {tuple(images.shape)}; match the config")
        if c.architecture == "mlp":
            x_BD = self.stem(images.flatten(1))
            for norm, mlp in zip(self.norms, self.mlps):
                x_BD = x_BD + mlp(norm(x_BD))
            return self.head(self.ln_f(x_BD))
        # (B, C, H, W) -> (B, N, C * p * p): non-overlapping patches, row-major.
        patches = F.unfold(images, kernel_size=c.patch_size, stride=c.patch_size).transpose(1, 2)
        x_BND = self.stem(patches) + self.pos_emb
        for block in self.blocks:
            x_BND = block(x_BND)
        return self.head(self.ln_f(x_BND).mean(dim=1))
