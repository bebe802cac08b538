"""Optional fast paths for the MoE layers, looked up by name.

Backends share one signature (see :mod:`moekit.layers.dispatch`, whose ``BACKEND_NAMES`` is the
list of names):

- ``loop``: the readable reference; one expert at a time. Always available.
- ``grouped_mm``: tokens sorted by expert on the device, experts run as grouped matmuls
  (``torch._grouped_mm`` where supported, else a loop of matmuls inside the same op).
- ``cpu``: the fused CPU path (:mod:`moekit.kernels.cpu_moe`): gather, experts and combine per
  expert, one expert per thread, GEMMs on the library this CPU runs best (oneDNN or torch's
  BLAS, probed), the per-expert loop in C++ when its optional extension is built
  (:mod:`moekit.kernels.cpu_ext`). On other devices and dtypes it runs ``grouped_mm``.
- ``triton``: :mod:`moekit.kernels.moe_triton`, the expert FFN fused into Triton kernels (gather
  in the first GEMM, routing weight in the second's epilogue, deterministic combine). CUDA only
  (on CPU, Triton's interpreter runs it for tests); chosen by name only, never automatically, until
  a GPU benchmark shows it ahead of ``grouped_mm``.

:func:`available_backends` says which run here and, for those that don't (or run degraded), why;
:func:`choose_backend` is the automatic choice (``backend=None``) and its reason.
"""

from __future__ import annotations

from moekit._deps import require

require("torch", feature="moekit.kernels")

import torch

from moekit.kernels import cpu_ext
from moekit.kernels.cpu_gemm import cpu_gemm_choice
from moekit.kernels.cpu_moe import fused_moe_cpu, fused_moe_cpu_reason
from moekit.kernels.grouped_mm import grouped_mm, grouped_mm_status
from moekit.kernels.moe_triton.config import triton_status

__all__ = ["available_backends", "choose_backend", "cpu_backend_reason", "fused_moe_cpu",
           "grouped_mm", "grouped_mm_status"]


def cpu_backend_reason(device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> str | None:
    """Why the ``cpu`` backend's fused path does not run for ``device`` and ``dtype`` (it then runs
    ``grouped_mm``), or None if it does."""
    return fused_moe_cpu_reason(device, dtype)


def available_backends(device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> dict[str, str | None]:
    """Map each backend name to None (runs natively here) or the reason it does not / runs degraded.

    ``cpu`` is None where its fused path runs with the C++ per-expert loop; ``triton`` is never
    None: it says whether it runs here when named, and that it is not chosen automatically (its
    speed against ``grouped_mm`` has not been measured on a GPU yet).

    Examples
    --------
    >>> from moekit.kernels import available_backends
    >>> available_backends()["loop"] is None
    True
    """
    status: dict[str, str | None] = {"loop": None}
    reason = grouped_mm_status(device, dtype)
    status["grouped_mm"] = None if reason is None else f"runs as a loop of matmuls: {reason}"
    cpu = cpu_backend_reason(device, dtype)
    if cpu is not None:
        status["cpu"] = f"runs grouped_mm instead: {cpu}"
    else:
        loop = cpu_ext.status()  # None when the C++ loop is loaded
        status["cpu"] = None if loop is None else f"runs its per-expert loop in Python: {loop}"
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


def choose_backend(device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[str, str]:
    """The backend ``backend=None`` resolves to for grouped experts on ``device``/``dtype``, and why.

    ``cpu`` where its fused path runs and its GEMM library measured faster than torch's ``mm``
    (the timed probe of :mod:`moekit.kernels.cpu_gemm`): that is where the layer benchmark
    measured it ahead of ``grouped_mm`` at every shape class. Else ``grouped_mm``.

    Examples
    --------
    >>> from moekit.kernels import choose_backend
    >>> choose_backend("cpu")[0] in ("cpu", "grouped_mm")
    True
    """
    cpu = cpu_backend_reason(device, dtype)
    if cpu is not None:
        return "grouped_mm", cpu
    if dtype != torch.float32:
        return "grouped_mm", f"the CPU fast path is ahead of grouped_mm with float32 only, not {dtype}"
    gemm = cpu_gemm_choice()
    if gemm.library != "onednn":
        return "grouped_mm", f"the CPU fast path's GEMMs would not be faster here ({gemm.reason})"
    return "cpu", f"fused CPU path with oneDNN GEMMs ({gemm.reason})"
