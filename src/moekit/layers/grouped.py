"""The grouped expert FFN as maths over weight views: the seam between layouts and kernels.

Legend: R rows (token-slots sorted by expert), D model dim, F expert hidden dim, H input
projection width (2F for gated activations, else F), E experts.

Three pieces, each independent of the others:

- :class:`ExpertsLayout` says where a module keeps its expert tensors and how they are stored
  (names, orientation, gate/up arrangement): moekit's own ``w_in`` (E, D, H) and ``w_down``
  (E, F, D), or transformers' ``gate_up_proj`` (E, 2F, D), transposed or not, interleaved or not.
- :func:`read_weights` turns a layout into :class:`ExpertWeights`: views in moekit's orientation,
  never copies (their strides are documented there).
- :func:`grouped_ffn` runs E experts on rows sorted by expert, given views and an
  :class:`ExpertActivation`; ``kernel`` picks how: ``"loop"`` (:func:`expert_ffn` one expert at a
  time, the readable reference for every layout) or ``"grouped_mm"``
  (:mod:`moekit.kernels.grouped_mm`). A new kernel plugs in here and receives the same views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import nn

from moekit.kernels.grouped_mm import grouped_matmul
from moekit.layers._checks import check_choice
from moekit.layers.activations import (
    GATE_UP,
    GATED,
    PLAIN_GLU,
    GateUp,
    GluOptions,
    activation_fn,
    glu,
    split_gate_up,
)

ExpertKernel = Literal["grouped_mm", "loop"]
EXPERT_KERNELS: tuple[str, ...] = get_args(ExpertKernel)


@dataclass(frozen=True, kw_only=True)
class ExpertsLayout:
    """Where a module keeps its expert tensors and how they are stored (read as views).

    Parameters
    ----------
    in_proj : parameter name of the input projection (``[gate, up]`` fused, or ``up`` alone), or
        two names ``(gate, up)`` with ``gate_up="separate"``.
    down_proj : parameter name of the output projection.
    in_bias, down_bias : parameter names of the biases ((E, H) and (E, D)), or None.
    in_linear : the input projection is stored (E, H, D), the ``torch.nn.Linear`` convention
        ``x @ w.T`` (transformers' default); False: (E, D, H), ``x @ w`` (moekit's, and
        transformers' ``is_transposed=True``).
    down_linear : the same for the output projection: (E, D, F) when True, (E, F, D) when False.
    gate_up : ``"concatenated"`` (``[gate | up]`` halves), ``"interleaved"`` (gate in even and up
        in odd columns: GPT-OSS) or ``"separate"`` (two tensors: DBRX).

    Names may be dotted paths into child modules (DBRX: ``"mlp.w1"``); a 2-dim tensor is read as
    (E * X, Y) and viewed as (E, X, Y).

    Examples
    --------
    >>> from moekit.layers.grouped import ExpertsLayout
    >>> hf = ExpertsLayout(in_proj=("gate_up_proj",), down_proj="down_proj", in_bias=None,
    ...                    down_bias=None, in_linear=True, down_linear=True)   # Mixtral, Qwen3-MoE
    >>> hf.names
    ('gate_up_proj', 'down_proj')
    """

    in_proj: tuple[str, ...] = ("w_in",)
    down_proj: str = "w_down"
    in_bias: str | None = "b_in"
    down_bias: str | None = "b_down"
    in_linear: bool = False
    down_linear: bool = False
    gate_up: GateUp = "concatenated"

    def __post_init__(self) -> None:
        check_choice("gate_up", self.gate_up, GATE_UP)
        if not isinstance(self.in_proj, tuple) or not all(isinstance(n, str) for n in self.in_proj):
            raise TypeError(f"in_proj={self.in_proj!r} must be a tuple of parameter names")
        want = 2 if self.gate_up == "separate" else 1
        if len(self.in_proj) != want:
            raise ValueError(f"in_proj={self.in_proj!r} needs {want} name(s) for "
                             f"gate_up={self.gate_up!r}")
        if self.gate_up == "separate" and self.in_bias is not None:
            raise ValueError("gate_up='separate' with an input bias is not supported; set in_bias=None")

    @property
    def names(self) -> tuple[str, ...]:
        """Every parameter name the layout reads."""
        return tuple(n for n in (*self.in_proj, self.down_proj, self.in_bias, self.down_bias)
                     if n is not None)


#: moekit's own layout: ``w_in`` (E, D, H) ``[gate | up]``, ``w_down`` (E, F, D), ``b_in``, ``b_down``.
MOEKIT_LAYOUT = ExpertsLayout()


@dataclass(frozen=True)
class ExpertWeights:
    """Expert weights as views in moekit's orientation: what every kernel receives.

    None of these is a copy. For moekit's own layout they are the parameters themselves
    (contiguous). For another layout they may be strided: the transposed view of (E, H, D)
    storage has strides ``(H*D, 1, D)``; interleaved gate/up views step two columns. A kernel that
    needs contiguous operands must say so and fall back, never copy silently.

    Attributes
    ----------
    w_in_EDH : (E, D, H) fused input projection, or None for ``gate_up="separate"``.
    w_gate_EDF, w_up_EDF : (E, D, F) gate and up (``w_gate_EDF`` None when ungated; ``w_up_EDF``
        is then the whole input projection).
    w_down_EFD : (E, F, D) output projection.
    b_in_EH, b_down_ED : biases or None.
    gate_up : how gate and up sit in ``w_in_EDH``.
    """

    w_in_EDH: torch.Tensor | None
    w_gate_EDF: torch.Tensor | None
    w_up_EDF: torch.Tensor
    w_down_EFD: torch.Tensor
    b_in_EH: torch.Tensor | None
    b_down_ED: torch.Tensor | None
    gate_up: GateUp


def oriented(t: torch.Tensor, num_experts: int, linear: bool) -> torch.Tensor:
    """A stored (E, X, Y) or flat (E*X, Y) tensor as an (E, ., .) view in moekit's orientation."""
    t3 = t.view(num_experts, -1, t.shape[-1]) if t.dim() == 2 else t
    return t3.transpose(1, 2) if linear else t3


def stored_parameter(owner: nn.Module, path: str | None) -> torch.Tensor | None:
    """``owner``'s parameter at a dotted ``path`` (None for a None path or an unset parameter)."""
    if path is None:
        return None
    *modules, leaf = path.split(".")
    for name in modules:
        owner = owner.get_submodule(name)
    found = owner._parameters.get(leaf)
    if found is None and leaf not in owner._parameters:
        # a plain tensor attribute (some libraries keep expert weights as buffers or tensors)
        value = owner.__dict__.get(leaf, owner._buffers.get(leaf))
        return value if isinstance(value, torch.Tensor) else None
    return found


def read_weights(owner: nn.Module, layout: ExpertsLayout, num_experts: int,
                 gated: bool) -> ExpertWeights:
    """Views of ``owner``'s expert tensors as ``layout`` describes them (no copies)."""

    def need(path: str) -> torch.Tensor:
        t = stored_parameter(owner, path)
        if t is None:
            raise AttributeError(f"{type(owner).__name__} has no tensor {path!r} (layout {layout})")
        return t

    E = num_experts
    first = oriented(need(layout.in_proj[0]), E, layout.in_linear)
    w_down = oriented(need(layout.down_proj), E, layout.down_linear)
    b_in, b_down = stored_parameter(owner, layout.in_bias), stored_parameter(owner, layout.down_bias)
    b_in = None if b_in is None else b_in.view(E, -1)
    b_down = None if b_down is None else b_down.view(E, -1)
    if layout.gate_up == "separate":
        w_up = oriented(need(layout.in_proj[1]), E, layout.in_linear)
        return ExpertWeights(None, first, w_up, w_down, b_in, b_down, "separate")
    if not gated:
        return ExpertWeights(first, None, first, w_down, b_in, b_down, layout.gate_up)
    gate, up = split_gate_up(first, layout.gate_up)
    return ExpertWeights(first, gate, up, w_down, b_in, b_down, layout.gate_up)


@dataclass(frozen=True)
class ExpertActivation:
    """What happens between the two projections of an expert, as data.

    Attributes
    ----------
    activation : a name of :data:`~moekit.layers.activations.ACTIVATIONS`.
    glu : the extras of a gated unit.
    gate_up : where gate and up sit in a fused input projection.
    override : None, or a function ``(R, H) -> (R, F)`` that replaces the unit for a fused
        projection (a library's own gate function when it is not expressible as data; kernels
        that fuse the activation fall back when it is set).
    """

    activation: str = "swiglu"
    glu: GluOptions = PLAIN_GLU
    gate_up: GateUp = "concatenated"
    override: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)

    @property
    def gated(self) -> bool:
        return self.activation in GATED

    def fused(self, in_RH: torch.Tensor) -> torch.Tensor:
        """The hidden activations of a fused input projection (R, H) -> (R, F)."""
        if self.override is not None:
            return self.override(in_RH)
        if not self.gated:
            return activation_fn(self.activation)(in_RH)
        if self.glu.plain and self.gate_up == "concatenated":
            gate_RF, up_RF = in_RH.chunk(2, dim=-1)
            return activation_fn(self.activation)(gate_RF) * up_RF
        return glu(in_RH, self.activation, self.glu, self.gate_up)

    def pair(self, gate_RF: torch.Tensor, up_RF: torch.Tensor) -> torch.Tensor:
        """The hidden activations from separate gate and up projections."""
        return glu(gate_RF, self.activation, self.glu, up_RF=up_RF)


