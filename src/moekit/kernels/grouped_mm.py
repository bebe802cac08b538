"""Grouped matmul ``(R, D) x (E, D, F) -> (R, F)`` over rows sorted by group, as a torch custom op.

Legend: R rows, D in features, F out features, E groups (experts).

``grouped_mm(x_RD, w_EDF, offsets_E, full)`` multiplies rows ``offsets_E[e-1]:offsets_E[e]`` by
``w_EDF[e]``; rows past ``offsets_E[-1]`` come back as zeros (and get zero gradient). Pass
``full=True`` when ``offsets_E[-1]`` is known to equal R (dropless routing) to skip that zeroing.
Operands may have any strides (a layout ``torch._grouped_mm`` rejects is copied first) and
``offsets_E`` may be int32 or int64.

Hygiene around ``torch._grouped_mm``, which leaves memory it does not compute uninitialised:
rows past the last offset are zeroed in the output and in the input gradient, the weight gradient
of a group without rows is zeroed (CUDA kernels may skip it), all-empty groups give zeros, and the
incoming gradient is made contiguous (the gradient of ``.sum()`` is an expanded, stride-0 tensor,
which the kernel rejects). ``tests/kernels/test_grouped_mm.py`` checks each with a dirty allocator.

It runs ``torch._grouped_mm`` where this torch and device support it for the dtype and strides
(CPU float32 and CUDA bfloat16 on recent torch, with 16-byte aligned rows), and otherwise a loop
of plain matmuls over the groups (one host sync for the group sizes). Which one ran, and why, is
reported by :func:`grouped_mm_status`. Wrapping both in a custom op gives one autograd formula for
both and keeps ``torch.compile`` from tracing into them.
"""

from __future__ import annotations

import functools
import logging

import torch

_log = logging.getLogger("moekit.kernels")


@functools.cache
def _native_reason(device_type: str, dtype: torch.dtype) -> str | None:
    """Why ``torch._grouped_mm`` cannot run on this device type and dtype, or None if it can.

    Probed once per (device type, dtype) with a tiny aligned problem; the result is logged once.
    """
    reason: str | None
    if not hasattr(torch, "_grouped_mm"):
        reason = f"torch {torch.__version__} has no torch._grouped_mm (needs torch >= 2.8)"
    else:
        try:
            x = torch.ones(16, 16, device=device_type, dtype=dtype)
            w = torch.ones(2, 16, 16, device=device_type, dtype=dtype)
            offs = torch.tensor([8, 16], device=device_type, dtype=torch.int32)
            out = torch._grouped_mm(x, w, offs=offs)
            gw = torch._grouped_mm(x.t(), out, offs=offs)
            reason = None if gw.shape == (2, 16, 16) else "unexpected output shape"
        except (RuntimeError, NotImplementedError, TypeError, AssertionError) as err:  # no CUDA build: AssertionError
            reason = f"torch._grouped_mm does not run for {dtype} on {device_type}: {str(err).splitlines()[0]}"
    if reason is not None:
        _log.info("grouped_mm falls back to a loop of matmuls: %s", reason)
    return reason


def _aligned(*tensors: torch.Tensor) -> bool:
    """torch._grouped_mm needs a unit stride in one of the last two dims and every other stride a
    multiple of 16 bytes."""
    for t in tensors:
        size = t.element_size()
        if t.data_ptr() % 16:
            return False
        if 1 not in t.stride()[-2:]:
            return False
        if any(s != 1 and (s * size) % 16 for s in t.stride()):
            return False
    return True


