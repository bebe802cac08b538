"""moekit as a transformers experts implementation: ``experts_implementation="moekit"``.

Legend: T tokens, D model dim, F expert hidden dim, E experts, K experts per token, R rows.

transformers 5 decorates the experts module of most MoE models with
``@use_experts_implementation``; its ``forward(hidden_states, top_k_index, top_k_weights)`` is then
looked up by name in ``ExpertsInterface``. :func:`experts_forward` is moekit's entry: the routing
stays transformers' (routers, router logits, aux loss, EP plans untouched); the experts run
through moekit's sorted dispatch, grouped FFN and deterministic combine
(:mod:`moekit.layers.dispatch`, :func:`moekit.layers.grouped.grouped_ffn`) on the module's own
tensors, read as views.

The decorator's flags are honoured: ``has_gate`` (``gate_up_proj`` or ``up_proj``),
``is_transposed``, ``has_bias``, ``is_concatenated`` (``[gate; up]`` or interleaved),
``has_post_expert_norm``, a class's own ``_apply_gate`` (known ones are read as data,
:class:`~moekit.layers.activations.GluOptions`; any other is called as it is), and
``_is_expert_parallel``: slots whose expert id is ``>= num_experts`` (transformers' EP sentinels)
give zero output and receive zero gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from moekit.layers.activations import PLAIN_GLU, GluOptions
from moekit.layers.dispatch import SortedDispatcher
from moekit.layers.grouped import (
    ExpertActivation,
    ExpertKernel,
    ExpertsLayout,
    grouped_ffn,
    read_weights,
)

#: transformers activation classes -> moekit's name of the ungated activation.
_PLAIN_ACTIVATIONS: dict[str, str] = {
    "SiLUActivation": "silu",
    "SiLU": "silu",
    "GELUActivation": "gelu",
    "GELU": "gelu",
    "GELUTanh": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh",
    "ReLU": "relu",
    "ReLUSquaredActivation": "relu2",
}
GATED_OF: dict[str, str] = {"silu": "swiglu", "gelu": "geglu", "gelu_tanh": "geglu_tanh"}


def plain_activation(act_fn: object) -> str | None:
    """moekit's name for a transformers activation module or function, or None if it has none."""
    if act_fn is torch.nn.functional.silu:
        return "silu"
    if act_fn is torch.nn.functional.gelu:
        return "gelu"
    if act_fn is torch.nn.functional.relu:
        return "relu"
    name = type(act_fn).__name__
    if name == "GELU" and getattr(act_fn, "approximate", "none") == "tanh":
        return "gelu_tanh"
    if name == "GELUActivation" and getattr(act_fn, "act", None) is not torch.nn.functional.gelu:
        return None  # the python erf formula: rounds differently
    if name == "GELUTanh" and type(getattr(act_fn, "act", None)).__name__ != "partial":
        return None  # the python tanh formula
    return _PLAIN_ACTIVATIONS.get(name)


def _attr(module: nn.Module, name: str) -> Any:
    return getattr(module, name, None)


def _clamp(value: Any) -> float | None:
    return None if value is None else float(value)


#: Gate functions (``_apply_gate``) of transformers 5.24 experts classes that moekit reads as data:
#: qualified name -> (activation from ``act_fn``?, fixed activation, options from the module).
_KNOWN_GATES: dict[str, tuple[str | None, Callable[[nn.Module], GluOptions]]] = {
    "GptOssExperts._apply_gate": ("silu", lambda m: GluOptions(
        swish_alpha=float(_attr(m, "alpha")), clamp=_clamp(_attr(m, "limit")), up_offset=1.0)),
    "OpenAIPrivacyFilterExperts._apply_gate": ("silu", lambda m: GluOptions(
        swish_alpha=float(_attr(m, "alpha")), clamp=_clamp(_attr(m, "limit")), up_offset=1.0)),
    "MiniMaxM3VLExperts._apply_gate": ("silu", lambda m: GluOptions(
        swish_alpha=float(_attr(m, "swiglu_alpha")), clamp=_clamp(_attr(m, "swiglu_limit")),
        up_offset=1.0)),
    "DeepseekV4Experts._apply_gate": (None, lambda m: GluOptions(clamp=_clamp(_attr(m, "limit")))),
    "HYV4Experts._apply_gate": ("silu", lambda m: GluOptions(clamp=_clamp(_attr(m, "swiglu_limit")))),
    "HYV4VLExperts._apply_gate": ("silu", lambda m: GluOptions(
        clamp=_clamp(_attr(m, "swiglu_limit")))),
    "Glm5NextTextExperts._apply_gate": ("silu", lambda m: GluOptions(
        clamp=_clamp(_attr(m, "swiglu_limit")))),
    "Step3p7Experts._apply_gate": (None, lambda m: GluOptions(
        clamp=_clamp(_attr(m, "limit")), clamp_at="output")),
    "BeamExperts._apply_gate": (None, lambda m: GluOptions(float32=True)),
}


def _is_default_gate(fn: object) -> bool:
    return (getattr(fn, "__module__", None) == "transformers.integrations.moe"
            and getattr(fn, "__name__", None) == "_default_apply_gate")


@dataclass(frozen=True)
class ExpertsPlan:
    """How moekit runs one transformers experts module: where its tensors are, and the unit.

    ``activation.override`` is set when the module's activation or gate function has no moekit
    data form: it is then called as it is (exact, but not fusable by a kernel); ``reason`` says
    why.
    """

    layout: ExpertsLayout
    activation: ExpertActivation
    num_experts: int
    post_norm: bool
    reason: str | None = None

    @property
    def exact_as_data(self) -> bool:
        """True when moekit expresses the unit as data (no call back into transformers)."""
        return self.activation.override is None


