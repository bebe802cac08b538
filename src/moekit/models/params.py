"""Parameter counts: total, and *active* (used per token), for models built from moekit.layers."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from moekit.layers import MoELayer


class ParameterCount(NamedTuple):
    """``total`` parameters held, ``active`` parameters one token passes through."""

    total: int
    active: int


def _unique_numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count the parameters of ``model``, and those a token actually uses.

    Every parameter is active except the routed experts of a :class:`moekit.layers.MoELayer`, of
    which a token uses ``top_k`` of ``num_experts`` (counted as ``top_k / num_experts`` of them),
    and the router, which scores experts rather than transforming the token (``E * D`` per layer,
    counted in ``total`` only). Under this convention a dense twin
    (:func:`moekit.models.dense_twin`) has exactly the active count of its MoE model. Shared
    parameters (tied embeddings) are counted once. A Soft MoE layer uses all of its experts for
    every sequence, so all its parameters are active.

    Returns
    -------
    ParameterCount
        ``(total, active)``, both ints.
    """
    total = sum(p.numel() for p in model.parameters())  # parameters() deduplicates tied weights
    inactive = 0
    for module in model.modules():
        if not isinstance(module, MoELayer):
            continue
        routed = _unique_numel(module.experts)
        num_experts = int(module.num_experts)
        top_k = int(module.top_k)
        inactive += routed - routed * top_k // num_experts
        inactive += _unique_numel(module.router)
    return ParameterCount(total=total, active=total - inactive)
