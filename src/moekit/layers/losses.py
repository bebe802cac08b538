"""Auxiliary losses of sparse MoE layers, as pure functions.

Legend: T tokens, E experts, K experts per token.

The layers call these and keep the weighted sum as ``layer.aux_loss``; nothing is collected in
globals. Every function takes float tensors and returns a float32 scalar.

Global-batch losses: each loss is a function of sums over tokens (counts, summed probabilities,
the number of tokens). ``reduce_sums`` (optional) receives those sums packed in one 1-D float32
tensor and returns them summed over every process whose tokens make up the batch; the loss is
then computed from the reduced sums, so it equals the loss of the whole batch on every process.
In a single process it is None (the identity). :mod:`moekit.parallel` passes an all-reduce
whose backward also sums (see its gradient convention); layers never import torch.distributed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Sums a 1-D tensor of per-process token sums over the processes of a batch (with gradients).
SumReducer = Callable[[torch.Tensor], torch.Tensor]


def switch_load_balancing_loss(probs_TE: torch.Tensor, indices_TK: torch.Tensor,
                               reduce_sums: SumReducer | None = None) -> torch.Tensor:
    """Switch Transformer load-balancing loss ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of tokens that chose expert ``e`` among their top-k (so the ``f_e`` sum
    to ``K``, the convention of Mixtral and of transformers' ``load_balancing_loss_func``; for
    ``K = 1`` it is the Switch paper's loss) and ``P_e`` the mean router probability of ``e``.
    A perfectly balanced router gives ``K``.

    Parameters
    ----------
    probs_TE : (T, E) router probabilities (each row sums to 1).
    indices_TK : (T, K) experts chosen per token; entries outside ``[0, E)`` are ignored.
    reduce_sums : optional :data:`SumReducer` (module docstring): ``f_e`` and ``P_e`` are then
        those of the whole batch across processes.

    Examples
    --------
    >>> import torch
    >>> probs = torch.full((4, 2), 0.5)
    >>> float(switch_load_balancing_loss(probs, torch.tensor([[0], [1], [0], [1]])))
    1.0
    """
    num_tokens, num_experts = probs_TE.shape
    valid_TK = (indices_TK >= 0) & (indices_TK < num_experts)
    counts_E = torch.zeros(num_experts, dtype=torch.float32, device=probs_TE.device)
    counts_E.scatter_add_(0, indices_TK.clamp(0, num_experts - 1).reshape(-1),
                          valid_TK.reshape(-1).to(torch.float32))
    if reduce_sums is None:
        if num_tokens == 0:
            return probs_TE.new_zeros((), dtype=torch.float32)
        f_E, p_E = counts_E / num_tokens, probs_TE.float().mean(dim=0)
    else:
        p_sum_E = probs_TE.float().sum(dim=0)
        sums = reduce_sums(torch.cat([counts_E, p_sum_E, counts_E.new_tensor([num_tokens])]))
        n = sums[-1].clamp_min(1)
        f_E, p_E = sums[:num_experts] / n, sums[num_experts:-1] / n
    return num_experts * (f_E * p_E).sum()


def router_z_loss(logits_TE: torch.Tensor, reduce_sums: SumReducer | None = None) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_t logsumexp(logits_t)^2``; keeps router logits small.

    With ``reduce_sums`` the mean runs over the tokens of every process (module docstring).
    """
    if reduce_sums is None:
        if logits_TE.shape[0] == 0:
            return logits_TE.new_zeros((), dtype=torch.float32)
        return torch.logsumexp(logits_TE.float(), dim=-1).pow(2).mean()
    z_sum = torch.logsumexp(logits_TE.float(), dim=-1).pow(2).sum()
    sums = reduce_sums(torch.stack([z_sum, z_sum.new_tensor(float(logits_TE.shape[0]))]))
    return sums[0] / sums[1].clamp_min(1)


def cv_squared(values_E: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``var / mean^2`` (Shazeer et al. 2017); 0 for one value."""
    values_E = values_E.float()
    if values_E.numel() <= 1:
        return values_E.new_zeros(())
    return values_E.var(unbiased=True) / (values_E.mean().pow(2) + eps)


def importance_load_loss(gates_TE: torch.Tensor, load_E: torch.Tensor,
                         reduce_sums: SumReducer | None = None) -> torch.Tensor:
    """Noisy top-k balancing (Shazeer et al. 2017): ``CV²(importance) + CV²(load)``.

    Parameters
    ----------
    gates_TE : (T, E) combine weights placed in a dense matrix (zero where not chosen).
    load_E : (E,) expected number of tokens per expert (a smooth estimate; see the router).
    reduce_sums : optional :data:`SumReducer`: importance and load are then summed over every
        process before the CV² (both are sums over tokens).
    """
    importance_E = gates_TE.float().sum(dim=0)
    load_E = load_E.float()
    if reduce_sums is not None:
        E = importance_E.shape[0]
        sums = reduce_sums(torch.cat([importance_E, load_E]))
        importance_E, load_E = sums[:E], sums[E:]
    return cv_squared(importance_E) + cv_squared(load_E)
