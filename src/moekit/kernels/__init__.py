"""Optional fast paths for the MoE layers, looked up by name.

Backends share one signature (see :mod:`moekit.layers.dispatch`):

- ``loop``: the readable reference; one expert at a time. Always available.
- ``grouped_mm``: tokens sorted by expert on the device, experts run as grouped matmuls
  (``torch._grouped_mm`` where supported, else a loop of matmuls inside the same op).
- ``triton``: :mod:`moekit.kernels.moe_triton`, the expert FFN fused into Triton kernels (gather
  in the first GEMM, routing weight in the second's epilogue, deterministic combine). CUDA only
  (on CPU, Triton's interpreter runs it for tests); chosen by name only, never automatically, until
  a GPU benchmark shows it ahead of ``grouped_mm``.

:func:`available_backends` says which run here and, for those that don't (or run degraded), why.
"""

from __future__ import annotations

import torch

from moekit.kernels.grouped_mm import grouped_mm, grouped_mm_status
from moekit.kernels.moe_triton.config import triton_status

BACKENDS: tuple[str, ...] = ("loop", "grouped_mm", "triton")

__all__ = ["BACKENDS", "available_backends", "grouped_mm", "grouped_mm_status"]


def available_backends(device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> dict[str, str | None]:
    """Map each backend name to None (runs natively here) or the reason it does not / runs degraded.

    ``triton`` is never None: it says whether it runs here when named, and that it is not chosen
    automatically (its speed against ``grouped_mm`` has not been measured on a GPU yet).

    Examples
    --------
    >>> from moekit.kernels import available_backends
    >>> available_backends()["loop"] is None
    True
    """
    status: dict[str, str | None] = {"loop": None}
    reason = grouped_mm_status(device, dtype)
    status["grouped_mm"] = None if reason is None else f"runs as a loop of matmuls: {reason}"
    status["triton"] = _triton_reason(torch.device(device), dtype)
    return status


def _triton_reason(device: torch.device, dtype: torch.dtype) -> str:
    """The ``triton`` entry: never None while no GPU run has shown it ahead of grouped_mm."""
    reason = triton_status(device, dtype)
    if reason is not None:
        return f"falls back to grouped_mm: {reason}"
    if device.type == "cpu":
        return "runs under Triton's interpreter (TRITON_INTERPRET=1): exact but very slow; for tests"
    return ("runs when named (backend='triton'); not chosen automatically: its speed against "
            "grouped_mm is unmeasured (benchmarks/bench_triton.py)")