@functools.cache
def _layout(gated: bool, has_bias: bool, transposed: bool, concatenated: bool) -> ExpertsLayout:
    """Where transformers' decorated experts keep their tensors, from the decorator's flags."""
    proj = "gate_up_proj" if gated else "up_proj"
    gate_up = "concatenated" if concatenated or not gated else "interleaved"
    return ExpertsLayout(in_proj=(proj,), down_proj="down_proj",
                         in_bias=f"{proj}_bias" if has_bias else None,
                         down_bias="down_proj_bias" if has_bias else None,
                         in_linear=not transposed, down_linear=not transposed,
                         gate_up=gate_up)  # type: ignore[arg-type]


def plan_experts(module: nn.Module) -> ExpertsPlan:
    """Read the decorator flags of a transformers experts module into an :class:`ExpertsPlan`.

    Raises
    ------
    TypeError
        ``module`` is not a ``@use_experts_implementation`` experts module.
    """
    flags = {name: getattr(module, name, None) for name in
             ("has_gate", "has_bias", "is_transposed", "is_concatenated", "has_post_expert_norm")}
    if any(v is None for v in flags.values()):
        raise TypeError(
            f"{type(module).__name__} is not a transformers experts module decorated with "
            "@use_experts_implementation (it lacks has_gate/has_bias/is_transposed/"
            "is_concatenated); moekit's experts implementation applies to those only")
    gated = bool(flags["has_gate"])
    layout = _layout(gated, bool(flags["has_bias"]), bool(flags["is_transposed"]),
                     bool(flags["is_concatenated"]))
    gate_up = layout.gate_up
    act_fn = getattr(module, "act_fn", None)
    base = plain_activation(act_fn)
    options = PLAIN_GLU
    override: Callable[[torch.Tensor], torch.Tensor] | None = None
    reason = None
    if gated:
        gate_fn = getattr(type(module), "_apply_gate", None)
        known = _KNOWN_GATES.get(getattr(gate_fn, "__qualname__", ""))
        if known is not None:
            fixed, read = known
            base = fixed or base
            options = read(module)
        elif not _is_default_gate(gate_fn):
            base = None
            reason = f"{getattr(gate_fn, '__qualname__', gate_fn)} has no moekit data form"
        name = GATED_OF.get(base or "")
        if name is None:
            override = module._apply_gate  # type: ignore[assignment]
            reason = reason or f"activation {type(act_fn).__name__} has no moekit data form"
            name = "swiglu"  # unused: the override computes the unit
    else:
        name = base
        if name is None:
            override = act_fn  # type: ignore[assignment]
            reason = f"activation {type(act_fn).__name__} has no moekit data form"
            name = "relu"  # unused: the override computes the unit
    activation = ExpertActivation(name, options, gate_up, override)  # type: ignore[arg-type]
    return ExpertsPlan(layout, activation, int(_attr(module, "num_experts")),
                       bool(flags["has_post_expert_norm"]), reason)


def experts_forward(module: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor, *, kernel: ExpertKernel = "grouped_mm") -> torch.Tensor:
    """moekit's forward for a transformers experts module: (T, D) -> (T, D).

    Parameters
    ----------
    module : the experts module (``self`` of its forward).
    hidden_states : (T, D) tokens.
    top_k_index : (T, K) expert of each slot; under transformers' expert parallelism, ids
        ``>= module.num_experts`` are sentinels for experts on other ranks.
    top_k_weights : (T, K) combine weights.
    kernel : moekit's expert kernel (``"grouped_mm"`` or the ``"loop"`` reference).

    Returns
    -------
    (T, D) ``sum_k w_k * expert_{i_k}(x)`` in the input's dtype, accumulated in float32.
    """
    plan = plan_experts(module)
    E = plan.num_experts
    keep_TK = (top_k_index < E) if getattr(module, "_is_expert_parallel", False) else None
    dispatcher = SortedDispatcher()
    x_RD, tokens_per_expert_E, meta = dispatcher.dispatch_slots(
        hidden_states, top_k_index, top_k_weights, keep_TK, E)
    weights = read_weights(module, plan.layout, E, plan.activation.gated)
    y_RD = grouped_ffn(weights, plan.activation, x_RD, tokens_per_expert_E, kernel=kernel,
                       full=meta.full)
    if plan.post_norm:
        y_RD = module.get_submodule("post_expert_norm")(y_RD)
    return dispatcher.combine(y_RD, meta)


def moekit_experts_forward(self: nn.Module, hidden_states: torch.Tensor,
                           top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """The function registered as ``"moekit"`` in transformers' ``ExpertsInterface``."""
    return experts_forward(self, hidden_states, top_k_index, top_k_weights, kernel="grouped_mm")


def moekit_loop_experts_forward(self: nn.Module, hidden_states: torch.Tensor,
                                top_k_index: torch.Tensor,
                                top_k_weights: torch.Tensor) -> torch.Tensor:
    """The same with moekit's readable one-expert-at-a-time kernel (for checking, not speed)."""
    return experts_forward(self, hidden_states, top_k_index, top_k_weights, kernel="loop")


#: moekit kernel name -> the experts function that uses it (read-only).
EXPERTS_FUNCTIONS: Mapping[str, Callable[..., torch.Tensor]] = MappingProxyType({
    "grouped_mm": moekit_experts_forward,
    "loop": moekit_loop_experts_forward,
})
