"""Hugging Face ``transformers`` sparse MoE blocks <-> :class:`moekit.layers.MoELayer`.

Legend: T tokens, D model dim, F expert hidden dim, E experts, K experts per token.

:func:`from_transformers` builds a :class:`~moekit.layers.MoELayer` that computes what a
``transformers`` sparse MoE block computes (same weights, same routing, same combine weights);
:func:`to_transformers` copies a layer's weights back into a block. The weight-copy helpers they
use are public too.

Supported blocks and how they map:

=================================  =================  ==============================================
transformers block                 moekit router      notes
=================================  =================  ==============================================
``MixtralSparseMoeBlock``          ``topk``           ``normalize=True``; ``router_jitter_noise`` must
                                                      be 0 (moekit has no input jitter)
``Qwen3MoeSparseMoeBlock``         ``topk``           ``normalize=norm_topk_prob``
``OlmoeSparseMoeBlock``            ``topk``           ``normalize=norm_topk_prob``
``Qwen2MoeSparseMoeBlock``         ``topk``           ``normalize=norm_topk_prob``; one shared expert
                                                      scaled by ``sigmoid(shared_expert_gate(x))``
``DeepseekV3MoE``                  ``sigmoid_bias``   ``e_score_correction_bias`` -> ``expert_bias``;
                                                      ``n_group``, ``topk_group``, ``norm_topk_prob``,
                                                      ``routed_scaling_factor``; shared experts
=================================  =================  ==============================================

Expert activations: ``hidden_act`` ``"silu"``/``"swish"`` -> ``"swiglu"``, ``"gelu"`` (exact, erf)
-> ``"geglu"``; anything else raises ``ValueError``.

Weight layout: ``transformers`` experts store ``gate_up_proj`` (E, 2F, D), gate rows first
(``gate, up = linear(x, gate_up_proj[e]).chunk(2, -1)``), and ``down_proj`` (E, D, F); moekit
stores ``w_gate``, ``w_up`` (E, D, F) and ``w_down`` (E, F, D), so each is a transpose of a half.

This module never imports ``transformers``: blocks are recognised by their class's qualified name
(subclasses included), so ``import moekit.integrations.transformers`` works without it installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moekit.layers.config import Backend
from moekit.layers.experts import FeedForward, GroupedExperts
from moekit.layers.moe import MoELayer

__all__ = [
    "SUPPORTED_BLOCKS",
    "copy_experts_from_transformers",
    "copy_experts_to_transformers",
    "copy_mlp_from_transformers",
    "copy_mlp_to_transformers",
    "from_transformers",
    "layer_kwargs_from_transformers",
    "to_transformers",
]


@dataclass(frozen=True)
class _BlockSpec:
    """How one transformers block class maps onto MoELayer."""

    name: str
    router: str  # "topk" | "sigmoid_bias"
    normalize_attr: str | None  # router attribute holding norm_topk_prob; None = always normalised
    shared_attr: str | None = None  # block attribute of the shared MLP
    shared_gate_attr: str | None = None  # block attribute of the shared expert's sigmoid gate


_BLOCKS: dict[str, _BlockSpec] = {
    "transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock":
        _BlockSpec("MixtralSparseMoeBlock", "topk", None),
    "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock":
        _BlockSpec("Qwen3MoeSparseMoeBlock", "topk", "norm_topk_prob"),
    "transformers.models.olmoe.modeling_olmoe.OlmoeSparseMoeBlock":
        _BlockSpec("OlmoeSparseMoeBlock", "topk", "norm_topk_prob"),
    "transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock":
        _BlockSpec("Qwen2MoeSparseMoeBlock", "topk", "norm_topk_prob", "shared_expert",
                   "shared_expert_gate"),
    "transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3MoE":
        _BlockSpec("DeepseekV3MoE", "sigmoid_bias", "norm_topk_prob", "shared_experts"),
}

#: Names of the transformers block classes :func:`from_transformers` accepts.
SUPPORTED_BLOCKS: tuple[str, ...] = tuple(spec.name for spec in _BLOCKS.values())


def _block_spec(hf_block: object) -> _BlockSpec:
    for cls in type(hf_block).__mro__:
        spec = _BLOCKS.get(f"{cls.__module__}.{cls.__qualname__}")
        if spec is not None:
            return spec
    raise TypeError(
        f"hf_block is a {type(hf_block).__module__}.{type(hf_block).__qualname__}, which moekit "
        f"cannot convert; supported transformers blocks: {', '.join(SUPPORTED_BLOCKS)}. Pass the "
        "sparse MoE block itself (e.g. model.model.layers[i].mlp), not the decoder layer or model"
    )


def _activation_of(act_fn: object, where: str) -> str:
    """moekit name (``"silu"`` or ``"gelu"``) of a transformers activation module."""
    name = type(act_fn).__name__
    if isinstance(act_fn, nn.SiLU) or name == "SiLUActivation":
        return "silu"
    if name == "GELUActivation" or (isinstance(act_fn, nn.GELU) and act_fn.approximate == "none"):
        return "gelu"
    raise ValueError(
        f"{where} uses activation {name}, which moekit's experts do not implement; supported "
        "hidden_act values are 'silu'/'swish' (-> activation='swiglu') and 'gelu' (exact erf GELU, "
        "-> activation='geglu')"
    )


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


def layer_kwargs_from_transformers(hf_block: nn.Module) -> dict[str, Any]:
    """The :class:`~moekit.layers.MoELayer` arguments that reproduce a transformers MoE block.

    Parameters
    ----------
    hf_block : one of the blocks in :data:`SUPPORTED_BLOCKS` (e.g. ``model.model.layers[i].mlp``).

    Returns
    -------
    dict
        ``d_model``, ``d_ff``, ``num_experts``, ``top_k``, ``router``, ``activation``,
        ``normalize``, shared-expert and (DeepSeek-V3) group/scaling arguments; no weights.

    Raises
    ------
    TypeError
        ``hf_block`` is not a supported block.
    ValueError
        The block uses something moekit does not implement (input jitter, another activation).

    Examples
    --------
    >>> from transformers import MixtralConfig
    >>> from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    >>> cfg = MixtralConfig(hidden_size=16, intermediate_size=32, num_local_experts=4)
    >>> layer_kwargs_from_transformers(MixtralSparseMoeBlock(cfg))["router"]
    'topk'
    """
    spec = _block_spec(hf_block)
    jitter = float(getattr(hf_block, "jitter_noise", 0.0) or 0.0)
    if jitter > 0:
        raise ValueError(
            f"{spec.name}.jitter_noise={jitter} (config.router_jitter_noise) multiplies the input by "
            "uniform noise in training mode, which moekit does not implement; build the block with "
            "router_jitter_noise=0.0 or set hf_block.jitter_noise = 0.0 before converting"
        )
    blk: Any = hf_block
    if not isinstance(getattr(blk, "experts", None), nn.Module) \
            or not isinstance(getattr(blk, "gate", None), nn.Module):
        raise TypeError(f"{spec.name} must have nn.Module attributes .experts and .gate")
    experts: Any = blk.experts
    router: Any = blk.gate
    E, D, F_ = _check_hf_experts(experts)
    if tuple(router.weight.shape) != (E, D):
        raise ValueError(f"{spec.name}.gate.weight has shape {tuple(router.weight.shape)}; "
                         f"expected (num_experts, hidden_size) = ({E}, {D})")
    act = _activation_of(experts.act_fn, f"{spec.name}.experts")
    kwargs: dict[str, Any] = {
        "d_model": D,
        "d_ff": F_,
        "num_experts": E,
        "top_k": int(router.top_k),
        "router": spec.router,
        "activation": "swiglu" if act == "silu" else "geglu",
        "normalize": True if spec.normalize_attr is None else bool(getattr(router, spec.normalize_attr)),
    }
    if spec.router == "sigmoid_bias":
        kwargs["n_group"] = int(router.num_group)
        kwargs["topk_group"] = int(router.topk_group)
        kwargs["routed_scaling_factor"] = float(router.routed_scaling_factor)
    if spec.shared_attr is not None:
        mlp = getattr(hf_block, spec.shared_attr)
        _, F_shared = _check_hf_mlp(mlp)
        shared_act = _activation_of(mlp.act_fn, f"{spec.name}.{spec.shared_attr}")
        if shared_act != act:
            raise ValueError(
                f"{spec.name}.{spec.shared_attr} uses activation {shared_act!r} but the routed experts "
                f"use {act!r}; moekit's MoELayer uses one activation for both"
            )
        kwargs["num_shared_experts"] = 1 if F_shared > 0 else 0
        if F_shared > 0:
            kwargs["shared_d_ff"] = F_shared
        kwargs["shared_expert_gate"] = spec.shared_gate_attr is not None and F_shared > 0
    return kwargs


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


def _copy(hf_block: Any, layer: MoELayer, spec: _BlockSpec, to_moekit: bool) -> None:
    if not isinstance(layer.experts, GroupedExperts):
        raise TypeError("moe_layer.experts must be GroupedExperts (built without experts=[...])")
    router_pairs: list[tuple[torch.Tensor, torch.Tensor]] = [(layer.router.weight, hf_block.gate.weight)]
    if spec.router == "sigmoid_bias":
        router_pairs.append((layer.router.expert_bias, hf_block.gate.e_score_correction_bias))
    with torch.no_grad():
        for ours, theirs in router_pairs:
            (ours if to_moekit else theirs).copy_(theirs if to_moekit else ours)
        if spec.shared_gate_attr is not None and layer.shared_gate is not None:
            theirs_gate = getattr(hf_block, spec.shared_gate_attr).weight
            ours_gate = layer.shared_gate.weight
            (ours_gate if to_moekit else theirs_gate).copy_(theirs_gate if to_moekit else ours_gate)
    if to_moekit:
        copy_experts_from_transformers(hf_block.experts, layer.experts)
    else:
        copy_experts_to_transformers(layer.experts, hf_block.experts)
    if spec.shared_attr is not None and layer.shared_experts is not None:
        mlp = getattr(hf_block, spec.shared_attr)
        if to_moekit:
            copy_mlp_from_transformers(mlp, layer.shared_experts)
        else:
            copy_mlp_to_transformers(layer.shared_experts, mlp)


def from_transformers(
    hf_block: nn.Module,
    *,
    backend: Backend | None = None,
    aux_loss_weight: float | None = None,
    bias_update_rate: float = 0.0,
) -> MoELayer:
    """Build a :class:`~moekit.layers.MoELayer` with a transformers MoE block's weights and maths.

    The layer reproduces the block's forward output (and gradients) for the same input: same
    router logits, same expert choice, same combine weights, same experts, same shared experts.
    It is dropless (``capacity_factor=None``), on the block's device, with the experts in the
    block's dtype and in the block's train/eval mode.

    Parameters
    ----------
    hf_block : a block in :data:`SUPPORTED_BLOCKS`, e.g. ``model.model.layers[i].mlp``.
    backend : moekit dispatch backend (None = automatic, ``"loop"``, ``"grouped_mm"``).
    aux_loss_weight : weight of moekit's Switch balancing loss in ``layer.aux_loss``. None takes
        the block config's ``router_aux_loss_coef`` for softmax routers (the coefficient
        transformers applies when ``output_router_logits=True``) and 0 for DeepSeek-V3.
    bias_update_rate : DeepSeek-V3 only: the aux-loss-free bias update
        ``expert_bias += rate * sign(mean_load - load_e)`` applied by ``update_router_biases``. The default 0
        keeps ``e_score_correction_bias`` fixed, as transformers' block does.

    Returns
    -------
    MoELayer

    Raises
    ------
    TypeError
        ``hf_block`` is not a supported block class.
    ValueError
        The block uses a feature moekit lacks (input jitter, an activation other than SiLU/GELU,
        biased or transposed experts), or ``bias_update_rate`` is set for a non-DeepSeek block.

    Notes
    -----
    transformers sums its load-balancing loss over layers before weighting it once (averaging
    ``f_e`` and ``P_e`` over layers); moekit's :func:`~moekit.layers.total_aux_loss` sums the
    per-layer losses. Per layer they agree.

    Examples
    --------
    >>> import torch
    >>> from transformers import Qwen3MoeConfig
    >>> from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    >>> cfg = Qwen3MoeConfig(hidden_size=16, moe_intermediate_size=8, num_experts=4,
    ...                      num_experts_per_tok=2)
    >>> block = Qwen3MoeSparseMoeBlock(cfg).eval()
    >>> with torch.no_grad():
    ...     for p in block.parameters():
    ...         _ = p.normal_(std=0.25)
    >>> layer = from_transformers(block)
    >>> x = torch.randn(2, 3, 16)
    >>> torch.allclose(layer(x), block(x), atol=1e-5)
    True
    >>> layer.router.config.kind, layer.top_k, layer.router.config.normalize
    ('topk', 2, False)
    """
    spec = _block_spec(hf_block)
    kwargs = layer_kwargs_from_transformers(hf_block)
    if spec.router == "sigmoid_bias":
        kwargs["bias_update_rate"] = bias_update_rate
    elif bias_update_rate != 0.0:
        raise ValueError(
            f"bias_update_rate={bias_update_rate} applies to DeepSeek-V3's sigmoid router only; "
            f"{spec.name} uses a softmax router: drop bias_update_rate"
        )
    if aux_loss_weight is None:
        config = getattr(hf_block.experts, "config", None) or getattr(hf_block, "config", None)
        coef = getattr(config, "router_aux_loss_coef", None)
        aux_loss_weight = 0.0 if spec.router == "sigmoid_bias" or coef is None else float(coef)
    blk: Any = hf_block
    gate_up = blk.experts.gate_up_proj
    # Build on the meta device (no random init of weights about to be overwritten), then
    # allocate in the block's dtypes and copy every tensor.
    with torch.device("meta"):
        layer = MoELayer(**kwargs, backend=backend, aux_loss_weight=aux_loss_weight)
    layer.to(dtype=gate_up.dtype)
    layer.router.weight = nn.Parameter(torch.empty_like(blk.gate.weight, device="meta"))
    if spec.router == "sigmoid_bias":
        layer.router.expert_bias = torch.empty(layer.num_experts, dtype=torch.float32, device="meta")
    if layer.shared_gate is not None and spec.shared_gate_attr is not None:
        layer.shared_gate.to(dtype=getattr(hf_block, spec.shared_gate_attr).weight.dtype)
    layer.to_empty(device=gate_up.device)
    if spec.router == "sigmoid_bias":
        layer.router.pending_counts.zero_()  # to_empty leaves buffers uninitialised
    _copy(hf_block, layer, spec, to_moekit=True)
    return layer.train(hf_block.training)


def _layer_kwargs_of(layer: MoELayer) -> dict[str, Any]:
    cfg = layer.router.config
    kwargs: dict[str, Any] = {
        "d_model": layer.d_model,
        "d_ff": layer.d_ff,
        "num_experts": layer.num_experts,
        "top_k": layer.top_k,
        "router": cfg.kind,
        "activation": getattr(layer.experts, "activation", None),
        "normalize": cfg.normalize,
    }
    if cfg.kind == "sigmoid_bias":
        kwargs.update(n_group=cfg.n_group, topk_group=cfg.topk_group,
                      routed_scaling_factor=cfg.routed_scaling_factor)
    if layer.shared_experts is not None:
        kwargs.update(num_shared_experts=1, shared_d_ff=layer.shared_experts.w_up.shape[1],
                      shared_expert_gate=layer.shared_gate is not None)
    return kwargs


def to_transformers(moe_layer: MoELayer, hf_block: nn.Module) -> None:
    """Copy a :class:`~moekit.layers.MoELayer`'s weights into an existing transformers block.

    The inverse of :func:`from_transformers`: router weight (and DeepSeek-V3's
    ``e_score_correction_bias``), experts, shared experts and the shared-expert gate. The layer
    must have the block's sizes and routing semantics; values are converted to the block's dtypes.

    Raises
    ------
    TypeError
        ``hf_block`` is not a supported block, or ``moe_layer`` is not a MoELayer with grouped experts.
    ValueError
        The layer's sizes or routing settings differ from the block's (the message lists each).

    Examples
    --------
    >>> from transformers import MixtralConfig
    >>> from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    >>> block = MixtralSparseMoeBlock(MixtralConfig(hidden_size=16, intermediate_size=8,
    ...                                             num_local_experts=4))
    >>> layer = from_transformers(block)
    >>> # ... train layer ...
    >>> to_transformers(layer, block)
    """
    spec = _block_spec(hf_block)
    if not isinstance(moe_layer, MoELayer):
        raise TypeError(f"moe_layer is a {type(moe_layer).__name__}; pass a moekit MoELayer")
    want = layer_kwargs_from_transformers(hf_block)
    have = _layer_kwargs_of(moe_layer)
    if want.get("num_shared_experts") == 0:  # an empty shared MLP: nothing to copy
        want = {k: v for k, v in want.items()
                if k not in ("num_shared_experts", "shared_d_ff", "shared_expert_gate")}
    diffs = [f"{k}: layer has {have.get(k)!r}, {spec.name} needs {v!r}"
             for k, v in want.items() if have.get(k) != v]
    diffs += [f"{k}: layer has {v!r}, {spec.name} has none"
              for k, v in have.items() if k not in want]
    if diffs:
        raise ValueError(
            f"moe_layer does not match {spec.name}; differences: " + "; ".join(diffs)
            + ". Build the layer with moekit.integrations.transformers.from_transformers(hf_block) "
            "or MoELayer(**layer_kwargs_from_transformers(hf_block))"
        )
    _copy(hf_block, moe_layer, spec, to_moekit=False)
