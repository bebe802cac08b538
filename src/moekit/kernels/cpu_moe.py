"""A fused MoE layer body for CPUs: gather, expert FFN and combine per expert, one expert per thread.

Legend: T tokens, D model dim, F expert hidden dim, H input projection width (2F for gated
activations, else F), E experts, A active experts, K slots per token, S = T*K slots, P planned
rows (the kept slots sorted by expert, each expert's block padded a little, see below).

``fused_moe_cpu(x_TD, indices_TK, weights_TK, keep_TK, w_in_EDH, w_down_EFD, ...)`` computes

    y_t = sum over kept slots k of weights_TK[t, k] * FFN_{indices_TK[t, k]}(x_t)

(the meaning of dispatch -> experts -> combine in :mod:`moekit.layers.dispatch`), forward and
backward (input, expert weights and biases, and the combine weights, so the router trains). How
(after the project's research notes on CPU performance, measured on an AVX-512 CPU):

- **GEMMs** on the library this CPU runs best (:mod:`moekit.kernels.cpu_gemm`: oneDNN or
  ``torch.mm``, chosen by a timed probe).
- **One expert per thread** (:mod:`moekit.kernels.cpu_threads`): small expert GEMMs lose much of
  their speed when split over threads, so whole experts are dealt to the threads (largest first)
  and every op inside runs single-threaded.
- **Gather fused per expert**: each expert gathers its tokens' rows itself (no (S, D) dispatch
  buffer) and writes its outputs into its own rows of a (P + 1, D) table whose last row is zero.
  **Combine** is then one ``embedding_bag`` (sum of each token's K rows times their weights;
  dropped slots point at the zero row). No atomics, and the result does not depend on the number
  of threads or on which thread ran which expert.
- **Bucketed row counts**: with oneDNN each expert's block is padded up to one of 8 sizes per
  octave (:func:`~moekit.kernels.cpu_plan.bucketed`: under 1/8 more rows, none below 16; pad rows
  repeat one of the expert's tokens with weight 0, so they add nothing to any output or
  gradient), which keeps oneDNN's primitive cache from thrashing when routing changes every step
  (each distinct row count is a new primitive, ~0.3 ms to create; measured at OLMoE-like sizes,
  40 routings cycled, 1 thread: 88 ms per forward+backward bucketed, 100 ms not). GEMMs too small
  to gain from oneDNN (decode) run on ``torch.mm``
  (:data:`~moekit.kernels.cpu_gemm.ONEDNN_MIN_FLOP`).
- **Backward** recomputes the activation from the saved pre-activation and re-gathers the input
  rows; per expert: the combine-weight gradient ``g_t . y_e(x_t)``, ``dW_down``, ``dA``, ``dH``,
  ``dW_in`` and the input rows' gradient (into a table, summed per token by ``embedding_bag``).
- **The per-expert loop** runs in C++ (:mod:`moekit.kernels.cpu_ext`, an optional extension built
  with the installed compiler; ``at::parallel_for`` over experts) when it is built, else in Python
  (~0.1 ms of interpreter time per active expert per forward+backward, which shows at 100+ experts).

Weights may have any strides (e.g. transposed views of transformers' ``(E, H, D)`` layout): when
an expert's matrix has a unit stride in one of its two dims it is used in place, else the stack is
copied once per call. Gated activations split H as ``[gate | up]`` (``gate_layout="halves"``,
moekit's layout) or as alternating columns (``"interleaved"``). Supported: float32 and float64 CPU
tensors; activations ``swiglu``, ``geglu``, ``gelu``, ``relu``, ``silu``.
:func:`fused_moe_cpu_reason` says why a call cannot run here.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from moekit.kernels import cpu_ext
from moekit.kernels.cpu_gemm import gemm_for
from moekit.kernels.cpu_loop import (
    GATED,
    GateLayout,
    Spec,
    backward_python,
    forward_python,
    in_place_or_copy,
    onednn_limits,
)
from moekit.kernels.cpu_plan import RowPlan, plan_rows
from moekit.kernels.grouped_mm import _autocast_dtype

GemmRequest = Literal["auto", "onednn", "torch"]
LoopRequest = Literal["auto", "cpp", "python"]
CPU_ACTIVATIONS: tuple[str, ...] = ("swiglu", "geglu", "gelu", "relu", "silu")

__all__ = ["CPU_ACTIVATIONS", "GateLayout", "RowPlan", "fused_moe_cpu",
           "fused_moe_cpu_reason", "plan_rows"]


# --------------------------------------------------------------------------- the op


class _FusedMoE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, weights_TK, w_in, w_down, b_in, b_down, plan, spec):  # type: ignore[no-untyped-def, override]
        K = weights_TK.shape[1]
        x = x_TD.detach()
        tok_P = torch.div(plan.slot_P, K, rounding_mode="floor")
        win, wdn = in_place_or_copy(w_in), in_place_or_copy(w_down)
        bi = b_in.detach() if b_in is not None else None
        bd = b_down.detach() if b_down is not None else None
        save = any(ctx.needs_input_grad[:6])
        if spec.cpp:
            y_P, h = torch.ops.moekit_cpu.experts_forward(
                x, tok_P, plan.experts, plan.starts, plan.padded, win, wdn, bi, bd,
                spec.activation, spec.layout == "interleaved", *onednn_limits(spec), save)
        else:
            y_P, h = forward_python(x, tok_P, plan, win, wdn, bi, bd, spec, save)
        w_TK = weights_TK.detach().to(x.dtype)
        y_TD = F.embedding_bag(plan.row_TK, y_P, mode="sum", per_sample_weights=w_TK)
        if save:
            w_P = w_TK.reshape(-1)[plan.slot_P] * plan.valid_P
            ctx.save_for_backward(x_TD, weights_TK, w_in, w_down, y_P)
            ctx.extras = (plan, spec, tok_P, w_P, list(h), b_in is not None, b_down is not None)
        return y_TD

    @staticmethod
    def backward(ctx, g_TD):  # type: ignore[no-untyped-def, override]
        x_TD, weights_TK, w_in, w_down, y_P = ctx.saved_tensors
        plan, spec, tok_P, w_P, h, has_b_in, has_b_down = ctx.extras
        need = list(ctx.needs_input_grad[:6])
        need[4] = need[4] and has_b_in
        need[5] = need[5] and has_b_down
        g = g_TD.contiguous()  # an expanded gradient (from .sum()) has stride 0
        x = x_TD.detach()
        win, wdn = in_place_or_copy(w_in), in_place_or_copy(w_down)
        if spec.cpp:
            outs = torch.ops.moekit_cpu.experts_backward(
                g, x, tok_P, w_P, y_P, h, plan.experts, plan.starts, plan.padded, plan.counts,
                win, wdn, *need, spec.activation, spec.layout == "interleaved", *onednn_limits(spec))
            grads = [o if n else None for o, n in zip(outs, need)]
        else:
            grads = list(backward_python(g, x, tok_P, w_P, y_P, h, plan, win, wdn, tuple(need),
                                          spec))
        dx_P, dw_P, dw_in, dw_down, db_in, db_down = grads
        dx = F.embedding_bag(plan.row_TK, dx_P, mode="sum") if dx_P is not None else None
        dw = dw_P[plan.row_TK].to(weights_TK.dtype) if dw_P is not None else None
        return dx, dw, dw_in, dw_down, db_in, db_down, None, None


def fused_moe_cpu_reason(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                         activation: str = "swiglu") -> str | None:
    """Why :func:`fused_moe_cpu` cannot run for inputs on ``device`` of ``dtype``, or None."""
    device_type = torch.device(device).type
    if device_type != "cpu":
        return f"the CPU fast path runs on CPU tensors only (got {device_type})"
    if dtype not in (torch.float32, torch.float64):
        return (f"the CPU fast path runs float32 and float64 only (got {dtype}); "
                "bfloat16 matmuls already run on oneDNN through grouped_mm")
    if activation not in CPU_ACTIVATIONS:
        return f"activation={activation!r} is not one of {list(CPU_ACTIVATIONS)}"
    if _autocast_dtype("cpu") is not None:
        return "CPU autocast is active (the fast path computes in the weights' dtype)"
    return None


def _check(x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
           keep_TK: torch.Tensor | None, w_in_EDH: torch.Tensor, w_down_EFD: torch.Tensor,
           biases: tuple[torch.Tensor | None, torch.Tensor | None], activation: str,
           gate_layout: str) -> None:
    reason = fused_moe_cpu_reason(x_TD.device, x_TD.dtype, activation)
    if reason is not None:
        raise ValueError(f"fused_moe_cpu cannot run: {reason}")
    if w_in_EDH.device.type != "cpu" or w_in_EDH.dtype != x_TD.dtype:
        raise ValueError(f"w_in_EDH is {w_in_EDH.dtype} on {w_in_EDH.device.type}; it must be "
                         f"{x_TD.dtype} on cpu like x_TD")
    if gate_layout not in get_args(GateLayout):
        raise ValueError(f"gate_layout={gate_layout!r} must be 'halves' or 'interleaved'")
    if w_in_EDH.dim() != 3 or x_TD.dim() != 2 or x_TD.shape[1] != w_in_EDH.shape[1]:
        raise ValueError(f"x_TD {tuple(x_TD.shape)} must be (T, D) and w_in_EDH "
                         f"{tuple(w_in_EDH.shape)} (E, D, H) with the same D")
    E, D, H = w_in_EDH.shape
    gated = activation in GATED
    if gated and H % 2:
        raise ValueError(f"w_in_EDH has H={H} columns; a gated activation ({activation!r}) "
                         "needs an even H = 2F (gate and up)")
    Fh = H // 2 if gated else H
    if tuple(w_down_EFD.shape) != (E, Fh, D):
        raise ValueError(f"w_down_EFD has shape {tuple(w_down_EFD.shape)}; expected {(E, Fh, D)} "
                         f"for w_in_EDH {tuple(w_in_EDH.shape)} and activation={activation!r}")
    for name, b, shape in (("b_in_EH", biases[0], (E, H)), ("b_down_ED", biases[1], (E, D))):
        if b is not None and tuple(b.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(b.shape)}; expected {shape}")
    if any(t is not None and t.dtype != x_TD.dtype for t in (w_down_EFD, *biases)):
        raise ValueError(f"w_down_EFD and the biases must be {x_TD.dtype} like x_TD")
    T = x_TD.shape[0]
    if indices_TK.dim() != 2 or indices_TK.shape != weights_TK.shape or indices_TK.shape[0] != T:
        raise ValueError(f"indices_TK {tuple(indices_TK.shape)} and weights_TK "
                         f"{tuple(weights_TK.shape)} must both be (T, K) with T={T}")
    if keep_TK is not None and keep_TK.shape != indices_TK.shape:
        raise ValueError(f"keep_TK {tuple(keep_TK.shape)} must be None or (T, K) like indices_TK")


def fused_moe_cpu(x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
                  keep_TK: torch.Tensor | None, w_in_EDH: torch.Tensor, w_down_EFD: torch.Tensor,
                  b_in_EH: torch.Tensor | None = None, b_down_ED: torch.Tensor | None = None, *,
                  activation: str = "swiglu", gate_layout: GateLayout = "halves",
                  gemm: GemmRequest = "auto", loop: LoopRequest = "auto") -> torch.Tensor:
    """Routed experts' output on CPU, fused (see the module docstring); differentiable.

    Parameters
    ----------
    x_TD : (T, D) tokens, float32 or float64, on CPU.
    indices_TK : (T, K) int64 expert of each slot.
    weights_TK : (T, K) combine weight of each slot; gets a gradient (the router's).
    keep_TK : (T, K) bool slots that reach their expert, or None for all (dropless).
    w_in_EDH : (E, D, H) input projections, any strides; H = 2F for gated activations.
    w_down_EFD : (E, F, D) output projections, any strides.
    b_in_EH, b_down_ED : optional biases, (E, H) and (E, D).
    activation : ``"swiglu"``, ``"geglu"`` (gated), ``"gelu"``, ``"relu"`` or ``"silu"``.
    gate_layout : how H splits into gate and up: ``"halves"`` or ``"interleaved"``.
    gemm : ``"auto"`` (the probed library), ``"onednn"`` or ``"torch"`` (float32 only).
    loop : ``"auto"`` (C++ when the extension is built), ``"cpp"`` or ``"python"``.

    Returns
    -------
    (T, D) tensor in ``x_TD``'s dtype. Uses ``torch.get_num_threads()`` threads.

    Examples
    --------
    >>> import torch
    >>> from moekit.kernels.cpu_moe import fused_moe_cpu
    >>> x, w_in, w_down = torch.randn(6, 8), torch.randn(3, 8, 10), torch.randn(3, 5, 8)
    >>> idx, wts = torch.tensor([[0, 1]] * 6), torch.full((6, 2), 0.5)
    >>> fused_moe_cpu(x, idx, wts, None, w_in, w_down).shape
    torch.Size([6, 8])
    """
    args = (x_TD, indices_TK, weights_TK, keep_TK, w_in_EDH, w_down_EFD, b_in_EH, b_down_ED,
            activation, gate_layout, gemm, loop)
    if torch.compiler.is_compiling():  # host syncs and threads inside: run it outside the graph
        # (disable() imports torch._dynamo, and with it Triton: so only while compiling)
        return torch.compiler.disable(_fused_moe_cpu)(*args)
    return _fused_moe_cpu(*args)


def _fused_moe_cpu(x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
                   keep_TK: torch.Tensor | None, w_in_EDH: torch.Tensor, w_down_EFD: torch.Tensor,
                   b_in_EH: torch.Tensor | None, b_down_ED: torch.Tensor | None, activation: str,
                   gate_layout: GateLayout, gemm: GemmRequest, loop: LoopRequest) -> torch.Tensor:
    _check(x_TD, indices_TK, weights_TK, keep_TK, w_in_EDH, w_down_EFD, (b_in_EH, b_down_ED),
           activation, gate_layout)
    if loop not in get_args(LoopRequest):
        raise ValueError(f"loop={loop!r} must be 'auto', 'cpp' or 'python'")
    if loop == "cpp" and cpu_ext.status() is not None:
        raise ValueError(f"loop='cpp' but the C++ loop is unavailable: {cpu_ext.status()}")
    library = gemm_for(x_TD.dtype, gemm)
    cpp = loop == "cpp" or (loop == "auto" and cpu_ext.status() is None)
    E = w_in_EDH.shape[0]
    plan = plan_rows(indices_TK, keep_TK, E, library == "onednn", torch.get_num_threads())
    spec = Spec(activation=activation, layout=gate_layout, library=library, cpp=cpp)
    y_TD: torch.Tensor = _FusedMoE.apply(x_TD, weights_TK, w_in_EDH, w_down_EFD, b_in_EH,
                                         b_down_ED, plan, spec)
    return y_TD
