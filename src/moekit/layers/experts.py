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
  :meth:`GroupedExperts.adopt` runs the same maths on another library's tensors in place, in the
  layout they are stored in (:class:`ExpertsLayout`: names, orientation, gate/up arrangement),
  sharing them under their own names; :meth:`GroupedExperts.weights` hands any kernel the
  weights as views in moekit's orientation (:class:`ExpertWeights`, strides documented there).
- :class:`ModuleExperts` wraps any list of modules (architectures may differ); it runs expert by
  expert.
- :class:`FeedForward` is one dense FFN (shared experts, dense baselines).

An expert with a gated activation (``swiglu``, ``geglu``, ``geglu_tanh``) computes
``down(glu(x @ w_gate, x @ w_up))`` (:func:`moekit.layers.activations.glu`: ``act(gate) * up`` plus
the :class:`~moekit.layers.activations.GluOptions`); the others ``down(act(x @ w_up))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from moekit.layers._checks import check_choice, check_positive_int
from moekit.layers.activations import (
    ACTIVATIONS,
    GATED,
    PLAIN_GLU,
    Activation,
    GluOptions,
    activation_fn,
    split_gate_up,
)
from moekit.layers.grouped import (
    EXPERT_KERNELS,
    MOEKIT_LAYOUT,
    ExpertActivation,
    ExpertKernel,
    ExpertsLayout,
    ExpertWeights,
    expert_ffn,
    grouped_ffn,
    oriented,
    read_weights,
)

__all__ = ["ACTIVATIONS", "GATED", "Activation", "ExpertWeights", "ExpertsLayout", "FeedForward",
           "GroupedExperts", "ModuleExperts", "activation_fn"]

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


_VIEWS = frozenset({"w_in", "w_down", "b_in", "b_down"})