def expert_ffn(w: ExpertWeights, act: ExpertActivation, e: int, x_RD: torch.Tensor) -> torch.Tensor:
    """Expert ``e`` on rows ``x_RD`` (R, D) -> (R, D): the readable reference of every layout."""
    if w.w_in_EDH is None:
        assert w.w_gate_EDF is not None
        hidden_RF = act.pair(x_RD @ w.w_gate_EDF[e], x_RD @ w.w_up_EDF[e])
    else:
        in_RH = x_RD @ w.w_in_EDH[e]
        if w.b_in_EH is not None:
            in_RH = in_RH + w.b_in_EH[e]
        hidden_RF = act.fused(in_RH)
    out_RD = hidden_RF @ w.w_down_EFD[e]
    if w.b_down_ED is not None:
        out_RD = out_RD + w.b_down_ED[e]
    return out_RD


def row_experts(offsets_E: torch.Tensor, rows: int) -> torch.Tensor:
    """(R,) expert of each row (E for rows past the last expert), from the offsets (no host sync)."""
    row_R = torch.arange(rows, device=offsets_E.device, dtype=offsets_E.dtype)
    return torch.searchsorted(offsets_E, row_R, right=True)


def bias_rows(b_EX: torch.Tensor, offsets_E: torch.Tensor, rows: int,
              expert_R: torch.Tensor | None = None, full: bool = False) -> torch.Tensor:
    """(R, X) bias of each row's expert; zero for rows past the last expert (no host sync).

    ``full=True`` promises there are no such rows (the zeroing is skipped)."""
    if expert_R is None:
        expert_R = row_experts(offsets_E, rows)
    if full:
        return b_EX.index_select(0, expert_R)
    b_RX = b_EX.index_select(0, expert_R.clamp(max=b_EX.shape[0] - 1))
    return b_RX.masked_fill((expert_R >= b_EX.shape[0]).unsqueeze(-1), 0)


