"""Mixture-of-experts classifiers for small images: an MLP-MoE and a small ViT.

``architecture="mlp"``: the flattened image goes through a linear stem and ``n_layers`` residual
MoE blocks (``x + moe(ln(x))``), then a linear head. Each image is one token for the router.

``architecture="vit"``: the image is cut into ``patch_size x patch_size`` patches (tokens) with a
learned position embedding, then ``n_layers`` pre-norm transformer blocks (bidirectional attention)
whose MLPs are :class:`moekit.layers.MoELayer` (any router, ``moe`` an
:class:`~moekit.layers.MoEConfig`) or :class:`moekit.layers.SoftMoE` (``moe`` a
:class:`~moekit.layers.SoftMoEConfig`), then mean pooling and a linear head. ``moe=None`` gives
the dense model (:func:`moekit.models.dense_twin` sizes it to the same active compute).

Example
-------
>>> import torch
>>> from moekit.layers import SoftMoEConfig
>>> from moekit.models.image_classifier import ImageClassifier, ImageClassifierConfig
>>> config = ImageClassifierConfig(image_size=8, num_classes=10, architecture="vit", d_model=32,
...                                n_heads=2, d_ff=32,
...                                moe=SoftMoEConfig(d_model=32, d_ff=32, num_experts=4))
>>> ImageClassifier(config)(torch.zeros(5, 1, 8, 8)).shape
torch.Size([5, 10])
>>> ImageClassifierConfig.create(router="soft", d_model=32, d_ff=32, n_heads=2) == config
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
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
    d_model, n_layers, n_heads : int
        Width, depth and attention heads (ViT only).
    moe : moekit.layers.MoEConfig, moekit.layers.SoftMoEConfig or None
        The MLP of every block (its ``d_model`` must be the model's); Soft MoE needs the ViT;
        None builds dense MLPs of hidden size ``d_ff``.
    d_ff, activation : int, str
        Hidden size and activation of the dense MLPs (used when ``moe`` is None).
    dropout : float
        Dropout in the blocks.

    :meth:`create` builds the config from the flat keywords of experiment files.
    """

    image_size: int = 8
    in_channels: int = 1
    num_classes: int = 10
    architecture: Literal["mlp", "vit"] = "vit"
    patch_size: int = 2
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    moe: MoEConfig | SoftMoEConfig | None = None
    d_ff: int = 128
    activation: Activation = "gelu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "num_classes", "patch_size", "d_model",
                     "n_layers", "n_heads", "d_ff"):
            check_positive_int(name, getattr(self, name))
        check_choice("architecture", self.architecture, ("mlp", "vit"))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_dropout(self.dropout)
        check_mlp_config(self.moe, self.d_model, allow_soft=True, model="ImageClassifier")
        if isinstance(self.moe, SoftMoEConfig) and self.architecture != "vit":
            raise ValueError("Soft MoE (router='soft') mixes tokens within an image and needs "
                             f"architecture='vit', got architecture={self.architecture!r}; "
                             "set architecture='vit' or pick another router")
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}; "
                             "pick a divisor")
        if self.architecture == "vit" and self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}; "
                             "change one of them")

    @property
    def tokens(self) -> int:
        """Tokens per image the MLPs see: patches for the ViT, 1 for the MLP architecture."""
        return (self.image_size // self.patch_size) ** 2 if self.architecture == "vit" else 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageClassifierConfig:
        """The config from a dict: ``dataclasses.asdict(config)`` (a run's ``config.json``
        ``model`` entry, which round-trips) or the flat keywords of :meth:`create`."""
        return config_from_dict(cls, data)  # type: ignore[no-any-return]

    @classmethod
    def create(
        cls,
        *,
        image_size: int = 8,
        in_channels: int = 1,
        num_classes: int = 10,
        architecture: Literal["mlp", "vit"] = "vit",
        patch_size: int = 2,
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
    ) -> ImageClassifierConfig:
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
        return cls(image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                   architecture=architecture, patch_size=patch_size, d_model=d_model,
                   n_layers=n_layers, n_heads=n_heads, moe=moe, d_ff=d_ff, activation=activation,
                   dropout=dropout)


class ImageClassifier(nn.Module):
    """``(B, C, H, W)`` (or ``(B, H, W)`` for one channel) images -> ``(B, num_classes)`` logits."""

    def __init__(self, config: ImageClassifierConfig) -> None:
        super().__init__()
        if not isinstance(config, ImageClassifierConfig):
            raise TypeError(f"config is a {type(config).__name__}; pass an ImageClassifierConfig")
        self.config = c = config

        def mlp() -> nn.Module:
            return make_mlp(c.moe, d_model=c.d_model, d_ff=c.d_ff, activation=c.activation)

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
