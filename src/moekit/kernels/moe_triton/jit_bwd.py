"""Triton kernels of the backward: the down projection's backward, and per-expert weight gradients.

Legend as in :mod:`~moekit.kernels.moe_triton.jit_fwd`. The activation is recomputed from the
saved input projection ``h`` (R, H) wherever it is needed; ``a = act(h)`` is never stored.
Everything is a sum in a fixed order inside one program (or a torch sum over a fixed axis), so
gradients are bitwise reproducible: no atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moekit.kernels.moe_triton.jit_act import act_bwd, act_fwd
from moekit.kernels.moe_triton.jit_fwd import tile_coords


@triton.jit
def down_bwd_kernel(g_ptr, w_ptr, bd_ptr, h_ptr, rw_ptr, dh_ptr, part_ptr,
                    slot_ptr, offsets_ptr, tile_expert_ptr, tile_row_ptr,
                    G, E, D, F, K_TOP, NPN,
                    stride_gt, stride_we, stride_wf, stride_wd, stride_be, stride_hr, stride_dr,
                    alpha, limit,
                    ACT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
                    PRECISION: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """For sorted rows r of expert e (token t, slot s), columns f of one block:

    ``du = g[t] @ w_down[e]^T`` (the gather of g is the A load), then in the epilogue
    ``a = act(h[r])`` recomputed, the router-gradient part ``sum_f du * a`` (+ ``g[t] . b_down[e]``
    in column block 0) stored to ``part[s, block]``, and ``dh[r] = act'(h[r]) * weights[s] * du``.
    """
    pid_m, pid_n = tile_coords(G, tl.cdiv(F, BN), GROUP_M)
    e = tl.load(tile_expert_ptr + pid_m)
    if e >= E:
        return
    e64 = e.to(tl.int64)
    row0 = tl.load(tile_row_ptr + pid_m)
    row_end = tl.load(offsets_ptr + e + 1)
    rows = row0 + tl.arange(0, BM)
    rmask = rows < row_end
    rows64 = rows.to(tl.int64)
    slots = tl.load(slot_ptr + rows, mask=rmask, other=0)
    tok = (slots // K_TOP).to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < F
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    bdot = tl.zeros((BM,), dtype=tl.float32)
    g_ptrs = g_ptr + tok[:, None] * stride_gt + rk[None, :]
    b_ptrs = w_ptr + e64 * stride_we + rk[:, None] * stride_wd + cols[None, :] * stride_wf
    bias_ptrs = bd_ptr + e64 * stride_be + rk
    for k0 in range(0, D, BK):
        kmask = rk < D - k0
        gt = tl.load(g_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(gt, b, acc, input_precision=PRECISION)
        if HAS_BIAS:  # noqa: SIM102 - a constexpr test on its own is pruned at compile time
            if pid_n == 0:
                bias = tl.load(bias_ptrs, mask=kmask, other=0.0).to(tl.float32)
                bdot += tl.sum(gt.to(tl.float32) * bias[None, :], axis=1)
        g_ptrs += BK
        b_ptrs += BK * stride_wd
        bias_ptrs += BK
    omask = rmask[:, None] & cmask[None, :]
    h_ptrs = h_ptr + rows64[:, None] * stride_hr + cols[None, :]
    hg = tl.load(h_ptrs, mask=omask, other=0.0)
    if GATED:
        hu = tl.load(h_ptrs + F, mask=omask, other=0.0)
    else:
        hu = hg
    hg = hg.to(tl.float32)
    hu = hu.to(tl.float32)
    # The forward's down projection read a rounded to the operand dtype: so does its gradient.
    a = act_fwd(hg, hu, alpha, limit, ACT).to(h_ptr.dtype.element_ty).to(tl.float32)
    part = tl.sum(tl.where(omask, acc * a, 0.0), axis=1)
    if HAS_BIAS:
        part += tl.where(pid_n == 0, bdot, 0.0)
    tl.store(part_ptr + slots.to(tl.int64) * NPN + pid_n, part, mask=rmask)
    da = acc * tl.load(rw_ptr + slots, mask=rmask, other=0.0)[:, None]
    dg, du = act_bwd(da, hg, hu, alpha, limit, ACT)
    dh_ptrs = dh_ptr + rows64[:, None] * stride_dr + cols[None, :]
    tl.store(dh_ptrs, dg.to(dh_ptr.dtype.element_ty), mask=omask)
    if GATED:
        tl.store(dh_ptrs + F, du.to(dh_ptr.dtype.element_ty), mask=omask)


@triton.jit
def wgrad_kernel(l_ptr, r_ptr, rw_ptr, out_ptr, bias_ptr, slot_ptr, offsets_ptr,
                 M, N, F_UP, K_TOP,
                 stride_lr, stride_rr, stride_oe, stride_om, stride_be,
                 alpha, limit,
                 LEFT_GATHER: tl.constexpr, LEFT_ACT: tl.constexpr, GATED: tl.constexpr,
                 RIGHT_GATHER: tl.constexpr, RIGHT_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                 PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``out[e] = L_e^T @ R_e`` over the rows of expert e (a grouped X^T Y), and with
    ``HAS_BIAS`` ``bias[e] = sum of R_e's rows``. One program per (expert, M block, N block)
    walks that expert's rows in steps of BK.

    L's row for sorted row r (slot s, token t) is ``l[t]`` (``LEFT_GATHER``) or ``l[r]``; with
    ``LEFT_ACT >= 0`` it is ``act(l[r, :F_UP], l[r, F_UP:])``, the activation recomputed from h.
    R's row is ``r[t]`` (``RIGHT_GATHER``) or ``r[r]``, times ``weights[s]`` (``RIGHT_SCALE``).
    Uses: ``dW_in = x^T dh`` (+ ``db_in``) and ``dW_down = act(h)^T (weights * g)`` (+ ``db_down``).
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    e = pid // (num_m * num_n)
    pid_m = (pid % (num_m * num_n)) // num_n
    pid_n = pid % num_n
    start = tl.load(offsets_ptr + e)
    end = tl.load(offsets_ptr + e + 1)
    ms = pid_m * BM + tl.arange(0, BM)
    ns = pid_n * BN + tl.arange(0, BN)
    mmask = ms < M
    nmask = ns < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    bacc = tl.zeros((BN,), dtype=tl.float32)
    for r0 in range(start, end, BK):
        rs = r0 + tl.arange(0, BK)
        rmask = rs < end
        slots = tl.load(slot_ptr + rs, mask=rmask, other=0)
        tok = (slots // K_TOP).to(tl.int64)
        if LEFT_GATHER:
            lrow = tok
        else:
            lrow = rs.to(tl.int64)
        if RIGHT_GATHER:
            rrow = tok
        else:
            rrow = rs.to(tl.int64)
        lmask = mmask[:, None] & rmask[None, :]
        l_ptrs = l_ptr + lrow[None, :] * stride_lr + ms[:, None]
        lt = tl.load(l_ptrs, mask=lmask, other=0.0)
        if LEFT_ACT >= 0:
            if GATED:
                lu = tl.load(l_ptrs + F_UP, mask=lmask, other=0.0)
            else:
                lu = lt
            lt = act_fwd(lt.to(tl.float32), lu.to(tl.float32), alpha, limit, LEFT_ACT).to(l_ptr.dtype.element_ty)
        rt = tl.load(r_ptr + rrow[:, None] * stride_rr + ns[None, :], mask=rmask[:, None] & nmask[None, :],
                     other=0.0)
        if RIGHT_SCALE:
            scale = tl.load(rw_ptr + slots, mask=rmask, other=0.0)
            rt = (rt.to(tl.float32) * scale[:, None]).to(r_ptr.dtype.element_ty)
        acc = tl.dot(lt, rt, acc, input_precision=PRECISION)
        if HAS_BIAS:  # noqa: SIM102 - a constexpr test on its own is pruned at compile time
            if pid_m == 0:
                bacc += tl.sum(rt.to(tl.float32), axis=0)
    e64 = e.to(tl.int64)
    tl.store(out_ptr + e64 * stride_oe + ms[:, None] * stride_om + ns[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])
    if HAS_BIAS:  # noqa: SIM102 - a constexpr test on its own is pruned at compile time
        if pid_m == 0:
            tl.store(bias_ptr + e64 * stride_be + ns, bacc.to(bias_ptr.dtype.element_ty), mask=nmask)
