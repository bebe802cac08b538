"""Auxiliary losses of sparse MoE layers, as pure functions.

Legend: T tokens, E experts, K experts per token.

The layers call these and keep the weighted sum as ``layer.aux_loss``; nothing is collected in
globals. Every function takes float tensors and returns a float32 scalar.
"""

from __future__ import annotations

import torch


def switch_load_balancing_loss(probs_TE: torch.Tensor, indices_TK: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load-balancing loss ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of tokens that chose expert ``e`` among their top-k (so the ``f_e`` sum
    to ``K``, the convention of Mixtral and of transformers' ``load_balancing_loss_func``; for
    ``K = 1`` it is the Switch paper's loss) and ``P_e`` the mean router probability of ``e``.
    A perfectly balanced router gives ``K``.

    Parameters
    ----------
    probs_TE : (T, E) router probabilities (each row sums to 1).
    indices_TK : (T, K) experts chosen per token; entries outside ``[0, E)`` are ignored.

    Examples
    --------
    >>> import torch
    >>> probs = torch.full((4, 2), 0.5)
    >>> float(switch_load_balancing_loss(probs, torch.tensor([[0], [1], [0], [1]])))
    1.0
    """
    num_tokens, num_experts = probs_TE.shape
    if num_tokens == 0:
        return probs_TE.new_zeros((), dtype=torch.float32)
    valid_TK = (indices_TK >= 0) & (indices_TK < num_experts)
    counts_E = torch.zeros(num_experts, dtype=torch.float32, device=probs_TE.device)
    counts_E.scatter_add_(0, indices_TK.clamp(0, num_experts - 1).reshape(-1),
                          valid_TK.reshape(-1).to(torch.float32))
    f_E = counts_E / num_tokens
    p_E = probs_TE.float().mean(dim=0)
    return num_experts * (f_E * p_E).sum()


def router_z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_t logsumexp(logits_t)^2``; keeps router logits small."""
    if logits_TE.shape[0] == 0:
        return logits_TE.new_zeros((), dtype=torch.float32)
    return torch.logsumexp(logits_TE.float(), dim=-1).pow(2).mean()


def cv_squared(values_E: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``var / mean^2`` (Shazeer et al. 2017); 0 for one value."""
    values_E = values_E.float()
    if values_E.numel() <= 1:
        return values_E.new_zeros(())
    return values_E.var(unbiased=True) / (values_E.mean().pow(2) + eps)


def importance_load_loss(gates_TE: torch.Tensor, load_E: torch.Tensor) -> torch.Tensor:
    """Noisy top-k balancing (Shazeer et al. 2017): ``CV²(importance) + CV²(load)``.

    Parameters
    ----------
    gates_TE : (T, E) combine weights placed in a dense matrix (zero where not chosen).
    load_E : (E,) expected number of tokens per expert (a smooth estimate; see the router).
    """
    importance_E = gates_TE.float().sum(dim=0)
    return cv_squared(importance_E) + cv_squared(load_E)
