"""Copy weights between transformers' MoE tensors and moekit modules (the copying bridge).

Legend: E experts, D model dim, F expert hidden dim.

transformers experts store ``gate_up_proj`` (E, 2F, D), gate rows first, and ``down_proj``
(E, D, F); moekit's own ``GroupedExperts`` store ``w_in`` (E, D, 2F) ``[gate | up]`` and ``w_down``
(E, F, D), so each is a transpose. (``patch`` shares the tensors instead; these helpers copy.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from moekit.layers.experts import FeedForward, GroupedExperts

__all__ = [
    "copy_experts_from_transformers",
    "copy_experts_to_transformers",
    "copy_mlp_from_transformers",
    "copy_mlp_to_transformers",
]


def _check_hf_experts(hf_experts: nn.Module) -> tuple[int, int, int]:
    """Check a transformers experts module has the layout moekit reads; return (E, D, F)."""
    where = type(hf_experts).__name__
    layout = {
        "has_gate": (getattr(hf_experts, "has_gate", True), True),
        "has_bias": (getattr(hf_experts, "has_bias", False), False),
        "is_transposed": (getattr(hf_experts, "is_transposed", False), False),
        "is_concatenated": (getattr(hf_experts, "is_concatenated", True), True),
        "has_post_expert_norm": (getattr(hf_experts, "has_post_expert_norm", False), False),
    }
    for attr, (got, want) in layout.items():
        if bool(got) != want:
            raise ValueError(
                f"{where}.{attr}={got} is not supported; moekit reads gated, bias-free experts "
                "with gate_up_proj (E, 2F, D) stored [gate; up] and down_proj (E, D, F)"
            )
    gate_up = getattr(hf_experts, "gate_up_proj", None)
    down = getattr(hf_experts, "down_proj", None)
    if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor):
        raise TypeError(
            f"{where} has no 3-D gate_up_proj/down_proj tensors; moekit reads the stacked-expert "
            "layout of transformers >= 5 (experts.gate_up_proj (E, 2F, D), experts.down_proj (E, D, F))"
        )
    E, two_f, D = gate_up.shape
    if two_f % 2 or tuple(down.shape) != (E, D, two_f // 2):
        raise ValueError(
            f"{where}.gate_up_proj has shape {tuple(gate_up.shape)} and down_proj "
            f"{tuple(down.shape)}; expected (E, 2F, D) and (E, D, F)"
        )
    return E, D, two_f // 2


def _check_hf_mlp(hf_mlp: nn.Module) -> tuple[int, int]:
    """Check a transformers gated MLP (gate_proj, up_proj, down_proj; no bias); return (D, F)."""
    where = type(hf_mlp).__name__
    projs = [getattr(hf_mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(p, nn.Linear) for p in projs):
        raise TypeError(f"{where} must have nn.Linear gate_proj, up_proj and down_proj")
    if any(p.bias is not None for p in projs):  # type: ignore[union-attr]
        raise ValueError(f"{where} has biases in its projections; moekit's shared experts have none")
    F_, D = projs[0].weight.shape  # type: ignore[union-attr]
    return D, F_


@torch.no_grad()
def copy_experts_from_transformers(hf_experts: nn.Module, experts: GroupedExperts) -> None:
    """Copy a transformers experts module's weights into moekit :class:`GroupedExperts`, in place.

    ``w_gate[e] = gate_up_proj[e, :F].T``, ``w_up[e] = gate_up_proj[e, F:].T`` and
    ``w_down[e] = down_proj[e].T``; values are converted to ``experts``' dtype and device.

    Parameters
    ----------
    hf_experts : e.g. ``MixtralExperts``: ``gate_up_proj`` (E, 2F, D), ``down_proj`` (E, D, F).
    experts : gated (``swiglu``/``geglu``), bias-free, of the same E, D and F.

    Examples
    --------
    >>> from moekit.layers import GroupedExperts
    >>> from torch import nn
    >>> hf = nn.Module()
    >>> hf.gate_up_proj = nn.Parameter(torch.randn(4, 2 * 8, 6))
    >>> hf.down_proj = nn.Parameter(torch.randn(4, 6, 8))
    >>> ours = GroupedExperts(d_model=6, d_ff=8, num_experts=4)
    >>> copy_experts_from_transformers(hf, ours)
    >>> torch.equal(ours.w_up[1], hf.gate_up_proj[1, 8:].T)
    True
    """
    _check_grouped(hf_experts, experts)
    hf: Any = hf_experts
    # both store [gate | up]: moekit's w_in (E, D, 2F) is gate_up_proj (E, 2F, D) transposed
    experts.w_in.copy_(hf.gate_up_proj.transpose(1, 2))
    experts.w_down.copy_(hf.down_proj.transpose(1, 2))


@torch.no_grad()
def copy_experts_to_transformers(experts: GroupedExperts, hf_experts: nn.Module) -> None:
    """Copy moekit :class:`GroupedExperts` weights into a transformers experts module, in place.

    The inverse of :func:`copy_experts_from_transformers`.

    Examples
    --------
    >>> from moekit.layers import GroupedExperts
    >>> from torch import nn
    >>> hf = nn.Module()
    >>> hf.gate_up_proj = nn.Parameter(torch.zeros(4, 2 * 8, 6))
    >>> hf.down_proj = nn.Parameter(torch.zeros(4, 6, 8))
    >>> ours = GroupedExperts(d_model=6, d_ff=8, num_experts=4)
    >>> copy_experts_to_transformers(ours, hf)
    >>> torch.equal(hf.down_proj[2], ours.w_down[2].T)
    True
    """
    _check_grouped(hf_experts, experts)
    hf: Any = hf_experts
    hf.gate_up_proj.copy_(experts.w_in.transpose(1, 2))
    hf.down_proj.copy_(experts.w_down.transpose(1, 2))


def _check_grouped(hf_experts: nn.Module, experts: GroupedExperts) -> None:
    if not isinstance(experts, GroupedExperts):
        raise TypeError(f"experts is a {type(experts).__name__}; pass moekit GroupedExperts "
                        "(moe_layer.experts of a layer built without experts=[...])")
    E, D, F_ = _check_hf_experts(hf_experts)
    if (experts.num_experts, experts.d_model, experts.d_ff) != (E, D, F_):
        raise ValueError(
            f"size mismatch: {type(hf_experts).__name__} has num_experts={E}, d_model={D}, d_ff={F_} "
            f"but GroupedExperts has num_experts={experts.num_experts}, d_model={experts.d_model}, "
            f"d_ff={experts.d_ff}; build GroupedExperts({D}, {F_}, {E})"
        )
    if experts.w_gate is None or experts.b_up is not None:
        raise ValueError(
            f"GroupedExperts(activation={experts.activation!r}, bias={experts.b_up is not None}) "
            "cannot hold transformers' gated bias-free experts; use activation='swiglu' or "
            "'geglu' and bias=False"
        )


@torch.no_grad()
def copy_mlp_from_transformers(hf_mlp: nn.Module, ff: FeedForward) -> None:
    """Copy a transformers gated MLP (``gate_proj``, ``up_proj``, ``down_proj``) into ``ff``.

    ``w_gate = gate_proj.weight.T`` (D, F), ``w_up = up_proj.weight.T``,
    ``w_down = down_proj.weight.T`` (F, D). Used for shared experts.

    Examples
    --------
    >>> from moekit.layers import FeedForward
    >>> from torch import nn
    >>> hf = nn.Module()
    >>> hf.gate_proj, hf.up_proj = nn.Linear(6, 8, bias=False), nn.Linear(6, 8, bias=False)
    >>> hf.down_proj = nn.Linear(8, 6, bias=False)
    >>> ff = FeedForward(6, 8)
    >>> copy_mlp_from_transformers(hf, ff)
    >>> torch.equal(ff.w_down, hf.down_proj.weight.T)
    True
    """
    w_gate, w_up, w_down = _ff_weights(hf_mlp, ff)
    hf: Any = hf_mlp
    w_gate.copy_(hf.gate_proj.weight.T)
    w_up.copy_(hf.up_proj.weight.T)
    w_down.copy_(hf.down_proj.weight.T)


@torch.no_grad()
def copy_mlp_to_transformers(ff: FeedForward, hf_mlp: nn.Module) -> None:
    """Copy a moekit :class:`FeedForward` into a transformers gated MLP; the inverse of
    :func:`copy_mlp_from_transformers`.

    Examples
    --------
    >>> from moekit.layers import FeedForward
    >>> from torch import nn
    >>> hf = nn.Module()
    >>> hf.gate_proj, hf.up_proj = nn.Linear(6, 8, bias=False), nn.Linear(6, 8, bias=False)
    >>> hf.down_proj = nn.Linear(8, 6, bias=False)
    >>> ff = FeedForward(6, 8)
    >>> copy_mlp_to_transformers(ff, hf)
    >>> torch.equal(hf.gate_proj.weight, ff.w_gate.T)
    True
    """
    w_gate, w_up, w_down = _ff_weights(hf_mlp, ff)
    hf: Any = hf_mlp
    hf.gate_proj.weight.copy_(w_gate.T)
    hf.up_proj.weight.copy_(w_up.T)
    hf.down_proj.weight.copy_(w_down.T)


def _ff_weights(hf_mlp: nn.Module, ff: FeedForward) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(ff, FeedForward):
        raise TypeError(f"ff is a {type(ff).__name__}; pass a moekit FeedForward")
    D, F_ = _check_hf_mlp(hf_mlp)
    if ff.w_gate is None or ff.b_up is not None or tuple(ff.w_up.shape) != (D, F_):
        raise ValueError(
            f"FeedForward with w_up {tuple(ff.w_up.shape)}, gated={ff.w_gate is not None}, "
            f"bias={ff.b_up is not None} cannot hold {type(hf_mlp).__name__} (D={D}, F={F_}); "
            f"use FeedForward({D}, {F_}, 'swiglu') without bias"
        )
    return ff.w_gate, ff.w_up, ff.w_down