def _kernel_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when one of its last two dims has a unit stride, else a contiguous copy."""
    return t if 1 in t.stride()[-2:] else t.contiguous()


def _int32(offsets_E: torch.Tensor) -> torch.Tensor:
    return offsets_E if offsets_E.dtype == torch.int32 else offsets_E.to(torch.int32)


def native_reason(x: torch.Tensor, w: torch.Tensor) -> str | None:
    """Why the fast ``torch._grouped_mm`` path will not run for these operands, or None."""
    reason = _native_reason(x.device.type, x.dtype)
    if reason is None and w.dtype != x.dtype:
        reason = f"x is {x.dtype} but w is {w.dtype}"
    if reason is None and not _aligned(x, w):
        reason = (f"rows are not 16-byte aligned (in={x.shape[-1]}, out={w.shape[-1]} features of "
                  f"{x.element_size()} bytes); use sizes that are multiples of {16 // x.element_size()}")
    return reason


def _zero_tail(out_RF: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """Zero the rows past the last group (torch._grouped_mm leaves them uninitialised)."""
    rows = torch.arange(out_RF.shape[0], device=out_RF.device)
    return out_RF.masked_fill_((rows >= offsets_E[-1]).unsqueeze(-1), 0)


def _zero_empty_groups(grad_EDF: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """Zero the weight gradient of groups without rows (a kernel may leave them unwritten)."""
    sizes_E = torch.diff(offsets_E, prepend=offsets_E.new_zeros(1))
    return grad_EDF.masked_fill_((sizes_E <= 0).view(-1, 1, 1), 0)


def _loop_mm(x_RD: torch.Tensor, w_EDF: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    out_RF = x_RD.new_zeros(x_RD.shape[0], w_EDF.shape[-1])
    start = 0
    for e, end in enumerate(offsets_E.tolist()):
        if end > start:
            torch.mm(x_RD[start:end], w_EDF[e], out=out_RF[start:end])
        start = end
    return out_RF


def _loop_mm_weight_grad(x_RD: torch.Tensor, g_RF: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    E = offsets_E.shape[0]
    grad_EDF = x_RD.new_zeros(E, x_RD.shape[-1], g_RF.shape[-1])
    start = 0
    for e, end in enumerate(offsets_E.tolist()):
        if end > start:
            torch.mm(x_RD[start:end].t(), g_RF[start:end], out=grad_EDF[e])
        start = end
    return grad_EDF


@torch.library.custom_op("moekit::grouped_mm", mutates_args=())
def grouped_mm(x_RD: torch.Tensor, w_EDF: torch.Tensor, offsets_E: torch.Tensor,
               full: bool = False) -> torch.Tensor:
    """Grouped matmul; see the module docstring."""
    if x_RD.shape[0] > 0:
        x_k, w_k = _kernel_layout(x_RD), _kernel_layout(w_EDF)
        if native_reason(x_k, w_k) is None:
            out_RF = torch._grouped_mm(x_k, w_k, offs=_int32(offsets_E))
            return out_RF if full else _zero_tail(out_RF, offsets_E)
    return _loop_mm(x_RD, w_EDF, offsets_E)


@grouped_mm.register_fake
def _grouped_mm_fake(x_RD: torch.Tensor, w_EDF: torch.Tensor, offsets_E: torch.Tensor,
                     full: bool = False) -> torch.Tensor:
    return x_RD.new_empty(x_RD.shape[0], w_EDF.shape[-1])


@torch.library.custom_op("moekit::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad(x_RD: torch.Tensor, g_RF: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """``grad_w[e] = x_e^T @ g_e`` for each group e: (E, D, F); zero for groups without rows."""
    xt_DR = _kernel_layout(x_RD.t())
    g_k = _kernel_layout(g_RF)
    if x_RD.shape[0] > 0 and native_reason(xt_DR.t(), g_k) is None and _aligned(xt_DR, g_k):
        grad_EDF = torch._grouped_mm(xt_DR, g_k, offs=_int32(offsets_E))
        return _zero_empty_groups(grad_EDF, offsets_E)
    return _loop_mm_weight_grad(x_RD, g_RF, offsets_E)


@grouped_mm_weight_grad.register_fake
def _weight_grad_fake(x_RD: torch.Tensor, g_RF: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    return x_RD.new_empty(offsets_E.shape[0], x_RD.shape[-1], g_RF.shape[-1])


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x_RD, w_EDF, offsets_E, full = inputs
    ctx.save_for_backward(x_RD, w_EDF, offsets_E)
    ctx.full = full


def _backward(ctx, grad_RF: torch.Tensor):  # type: ignore[no-untyped-def]
    x_RD, w_EDF, offsets_E = ctx.saved_tensors
    grad_RF = grad_RF.contiguous()  # e.g. expanded (stride 0) from .sum()
    grad_x = grad_w = None
    if ctx.needs_input_grad[0]:
        grad_x = grouped_mm(grad_RF, w_EDF.transpose(-1, -2), offsets_E, ctx.full)
    if ctx.needs_input_grad[1]:
        grad_w = grouped_mm_weight_grad(x_RD, grad_RF, offsets_E)
    return grad_x, grad_w, None, None


grouped_mm.register_autograd(_backward, setup_context=_setup_context)


def grouped_mm_status(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """Why the native grouped matmul is unavailable for ``device`` and ``dtype``; None if it runs."""
    return _native_reason(torch.device(device).type, dtype)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None when autocast is off."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 took no argument (CUDA only)
        enabled = device_type == "cuda" and torch.is_autocast_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # older torch
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.bfloat16


def grouped_matmul(x_RD: torch.Tensor, w_EDF: torch.Tensor, offsets_E: torch.Tensor,
                   full: bool = False) -> torch.Tensor:
    """:func:`grouped_mm` that follows ``torch.autocast`` like ``torch.matmul`` does.

    Custom ops are not cast by autocast, so under an active autocast both operands are cast to
    its dtype here (on CUDA that also makes the native bf16 kernel usable).
    """
    dtype = _autocast_dtype(x_RD.device.type)
    if dtype is not None:
        x_RD, w_EDF = x_RD.to(dtype), w_EDF.to(dtype)
    return grouped_mm(x_RD, w_EDF, offsets_E, full)
