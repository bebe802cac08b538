"""The GEMM library this CPU runs best, probed at run time: oneDNN or torch's ``mm``.

Legend: M rows, K reduced dim, N output features.

torch's float32 ``mm`` on CPU goes to its BLAS (MKL on x86 wheels). oneDNN, which torch also
ships, is reachable for plain strided tensors through ``torch.ops.mkldnn._linear_pointwise``
(``x @ w.T`` with an optional fused bias). Which of the two is faster depends on the CPU, not on
its vendor: MKL picks its code path by vendor and ISA and can run an AVX2 path on an AVX-512 CPU,
while oneDNN dispatches on the ISA alone. So :func:`cpu_gemm_choice` decides by measurement:

1. oneDNN must be built in (``torch.backends.mkldnn.is_available()``), the op must exist and take
   strided (transposed) operands, and agree with ``torch.mm`` on a small problem;
2. then both run the same single-threaded expert-sized GEMMs (``thread_time``, so other processes
   on a shared machine do not count), and oneDNN is chosen when it is at least ``1.15x`` faster.

The probe runs once per process (~20 ms) and its outcome is logged once. :func:`mm_nt` then
computes ``a @ b_NK.T`` with the chosen library; :func:`gemm_for` says which library a call of a
given dtype uses (oneDNN only for float32: float64 has no oneDNN path, and bfloat16 ``mm`` already
goes to oneDNN).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

_log = logging.getLogger("moekit.kernels")

GemmLibrary = Literal["onednn", "torch"]
#: oneDNN must beat torch.mm by this factor to be chosen (it costs ~10 us more per call).
ONEDNN_MIN_SPEEDUP = 1.15
#: Below this many FLOPs, or ONEDNN_MIN_ROWS rows, a GEMM goes to torch.mm even when oneDNN is
#: chosen: oneDNN's ~12 us of fixed cost per call (it builds a primitive descriptor each time)
#: outweighs its faster kernel, and a GEMV is bound by memory anyway (measured, 1 thread:
#: 16x128x96 takes 17 us on oneDNN, 6 us on torch.mm; 16x512x3584 613 vs 1072 us; 1x1792x512
#: 309 vs 197 us; 4x512x3584 481 vs 678 us).
ONEDNN_MIN_FLOP = 2_000_000
ONEDNN_MIN_ROWS = 4


@dataclass(frozen=True, kw_only=True)
class GemmChoice:
    """Outcome of the probe.

    Attributes
    ----------
    library : ``"onednn"`` or ``"torch"`` (torch.mm), for float32.
    reason : why (measured rates, or why oneDNN is not usable).
    isa : torch's CPU capability (``torch.backends.cpu.get_cpu_capability()``), for the record.
    onednn_gflops, torch_gflops : single-thread rates measured by the probe (None if not run).
    """

    library: GemmLibrary
    reason: str
    isa: str
    onednn_gflops: float | None = None
    torch_gflops: float | None = None


def _onednn_linear() -> Callable[..., torch.Tensor]:
    return torch.ops.mkldnn._linear_pointwise  # type: ignore[no-any-return]


@functools.cache
def _onednn_unusable() -> str | None:
    """Why oneDNN's linear cannot serve as a float32 GEMM here, or None if it can."""
    if not torch.backends.mkldnn.is_available():
        return "torch is built without oneDNN (torch.backends.mkldnn.is_available() is False)"
    try:
        lp = _onednn_linear()
        g = torch.Generator().manual_seed(0)
        a = torch.randn(24, 40, generator=g)
        w = torch.randn(40, 16, generator=g)
        c = torch.randn(24, 8, generator=g)
        # weights used transposed (as the experts' are) and a transposed source (weight grads)
        got = [lp(a, w.t(), None, "none", [], ""), lp(a.t(), c.t(), None, "none", [], "")]
    except (AttributeError, RuntimeError, NotImplementedError, TypeError) as err:
        return f"torch.ops.mkldnn._linear_pointwise does not run: {str(err).splitlines()[0][:160]}"
    for out, want in zip(got, (a @ w, a.t() @ c)):
        if out.shape != want.shape or not torch.allclose(out, want, rtol=1e-4, atol=1e-4):
            return "torch.ops.mkldnn._linear_pointwise disagrees with torch.mm on a probe problem"
    return None


def _rate_gflops(fn: Callable[[int], object], flop: float, calls: int) -> float:
    """Best of 3 single-thread rates (thread CPU time) of ``calls`` calls of ``fn(i)``."""
    best = float("inf")
    for _ in range(3):
        t0 = time.thread_time()
        for i in range(calls):
            fn(i)
        best = min(best, time.thread_time() - t0)
    return flop * calls / max(best, 1e-9) / 1e9


