"""Triton kernels over the expert-sorted rows: the input projection, the row GEMM, the combine.

Legend: T tokens, K slots per token (``K_TOP`` in kernels), S = T*K slots, R sorted rows, G tiles,
D model dim, F expert hidden dim, H = 2F ``[gate | up]`` (gated) or F, N output columns.

Every GEMM program owns one (tile, column block): a tile is ``BM`` rows of one expert (see
:mod:`~moekit.kernels.moe_triton.routing`), so its weight operand is that expert's matrix. Tiles
past the last real one return at once. Programs walk tiles in groups of ``GROUP_M`` along the
columns so that neighbouring programs share weight blocks in L2. Offsets into tensors are
computed in int64 where a row index meets a stride (T x D overflows int32 at real sizes); offsets
inside one expert's weight matrix stay int32 (fewer registers), which holds while a matrix has
fewer than 2**31 elements.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moekit.kernels.moe_triton.jit_act import act_fwd


@triton.jit
def tile_coords(G, num_pid_n, GROUP_M: tl.constexpr):
    """(tile, column block) of this program, tiles grouped by GROUP_M along the columns."""
    pid = tl.program_id(0)
    in_group = GROUP_M * num_pid_n
    first = (pid // in_group) * GROUP_M
    size = tl.minimum(G - first, GROUP_M)
    return first + (pid % in_group) % size, (pid % in_group) // size


@triton.jit
def gate_up_kernel(x_ptr, w_ptr, b_ptr, h_ptr, a_ptr,
                   slot_ptr, offsets_ptr, tile_expert_ptr, tile_row_ptr,
                   G, E, D, F, K_TOP,
                   stride_xt, stride_we, stride_wd, stride_wh, stride_be, stride_hr, stride_ar,
                   alpha, limit,
                   ACT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
                   STORE_H: tl.constexpr, PRECISION: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """``h = x[slot // K] @ w_in[e] (+ b_in[e])``, ``a = act(h)``: the gather is the A load, gate
    and up share that load (two dots), the activation is the epilogue. Stores ``a`` (R, F) and,
    for the backward, ``h`` (R, H)."""
    pid_m, pid_n = tile_coords(G, tl.cdiv(F, BN), GROUP_M)
    e = tl.load(tile_expert_ptr + pid_m)
    if e >= E:
        return
    e64 = e.to(tl.int64)
    row0 = tl.load(tile_row_ptr + pid_m)
    row_end = tl.load(offsets_ptr + e + 1)
    rows = row0 + tl.arange(0, BM)
    rmask = rows < row_end
    tok = (tl.load(slot_ptr + rows, mask=rmask, other=0) // K_TOP).to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < F
    rk = tl.arange(0, BK)
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    # Pointers built once and stepped along k (int64 only where row x stride can overflow).
    a_ptrs = x_ptr + tok[:, None] * stride_xt + rk[None, :]
    bg_ptrs = w_ptr + e64 * stride_we + rk[:, None] * stride_wd + cols[None, :] * stride_wh
    for k0 in range(0, D, BK):
        kmask = rk < D - k0
        a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        bmask = kmask[:, None] & cmask[None, :]
        bg = tl.load(bg_ptrs, mask=bmask, other=0.0)
        acc_g = tl.dot(a, bg, acc_g, input_precision=PRECISION)
        if GATED:
            bu = tl.load(bg_ptrs + F * stride_wh, mask=bmask, other=0.0)
            acc_u = tl.dot(a, bu, acc_u, input_precision=PRECISION)
        a_ptrs += BK
        bg_ptrs += BK * stride_wd
    if HAS_BIAS:
        acc_g += tl.load(b_ptr + e64 * stride_be + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_u += tl.load(b_ptr + e64 * stride_be + F + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    # The activation reads h as stored (rounded to the operand dtype), as the backward will.
    hg = acc_g.to(a_ptr.dtype.element_ty)
    hu = acc_u.to(a_ptr.dtype.element_ty)
    omask = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    if STORE_H:
        h_ptrs = h_ptr + rows64[:, None] * stride_hr + cols[None, :]
        tl.store(h_ptrs, hg, mask=omask)
        if GATED:
            tl.store(h_ptrs + F, hu, mask=omask)
    out = act_fwd(hg.to(tl.float32), hu.to(tl.float32), alpha, limit, ACT)
    tl.store(a_ptr + rows64[:, None] * stride_ar + cols[None, :], out.to(a_ptr.dtype.element_ty), mask=omask)


@triton.jit
def rows_gemm_kernel(a_ptr, w_ptr, b_ptr, rw_ptr, out_ptr,
                     slot_ptr, offsets_ptr, tile_expert_ptr, tile_row_ptr,
                     G, E, KD, N,
                     stride_ar, stride_we, stride_wk, stride_wn, stride_be, stride_os,
                     HAS_BIAS: tl.constexpr, HAS_WEIGHT: tl.constexpr, PRECISION: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """``out[slot] = (a[r] @ w[e] (+ b[e])) (* weights[slot])`` for sorted rows r of expert e.

    The store scatters each row to its slot ``t*K + k`` (a permutation: no two programs write a
    row), so the combine reads each token's K rows contiguously. Forward: the down projection with
    the routing weight in the epilogue. Backward: ``dx`` per slot (``w`` = ``w_in`` transposed by
    strides)."""
    pid_m, pid_n = tile_coords(G, tl.cdiv(N, BN), GROUP_M)
    e = tl.load(tile_expert_ptr + pid_m)
    if e >= E:
        return
    e64 = e.to(tl.int64)
    row0 = tl.load(tile_row_ptr + pid_m)
    row_end = tl.load(offsets_ptr + e + 1)
    rows = row0 + tl.arange(0, BM)
    rmask = rows < row_end
    rows64 = rows.to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < N
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    a_ptrs = a_ptr + rows64[:, None] * stride_ar + rk[None, :]
    b_ptrs = w_ptr + e64 * stride_we + rk[:, None] * stride_wk + cols[None, :] * stride_wn
    for k0 in range(0, KD, BK):
        kmask = rk < KD - k0
        a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BK
        b_ptrs += BK * stride_wk
    if HAS_BIAS:
        acc += tl.load(b_ptr + e64 * stride_be + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    slots = tl.load(slot_ptr + rows, mask=rmask, other=0)
    if HAS_WEIGHT:
        acc = acc * tl.load(rw_ptr + slots, mask=rmask, other=0.0)[:, None]
    tl.store(out_ptr + slots.to(tl.int64)[:, None] * stride_os + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def combine_kernel(y_ptr, keep_ptr, out_ptr, T, N, K_TOP, stride_ys, stride_ot,
                   HAS_KEEP: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr):
    """``out[t] = sum_k y[t*K + k]`` over kept slots, in float32, k in order: deterministic, no
    atomics. Rows of dropped slots are never read (they hold whatever the buffer held)."""
    ts = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    tmask = ts < T
    cmask = cols < N
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for k in range(0, K_TOP):
        s = ts.to(tl.int64) * K_TOP + k
        m = tmask
        if HAS_KEEP:
            m = m & (tl.load(keep_ptr + s, mask=tmask, other=0) != 0)
        v = tl.load(y_ptr + s[:, None] * stride_ys + cols[None, :], mask=m[:, None] & cmask[None, :], other=0.0)
        acc += v.to(tl.float32)
    tl.store(out_ptr + ts.to(tl.int64)[:, None] * stride_ot + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=tmask[:, None] & cmask[None, :])
