"""Estimate the memory a training run needs before allocating it, and what the device has.

The estimate is deliberately simple (an upper-ish bound, not a profile): fp32 weights, gradients
and the two AdamW moments take 16 bytes per parameter; activations kept for the backward pass are
counted from the shapes the caller gives. It exists to refuse a configuration that cannot fit
(d_model=65536 on a laptop) with a message instead of a machine that swaps to death.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

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
