"""A fused MoE layer body for CPUs: gather, expert FFN and combine per expert, one expert per thread.

Legend: T tokens, D model dim, F expert hidden dim, H input projection width (2F for gated
activations, else F), E experts, A active experts, K slots per token, S = T*K slots, P planned
rows (the kept slots sorted by expert, each expert's block padded up to a multiple of ``bucket``).

``fused_moe_cpu(x_TD, indices_TK, weights_TK, keep_TK, w_in_EDH, w_down_EFD, ...)`` computes

    y_t = sum over kept slots k of weights_TK[t, k] * FFN_{indices_TK[t, k]}(x_t)

(the meaning of dispatch -> experts -> combine in :mod:`moekit.layers.dispatch`), forward and
backward (input, expert weights and biases, and the combine weights, so the router trains). How
(after ``cpu_performance.md`` of the project's research notes, measured on an AVX-512 CPU):

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
- **Bucketed row counts**: with oneDNN each expert's block is padded to a multiple of 16 rows
  (pad rows repeat one of the expert's tokens with weight 0, so they add nothing to any output or
  gradient), which keeps oneDNN's primitive cache from thrashing when routing changes every step
  (each distinct row count is a new primitive, ~0.3 ms to create). GEMMs too small to gain from
  oneDNN (decode) run on ``torch.mm`` unpadded (:data:`~moekit.kernels.cpu_gemm.ONEDNN_MIN_FLOP`).
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

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from moekit.kernels import cpu_ext
from moekit.kernels.cpu_gemm import ONEDNN_MIN_FLOP, GemmLibrary, gemm_for, mm_nt, mm_nt_out
from moekit.kernels.cpu_threads import run_parts
from moekit.kernels.grouped_mm import _autocast_dtype

GateLayout = Literal["halves", "interleaved"]
GemmRequest = Literal["auto", "onednn", "torch"]
LoopRequest = Literal["auto", "cpp", "python"]
CPU_ACTIVATIONS: tuple[str, ...] = ("swiglu", "geglu", "gelu", "relu", "silu")
GATED = frozenset({"swiglu", "geglu"})
#: Rows each expert's block is padded to a multiple of when its GEMMs run on oneDNN.
ONEDNN_ROW_BUCKET = 16
#: Fixed cost of an expert call, in rows (for dealing experts to threads).
_EXPERT_OVERHEAD_ROWS = 16


# --------------------------------------------------------------------------- activations


def _act(name: str, t: torch.Tensor) -> torch.Tensor:
    if name in ("swiglu", "silu"):
        return F.silu(t)
    if name in ("geglu", "gelu"):
        return F.gelu(t)
    return F.relu(t)


def _act_grad(name: str, grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``act'(t) * grad`` with autograd's own formulas."""
    if name in ("swiglu", "silu"):
        return torch.ops.aten.silu_backward(grad, t)
    if name in ("geglu", "gelu"):
        return torch.ops.aten.gelu_backward(grad, t)
    return torch.ops.aten.threshold_backward(grad, t, 0)


def _split(h_RH: torch.Tensor, layout: GateLayout) -> tuple[torch.Tensor, torch.Tensor]:
    if layout == "halves":
        half = h_RH.shape[1] // 2
        return h_RH[:, :half], h_RH[:, half:]
    return h_RH[:, 0::2], h_RH[:, 1::2]


def _hidden(h_RH: torch.Tensor, name: str, layout: GateLayout) -> torch.Tensor:
    if name not in GATED:
        return _act(name, h_RH)
    gate_RF, up_RF = _split(h_RH, layout)
    return _act(name, gate_RF) * up_RF


