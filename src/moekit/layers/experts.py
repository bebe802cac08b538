"""Experts: the feed-forward networks a router chooses between.

Legend: R rows (token-slots sorted by expert), D model dim, F expert hidden dim, H input
projection width (2F for gated activations, else F), E experts.

Every experts module is called as ``experts(x_RD, tokens_per_expert_E) -> y_RD``: rows of expert
e are the e-th consecutive block of ``tokens_per_expert_E[e]`` rows; rows past the last block
(dropped slots) come back as zeros. That is all a dispatcher passes (plus the hint ``full=True``
when no such rows exist).

- :class:`GroupedExperts` stacks E FFNs' weights (``w_in_EDH``, ``w_down_EFD``) so all experts run
  as grouped matmuls; ``kernel`` names how (``"grouped_mm"``: :mod:`moekit.kernels.grouped_mm`;
  ``"loop"``: :meth:`GroupedExperts.forward_expert` block by block, the readable reference).
- :class:`ModuleExperts` wraps any list of modules (architectures may differ); it runs expert by
  expert.
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

from moekit.kernels.grouped_mm import grouped_matmul
from moekit.layers._checks import check_choice, check_positive_int

Activation = Literal["swiglu", "geglu", "gelu", "relu", "silu"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
ExpertKernel = Literal["grouped_mm", "loop"]
EXPERT_KERNELS: tuple[str, ...] = get_args(ExpertKernel)
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
    kernel : ``"grouped_mm"`` (grouped matmuls) or ``"loop"`` (one expert at a time, the
        reference); an :class:`~moekit.layers.MoELayer` sets it from its ``backend``.

    Attributes
    ----------
    w_in : (E, D, H) parameter, H = 2F ``[gate | up]`` for gated activations, else F.
    w_down : (E, F, D) parameter.
    w_gate, w_up : (E, D, F) views of ``w_in`` (``w_gate`` is None without gating).
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, activation: Activation = "swiglu",
                 bias: bool = False, kernel: ExpertKernel = "grouped_mm") -> None:
        super().__init__()
        self.kernel: ExpertKernel = check_choice("kernel", kernel, EXPERT_KERNELS)  # type: ignore[assignment]
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

    def forward(self, x_RD: torch.Tensor, tokens_per_expert_E: torch.Tensor, *,
                full: bool = False) -> torch.Tensor:
        """Run every expert on its block of rows: (R, D) -> (R, D).

        Parameters
        ----------
        x_RD : (R, D) rows sorted by expert; rows past ``tokens_per_expert_E.sum()`` are ignored
            and come back as zeros (with zero gradient).
        tokens_per_expert_E : (E,) int rows of each expert.
        full : the caller promises ``tokens_per_expert_E.sum() == R`` (skips masking the tail).
        """
        if self.kernel == "loop":
            return self._forward_loop(x_RD, tokens_per_expert_E)
        offsets_E = torch.cumsum(tokens_per_expert_E, 0).to(torch.int32)
        in_RH = grouped_matmul(x_RD, self.w_in, offsets_E, full)
        if self.b_in is not None:
            in_RH = in_RH + self._bias_rows(self.b_in, offsets_E, x_RD.shape[0])
        out_RD = grouped_matmul(self._hidden(in_RH, self.act), self.w_down, offsets_E, full)
        if self.b_down is not None:
            out_RD = out_RD + self._bias_rows(self.b_down, offsets_E, x_RD.shape[0])
        return out_RD

    def _bias_rows(self, b_EX: torch.Tensor, offsets_E: torch.Tensor, rows: int) -> torch.Tensor:
        """(R, X) bias of each row's expert; zero for rows past the last expert (no host sync)."""
        row_R = torch.arange(rows, device=b_EX.device, dtype=offsets_E.dtype)
        expert_R = torch.searchsorted(offsets_E, row_R, right=True)
        b_RX = b_EX[expert_R.clamp(max=b_EX.shape[0] - 1)]
        return b_RX.masked_fill((expert_R >= b_EX.shape[0]).unsqueeze(-1), 0)

    def _forward_loop(self, x_RD: torch.Tensor, tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
        out_RD = x_RD.new_zeros(x_RD.shape) + x_RD[:0].sum()  # connected to the graph when empty
        start = 0
        for e, count in enumerate(tokens_per_expert_E.tolist()):
            if count > 0:
                rows = torch.arange(start, start + count, device=x_RD.device)
                out_RD = out_RD.index_copy(0, rows, self.forward_expert(e, x_RD[start:start + count]))
            start += count
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
                f"activation={self.activation!r}, bias={self.b_in is not None}, "
                f"kernel={self.kernel!r}")


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

    def forward(self, x_RD: torch.Tensor, tokens_per_expert_E: torch.Tensor, *,
                full: bool = False) -> torch.Tensor:
        """Run expert e on its block of rows (a host sync for the block sizes)."""
        out_RD = x_RD.new_zeros(x_RD.shape) + x_RD[:0].sum()
        start = 0
        for e, count in enumerate(tokens_per_expert_E.tolist()):
            if count > 0:
                rows = torch.arange(start, start + count, device=x_RD.device)
                out = self.forward_expert(e, x_RD[start:start + count]).to(out_RD.dtype)
                out_RD = out_RD.index_copy(0, rows, out)
            start += count
        return out_RD


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


Experts = GroupedExperts | ModuleExperts
