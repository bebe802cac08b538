"""The description of one transformers sparse-MoE block as data: :class:`BlockSpec`.

A spec says which child routes (and how it is called), which output of it holds the logits, the
routing rule as :class:`~moekit.layers.RouterConfig` fields, where the experts' tensors are, the
shared experts and how they are added, and the small things some blocks do around the experts
(input jitter, an output scale, a norm, latent projections). Values that depend on the model are
:class:`Attr` paths read from the block instance at patch time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from moekit.layers.grouped import ExpertsLayout


@dataclass(frozen=True)
class Attr:
    """A value read from the block: ``block.<path>``, optionally mapped through ``values``.

    ``default`` is used when an attribute along the path is missing or None (``"error"``: the
    block cannot be patched without it).
    """

    path: str
    values: Mapping[Any, Any] | None = None
    default: Any = "error"

    def read(self, block: nn.Module) -> Any:
        obj: Any = block
        for part in self.path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is None:
            if self.default == "error":
                raise LookupError(f"{type(block).__name__}.{self.path} is missing")
            return self.default
        if self.values is not None:
            if obj not in self.values:
                raise LookupError(f"{type(block).__name__}.{self.path}={obj!r} is not one of "
                                  f"{sorted(map(repr, self.values))}")
            return resolve(self.values[obj], block)
        return obj


def resolve(value: Any, block: nn.Module) -> Any:
    """``value`` itself, or what an :class:`Attr` reads from ``block`` (mapped values may be
    :class:`Attr` too)."""
    return value.read(block) if isinstance(value, Attr) else value


@dataclass(frozen=True, kw_only=True)
class SharedSpec:
    """A dense expert every token passes through: the child ``module``, optionally scaled per
    token by ``sigmoid(<gate>(x))`` (a ``Linear(D, 1)``: Qwen2-MoE)."""

    module: str
    gate: str | None = None


Returns = Literal["tensor", "with_weights", "with_logits"]


@dataclass(frozen=True, kw_only=True)
class BlockSpec:
    """How one transformers sparse-MoE block class maps onto moekit (all data).

    Parameters
    ----------
    family : the transformers model type (``transformers.models.<family>``).
    blocks : class names of the block in that family's modeling module.
    gate : the child that routes; it keeps running, so transformers' router-logit recorders see it.
    gate_input : what the block passes to it: ``"tokens"`` (T, D) or ``"hidden"`` (the input as is).
    gate_args : block attributes the block passes to the gate after the input (a bias).
    logits_at : index of the logits in the gate's output tuple (None: the output is the logits).
    router : :class:`~moekit.layers.RouterConfig` fields as ``(name, value or Attr)`` pairs;
        ``d_model`` comes from the experts.
    bias : path of the choice-bias tensor, relative to the block (an :class:`Attr` may make it
        conditional: None means no bias).
    experts : the child holding the expert tensors.
    layout : where they are; None reads transformers' decorator flags.
    activation : moekit's activation name; None reads the experts module.
    shared : the shared experts, added to the routed output (a child that is absent or None on
        the block instance, when the config asks for no shared expert, is skipped).
    shared_mean : average routed and shared outputs instead of adding them (Cohere2-MoE).
    shared_float32 : add them in float32 (HunYuan V3 ``enable_moe_fp32_combine``).
    output_scale : multiply the routed output (Laguna, Beam, MiniMax-M3, Step-3.7).
    latent_in, latent_out : children applied before and after the routed experts (Nemotron-H).
    post_norm : a child applied to the block's output (A.X-K1).
    jitter : block attribute of a multiplicative input jitter applied in training (Mixtral).
    apply_weights : the combine weights act on the experts' ``"output"`` or ``"input"`` (Llama 4).
    returns : what the block returns: the tensor, or a tuple with the combine weights or the
        router logits.
    tokens_out : the block returns (T, D) instead of its input's shape (Llama 4).
    refuse : (Attr, reason) pairs: the block instance is not patched when the Attr reads true.
    """

    family: str
    blocks: tuple[str, ...]
    gate: str = "gate"
    gate_input: Literal["tokens", "hidden"] = "tokens"
    gate_args: tuple[str | Attr, ...] = ()
    logits_at: int | None = 0
    router: tuple[tuple[str, Any], ...] = ()
    bias: str | Attr | None = None
    experts: str = "experts"
    layout: ExpertsLayout | None = None
    activation: str | None = None
    shared: tuple[SharedSpec, ...] = ()
    shared_mean: Attr | bool = False
    shared_float32: Attr | bool = False
    output_scale: Attr | float | None = None
    latent_in: str | None = None
    latent_out: str | None = None
    post_norm: str | None = None
    jitter: str | None = None
    apply_weights: Literal["output", "input"] = "output"
    returns: Returns = "tensor"
    tokens_out: bool = False
    refuse: tuple[tuple[Attr, str], ...] = ()


@dataclass(frozen=True)
class Unsupported:
    """A transformers MoE block moekit cannot express exactly, and why."""

    family: str
    blocks: tuple[str, ...]
    reason: str
