"""Experts: the feed-forward networks a router chooses between.

Legend: R rows (token-slots sorted by expert), D model dim, F expert hidden dim, E experts.

- :class:`GroupedExperts` stacks E FFNs' weights, ``w_up_EDF`` etc., so all experts run as one
  grouped matmul over rows sorted by expert.
- :class:`ModuleExperts` wraps any list of modules (architectures may differ); it runs expert by
  expert (the ``loop`` backend).
- :class:`FeedForward` is one dense FFN (shared experts, dense baselines).

An expert with a gated activation (``swiglu``, ``geglu``) computes
``down(act(x @ w_gate) * (x @ w_up))``; the others ``down(act(x @ w_up))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers._checks import check_choice, check_positive_int

Activation = Literal["swiglu", "geglu", "gelu", "relu", "silu"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
GATED: frozenset[str] = frozenset({"swiglu", "geglu"})

_ACT_FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "swiglu": F.silu,
    "geglu": F.gelu,
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    check_choice("activation", name, ACTIVATIONS)
    return _ACT_FN[name]


class GroupedExperts(nn.Module):
    """E feed-forward experts with stacked weights.

    Parameters
    ----------
    d_model, d_ff, num_experts : sizes D, F, E.
    activation : one of ``"swiglu"``, ``"geglu"``, ``"gelu"``, ``"relu"``, ``"silu"``.
    bias : add per-expert biases ``b_gate``, ``b_up`` (E, F) and ``b_down`` (E, D).

    Attributes
    ----------
    w_gate : (E, D, F), gated activations only.  w_up : (E, D, F).  w_down : (E, F, D).
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, activation: Activation = "swiglu",
                 bias: bool = False) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.d_ff = check_positive_int("d_ff", d_ff)
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.activation = activation
        self.act = activation_fn(activation)
        self.gated = activation in GATED
        E, D, Fh = num_experts, d_model, d_ff
        self.w_up = nn.Parameter(torch.randn(E, D, Fh) * D**-0.5)
        self.w_gate = nn.Parameter(torch.randn(E, D, Fh) * D**-0.5) if self.gated else None
        self.w_down = nn.Parameter(torch.randn(E, Fh, D) * Fh**-0.5)
        self.b_up = nn.Parameter(torch.zeros(E, Fh)) if bias else None
        self.b_gate = nn.Parameter(torch.zeros(E, Fh)) if bias and self.gated else None
        self.b_down = nn.Parameter(torch.zeros(E, D)) if bias else None

    def forward_expert(self, e: int, x_RD: torch.Tensor) -> torch.Tensor:
        """Run expert ``e`` on rows ``x_RD`` (R, D) -> (R, D); the readable per-expert path."""
        up_RF = x_RD @ self.w_up[e]
        if self.b_up is not None:
            up_RF = up_RF + self.b_up[e]
        if self.w_gate is not None:
            gate_RF = x_RD @ self.w_gate[e]
            if self.b_gate is not None:
                gate_RF = gate_RF + self.b_gate[e]
            h_RF = self.act(gate_RF) * up_RF
        else:
            h_RF = self.act(up_RF)
        out_RD = h_RF @ self.w_down[e]
        if self.b_down is not None:
            out_RD = out_RD + self.b_down[e]
        return out_RD

    def forward_grouped(self, x_RD: torch.Tensor, offsets_E: torch.Tensor, expert_R: torch.Tensor,
                        matmul: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                        ) -> torch.Tensor:
        """Run all experts on rows sorted by expert, as grouped matmuls.

        Parameters
        ----------
        x_RD : (R, D) rows; rows of expert e are ``offsets_E[e-1]:offsets_E[e]``; rows past
            ``offsets_E[-1]`` are ignored and come back as zeros.
        offsets_E : (E,) int32 cumulative row counts.
        expert_R : (R,) expert of each row (used for the biases only).
        matmul : grouped matmul ``(x_RD, w_EDF, offsets_E) -> (R, F)``.
        """
        up_RF = matmul(x_RD, self.w_up, offsets_E)
        if self.b_up is not None:
            up_RF = up_RF + self.b_up[expert_R]
        if self.w_gate is not None:
            gate_RF = matmul(x_RD, self.w_gate, offsets_E)
            if self.b_gate is not None:
                gate_RF = gate_RF + self.b_gate[expert_R]
            h_RF = self.act(gate_RF) * up_RF
        else:
            h_RF = self.act(up_RF)
        out_RD = matmul(h_RF, self.w_down, offsets_E)
        if self.b_down is not None:
            out_RD = out_RD + self.b_down[expert_R]
        return out_RD

    def forward_batched(self, x_ERD: torch.Tensor) -> torch.Tensor:
        """Run expert e on ``x_ERD[e]``: every expert gets the same number of rows (E, R, D)."""
        up_ERF = torch.bmm(x_ERD, self.w_up)
        if self.b_up is not None:
            up_ERF = up_ERF + self.b_up[:, None]
        if self.w_gate is not None:
            gate_ERF = torch.bmm(x_ERD, self.w_gate)
            if self.b_gate is not None:
                gate_ERF = gate_ERF + self.b_gate[:, None]
            h_ERF = self.act(gate_ERF) * up_ERF
        else:
            h_ERF = self.act(up_ERF)
        out_ERD = torch.bmm(h_ERF, self.w_down)
        return out_ERD + self.b_down[:, None] if self.b_down is not None else out_ERD

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
                f"activation={self.activation!r}, bias={self.b_up is not None}")


class ModuleExperts(nn.Module):
    """Any list of modules as experts; each maps (R, D) -> (R, D). Architectures may differ."""

    def __init__(self, experts: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(experts) == 0:
            raise ValueError("experts=[] is empty; pass at least one nn.Module")
        for i, m in enumerate(experts):
            if not isinstance(m, nn.Module):
                raise TypeError(f"experts[{i}] is a {type(m).__name__}; every expert must be an nn.Module")
        self.experts = nn.ModuleList(experts)
        self.num_experts = len(experts)

    def forward_expert(self, e: int, x_RD: torch.Tensor) -> torch.Tensor:
        return self.experts[e](x_RD)


class FeedForward(nn.Module):
    """One dense FFN with the same maths as one grouped expert: (..., D) -> (..., D).

    Attributes: ``w_gate`` (D, F) for gated activations, ``w_up`` (D, F), ``w_down`` (F, D).
    """

    def __init__(self, d_model: int, d_ff: int, activation: Activation = "swiglu",
                 bias: bool = False) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        self.act = activation_fn(activation)
        self.activation = activation
        gated = activation in GATED
        self.w_up = nn.Parameter(torch.randn(d_model, d_ff) * d_model**-0.5)
        self.w_gate = nn.Parameter(torch.randn(d_model, d_ff) * d_model**-0.5) if gated else None
        self.w_down = nn.Parameter(torch.randn(d_ff, d_model) * d_ff**-0.5)
        self.b_up = nn.Parameter(torch.zeros(d_ff)) if bias else None
        self.b_gate = nn.Parameter(torch.zeros(d_ff)) if bias and gated else None
        self.b_down = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = x @ self.w_up
        if self.b_up is not None:
            up = up + self.b_up
        if self.w_gate is not None:
            gate = x @ self.w_gate
            if self.b_gate is not None:
                gate = gate + self.b_gate
            h = self.act(gate) * up
        else:
            h = self.act(up)
        out = h @ self.w_down
        return out + self.b_down if self.b_down is not None else out