def _hidden_and_grad(h_RH: torch.Tensor, da_RF: torch.Tensor, name: str, layout: GateLayout,
                     want_hidden: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(activation output or None, gradient of the pre-activation) from ``h`` and ``dA``."""
    if name not in GATED:
        return (_act(name, h_RH) if want_hidden else None), _act_grad(name, da_RF, h_RH)
    gate_RF, up_RF = _split(h_RH, layout)
    sg_RF = _act(name, gate_RF)
    dh_RH = torch.empty_like(h_RH)
    dgate_RF, dup_RF = _split(dh_RH, layout)
    dgate_RF.copy_(_act_grad(name, da_RF * up_RF, gate_RF))
    torch.mul(da_RF, sg_RF, out=dup_RF)
    return (sg_RF * up_RF if want_hidden else None), dh_RH


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, kw_only=True)
class RowPlan:
    """Which planned rows each active expert takes, and which thread runs it (Python loop).

    Attributes
    ----------
    experts : active experts (at least one kept slot), ascending.
    counts, starts, padded : kept slots, first planned row and padded row count of each.
    slot_P : (P,) int64 slot (``t * K + k``) of each planned row; a pad row repeats a kept slot
        of its expert.
    valid_P : (P,) bool, False on pad rows.
    row_TK : (T, K) int64 planned row of each slot; P (the table's zero row) for dropped slots.
    parts : for each thread, the positions into ``experts`` it runs.
    """

    experts: list[int]
    counts: list[int]
    starts: list[int]
    padded: list[int]
    slot_P: torch.Tensor
    valid_P: torch.Tensor
    row_TK: torch.Tensor
    parts: list[list[int]]

    @property
    def rows(self) -> int:
        """P."""
        return int(self.slot_P.shape[0])


def deal(costs: Sequence[int], workers: int) -> list[list[int]]:
    """Largest job first to the least loaded worker (ties: lowest index); deterministic."""
    heap = [(0, w) for w in range(workers)]
    parts: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, w = heapq.heappop(heap)
        parts[w].append(i)
        heapq.heappush(heap, (load + costs[i], w))
    return [p for p in parts if p]


def plan_rows(indices_TK: torch.Tensor, keep_TK: torch.Tensor | None, num_experts: int,
              bucket: int, workers: int, bucket_from: int = 0) -> RowPlan:
    """The :class:`RowPlan` of a routing (one host sync, for the counts).

    An expert's rows are padded to a multiple of ``bucket`` when that makes at least
    ``bucket_from`` rows (smaller blocks run on ``torch.mm``, whose speed does not depend on it).
    """
    E = num_experts
    T, K = indices_TK.shape
    key_S = indices_TK.reshape(-1)
    if keep_TK is not None:
        key_S = torch.where(keep_TK.reshape(-1), key_S, E)
    order_S = torch.argsort(key_S, stable=True)
    counts_E = torch.bincount(key_S, minlength=E + 1)[:E]
    all_counts = counts_E.tolist()
    experts = [e for e, n in enumerate(all_counts) if n > 0]
    counts = [all_counts[e] for e in experts]
    padded = [b if (b := -(-n // bucket) * bucket) >= bucket_from else n for n in counts]
    starts, total = [], 0
    for n in padded:
        starts.append(total)
        total += n
    device = indices_TK.device

    def i64(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    first_E = torch.cumsum(counts_E, 0) - counts_E  # first sorted slot of each expert
    if total == sum(counts):  # nothing padded
        slot_P = order_S[:total]
        valid_P = torch.ones(total, dtype=torch.bool, device=device)
    else:
        n_A = i64(counts)
        start_A = i64(starts)
        expert_P = torch.repeat_interleave(torch.arange(len(experts), device=device),
                                           i64(padded))
        local_P = torch.arange(total, device=device) - start_A[expert_P]
        n_P = n_A[expert_P]
        valid_P = local_P < n_P
        first_A = first_E[i64(experts)] if experts else n_A
        slot_P = order_S[first_A[expert_P] + torch.minimum(local_P, n_P - 1)]
    rank_S = torch.empty_like(order_S).scatter_(0, order_S, torch.arange(T * K, device=device))
    start_E = torch.zeros(E, dtype=torch.int64, device=device)
    if experts:
        start_E[i64(experts)] = i64(starts)
    kept_S = key_S < E
    key_c = key_S.clamp(max=E - 1)
    row_S = torch.where(kept_S, rank_S - first_E[key_c] + start_E[key_c], total)
    costs = [p + _EXPERT_OVERHEAD_ROWS for p in padded]
    return RowPlan(experts=experts, counts=counts, starts=starts, padded=padded, slot_P=slot_P,
                   valid_P=valid_P, row_TK=row_S.view(T, K),
                   parts=deal(costs, max(1, min(workers, len(experts)))))


# --------------------------------------------------------------------------- the two loops


@dataclass(frozen=True, kw_only=True)
class _Spec:
    activation: str
    layout: GateLayout
    library: GemmLibrary
    cpp: bool


def _min_flop(spec: _Spec) -> int:
    """The C++ loop's switch: oneDNN for GEMMs of at least this many FLOPs; -1 = never."""
    return ONEDNN_MIN_FLOP if spec.library == "onednn" else -1


def _in_place_or_copy(w_EXY: torch.Tensor) -> torch.Tensor:
    """Detached weights with a unit stride in one of the last two dims (else a copy)."""
    w = w_EXY.detach()
    if 1 not in w.stride()[1:] and w.shape[1] > 1 and w.shape[2] > 1:
        w = w.contiguous()
    return w


def _forward_python(x: torch.Tensor, tok_P: torch.Tensor, plan: RowPlan, w_in: torch.Tensor,
                    w_down: torch.Tensor, b_in: torch.Tensor | None, b_down: torch.Tensor | None,
                    spec: _Spec, save: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    lib, act, layout = spec.library, spec.activation, spec.layout
    P, D = plan.rows, x.shape[1]
    y_P = x.new_empty(P + 1, D)
    y_P[P].zero_()
    win_t = [w.t() for w in w_in.unbind(0)]  # (H, D) each: mm_nt's (N, K)
    wd_t = [w.t() for w in w_down.unbind(0)]  # (D, F)
    bi = list(b_in.unbind(0)) if b_in is not None else None
    bd = list(b_down.unbind(0)) if b_down is not None else None
    h: list[torch.Tensor] = [x] * len(plan.experts) if save else []

    def work(p: int) -> None:
        for i in plan.parts[p]:
            e, p0, nb = plan.experts[i], plan.starts[i], plan.padded[i]
            xe = x.index_select(0, tok_P[p0:p0 + nb])
            he = mm_nt(xe, win_t[e], None if bi is None else bi[e], lib)
            mm_nt_out(y_P[p0:p0 + nb], _hidden(he, act, layout), wd_t[e],
                      None if bd is None else bd[e], lib)
            if save:
                h[i] = he

    run_parts(work, len(plan.parts))
    return y_P, h


def _backward_python(g: torch.Tensor, x: torch.Tensor, tok_P: torch.Tensor, w_P: torch.Tensor,
                     y_P: torch.Tensor, h: list[torch.Tensor], plan: RowPlan, w_in: torch.Tensor,
                     w_down: torch.Tensor, needs: tuple[bool, ...], spec: _Spec,
                     ) -> tuple[torch.Tensor | None, ...]:
    need_x, need_w, need_win, need_wd, need_bin, need_bd = needs
    lib, act, layout = spec.library, spec.activation, spec.layout
    P, D = plan.rows, x.shape[1]
    E, H, Fh = w_in.shape[0], w_in.shape[2], w_down.shape[1]
    dx_P = x.new_empty(P + 1, D) if need_x else None
    if dx_P is not None:
        dx_P[P].zero_()
    dw_P = w_P.new_zeros(P + 1) if need_w else None
    inactive = torch.ones(E, dtype=torch.bool)
    inactive[plan.experts] = False

    def grad_buffer(*shape: int) -> torch.Tensor:
        t = x.new_empty(*shape)
        t[inactive] = 0  # active experts' slices are all written below
        return t

    dw_in = grad_buffer(E, D, H) if need_win else None
    dw_down = grad_buffer(E, Fh, D) if need_wd else None
    db_in = grad_buffer(E, H) if need_bin else None
    db_down = grad_buffer(E, D) if need_bd else None
    win = list(w_in.unbind(0))  # (D, H) each: mm_nt's (N, K) for dx = dh @ W_in^T
    wd = list(w_down.unbind(0))  # (F, D): (N, K) for dA = gy @ W_down^T
    need_dh = need_x or need_win or need_bin

    def work(p: int) -> None:
        for i in plan.parts[p]:
            e, p0, nb, n = plan.experts[i], plan.starts[i], plan.padded[i], plan.counts[i]
            toks = tok_P[p0:p0 + nb]
            ge = g.index_select(0, toks)
            if dw_P is not None:  # combine weight of a slot: g_t . y_e(x_t)
                torch.sum(ge[:n] * y_P[p0:p0 + n], 1, out=dw_P[p0:p0 + n])
            gy = ge * w_P[p0:p0 + nb, None]  # pad rows: weight 0
            if db_down is not None:
                torch.sum(gy, 0, out=db_down[e])
            if not need_dh:
                if dw_down is not None:
                    mm_nt_out(dw_down[e], _hidden(h[i], act, layout).t(), gy.t(), None, lib)
                continue
            ae, dh = _hidden_and_grad(h[i], mm_nt(gy, wd[e], None, lib), act, layout,
                                      dw_down is not None)
            if dw_down is not None:
                assert ae is not None
                mm_nt_out(dw_down[e], ae.t(), gy.t(), None, lib)
            if db_in is not None:
                torch.sum(dh, 0, out=db_in[e])
            if dw_in is not None:
                mm_nt_out(dw_in[e], x.index_select(0, toks).t(), dh.t(), None, lib)
            if dx_P is not None:
                mm_nt_out(dx_P[p0:p0 + nb], dh, win[e], None, lib)

    run_parts(work, len(plan.parts))
    return dx_P, dw_P, dw_in, dw_down, db_in, db_down


# --------------------------------------------------------------------------- the op


class _FusedMoE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, weights_TK, w_in, w_down, b_in, b_down, plan, spec):  # type: ignore[no-untyped-def, override]
        K = weights_TK.shape[1]
        x = x_TD.detach()
        tok_P = torch.div(plan.slot_P, K, rounding_mode="floor")
        win, wdn = _in_place_or_copy(w_in), _in_place_or_copy(w_down)
        bi = b_in.detach() if b_in is not None else None
        bd = b_down.detach() if b_down is not None else None
        save = any(ctx.needs_input_grad[:6])
        if spec.cpp:
            y_P, h = torch.ops.moekit_cpu.experts_forward(
                x, tok_P, plan.experts, plan.starts, plan.padded, win, wdn, bi, bd,
                spec.activation, spec.layout == "interleaved", _min_flop(spec), save)
        else:
            y_P, h = _forward_python(x, tok_P, plan, win, wdn, bi, bd, spec, save)
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
        win, wdn = _in_place_or_copy(w_in), _in_place_or_copy(w_down)
        if spec.cpp:
            outs = torch.ops.moekit_cpu.experts_backward(
                g, x, tok_P, w_P, y_P, h, plan.experts, plan.starts, plan.padded, plan.counts,
                win, wdn, *need, spec.activation, spec.layout == "interleaved", _min_flop(spec))
            grads = [o if n else None for o, n in zip(outs, need)]
        else:
            grads = list(_backward_python(g, x, tok_P, w_P, y_P, h, plan, win, wdn, tuple(need),
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


@torch.compiler.disable
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
    _check(x_TD, indices_TK, weights_TK, keep_TK, w_in_EDH, w_down_EFD, (b_in_EH, b_down_ED),
           activation, gate_layout)
    if loop not in get_args(LoopRequest):
        raise ValueError(f"loop={loop!r} must be 'auto', 'cpp' or 'python'")
    if loop == "cpp" and cpu_ext.status() is not None:
        raise ValueError(f"loop='cpp' but the C++ loop is unavailable: {cpu_ext.status()}")
    library = gemm_for(x_TD.dtype, gemm)
    cpp = loop == "cpp" or (loop == "auto" and cpu_ext.status() is None)
    E = w_in_EDH.shape[0]
    D, Fh = w_down_EFD.shape[2], w_down_EFD.shape[1]
    plan = plan_rows(indices_TK, keep_TK, E, ONEDNN_ROW_BUCKET if library == "onednn" else 1,
                     torch.get_num_threads(), bucket_from=-(-ONEDNN_MIN_FLOP // (2 * D * Fh)))
    spec = _Spec(activation=activation, layout=gate_layout, library=library, cpp=cpp)
    y_TD: torch.Tensor = _FusedMoE.apply(x_TD, weights_TK, w_in_EDH, w_down_EFD, b_in_EH,
                                         b_down_ED, plan, spec)
    return y_TD
