"""Soft MoE (Puigcerver et al. 2023): experts process *slots*, convex mixes of a sequence's tokens.

Legend: B batch, N tokens per sequence, D model dim, E experts, P slots per expert (E*P slots).

``logits_BNS = norm(x) · norm(phi)`` (scaled); dispatch weights are a softmax over the tokens of
each slot, combine weights a softmax over the slots of each token. Every token influences every
slot, so there is no dropping and no balancing loss, but tokens of one sequence see each other:
Soft MoE is for encoders (ViT), not causal decoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers._checks import check_dtype_matches, check_input, check_positive_int, router_dtype
from moekit.layers.experts import Activation, GroupedExperts


class SoftMoE(nn.Module):
    """Soft Mixture-of-Experts layer: (B, N, D) -> (B, N, D).

    Parameters
    ----------
    d_model, d_ff, num_experts : sizes D, F, E.
    slots_per_expert : P, slots each expert processes per sequence.
    activation : expert activation, as in :class:`~moekit.layers.GroupedExperts`.
    normalize : l2-normalise tokens and slot embeddings with a learned scale (the paper's
        recipe for large D); off, the logits are plain ``x · phi``.

    Examples
    --------
    >>> import torch
    >>> from moekit.layers import SoftMoE
    >>> layer = SoftMoE(d_model=16, d_ff=32, num_experts=4, slots_per_expert=2)
    >>> layer(torch.randn(3, 10, 16)).shape
    torch.Size([3, 10, 16])
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, slots_per_expert: int = 1,
                 activation: Activation = "gelu", normalize: bool = True) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.slots_per_expert = check_positive_int("slots_per_expert", slots_per_expert)
        self.phi = nn.Parameter(torch.randn(d_model, num_experts * slots_per_expert) * d_model**-0.5)
        self.scale = nn.Parameter(torch.ones(())) if normalize else None
        self.experts = GroupedExperts(d_model, d_ff, num_experts, activation)
        self.aux_loss: torch.Tensor | None = None  # Soft MoE needs no balancing loss

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        check_input(x_BND, self.d_model, "SoftMoE")
        check_dtype_matches(x_BND, self.phi, "SoftMoE")
        if x_BND.dim() != 3:
            raise ValueError(
                f"SoftMoE input x has shape {tuple(x_BND.shape)}; it must be (batch, tokens, "
                f"d_model={self.d_model}): Soft MoE mixes the tokens of a sequence"
            )
        B, N, D = x_BND.shape
        E, P = self.num_experts, self.slots_per_expert
        phi_DS: torch.Tensor = self.phi
        dt = router_dtype(x_BND.dtype)
        xf = x_BND.to(dt)
        if self.scale is not None:
            xf = F.normalize(xf, dim=-1)
            phi_DS = self.scale * F.normalize(phi_DS.to(dt), dim=0)
        logits_BNS = xf @ phi_DS.to(dt)
        dispatch_BNS = logits_BNS.softmax(dim=1)
        combine_BNS = logits_BNS.softmax(dim=2)
        slots_BSD = torch.einsum("bns,bnd->bsd", dispatch_BNS, x_BND.to(dt)).to(x_BND.dtype)
        x_ERD = slots_BSD.view(B, E, P, D).permute(1, 0, 2, 3).reshape(E, B * P, D)
        out_ERD = self.experts.forward_batched(x_ERD)
        out_BSD = out_ERD.view(E, B, P, D).permute(1, 0, 2, 3).reshape(B, E * P, D)
        y_BND = torch.einsum("bns,bsd->bnd", combine_BNS, out_BSD.to(dt))
        return y_BND.to(x_BND.dtype)
