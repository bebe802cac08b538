"""Soft MoE (Puigcerver et al. 2023): experts process *slots*, convex mixes of a sequence's tokens.

Legend: B batch, N tokens per sequence, D model dim, E experts, P slots per expert (E*P slots).

``logits_BNS = norm(x) · norm(phi)`` (scaled); dispatch weights are a softmax over the tokens of
each slot, combine weights a softmax over the slots of each token. Every token influences every
slot, so there is no dropping and no balancing loss, but tokens of one sequence see each other:
Soft MoE is for encoders (ViT), not causal decoders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers._checks import (
    check_choice,
    check_dtype_matches,
    check_input,
    check_positive_int,
    router_dtype,
)
from moekit.layers.experts import ACTIVATIONS, Activation, GroupedExperts


@dataclass(frozen=True, kw_only=True)
class SoftMoEConfig:
    """Everything a :class:`SoftMoE` is built from (it has no router, capacity or aux loss).

    Parameters
    ----------
    d_model, d_ff, num_experts : sizes D, F, E.
    slots_per_expert : P, slots each expert processes per sequence.
    activation : expert activation, as in :class:`~moekit.layers.GroupedExperts`.
    normalize : l2-normalise tokens and slot embeddings with a learned scale.

    Examples
    --------
    >>> from moekit.layers import SoftMoE, SoftMoEConfig
    >>> cfg = SoftMoEConfig(d_model=16, d_ff=32, num_experts=4, slots_per_expert=2)
    >>> SoftMoE.from_config(cfg).config == cfg
    True
    """

    d_model: int
    d_ff: int
    num_experts: int
    slots_per_expert: int = 1
    activation: Activation = "gelu"
    normalize: bool = True

    def __post_init__(self) -> None:
        for name in ("d_model", "d_ff", "num_experts", "slots_per_expert"):
            check_positive_int(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)


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
        self.config = SoftMoEConfig(d_model=d_model, d_ff=d_ff, num_experts=num_experts,
                                    slots_per_expert=slots_per_expert, activation=activation,
                                    normalize=normalize)
        self.d_model, self.num_experts = d_model, num_experts
        self.slots_per_expert = slots_per_expert
        self.phi = nn.Parameter(torch.randn(d_model, num_experts * slots_per_expert) * d_model**-0.5)
        self.scale = nn.Parameter(torch.ones(())) if normalize else None
        self.experts = GroupedExperts(d_model, d_ff, num_experts, activation)
        self.aux_loss: torch.Tensor | None = None  # Soft MoE needs no balancing loss

    @classmethod
    def from_config(cls, config: SoftMoEConfig) -> SoftMoE:
        """The layer described by ``config`` (fresh weights); ``layer.config == config``."""
        if not isinstance(config, SoftMoEConfig):
            raise TypeError(f"config is a {type(config).__name__}; pass a "
                            "moekit.layers.SoftMoEConfig")
        return cls(config.d_model, config.d_ff, config.num_experts,
                   slots_per_expert=config.slots_per_expert, activation=config.activation,
                   normalize=config.normalize)

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
