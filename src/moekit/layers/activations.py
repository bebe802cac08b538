"""Expert activations: plain ones, gated linear units, and the clamped GLUs of recent models.

Legend: R rows, F expert hidden dim, H input projection width (2F for gated activations, else F).

An expert with a gated activation computes ``hidden_RF = act(gate_RF) * up_RF`` from the input
projection ``in_RH``, whose halves are ``[gate | up]`` (``"concatenated"``) or alternate column by
column (``"interleaved"``, GPT-OSS), or come from two separate projections (``"separate"``). The
others compute ``hidden_RF = act(in_RF)``.

=================  =========  =====================================================
activation         gated      act
=================  =========  =====================================================
``swiglu``         yes        SiLU (``x * sigmoid(x)``)
``geglu``          yes        GELU (exact, erf)
``geglu_tanh``     yes        GELU, tanh approximation (``gelu_pytorch_tanh``)
``gelu``           no         GELU (exact)
``gelu_tanh``      no         GELU, tanh approximation
``relu``           no         ReLU
``relu2``          no         ReLU squared (Nemotron-H)
``silu``           no         SiLU
=================  =========  =====================================================

:class:`GluOptions` adds what some gated units do on top (all default off):
``swish_alpha`` replaces SiLU by ``x * sigmoid(alpha * x)`` (GPT-OSS: 1.702); ``clamp`` bounds the
gate from above and the up projection to ``[-clamp, clamp]``, the gate before the activation
(``clamp_at="input"``: GPT-OSS, DeepSeek-V4) or after it (``"output"``: Step-3.7); ``up_offset``
multiplies by ``up + offset`` (GPT-OSS: 1); ``float32`` computes the unit in float32 and rounds
back (Beam).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from moekit.layers._checks import check_choice

Activation = Literal["swiglu", "geglu", "geglu_tanh", "gelu", "gelu_tanh", "relu", "relu2", "silu"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
GATED: frozenset[str] = frozenset({"swiglu", "geglu", "geglu_tanh"})
GateUp = Literal["concatenated", "interleaved", "separate"]
GATE_UP: tuple[str, ...] = get_args(GateUp)
ClampAt = Literal["input", "output"]


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


_ACT_FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "swiglu": F.silu,
    "geglu": F.gelu,
    "geglu_tanh": partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "relu2": _relu2,
    "silu": F.silu,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise function of an activation name (for gated ones: the function of the gate)."""
    check_choice("activation", name, ACTIVATIONS)
    return _ACT_FN[name]


@dataclass(frozen=True, kw_only=True)
class GluOptions:
    """Extras of a gated unit ``act(gate) * up`` (see the module docstring); defaults are plain.

    Parameters
    ----------
    swish_alpha : None (SiLU), or the slope of ``x * sigmoid(alpha * x)`` (``swiglu`` only).
    clamp : None, or the bound: ``gate <= clamp`` and ``-clamp <= up <= clamp``.
    clamp_at : clamp the gate before the activation (``"input"``) or its output (``"output"``).
    up_offset : ``act(gate) * (up + up_offset)``.
    float32 : compute the unit in float32 and round to the input dtype.

    Examples
    --------
    >>> import torch
    >>> from moekit.layers.activations import GluOptions, glu
    >>> oai = GluOptions(swish_alpha=1.702, clamp=7.0, up_offset=1.0)   # GPT-OSS
    >>> glu(torch.tensor([[10.0, 0.0]]), "swiglu", oai, "interleaved")   # gate 10 clamped to 7
    tensor([[7.0000]])
    """

    swish_alpha: float | None = None
    clamp: float | None = None
    clamp_at: ClampAt = "input"
    up_offset: float = 0.0
    float32: bool = False

    def __post_init__(self) -> None:
        check_choice("clamp_at", self.clamp_at, get_args(ClampAt))
        for name in ("swish_alpha", "clamp"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0):
                raise ValueError(f"GluOptions {name}={value!r} must be None or a number > 0")

    @property
    def plain(self) -> bool:
        """True when the unit is the textbook ``act(gate) * up``."""
        return self == GluOptions()


PLAIN_GLU = GluOptions()


def split_gate_up(in_RH: torch.Tensor, gate_up: GateUp) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) views of a fused input projection laid out as ``gate_up``."""
    if gate_up == "interleaved":
        return in_RH[..., ::2], in_RH[..., 1::2]
    if gate_up == "concatenated":
        gate, up = in_RH.chunk(2, dim=-1)
        return gate, up
    raise ValueError("gate_up='separate' has no fused projection to split")


def glu(gate_RF_or_in_RH: torch.Tensor, activation: str, options: GluOptions = PLAIN_GLU,
        gate_up: GateUp = "concatenated", up_RF: torch.Tensor | None = None) -> torch.Tensor:
    """The gated unit: from a fused ``in_RH`` (split by ``gate_up``), or from ``gate`` and ``up_RF``.

    The readable definition every fast path is compared with.
    """
    if up_RF is None:
        gate_RF, up_RF = split_gate_up(gate_RF_or_in_RH, gate_up)
    else:
        gate_RF = gate_RF_or_in_RH
    dtype = gate_RF.dtype
    if options.float32:
        gate_RF, up_RF = gate_RF.float(), up_RF.float()
    limit = options.clamp
    if limit is not None and options.clamp_at == "input":
        gate_RF = gate_RF.clamp(max=limit)
    if options.swish_alpha is not None:
        if activation != "swiglu":
            raise ValueError(f"swish_alpha applies to activation='swiglu', got {activation!r}")
        act_RF = gate_RF * torch.sigmoid(gate_RF * options.swish_alpha)
    else:
        act_RF = activation_fn(activation)(gate_RF)
    if limit is not None:
        if options.clamp_at == "output":
            act_RF = act_RF.clamp(max=limit)
        up_RF = up_RF.clamp(min=-limit, max=limit)
    if options.up_offset:
        up_RF = up_RF + options.up_offset
    return (act_RF * up_RF).to(dtype)