def grouped_ffn(w: ExpertWeights, act: ExpertActivation, x_RD: torch.Tensor,
                tokens_per_expert_E: torch.Tensor, *, kernel: ExpertKernel = "grouped_mm",
                full: bool = False) -> torch.Tensor:
    """Every expert on its block of rows: (R, D) -> (R, D).

    Rows of expert e are the e-th consecutive block of ``tokens_per_expert_E[e]`` rows; rows past
    the last block come back as zeros with zero gradient. ``full=True`` promises there are none.
    """
    check_choice("kernel", kernel, EXPERT_KERNELS)
    if kernel == "loop":
        out_RD = x_RD.new_zeros(x_RD.shape) + x_RD[:0].sum()  # connected to the graph when empty
        start = 0
        for e, count in enumerate(tokens_per_expert_E.tolist()):
            if count > 0:
                rows = torch.arange(start, start + count, device=x_RD.device)
                out_RD = out_RD.index_copy(0, rows, expert_ffn(w, act, e, x_RD[start:start + count]))
            start += count
        return out_RD
    R = x_RD.shape[0]
    offsets_E = torch.cumsum(tokens_per_expert_E, 0).to(torch.int32)
    expert_R = (row_experts(offsets_E, R)
                if w.b_in_EH is not None or w.b_down_ED is not None else None)
    if w.w_in_EDH is None:  # separate gate and up: two grouped matmuls, no concatenation
        assert w.w_gate_EDF is not None
        hidden_RF = act.pair(grouped_matmul(x_RD, w.w_gate_EDF, offsets_E, full),
                             grouped_matmul(x_RD, w.w_up_EDF, offsets_E, full))
    else:
        in_RH = grouped_matmul(x_RD, w.w_in_EDH, offsets_E, full)
        if w.b_in_EH is not None:
            in_RH = in_RH.add_(bias_rows(w.b_in_EH, offsets_E, R, expert_R, full))
        hidden_RF = act.fused(in_RH)
    out_RD = grouped_matmul(hidden_RF, w.w_down_EFD, offsets_E, full)
    if w.b_down_ED is not None:
        out_RD = out_RD.add_(bias_rows(w.b_down_ED, offsets_E, R, expert_R, full))
    return out_RD
