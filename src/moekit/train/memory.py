"""Estimate the memory a training run needs before allocating it, and what the device has.

The estimate is deliberately simple (an upper-ish bound, not a profile): fp32 weights, gradients
and the two AdamW moments take 16 bytes per parameter; activations kept for the backward pass are
counted from the shapes the caller gives. It exists to refuse a configuration that cannot fit
(d_model=65536 on a laptop) with a message instead of a machine that swaps to death.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs: ``parameters * 16`` plus ``activation_bytes``."""

    parameters: int
    activation_bytes: int

    @property
    def parameter_bytes(self) -> int:
        """Weights, gradients and optimizer state."""
        return self.parameters * BYTES_PER_PARAMETER

    @property
    def total_bytes(self) -> int:
        """Everything together."""
        return self.parameter_bytes + self.activation_bytes


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes, or None when it cannot be determined.

    CUDA: ``torch.cuda.mem_get_info``. CPU: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else
    ``os.sysconf`` available pages.
    """
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def gib(n_bytes: float) -> str:
    """``12.3 GiB`` (or MiB below one GiB)."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f} GiB"
    return f"{n_bytes / 2**20:.0f} MiB"


def check_fits(estimate: MemoryEstimate, device: torch.device, *, available: int | None = None,
               fraction: float = 0.9, hint: str = "") -> None:
    """Raise ``MemoryError`` when ``estimate`` exceeds ``fraction`` of the available memory.

    ``available`` overrides the measured free memory (for tests). Does nothing when the free
    memory cannot be determined.
    """
    free = available if available is not None else available_memory_bytes(device)
    if free is None or estimate.total_bytes <= fraction * free:
        return
    raise MemoryError(
        f"this configuration needs about {gib(estimate.total_bytes)} "
        f"({estimate.parameters:,} parameters x {BYTES_PER_PARAMETER} bytes for weights, gradients "
        f"and AdamW state = {gib(estimate.parameter_bytes)}, plus about "
        f"{gib(estimate.activation_bytes)} of activations) but only {gib(free)} is available on "
        f"{device.type}; {hint or 'make the model or the batch smaller'}"
    )


def _mlp_hidden_per_token(config: Any, tokens: int) -> float:
    """Hidden units one token's MLP activates: k experts (+ shared), Soft MoE's share of the
    slots, or the dense MLP."""
    from moekit.layers import SoftMoEConfig

    moe = config.moe
    if moe is None:
        return float(config.d_ff)
    if isinstance(moe, SoftMoEConfig):
        return moe.num_experts * moe.slots_per_expert * moe.d_ff / max(tokens, 1)
    shared = moe.shared.d_ff if moe.shared is not None else 0
    return float(max(moe.top_k, 1) * moe.experts.d_ff + shared)


def estimate_memory(config: Any, *, batch_size: int,
                    factory: Callable[[], nn.Module]) -> MemoryEstimate:
    """Parameters (counted on the meta device, nothing allocated) and activations of one run.

    ``config`` is the model's config (a TransformerLMConfig, ImageClassifierConfig or
    AudioClassifierConfig), ``factory`` builds the model.
    """
    from moekit.models import TransformerLMConfig

    with torch.device("meta"):
        model = factory()
    n_params = sum(p.numel() for p in model.parameters())
    if isinstance(config, TransformerLMConfig):
        tokens, n_out, lm = config.block_size, config.vocab_size, True
    else:
        tokens, n_out, lm = config.tokens, config.num_classes, False
    hidden = _mlp_hidden_per_token(config, tokens) * 4  # gate, up, activation, product per slot
    per_token_layer = 16 * config.d_model + hidden
    attention = getattr(config, "n_heads", 1) * tokens * 2  # scores + probabilities per query
    activations = batch_size * tokens * config.n_layers * (per_token_layer + attention)
    activations += batch_size * tokens * n_out * 3 if lm else batch_size * n_out * 3
    return MemoryEstimate(parameters=n_params, activation_bytes=int(4 * activations))
