"""Row permutation ops of the sorted dispatcher, each the other's backward (no atomics).

Legend: T tokens, K slots per token, R rows of the expert buffer (slots sorted by expert),
D features.

- :func:`gather_rows` ``x_RD = x_TD[token_R]``; its backward sums each token's rows.
- :func:`sum_rows` ``y_TD[t] = sum_k v_RD[rank_TK[t, k]]`` over valid slots; its backward is the
  gather ``grad_TD[token_R]``.

Both directions are gathers, so results are deterministic; a row of a slot that ``valid_TK`` rules
out (or that lies past the buffer) never reaches a token.
"""

from __future__ import annotations

import torch


def sum_rows_reference(v_RD: torch.Tensor, rank_TK: torch.Tensor,
                       valid_TK: torch.Tensor | None) -> torch.Tensor:
    """``out_TD[t] = sum_k v_RD[rank_TK[t, k]]`` over valid slots (plain torch, differentiable)."""
    T, K = rank_TK.shape
    if v_RD.shape[0] == 0:
        return v_RD.new_zeros(T, v_RD.shape[-1])
    g_TKD = v_RD[rank_TK.clamp(max=v_RD.shape[0] - 1).reshape(-1)].view(T, K, -1)
    if valid_TK is not None:
        g_TKD = g_TKD.masked_fill(~valid_TK.unsqueeze(-1), 0)
    return g_TKD.sum(dim=1)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, token_R, rank_TK, valid_TK):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(rank_TK, valid_TK)
        ctx.has_valid = valid_TK is not None
        return x_TD.index_select(0, token_R)

    @staticmethod
    def backward(ctx, grad_RD):  # type: ignore[no-untyped-def, override]
        rank_TK, valid_TK = ctx.saved_tensors
        grad_TD = sum_rows_reference(grad_RD, rank_TK, valid_TK if ctx.has_valid else None)
        return grad_TD, None, None, None


class _SumRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v_RD, rank_TK, valid_TK, token_R):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(token_R)
        return sum_rows_reference(v_RD, rank_TK, valid_TK)

    @staticmethod
    def backward(ctx, grad_TD):  # type: ignore[no-untyped-def, override]
        (token_R,) = ctx.saved_tensors
        return grad_TD.index_select(0, token_R), None, None, None


def gather_rows(x_TD: torch.Tensor, token_R: torch.Tensor, rank_TK: torch.Tensor,
                valid_TK: torch.Tensor | None) -> torch.Tensor:
    """``x_RD = x_TD[token_R]``, whose backward sums each token's rows by gathering.

    Parameters
    ----------
    x_TD : (T, D) tokens.
    token_R : (R,) int64 token of each row.
    rank_TK : (T, K) int64 row of each slot (the inverse map, used by the backward).
    valid_TK : (T, K) bool slots whose rows exist, or None for all.
    """
    return _GatherRows.apply(x_TD, token_R, rank_TK, valid_TK)


def sum_rows(v_RD: torch.Tensor, rank_TK: torch.Tensor, valid_TK: torch.Tensor | None,
             token_R: torch.Tensor) -> torch.Tensor:
    """``y_TD[t] = sum_k v_RD[rank_TK[t, k]]`` over valid slots; backward gathers ``grad[token_R]``."""
    return _SumRows.apply(v_RD, rank_TK, valid_TK, token_R)
