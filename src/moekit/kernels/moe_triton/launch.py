"""Launchers: torch tensors in, torch tensors out, one Triton kernel each.

Legend: T tokens, K slots per token, S = T*K slots (slot s = t*K + k), R sorted rows (R = S),
G tiles, D model dim, F expert hidden dim, H = 2F ``[gate | up]`` (gated) or F, N output columns.

Each launcher has a torch twin of the same name and arguments in
:mod:`moekit.kernels.moe_triton.reference` (the tests compare them). Rows and slots that belong to
no expert (dropped slots) are left unwritten by the GEMMs; the combine and the router gradient
never read them. Importing this module imports Triton, and with ``TRITON_INTERPRET=1`` set at
that moment the kernels run on the CPU under Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton

from moekit.kernels.moe_triton.config import ACT_CODES, GATED_CODES, TileConfig, interpreting
from moekit.kernels.moe_triton.jit_bwd import down_bwd_kernel, wgrad_kernel
from moekit.kernels.moe_triton.jit_fwd import combine_kernel, gate_up_kernel, rows_gemm_kernel
from moekit.kernels.moe_triton.routing import RoutingMeta

#: Whether these kernels were built for Triton's interpreter (decided when this module loaded).
INTERPRETED: bool = interpreting()


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for float32 operands: TF32 only where torch allows it too."""
    if torch.version.hip is not None:
        return "ieee"
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def gated_block_n(tiles: TileConfig) -> int:
    """Columns per program of the kernels that hold gate and up tiles side by side: half of
    ``block_n`` (from 64 up), so that their registers match a one-accumulator GEMM's."""
    return tiles.block_n // 2 if tiles.block_n >= 64 else tiles.block_n


def wgrad_block_k(tiles: TileConfig) -> int:
    """Rows per step of the weight-gradient kernel: half of ``block_k`` (from 64 up), since each
    step holds two operand tiles in float32 (and, for ``dW_down``, the recomputed activation)."""
    return tiles.block_k // 2 if tiles.block_k >= 64 else tiles.block_k


def _launch_options(tiles: TileConfig) -> dict[str, int]:
    return {} if INTERPRETED else {"num_warps": tiles.num_warps, "num_stages": tiles.num_stages}


