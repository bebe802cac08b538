"""The Python per-expert loop of the fused CPU MoE path, forward and backward (the reference of
the C++ loop in ``cpu_moe_ext.cpp``, and its fallback), with the activations it needs.

Legend: T tokens, D model dim, F expert hidden dim, H input projection width (2F for gated
activations, else F), E experts, P planned rows (:mod:`moekit.kernels.cpu_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from moekit.kernels.cpu_gemm import ONEDNN_MIN_FLOP, ONEDNN_MIN_ROWS, GemmLibrary, mm_nt, mm_nt_out
from moekit.kernels.cpu_plan import RowPlan
from moekit.kernels.cpu_threads import run_parts

GateLayout = Literal["halves", "interleaved"]
GATED = frozenset({"swiglu", "geglu"})


def _act(name: str, t: torch.Tensor) -> torch.Tensor:
    if name in ("swiglu", "silu"):
        return F.silu(t)
    if name in ("geglu", "gelu"):
        return F.gelu(t)
    return F.relu(t)


def _act_grad(name: str, grad: torch.Tensor, t: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``act'(t) * grad`` with autograd's own formulas (written into ``out`` if given)."""
    if name in ("swiglu", "silu"):
        op = torch.ops.aten.silu_backward
        return op(grad, t) if out is None else op.grad_input(grad, t, grad_input=out)
    if name in ("geglu", "gelu"):
        op = torch.ops.aten.gelu_backward
        return op(grad, t) if out is None else op.grad_input(grad, t, grad_input=out)
    op = torch.ops.aten.threshold_backward
    return op(grad, t, 0) if out is None else op.grad_input(grad, t, 0, grad_input=out)


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
    _act_grad(name, da_RF * up_RF, gate_RF, out=dgate_RF)
    torch.mul(da_RF, sg_RF, out=dup_RF)
    return (sg_RF * up_RF if want_hidden else None), dh_RH


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True, kw_only=True)
class Spec:
    """How a call runs: activation, gate layout, GEMM library, C++ or Python loop."""

    activation: str
    layout: GateLayout
    library: GemmLibrary
    cpp: bool


def onednn_limits(spec: Spec) -> tuple[int, int]:
    """The C++ loop's switch: oneDNN for GEMMs of at least (FLOPs, rows); FLOPs -1 = never."""
    return (ONEDNN_MIN_FLOP if spec.library == "onednn" else -1), ONEDNN_MIN_ROWS


def in_place_or_copy(w_EXY: torch.Tensor) -> torch.Tensor:
    """Detached weights with a unit stride in one of the last two dims (else a copy)."""
    w = w_EXY.detach()
    if 1 not in w.stride()[1:] and w.shape[1] > 1 and w.shape[2] > 1:
        w = w.contiguous()
    return w


def forward_python(x: torch.Tensor, tok_P: torch.Tensor, plan: RowPlan, w_in: torch.Tensor,
                   w_down: torch.Tensor, b_in: torch.Tensor | None, b_down: torch.Tensor | None,
                   spec: Spec, save: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(y_P, h): the experts' outputs in a (P + 1, D) table (last row zero) and, if ``save``, each
    active expert's pre-activation (for the backward)."""
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


def backward_python(g: torch.Tensor, x: torch.Tensor, tok_P: torch.Tensor, w_P: torch.Tensor,
                    y_P: torch.Tensor, h: list[torch.Tensor], plan: RowPlan, w_in: torch.Tensor,
                    w_down: torch.Tensor, needs: tuple[bool, ...], spec: Spec,
                    ) -> tuple[torch.Tensor | None, ...]:
    """(dx_P, dw_P, dW_in, dW_down, db_in, db_down), None where ``needs`` says no: the input rows'
    gradient (a (P + 1, D) table), the combine weights' (P + 1), the weights' and biases'."""
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
