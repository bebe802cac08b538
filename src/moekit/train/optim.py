"""AdamW with decoupled weight decay on matrices only, and a warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from moekit.train.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, in two groups.

    Weight decay applies to weight matrices (and expert weight stacks) only: parameters of norms,
    biases and embedding tables (any ``nn.Embedding`` and any 1-D parameter) are not decayed, as in
    GPT-2/nanoGPT. The groups keep the order of ``model.parameters()`` so that optimizer state
    saved in a checkpoint maps back to the same parameters.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (plain if p.dim() < 2 or id(p) in no_decay else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` for optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` steps, then cosine decay to ``min_lr_ratio`` at the last step.
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay_steps = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer,
                    config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up + cosine schedule of :func:`lr_factor` as a ``LambdaLR``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