def _measure(lp: Callable[..., torch.Tensor]) -> tuple[float, float]:
    """(oneDNN, torch.mm) GFLOP/s on 1 thread, expert-sized GEMMs cycling over 4 weights."""
    M, K, N = 128, 256, 256
    g = torch.Generator().manual_seed(0)
    a = torch.randn(M, K, generator=g)
    ws = [torch.randn(K, N, generator=g) for _ in range(4)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for w in ws:  # warm up both (primitive creation, page faults)
            lp(a, w.t(), None, "none", [], "")
            torch.mm(a, w)
        onednn = _rate_gflops(lambda i: lp(a, ws[i % 4].t(), None, "none", [], ""), 2.0 * M * K * N, 24)
        mkl = _rate_gflops(lambda i: torch.mm(a, ws[i % 4]), 2.0 * M * K * N, 24)
    finally:
        torch.set_num_threads(threads)
    return onednn, mkl


@functools.cache
def cpu_gemm_choice() -> GemmChoice:
    """The float32 GEMM library of this CPU (probed once per process; see the module docstring).

    Examples
    --------
    >>> from moekit.kernels.cpu_gemm import cpu_gemm_choice
    >>> cpu_gemm_choice().library in ("onednn", "torch")
    True
    """
    isa = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    unusable = _onednn_unusable()
    if unusable is not None:
        choice = GemmChoice(library="torch", reason=unusable, isa=isa)
    else:
        onednn, mkl = _measure(_onednn_linear())
        faster = onednn >= ONEDNN_MIN_SPEEDUP * mkl
        verdict = "chosen" if faster else f"not chosen (needs {ONEDNN_MIN_SPEEDUP}x)"
        choice = GemmChoice(
            library="onednn" if faster else "torch", isa=isa, onednn_gflops=onednn, torch_gflops=mkl,
            reason=(f"oneDNN {onednn:.0f} vs torch.mm {mkl:.0f} GFLOP/s per core on 128x256x256 "
                    f"float32 (CPU capability {isa}): oneDNN {verdict}"))
    _log.info("CPU GEMM library: %s (%s)", choice.library, choice.reason)
    return choice


def gemm_for(dtype: torch.dtype, requested: Literal["auto", "onednn", "torch"] = "auto") -> GemmLibrary:
    """The library :func:`mm_nt` uses for ``dtype``: oneDNN only for float32, when chosen."""
    if dtype != torch.float32:
        return "torch"
    if requested == "auto":
        return cpu_gemm_choice().library
    reason = _onednn_unusable() if requested == "onednn" else None
    if reason is not None:
        raise ValueError(f"gemm='onednn' cannot run here: {reason}; use gemm='auto' or 'torch'")
    return requested


def _use_onednn(a_MK: torch.Tensor, b_NK: torch.Tensor, library: GemmLibrary) -> bool:
    M = a_MK.shape[0]
    return (library == "onednn" and M >= ONEDNN_MIN_ROWS
            and 2 * M * a_MK.shape[1] * b_NK.shape[0] >= ONEDNN_MIN_FLOP)


def mm_nt(a_MK: torch.Tensor, b_NK: torch.Tensor, bias_N: torch.Tensor | None,
          library: GemmLibrary) -> torch.Tensor:
    """``a_MK @ b_NK.T (+ bias_N)``: (M, N). Any strides; oneDNN (for GEMMs of at least
    :data:`ONEDNN_MIN_FLOP` when ``library="onednn"``) or ``torch.mm``/``addmm``."""
    if _use_onednn(a_MK, b_NK, library):
        return _onednn_linear()(a_MK, b_NK, bias_N, "none", [], "")
    if bias_N is None:
        return torch.mm(a_MK, b_NK.t())
    return torch.addmm(bias_N, a_MK, b_NK.t())


def mm_nt_out(out_MN: torch.Tensor, a_MK: torch.Tensor, b_NK: torch.Tensor,
              bias_N: torch.Tensor | None, library: GemmLibrary) -> None:
    """:func:`mm_nt` written into ``out_MN`` (oneDNN has no ``out=``: it is copied there)."""
    if _use_onednn(a_MK, b_NK, library):
        out_MN.copy_(_onednn_linear()(a_MK, b_NK, bias_N, "none", [], ""))
    elif bias_N is None:
        torch.mm(a_MK, b_NK.t(), out=out_MN)
    else:
        torch.addmm(bias_N, a_MK, b_NK.t(), out=out_MN)