def gate_up(x_TD: torch.Tensor, meta: RoutingMeta, K: int, w_in: torch.Tensor, b_in: torch.Tensor | None,
            code: int, alpha: float, limit: float, store_h: bool, tiles: TileConfig,
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``a_RF = act(x[token_R] @ w_in[e] + b_in[e])`` and, with ``store_h``, ``h_RH`` (the
    projection before the activation, kept for the backward)."""
    S, H = meta.slot_R.shape[0], w_in.shape[-1]
    gated = code in GATED_CODES
    Fh = H // 2 if gated else H
    a = torch.empty(S, Fh, dtype=x_TD.dtype, device=x_TD.device)
    h = torch.empty(S, H, dtype=x_TD.dtype, device=x_TD.device) if store_h else None
    G = meta.tile_expert_G.shape[0]
    if G == 0 or Fh == 0:
        return a, h
    bm, bk = tiles.block_m, tiles.block_k
    bn = gated_block_n(tiles) if gated else tiles.block_n
    hh = a if h is None else h
    bias = w_in if b_in is None else b_in
    gate_up_kernel[(G * triton.cdiv(Fh, bn),)](
        x_TD, w_in, bias, hh, a, meta.slot_R, meta.offsets_E1, meta.tile_expert_G, meta.tile_row_G,
        G, w_in.shape[0], x_TD.shape[1], Fh, K,
        x_TD.stride(0), w_in.stride(0), w_in.stride(1), w_in.stride(2), bias.stride(0), hh.stride(0),
        a.stride(0), alpha, limit,
        ACT=code, GATED=gated, HAS_BIAS=b_in is not None, STORE_H=store_h,
        PRECISION=dot_precision(x_TD.dtype), BM=bm, BN=bn, BK=bk, GROUP_M=tiles.group_m,
        **_launch_options(tiles))
    return a, h


def rows_gemm(a_RN: torch.Tensor, meta: RoutingMeta, K: int, w_EKN: torch.Tensor, b_EN: torch.Tensor | None,
              weights_S: torch.Tensor | None, tiles: TileConfig) -> torch.Tensor:
    """``out_SN[slot_R[r]] = (a[r] @ w[e] + b[e]) * weights[slot_R[r]]``: rows back in slot order.

    ``w_EKN`` may be a strided view (``w_in.transpose(1, 2)`` for the input gradient)."""
    S, N = meta.slot_R.shape[0], w_EKN.shape[-1]
    out = torch.empty(S, N, dtype=a_RN.dtype, device=a_RN.device)
    G = meta.tile_expert_G.shape[0]
    if G == 0 or N == 0:
        return out
    bias = w_EKN if b_EN is None else b_EN
    rw = a_RN if weights_S is None else weights_S
    bn = tiles.block_n
    rows_gemm_kernel[(G * triton.cdiv(N, bn),)](
        a_RN, w_EKN, bias, rw, out, meta.slot_R, meta.offsets_E1, meta.tile_expert_G, meta.tile_row_G,
        G, w_EKN.shape[0], a_RN.shape[1], N,
        a_RN.stride(0), w_EKN.stride(0), w_EKN.stride(1), w_EKN.stride(2), bias.stride(0), out.stride(0),
        HAS_BIAS=b_EN is not None, HAS_WEIGHT=weights_S is not None, PRECISION=dot_precision(a_RN.dtype),
        BM=tiles.block_m, BN=bn, BK=tiles.block_k, GROUP_M=tiles.group_m, **_launch_options(tiles))
    return out


def combine(y_SD: torch.Tensor, keep_S: torch.Tensor | None, T: int, K: int,
            out_dtype: torch.dtype) -> torch.Tensor:
    """``y_TD[t] = sum_k y_SD[t*K + k]`` over kept slots, in float32 and in order of k."""
    D = y_SD.shape[1]
    out = torch.empty(T, D, dtype=out_dtype, device=y_SD.device)
    if T == 0 or D == 0:
        return out
    bt, bn = (32, 32) if INTERPRETED else (8, 256)
    keep = y_SD if keep_S is None else keep_S.view(torch.uint8)
    combine_kernel[(triton.cdiv(T, bt), triton.cdiv(D, bn))](
        y_SD, keep, out, T, D, K, y_SD.stride(0), out.stride(0),
        HAS_KEEP=keep_S is not None, BT=bt, BN=bn)
    return out


def down_backward(g_TD: torch.Tensor, meta: RoutingMeta, K: int, w_down: torch.Tensor, b_down: torch.Tensor | None,
                  h_RH: torch.Tensor, weights_S: torch.Tensor, code: int, alpha: float, limit: float,
                  tiles: TileConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``dh_RH`` and the router gradient ``dweights_S`` (float32; zero for slots of no expert)."""
    S, H = h_RH.shape
    Fh, D = w_down.shape[1], w_down.shape[2]
    dh = torch.empty(S, H, dtype=h_RH.dtype, device=h_RH.device)
    bn = gated_block_n(tiles) if code in GATED_CODES else tiles.block_n
    npn = triton.cdiv(Fh, bn)
    part = torch.zeros(S, max(npn, 1), dtype=torch.float32, device=g_TD.device)
    G = meta.tile_expert_G.shape[0]
    if G > 0 and Fh > 0:
        bias = w_down if b_down is None else b_down
        down_bwd_kernel[(G * npn,)](
            g_TD, w_down, bias, h_RH, weights_S, dh, part,
            meta.slot_R, meta.offsets_E1, meta.tile_expert_G, meta.tile_row_G,
            G, w_down.shape[0], D, Fh, K, npn,
            g_TD.stride(0), w_down.stride(0), w_down.stride(1), w_down.stride(2), bias.stride(0),
            h_RH.stride(0), dh.stride(0), alpha, limit,
            ACT=code, GATED=code in GATED_CODES, HAS_BIAS=b_down is not None,
            PRECISION=dot_precision(g_TD.dtype), BM=tiles.block_m, BN=bn, BK=tiles.block_k,
            GROUP_M=tiles.group_m, **_launch_options(tiles))
    return dh, part.sum(1)


def weight_grad(left_R: torch.Tensor, right_R: torch.Tensor, meta: RoutingMeta, K: int, E: int,
                left_gather: bool, right_gather: bool, weights_S: torch.Tensor | None,
                act: tuple[int, float, float] | None, out_dtype: torch.dtype, tiles: TileConfig,
                with_bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``dW[e] = L_e^T R_e`` (E, M, N) and, with ``with_bias``, ``db[e]`` = column sums of ``R_e``
    (see :func:`moekit.kernels.moe_triton.reference.weight_grad` for L and R)."""
    code, alpha, limit = act if act is not None else (-1, 0.0, 0.0)
    gated = code in GATED_CODES
    M = left_R.shape[1] // 2 if gated else left_R.shape[1]
    N = right_R.shape[1]
    dW = torch.empty(E, M, N, dtype=out_dtype, device=left_R.device)
    db = torch.empty(E, N, dtype=out_dtype, device=left_R.device) if with_bias else None
    if E * M * N == 0:
        return dW, db
    bm, bn = tiles.block_m, tiles.block_n
    rw = left_R if weights_S is None else weights_S
    bias = dW if db is None else db
    wgrad_kernel[(E * triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        left_R, right_R, rw, dW, bias, meta.slot_R, meta.offsets_E1,
        M, N, M, K, left_R.stride(0), right_R.stride(0), dW.stride(0), dW.stride(1), bias.stride(0),
        alpha, limit,
        LEFT_GATHER=left_gather, LEFT_ACT=code, GATED=gated, RIGHT_GATHER=right_gather,
        RIGHT_SCALE=weights_S is not None, HAS_BIAS=with_bias, PRECISION=dot_precision(left_R.dtype),
        BM=bm, BN=bn, BK=wgrad_block_k(tiles), **_launch_options(tiles))
    return dW, db


__all__ = ["ACT_CODES", "INTERPRETED", "combine", "down_backward", "dot_precision", "gate_up",
           "gated_block_n", "rows_gemm", "weight_grad", "wgrad_block_k"]
