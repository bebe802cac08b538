"""Plain torch twins of every Triton MoE kernel: the slow, obviously correct side of each test.

Legend: T tokens, K slots per token, S = T*K token-slots (slot s = t*K + k), R rows sorted by
expert, D model dim, F expert hidden dim, H = 2F (``[gate | up]``) for gated activations else F,
E experts, N output columns of a GEMM.

Each function mirrors one kernel launcher in :mod:`moekit.kernels.moe_triton.launch` with the
same arguments and results, written with torch ops and a Python loop over experts.
:func:`moe_ffn_reference` is the whole layer (a loop over experts), and through autograd it is
also the reference for every gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moekit.kernels.moe_triton.config import ACT_CLAMPED_SWIGLU, GATED_CODES
from moekit.kernels.moe_triton.routing import RoutingMeta, num_tiles_bound


def activation(h_RH: torch.Tensor, code: int, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """``a_RF`` from the input projection ``h_RH`` (``[gate | up]`` for gated codes)."""
    if code in GATED_CODES:
        gate, up = h_RH.chunk(2, dim=-1)
        if code == 0:
            return F.silu(gate) * up
        if code == 1:
            return F.gelu(gate) * up
        # GPT-OSS (transformers' GptOssExperts._apply_gate), on the [gate | up] layout.
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return (up + 1) * (gate * torch.sigmoid(gate * alpha))
    if code == 2:
        return F.gelu(h_RH)
    return F.relu(h_RH) if code == 3 else F.silu(h_RH)


def activation_backward(da_RF: torch.Tensor, h_RH: torch.Tensor, code: int, alpha: float = 1.702,
                        limit: float = 7.0) -> torch.Tensor:
    """``dh_RH`` from ``da_RF``: the derivative written out (the kernels' formula), in float32."""
    da, h = da_RF.float(), h_RH.float()
    if code in GATED_CODES:
        g, u = h.chunk(2, dim=-1)
        if code == 0:
            s = torch.sigmoid(g)
            act, dact = g * s, s * (1 + g * (1 - s))
            return torch.cat([da * u * dact, da * act], dim=-1)
        if code == 1:
            cdf = 0.5 * (1 + torch.erf(g * math.sqrt(0.5)))
            pdf = torch.exp(-0.5 * g * g) / math.sqrt(2 * math.pi)
            return torch.cat([da * u * (cdf + g * pdf), da * g * cdf], dim=-1)
        if code != ACT_CLAMPED_SWIGLU:
            raise ValueError(f"unknown activation code {code}")
        gc, uc = g.clamp(max=limit), u.clamp(-limit, limit)
        s = torch.sigmoid(alpha * gc)
        glu, dglu = gc * s, s + alpha * gc * s * (1 - s)
        dg = torch.where(g <= limit, da * (uc + 1) * dglu, 0)
        du = torch.where((u >= -limit) & (u <= limit), da * glu, 0)
        return torch.cat([dg, du], dim=-1)
    if code == 2:
        cdf = 0.5 * (1 + torch.erf(h * math.sqrt(0.5)))
        return da * (cdf + h * torch.exp(-0.5 * h * h) / math.sqrt(2 * math.pi))
    if code == 3:
        return torch.where(h > 0, da, 0)
    s = torch.sigmoid(h)
    return da * s * (1 + h * (1 - s))


def routing_meta(indices_TK: torch.Tensor, keep_TK: torch.Tensor | None, num_experts: int,
                 block_m: int) -> RoutingMeta:
    """The metadata by a Python loop: each expert's kept slots in slot order, then the dropped
    slots; tiles of ``block_m`` rows per expert; unused tiles point at expert E (row 0)."""
    E, S = num_experts, indices_TK.numel()
    idx = indices_TK.reshape(-1).tolist()
    keep = [True] * S if keep_TK is None else keep_TK.reshape(-1).tolist()
    slot, offsets, tile_e, tile_r = [], [0], [], []
    for e in range(E):
        slot += [s for s in range(S) if keep[s] and idx[s] == e]
        tile_e += [e] * len(range(offsets[-1], len(slot), block_m))
        tile_r += list(range(offsets[-1], len(slot), block_m))
        offsets.append(len(slot))
    slot += [s for s in range(S) if not keep[s]]
    G = num_tiles_bound(S, E, block_m)
    if len(tile_e) > G:
        raise AssertionError(f"the routing needs {len(tile_e)} tiles, more than the bound {G}")
    tile_e += [E] * (G - len(tile_e))
    tile_r += [0] * (G - len(tile_r))
    as_int = lambda v: torch.tensor(v, dtype=torch.int32, device=indices_TK.device)  # noqa: E731
    return RoutingMeta(as_int(slot), as_int(offsets), as_int(tile_e), as_int(tile_r))


def _expert_rows(meta: RoutingMeta, K: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(expert, rows, tokens) for each expert with rows."""
    offs = meta.offsets_E1.tolist()
    out = []
    for e in range(len(offs) - 1):
        if offs[e + 1] > offs[e]:
            rows = torch.arange(offs[e], offs[e + 1], device=meta.slot_R.device)
            out.append((e, rows, meta.slot_R[rows].long() // K))
    return out


def gate_up(x_TD: torch.Tensor, meta: RoutingMeta, K: int, w_in: torch.Tensor, b_in: torch.Tensor | None,
            code: int, alpha: float, limit: float, store_h: bool,
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``h_RH = x[token_R] @ w_in[e] + b_in[e]`` and ``a_RF = act(h_RH)``; rows outside any
    expert are zero here (the kernel leaves them unwritten)."""
    S, H = meta.slot_R.shape[0], w_in.shape[-1]
    Fh = H // 2 if code in GATED_CODES else H
    h = x_TD.new_zeros(S, H)
    for e, rows, tok in _expert_rows(meta, K):
        he = x_TD[tok].float() @ w_in[e].float()
        h[rows] = (he if b_in is None else he + b_in[e].float()).to(h.dtype)
    a = activation(h.float(), code, alpha, limit).to(x_TD.dtype)
    return a[:, :Fh], (h if store_h else None)


def rows_gemm(a_RN: torch.Tensor, meta: RoutingMeta, K: int, w_EKN: torch.Tensor, b_EN: torch.Tensor | None,
              weights_S: torch.Tensor | None) -> torch.Tensor:
    """``out[slot_R[r]] = (a[r] @ w[e] + b[e]) * weights[slot_R[r]]`` (slot order; (S, N));
    slots of no expert are zero here (the kernel leaves them unwritten)."""
    S = meta.slot_R.shape[0]
    out = a_RN.new_zeros(S, w_EKN.shape[-1])
    for e, rows, _ in _expert_rows(meta, K):
        oe = a_RN[rows].float() @ w_EKN[e].float()
        if b_EN is not None:
            oe = oe + b_EN[e].float()
        slots = meta.slot_R[rows].long()
        if weights_S is not None:
            oe = oe * weights_S[slots, None].float()
        out[slots] = oe.to(out.dtype)
    return out


def combine(y_SD: torch.Tensor, keep_S: torch.Tensor | None, T: int, K: int,
            out_dtype: torch.dtype) -> torch.Tensor:
    """``y_TD[t] = sum_k y_SD[t*K + k]`` over kept slots, in float32, summed in order of k."""
    y = y_SD.float().view(T, K, -1)
    if keep_S is not None:
        y = y.masked_fill(~keep_S.view(T, K, 1), 0)
    out = y.new_zeros(T, y.shape[-1])
    for k in range(K):
        out += y[:, k]
    return out.to(out_dtype)


def down_backward(g_TD: torch.Tensor, meta: RoutingMeta, K: int, w_down: torch.Tensor, b_down: torch.Tensor | None,
                  h_RH: torch.Tensor, weights_S: torch.Tensor, code: int, alpha: float, limit: float,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``dh_RH = act'(h) * (weights * g[token] @ w_down[e]^T)`` and the router gradient
    ``dweights_S[s] = <g[token], a @ w_down[e] + b_down[e]>`` (zero for slots of no expert)."""
    S = meta.slot_R.shape[0]
    dh = h_RH.new_zeros(h_RH.shape)
    dw = torch.zeros(S, dtype=torch.float32, device=g_TD.device)
    for e, rows, tok in _expert_rows(meta, K):
        slots = meta.slot_R[rows].long()
        dau = g_TD[tok].float() @ w_down[e].float().t()
        a = activation(h_RH[rows].float(), code, alpha, limit).to(h_RH.dtype).float()
        dw_e = (dau * a).sum(-1)
        if b_down is not None:
            dw_e = dw_e + g_TD[tok].float() @ b_down[e].float()
        dw[slots] = dw_e
        dh[rows] = activation_backward(dau * weights_S[slots, None].float(), h_RH[rows], code,
                                       alpha, limit).to(dh.dtype)
    return dh, dw


def weight_grad(left_R: torch.Tensor, right_R: torch.Tensor, meta: RoutingMeta, K: int, E: int,
                left_gather: bool, right_gather: bool, weights_S: torch.Tensor | None,
                act: tuple[int, float, float] | None, out_dtype: torch.dtype,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``dW[e] = L_e^T R_e`` and ``db[e] = sum of R_e's rows`` over the rows of expert e, where
    L's rows are ``left[token]`` (gather) or ``left[r]``, or ``act(h[r])`` when ``act`` is given,
    and R's rows ``right[token] * weights[slot]`` (gather) or ``right[r]``."""
    Fl = left_R.shape[-1] if act is None or act[0] not in GATED_CODES else left_R.shape[-1] // 2
    dW = torch.zeros(E, Fl, right_R.shape[-1], dtype=torch.float32, device=left_R.device)
    db = torch.zeros(E, right_R.shape[-1], dtype=torch.float32, device=left_R.device)
    for e, rows, tok in _expert_rows(meta, K):
        slots = meta.slot_R[rows].long()
        L = left_R[tok if left_gather else rows].float()
        if act is not None:
            L = activation(L, *act).to(left_R.dtype).float()
        Rm = right_R[tok if right_gather else rows].float()
        if weights_S is not None:
            Rm = (Rm * weights_S[slots, None].float()).to(right_R.dtype).float()
        dW[e] = L.t() @ Rm
        db[e] = Rm.sum(0)
    return dW.to(out_dtype), db.to(out_dtype)


def moe_ffn_reference(x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
                      keep_TK: torch.Tensor | None, w_in: torch.Tensor, b_in: torch.Tensor | None,
                      w_down: torch.Tensor, b_down: torch.Tensor | None, code: int,
                      alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """The whole layer as a loop over experts, differentiable in every tensor argument:
    ``y_TD[t] = sum_k keep[t,k] * weights[t,k] * expert_{indices[t,k]}(x[t])``, in float32."""
    T, D = x_TD.shape
    y = torch.zeros(T, D, dtype=torch.float32, device=x_TD.device) + 0 * x_TD[:0].sum()
    keep = torch.ones_like(indices_TK, dtype=torch.bool) if keep_TK is None else keep_TK
    for e in range(w_in.shape[0]):
        tok, k = torch.where((indices_TK == e) & keep)
        if tok.numel() == 0:
            continue
        h = x_TD[tok].float() @ w_in[e].float()
        if b_in is not None:
            h = h + b_in[e].float()
        o = activation(h, code, alpha, limit) @ w_down[e].float()
        if b_down is not None:
            o = o + b_down[e].float()
        y = y.index_add(0, tok, o * weights_TK[tok, k, None].float())
    return y.to(x_TD.dtype)
