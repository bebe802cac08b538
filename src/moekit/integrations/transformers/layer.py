"""The moekit layer that stands in for a transformers sparse-MoE block: :class:`TransformersMoE`.

Legend: T tokens, D model dim, E experts, K experts per token.

It is a :class:`~moekit.layers.MoELayer` (``stats``, ``aux_loss``, ``config``, ``dispatcher``,
``backend`` work as for any moekit layer) whose children are the block's own, under the block's
names and in its order, so parameter names and ``state_dict`` keys do not change:

- the block's router module keeps running (transformers records router logits from it); moekit
  routes from its logits with the block's rule as data (``config.router``);
- the experts child is a :class:`~moekit.layers.GroupedExperts` adopting the block's expert
  tensors in place (same ``nn.Parameter`` objects, their own layout);
- shared experts, norms and projections are the block's modules, called as the block calls them.

The moekit router (rule, balancing counts, no tensors of its own) is the child ``moekit_router``,
also ``layer.router`` as for any moekit layer unless the block has a child named ``router``
(which keeps that name). It borrows the block's choice bias, so bias balancing moves the tensor
transformers saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moekit.integrations.transformers.spec import Attr, BlockSpec, resolve
from moekit.layers.config import MoEConfig
from moekit.layers.experts import GroupedExperts
from moekit.layers.moe import MoELayer
from moekit.layers.routing import Router, TensorRef


@dataclass(frozen=True)
class Original:
    """The transformers block a layer replaced, and its experts module (for :func:`unpatch`)."""

    block: nn.Module
    experts: nn.Module


@dataclass(frozen=True)
class Resolved:
    """The parts of a spec that depend on the block instance, read once at patch time."""

    gate_args: tuple[str | None, ...]
    shared: tuple[tuple[str, str | None], ...]
    shared_mean: bool
    shared_float32: bool
    output_scale: float | None
    jitter: float


def _gate_arg(arg: str | Attr, block: nn.Module) -> str | None:
    """The attribute the block passes to its gate (None when an optional one is absent)."""
    if isinstance(arg, Attr):
        return arg.path if arg.read(block) is not None else None
    return arg


class TransformersMoE(MoELayer):
    """A transformers sparse-MoE block run by moekit on the block's own modules and tensors.

    Built by :func:`~moekit.integrations.transformers.patch`; not meant to be built by hand.

    Attributes
    ----------
    spec : the :class:`~moekit.integrations.transformers.spec.BlockSpec` it follows.
    moekit_router : the moekit :class:`~moekit.layers.Router` applying ``config.router`` to the
        block's router logits.
    experts : :class:`~moekit.layers.GroupedExperts` on the block's expert tensors.
    original : the replaced block (:class:`Original`), for ``unpatch``.
    """

    moekit_router: Router
    experts: GroupedExperts

    def __init__(self, block: nn.Module, spec: BlockSpec, config: MoEConfig,
                 experts: GroupedExperts, experts_module: nn.Module) -> None:
        nn.Module.__init__(self)
        self.spec = spec
        self.config = config
        for name, child in block.named_children():
            self.add_module(name, experts if name == spec.experts else child)
        for name, param in block.named_parameters(recurse=False):
            self.register_parameter(name, param)
        persistent_off: set[str] = getattr(block, "_non_persistent_buffers_set", set())
        for name, buf in block.named_buffers(recurse=False):
            self.register_buffer(name, buf, persistent=name not in persistent_off)
        bias = resolve(spec.bias, block) if spec.bias is not None else None
        self.moekit_router = Router(config.router, own_weight=False,
                                    bias_from=TensorRef(self, bias) if bias else None)
        self.original = Original(block, experts_module)
        self.resolved = Resolved(
            gate_args=tuple(_gate_arg(a, block) for a in spec.gate_args),
            shared=tuple((s.module, s.gate) for s in spec.shared
                         if isinstance(getattr(block, s.module, None), nn.Module)),
            shared_mean=bool(resolve(spec.shared_mean, block)),
            shared_float32=bool(resolve(spec.shared_float32, block)),
            output_scale=(None if spec.output_scale is None
                          else float(resolve(spec.output_scale, block))),
            jitter=float(getattr(block, spec.jitter, 0.0) or 0.0) if spec.jitter else 0.0,
        )
        self.training = block.training
        self._set_backend(config.dispatch.backend)
        self.aux_loss: torch.Tensor | None = None
        self.stats = None
        self.reduce_sums = None

    def __getattr__(self, name: str) -> Any:
        # ``layer.router`` is the moekit router, as for any MoELayer, unless the block has a child
        # of that name (GPT-OSS, Granite, ...): then it stays the block's (never shadowed)
        if name == "router":
            modules = self.__dict__.get("_modules", {})
            if "router" not in modules and "moekit_router" in modules:
                return modules["moekit_router"]
        return super().__getattr__(name)

    def _child(self, name: str) -> nn.Module:
        # by name in _modules: the ``router`` property must not hide a block's child of that name
        *path, leaf = name.split(".")
        owner: nn.Module = self
        for part in path:
            owner = owner._modules[part]  # type: ignore[assignment]
        child = owner._modules[leaf]
        assert child is not None
        return child

    def forward(self, hidden_states: torch.Tensor) -> Any:
        spec, res = self.spec, self.resolved
        if self.training and res.jitter > 0:  # in place, as the block does (same random draws)
            hidden_states *= torch.empty_like(hidden_states).uniform_(1.0 - res.jitter,
                                                                       1.0 + res.jitter)
        shape = hidden_states.shape
        x_TD = hidden_states.reshape(-1, shape[-1])
        gate = self._child(spec.gate)
        extra = [None if a is None else getattr(self, a) for a in res.gate_args]
        gate_out = gate(hidden_states if spec.gate_input == "hidden" else x_TD, *extra)
        logits_TE = gate_out if spec.logits_at is None else gate_out[spec.logits_at]
        routing = self.moekit_router.route_logits(logits_TE.reshape(x_TD.shape[0], -1),
                                                  input_dtype=x_TD.dtype)
        routed_TD = x_TD if spec.latent_in is None else self._child(spec.latent_in)(x_TD)
        y_TD = self.forward_routed(routed_TD, routing, self.moekit_router)
        if spec.latent_out is not None:
            y_TD = self._child(spec.latent_out)(y_TD)
        if res.output_scale is not None:
            y_TD = y_TD * res.output_scale
        for module, gate_name in res.shared:
            shared_TD = self._child(module)(x_TD)
            if gate_name is not None:
                shared_TD = torch.sigmoid(self._child(gate_name)(x_TD)) * shared_TD
            if res.shared_float32:
                y_TD = (y_TD.float() + shared_TD.float()).to(x_TD.dtype)
            elif res.shared_mean:
                y_TD = (y_TD + shared_TD) / 2
            else:
                y_TD = y_TD + shared_TD
        y = y_TD if spec.tokens_out else y_TD.view(shape)
        if spec.post_norm is not None:
            y = self._child(spec.post_norm)(y)
        if spec.returns == "with_weights":
            return y, routing.weights_TK.to(logits_TE.dtype)
        if spec.returns == "with_logits":
            return y, logits_TE
        return y

    def extra_repr(self) -> str:
        return (f"block={type(self.original.block).__name__}, family={self.spec.family!r}, "
                + super().extra_repr())
