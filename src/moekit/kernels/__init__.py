"""Optional fast paths for the MoE layers, looked up by name.

Backends share one signature (see :mod:`moekit.layers.dispatch`, whose ``BACKEND_NAMES`` is the
list of names):

- ``loop``: the readable reference; one expert at a time. Always available.
- ``grouped_mm``: tokens sorted by expert on the device, experts run as grouped matmuls
  (``torch._grouped_mm`` where supported, else a loop of matmuls inside the same op).

:func:`available_backends` says which run here and, for those that don't (or run degraded), why.
"""

from __future__ import annotations

import importlib.util

from moekit._deps import require

require("torch", feature="moekit.kernels")

import torch

from moekit.kernels.grouped_mm import grouped_mm, grouped_mm_status

__all__ = ["available_backends", "grouped_mm", "grouped_mm_status"]


def available_backends(device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> dict[str, str | None]:
    """Map each backend name to None (runs natively here) or the reason it does not / runs degraded.

    Examples
    --------
    >>> from moekit.kernels import available_backends
    >>> available_backends()["loop"] is None
    True
    """
    status: dict[str, str | None] = {"loop": None}
    reason = grouped_mm_status(device, dtype)
    status["grouped_mm"] = None if reason is None else f"runs as a loop of matmuls: {reason}"
    if importlib.util.find_spec("triton") is None:
        status["triton"] = "triton is not installed (pip install 'moekit[triton]')"
    else:
        status["triton"] = "moekit has no Triton kernels yet; grouped_mm is used"
    return status