class GroupedExperts(_InputProjection, nn.Module):
    """E feed-forward experts with stacked weights.

    Parameters
    ----------
    d_model, d_ff, num_experts : sizes D, F, E.
    activation : one of :data:`~moekit.layers.activations.ACTIVATIONS` (``"swiglu"`` default).
    bias : add per-expert biases ``b_in`` (E, H) and ``b_down`` (E, D).
    kernel : ``"grouped_mm"`` (grouped matmuls) or ``"loop"`` (one expert at a time, the
        reference); an :class:`~moekit.layers.MoELayer` sets it from its ``backend``.
    glu : extras of the gated unit (:class:`~moekit.layers.activations.GluOptions`).

    Attributes
    ----------
    w_in : (E, D, H) parameter, H = 2F ``[gate | up]`` for gated activations, else F (a view of
        the stored tensor for an adopted layout; absent for ``gate_up="separate"``).
    w_down : (E, F, D) parameter (a view for an adopted layout).
    w_gate, w_up : (E, D, F) views of the input projection (``w_gate`` is None without gating).
    layout : the :class:`ExpertsLayout` (moekit's own unless built by :meth:`adopt`).
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, activation: Activation = "swiglu",
                 bias: bool = False, kernel: ExpertKernel = "grouped_mm", *,
                 glu: GluOptions | None = None) -> None:
        super().__init__()
        self._setup(d_model, d_ff, num_experts, activation, kernel, glu, MOEKIT_LAYOUT)
        E, D, Fh = num_experts, d_model, d_ff
        H = 2 * Fh if self.gated else Fh
        self.w_in = nn.Parameter(torch.randn(E, D, H) * D**-0.5)
        self.w_down = nn.Parameter(torch.randn(E, Fh, D) * Fh**-0.5)
        self.b_in = nn.Parameter(torch.zeros(E, H)) if bias else None
        self.b_down = nn.Parameter(torch.zeros(E, D)) if bias else None

    def _setup(self, d_model: int, d_ff: int, num_experts: int, activation: str, kernel: str,
               glu_options: GluOptions | None, layout: ExpertsLayout) -> None:
        self.kernel: ExpertKernel = check_choice("kernel", kernel, EXPERT_KERNELS)  # type: ignore[assignment]
        self.d_model = check_positive_int("d_model", d_model)
        self.d_ff = check_positive_int("d_ff", d_ff)
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.activation = activation
        self.act = activation_fn(activation)
        self.gated = activation in GATED
        self.glu = PLAIN_GLU if glu_options is None else glu_options
        if not isinstance(self.glu, GluOptions):
            raise TypeError(f"glu={glu_options!r} must be a moekit GluOptions or None")
        if not self.glu.plain and not self.gated:
            raise ValueError(f"glu options apply to gated activations, got activation={activation!r}")
        if layout.gate_up != "concatenated" and not self.gated:
            raise ValueError(f"gate_up={layout.gate_up!r} needs a gated activation, got "
                             f"activation={activation!r}")
        self.layout = layout

    @classmethod
    def adopt(cls, source: nn.Module, layout: ExpertsLayout, *, activation: Activation = "swiglu",
              glu: GluOptions | None = None, kernel: ExpertKernel = "grouped_mm",
              num_experts: int | None = None) -> GroupedExperts:
        """Experts that compute on ``source``'s tensors where they are, in their layout.

        The parameters named by ``layout`` are registered on the new module under the same names
        (the same ``nn.Parameter`` objects: no copy, same ``data_ptr``, same ``state_dict`` keys,
        in ``source``'s order);
        a dotted name brings its child module along (``"mlp.w1"`` registers ``source.mlp``).

        Parameters
        ----------
        source : the module holding the tensors (e.g. a transformers ``MixtralExperts``).
        layout : where the tensors are and how they are stored.
        activation, glu, kernel : as in the constructor.
        num_experts : E, needed when the tensors are stored flat (E * X, Y); read from the
            leading dimension otherwise.

        Raises
        ------
        ValueError
            A tensor is missing, or the shapes disagree with each other or with ``layout``.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from moekit.layers.experts import ExpertsLayout, GroupedExperts
        >>> hf = nn.Module()                      # transformers' stacked layout, E=4, D=6, F=8
        >>> hf.gate_up_proj = nn.Parameter(torch.randn(4, 16, 6))
        >>> hf.down_proj = nn.Parameter(torch.randn(4, 6, 8))
        >>> layout = ExpertsLayout(in_proj=("gate_up_proj",), down_proj="down_proj", in_bias=None,
        ...                        down_bias=None, in_linear=True, down_linear=True)
        >>> ex = GroupedExperts.adopt(hf, layout)
        >>> ex.gate_up_proj is hf.gate_up_proj, tuple(ex.w_in.shape), ex.d_ff
        (True, (4, 6, 16), 8)
        """
        if not isinstance(source, nn.Module):
            raise TypeError(f"source is a {type(source).__name__}; pass the nn.Module holding the tensors")
        if not isinstance(layout, ExpertsLayout):
            raise TypeError(f"layout is a {type(layout).__name__}; pass a moekit ExpertsLayout")
        tensors: dict[str, nn.Parameter] = {}
        for name in layout.names:
            try:
                param = source.get_parameter(name)
            except AttributeError as err:
                raise ValueError(f"{type(source).__name__} has no parameter {name!r} that layout "
                                 f"{layout} names") from err
            tensors[name] = param
        first = tensors[layout.in_proj[0]]
        E = int(num_experts) if num_experts is not None else int(first.shape[0])
        gated = activation in GATED
        w_in = oriented(first, E, layout.in_linear)
        D = int(w_in.shape[1])
        H = int(w_in.shape[2]) * (2 if layout.gate_up == "separate" else 1)
        F_ = H // 2 if gated else H
        expected = {layout.in_proj[0]: (E, D, F_ if layout.gate_up == "separate" else H),
                    layout.down_proj: (E, F_, D)}
        if layout.gate_up == "separate":
            expected[layout.in_proj[1]] = (E, D, F_)
        for name, want in expected.items():
            linear = layout.down_linear if name == layout.down_proj else layout.in_linear
            got = tuple(oriented(tensors[name], E, linear).shape)
            if got != want or (gated and H % 2):
                raise ValueError(
                    f"{type(source).__name__}.{name} has shape {tuple(tensors[name].shape)}, which "
                    f"reads as {got} in moekit's orientation; expected {want} for E={E}, D={D}, "
                    f"F={F_} (check the layout's in_linear/down_linear and the activation)")
        for bias_name, numel in ((layout.in_bias, E * H), (layout.down_bias, E * D)):
            if bias_name is not None and tensors[bias_name].numel() != numel:
                raise ValueError(f"{type(source).__name__}.{bias_name} has shape "
                                 f"{tuple(tensors[bias_name].shape)}; expected {numel} elements")
        experts = cls.__new__(cls)
        nn.Module.__init__(experts)
        experts._setup(D, F_, E, activation, kernel, glu, layout)
        order = {name: i for i, (name, _) in enumerate(source.named_parameters())}
        for name, param in sorted(tensors.items(), key=lambda kv: order.get(kv[0], len(order))):
            head, _, leaf = name.partition(".")
            if leaf:
                if head not in experts._modules:
                    experts.add_module(head, source.get_submodule(head))
            else:
                experts.register_parameter(name, param)
        return experts

    def expert_slice(self, start: int, stop: int) -> GroupedExperts:
        """Experts ``[start, stop)`` as a new module holding copies of their slices.

        Same class, layout, parameter names (and child modules of dotted names), activation,
        gated unit, kernel and ``requires_grad``: what sharding experts over processes needs.
        """
        E = self.num_experts
        if not 0 <= start < stop <= E:
            raise ValueError(f"expert_slice({start}, {stop}) must satisfy 0 <= start < stop <= "
                             f"num_experts={E}")

        def piece(param: nn.Parameter) -> nn.Parameter:
            t = param.detach()
            part = (t[start:stop] if t.dim() != 2 or t.shape[0] == E
                    else t.view(E, -1, t.shape[-1])[start:stop].reshape(-1, t.shape[-1]))
            return nn.Parameter(part.clone(), requires_grad=param.requires_grad)

        if self.layout == MOEKIT_LAYOUT:
            with torch.device("meta"):  # no throw-away initialisation: the slices replace all
                local = GroupedExperts(self.d_model, self.d_ff, stop - start, self.activation,  # type: ignore[arg-type]
                                       bias=self.b_in is not None, kernel=self.kernel, glu=self.glu)
            for name, param in self.named_parameters(recurse=False):
                setattr(local, name, piece(param))
        else:
            holder = nn.Module()
            wanted = set(self.layout.names)
            for name in [n for n, _ in self.named_parameters() if n in wanted]:  # same order
                *path, leaf = name.split(".")
                owner = holder
                for part in path:
                    if part not in owner._modules:
                        owner.add_module(part, nn.Module())
                    owner = owner.get_submodule(part)
                owner.register_parameter(leaf, piece(self.get_parameter(name)))
            local = GroupedExperts.adopt(holder, self.layout, activation=self.activation,  # type: ignore[arg-type]
                                         glu=self.glu, kernel=self.kernel,
                                         num_experts=stop - start)
        local.train(self.training)
        return local

    def __getattr__(self, name: str) -> torch.Tensor | nn.Module:
        # moekit-orientation views (w_in, w_down, b_in, b_down) of an adopted layout
        if name in _VIEWS:
            layout = self.__dict__.get("layout")
            if layout is not None and layout != MOEKIT_LAYOUT:
                w = self.weights()
                view = {"w_in": w.w_in_EDH, "w_down": w.w_down_EFD, "b_in": w.b_in_EH,
                        "b_down": w.b_down_ED}[name]
                if view is None and name == "w_in":
                    raise AttributeError("gate_up='separate' experts have no fused w_in; use "
                                         "w_gate and w_up, or weights()")
                return view  # type: ignore[return-value]
        return super().__getattr__(name)

    def weights(self) -> ExpertWeights:
        """The weights as views in moekit's orientation (:class:`ExpertWeights`); no copies."""
        return read_weights(self, self.layout, self.num_experts, self.gated)

    @property
    def native(self) -> bool:
        """True for moekit's own layout and a plain gated unit: what fused kernels may assume."""
        return self.layout == MOEKIT_LAYOUT and self.glu.plain

    @property
    def unit(self) -> ExpertActivation:
        """The activation between the projections, as data (:class:`ExpertActivation`)."""
        return ExpertActivation(self.activation, self.glu, self.layout.gate_up)

    def split_gate_up(self, t: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Split a tensor laid out like ``w_in`` (its gradient, say) into (gate or None, up)."""
        if not self.gated:
            return None, t
        return split_gate_up(t, self.layout.gate_up)

    @property
    def w_gate(self) -> torch.Tensor | None:
        return self.weights().w_gate_EDF

    @property
    def w_up(self) -> torch.Tensor:
        return self.weights().w_up_EDF

    @property
    def b_gate(self) -> torch.Tensor | None:
        b = self.weights().b_in_EH
        return None if b is None else self.split_gate_up(b)[0]

    @property
    def b_up(self) -> torch.Tensor | None:
        b = self.weights().b_in_EH
        return None if b is None else self.split_gate_up(b)[1]

    def hidden(self, in_RH: torch.Tensor) -> torch.Tensor:
        """The activation of a fused input projection (R, H) -> (R, F)."""
        return self.unit.fused(in_RH)

    def forward_expert(self, e: int, x_RD: torch.Tensor) -> torch.Tensor:
        """Run expert ``e`` on rows ``x_RD`` (R, D) -> (R, D); the readable per-expert path."""
        return expert_ffn(self.weights(), self.unit, e, x_RD)

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
        return grouped_ffn(self.weights(), self.unit, x_RD, tokens_per_expert_E,
                           kernel=self.kernel, full=full)

    def forward_batched(self, x_ERD: torch.Tensor) -> torch.Tensor:
        """Run expert e on ``x_ERD[e]``: every expert gets the same number of rows (E, R, D)."""
        w, unit = self.weights(), self.unit
        if w.w_in_EDH is None:
            assert w.w_gate_EDF is not None
            hidden_ERF = unit.pair(torch.bmm(x_ERD, w.w_gate_EDF), torch.bmm(x_ERD, w.w_up_EDF))
        else:
            in_ERH = torch.bmm(x_ERD, w.w_in_EDH)
            if w.b_in_EH is not None:
                in_ERH = in_ERH + w.b_in_EH[:, None]
            hidden_ERF = unit.fused(in_ERH)
        out_ERD = torch.bmm(hidden_ERF, w.w_down_EFD)
        return out_ERD + w.b_down_ED[:, None] if w.b_down_ED is not None else out_ERD

    def extra_repr(self) -> str:
        bias = self.weights().b_in_EH is not None
        text = (f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
                f"activation={self.activation!r}, bias={bias}, kernel={self.kernel!r}")
        if not self.glu.plain:
            text += f", glu={self.glu}"
        if self.layout != MOEKIT_LAYOUT:
            text += f", layout={self.layout}"
        return text


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
