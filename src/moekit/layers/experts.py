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


class _InputProjection:
    """``w_in`` holds the input projection, ``[gate | up]`` along the last axis for gated
    activations (one matmul instead of two), ``up`` alone otherwise; ``w_gate``/``w_up`` (and
    ``b_gate``/``b_up``) are views of it, so copying into them updates the parameter."""

    w_in: nn.Parameter
    b_in: nn.Parameter | None
    gated: bool

    def split_gate_up(self, t: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Split a tensor laid out like ``w_in`` (its gradient, say) into (gate or None, up)."""
        if not self.gated:
            return None, t
        gate, up = t.chunk(2, dim=-1)
        return gate, up

    @property
    def w_gate(self) -> torch.Tensor | None:
        return self.split_gate_up(self.w_in)[0]

    @property
    def w_up(self) -> torch.Tensor:
        return self.split_gate_up(self.w_in)[1]

    @property
    def b_gate(self) -> torch.Tensor | None:
        return None if self.b_in is None else self.split_gate_up(self.b_in)[0]

    @property
    def b_up(self) -> torch.Tensor | None:
        return None if self.b_in is None else self.split_gate_up(self.b_in)[1]

    def _hidden(self, in_RH: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.gated:
            gate_RF, up_RF = in_RH.chunk(2, dim=-1)
            return act(gate_RF) * up_RF
        return act(in_RH)


class GroupedExperts(_InputProjection, nn.Module):
    """E feed-forward experts with stacked weights.

    Parameters
    ----------
    d_model, d_ff, num_experts : sizes D, F, E.
    activation : one of ``"swiglu"``, ``"geglu"``, ``"gelu"``, ``"relu"``, ``"silu"``.
    bias : add per-expert biases ``b_in`` (E, H) and ``b_down`` (E, D).

    Attributes
    ----------
    w_in : (E, D, H) parameter, H = 2F ``[gate | up]`` for gated activations, else F.
    w_down : (E, F, D) parameter.
    w_gate, w_up : (E, D, F) views of ``w_in`` (``w_gate`` is None without gating).
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
        H = 2 * Fh if self.gated else Fh
        self.w_in = nn.Parameter(torch.randn(E, D, H) * D**-0.5)
        self.w_down = nn.Parameter(torch.randn(E, Fh, D) * Fh**-0.5)
        self.b_in = nn.Parameter(torch.zeros(E, H)) if bias else None
        self.b_down = nn.Parameter(torch.zeros(E, D)) if bias else None

    def forward_expert(self, e: int, x_RD: torch.Tensor) -> torch.Tensor:
        """Run expert ``e`` on rows ``x_RD`` (R, D) -> (R, D); the readable per-expert path."""
        in_RH = x_RD @ self.w_in[e]
        if self.b_in is not None:
            in_RH = in_RH + self.b_in[e]
        out_RD = self._hidden(in_RH, self.act) @ self.w_down[e]
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
        in_RH = matmul(x_RD, self.w_in, offsets_E)
        if self.b_in is not None:
            in_RH = in_RH + self.b_in[expert_R]
        out_RD = matmul(self._hidden(in_RH, self.act), self.w_down, offsets_E)
        if self.b_down is not None:
            out_RD = out_RD + self.b_down[expert_R]
        return out_RD

    def forward_batched(self, x_ERD: torch.Tensor) -> torch.Tensor:
        """Run expert e on ``x_ERD[e]``: every expert gets the same number of rows (E, R, D)."""
        in_ERH = torch.bmm(x_ERD, self.w_in)
        if self.b_in is not None:
            in_ERH = in_ERH + self.b_in[:, None]
        out_ERD = torch.bmm(self._hidden(in_ERH, self.act), self.w_down)
        return out_ERD + self.b_down[:, None] if self.b_down is not None else out_ERD

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
                f"activation={self.activation!r}, bias={self.b_in is not None}")


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


class FeedForward(_InputProjection, nn.Module):
    """One dense FFN with the same maths as one grouped expert: (..., D) -> (..., D).

    Attributes: ``w_in`` (D, H) with H = 2F ``[gate | up]`` for gated activations, else F;
    ``w_down`` (F, D); ``w_gate``, ``w_up`` (D, F) are views of ``w_in``.
    """

    def __init__(self, d_model: int, d_ff: int, activation: Activation = "swiglu",
                 bias: bool = False) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        self.act = activation_fn(activation)
        self.activation = activation
        self.gated = activation in GATED
        H = 2 * d_ff if self.gated else d_ff
        self.w_in = nn.Parameter(torch.randn(d_model, H) * d_model**-0.5)
        self.w_down = nn.Parameter(torch.randn(d_ff, d_model) * d_ff**-0.5)
        self.b_in = nn.Parameter(torch.zeros(H)) if bias else None
        self.b_down = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.w_in
        if self.b_in is not None:
            h = h + self.b_in
        out = self._hidden(h, self.act) @ self.w_down
        return out + self.b_down if self.b_down is not None else out
