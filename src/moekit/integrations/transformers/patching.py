"""Whole-model patching: every transformers sparse-MoE block becomes a moekit layer, in place.

:func:`patch` walks a model's modules, replaces each block that :mod:`.families` describes by a
:class:`~.layer.TransformersMoE` sharing its tensors (same ``nn.Parameter`` objects, same names,
same ``state_dict`` keys), checks each replacement against the block's own forward on a probe
input, and reports what it replaced and what it could not (with the reason). :func:`unpatch`
puts the blocks back. Classes are never changed: only module instances are swapped, through
their parents.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from moekit.integrations.transformers._compat import (
    is_checked,
    require_transformers,
    unchecked_message,
)
from moekit.integrations.transformers.experts import GATED_OF, plain_activation, plan_experts
from moekit.integrations.transformers.families import SPECS, UNSUPPORTED
from moekit.integrations.transformers.layer import TransformersMoE
from moekit.integrations.transformers.spec import BlockSpec, resolve
from moekit.layers.config import (
    Backend,
    DispatchConfig,
    DropPolicy,
    ExpertsConfig,
    MoEConfig,
    SharedExpertsConfig,
)
from moekit.layers.experts import GroupedExperts
from moekit.layers.routing import RouterConfig

#: (family, block class name) -> its spec, and -> why it is not patched (read-only tables).
_SPECS: Mapping[tuple[str, str], BlockSpec] = MappingProxyType(
    {(spec.family, name): spec for spec in SPECS for name in spec.blocks})
_UNSUPPORTED: Mapping[tuple[str, str], str] = MappingProxyType(
    {(u.family, name): u.reason for u in UNSUPPORTED for name in u.blocks})


@dataclass(frozen=True)
class PatchReport:
    """What :func:`patch` did.

    Attributes
    ----------
    patched : block class name -> how many instances were replaced by moekit layers.
    unsupported : block class name -> why moekit cannot express it exactly (left as it is).
    notes : anything else worth knowing (options that did not apply to some layers, checks
        skipped).
    """

    patched: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"patched {sum(self.patched.values())} block(s)"]
        lines += [f"  {name}: {count}" for name, count in sorted(self.patched.items())]
        if self.unsupported:
            lines.append("not patched:")
            lines += [f"  {name}: {why}" for name, why in sorted(self.unsupported.items())]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class _Refused(Exception):
    """A block instance moekit cannot express: the message is the reason."""


def _family(cls: type) -> str:
    parts = cls.__module__.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["transformers", "models"] else ""


def _lookup(module: nn.Module) -> tuple[BlockSpec | None, str | None]:
    """(spec, None), (None, reason) or (None, None) for a module that is no MoE block."""
    cls = type(module)
    key = (_family(cls), cls.__name__)
    if key in _SPECS:
        return _SPECS[key], None
    if key in _UNSUPPORTED:
        return None, _UNSUPPORTED[key]
    for base in cls.__mro__[1:]:
        base_key = (_family(base), base.__name__)
        if base_key in _SPECS or base_key in _UNSUPPORTED:
            return None, (f"a subclass of transformers' {base.__name__}; its forward may differ "
                          "from the block moekit knows, so it is left alone")
    children = [type(c).__name__ for c in module.children()]
    if any(name.endswith("Experts") for name in children):
        return None, (f"moekit has no description of this block class "
                      f"({cls.__module__}.{cls.__qualname__}); use "
                      "experts_implementation='moekit' for its experts")
    return None, None


def _walk(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, child name, child) for every module, not descending into MoE blocks."""
    stack: list[nn.Module] = [model]
    while stack:
        parent = stack.pop()
        for name, child in parent.named_children():
            yield parent, name, child
            if not isinstance(child, TransformersMoE) and _lookup(child) == (None, None):
                stack.append(child)


def _first_weight(module: nn.Module) -> torch.Tensor:
    for param in module.parameters():
        return param
    raise _Refused(f"{type(module).__name__} has no parameters")


def _shared_width(module: nn.Module) -> int:
    """The hidden width of a dense MLP: the input features of its last projection."""
    for name in ("down_proj", "output_linear", "c_proj", "fc2", "w2"):
        proj = getattr(module, name, None)
        if isinstance(proj, nn.Linear):
            return int(proj.in_features)
    return int(max(p.shape[0] for p in module.parameters() if p.dim() == 2))


def build_layer(block: nn.Module, spec: BlockSpec, *, backend: Backend | None = None) -> TransformersMoE:
    """The moekit layer for one block instance; raises ``_Refused`` with the reason."""
    for attr, reason in spec.refuse:
        if attr.read(block):
            raise _Refused(reason)
    try:
        experts_module = block.get_submodule(spec.experts)
    except AttributeError as err:
        raise _Refused(f"has no experts child {spec.experts!r}") from err
    if getattr(experts_module, "_is_expert_parallel", False):
        raise _Refused("transformers' expert parallelism already sharded its experts; patch the "
                       "model before distributing it, and use moekit.parallel.apply_expert_parallel")
    if spec.layout is None:
        try:
            plan = plan_experts(experts_module)
        except TypeError as err:
            raise _Refused(str(err)) from err
        if not plan.exact_as_data:
            raise _Refused(f"its experts' {plan.reason}")
        if plan.post_norm:
            raise _Refused("its experts normalise each expert's output before the combine")
        layout, unit, E = plan.layout, plan.activation, plan.num_experts
        activation, glu = unit.activation, unit.glu
    else:
        layout, glu = spec.layout, None
        act_fn = getattr(experts_module, "act_fn", None)
        if act_fn is None:
            act_fn = getattr(getattr(experts_module, "mlp", None), "activation_fn", None)
        base = spec.activation or plain_activation(act_fn)
        gated = GATED_OF.get(base or "")  # explicit layouts are gated
        if gated is None:
            raise _Refused(f"its experts' activation {type(act_fn).__name__} has no moekit form")
        activation = gated
        E = int(getattr(experts_module, "num_experts"))  # noqa: B009 - a module attribute
    try:
        experts = GroupedExperts.adopt(experts_module, layout, activation=activation,  # type: ignore[arg-type]
                                       glu=glu, num_experts=E)
    except (ValueError, TypeError) as err:
        raise _Refused(str(err)) from err
    extra = set(experts_module.state_dict()) - set(experts.state_dict())
    if extra:
        raise _Refused(f"its experts hold tensors moekit does not use: {sorted(extra)}")
    try:
        fields = {k: resolve(v, block) for k, v in spec.router}
        bias_path = resolve(spec.bias, block) if spec.bias is not None else None
        if bias_path is not None and not isinstance(bias_path, str):
            raise LookupError(f"bias path {bias_path!r}")
        fields.setdefault("expert_bias", bias_path is not None)
        fields["expert_bias"] = bool(fields["expert_bias"]) and bias_path is not None
        if "normalize" in fields:
            fields["normalize"] = bool(fields["normalize"])
        router = RouterConfig(d_model=experts.d_model, bias_update_rate=0.0, **fields)
    except (LookupError, ValueError, TypeError) as err:
        raise _Refused(f"its routing cannot be read: {err}") from err
    shared = [s for s in spec.shared if isinstance(getattr(block, s.module, None), nn.Module)]
    shared_cfg = None
    if shared:
        shared_cfg = SharedExpertsConfig(
            d_ff=sum(_shared_width(block.get_submodule(s.module)) for s in shared),
            gate=any(s.gate is not None for s in shared))
    has_bias = layout.in_bias is not None or layout.down_bias is not None
    config = MoEConfig(
        router=router,
        experts=ExpertsConfig(d_ff=experts.d_ff, activation=activation, bias=has_bias,  # type: ignore[arg-type]
                              glu=experts.glu),
        dispatch=DispatchConfig(backend=backend, apply_weights=spec.apply_weights),
        shared=shared_cfg, aux_loss_weight=0.0, z_loss_weight=0.0)
    return TransformersMoE(block, spec, config, experts, experts_module)


def _outputs(out: Any) -> list[torch.Tensor]:
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


@torch.no_grad()
def verify_layer(block: nn.Module, layer: TransformersMoE, *, tokens: int = 6) -> str | None:
    """Compare a layer with the block it replaces on a probe input; the reason if they differ."""
    weight = _first_weight(block)
    if weight.device.type == "meta":
        return None
    D = layer.d_model
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, tokens // 2, D, generator=gen).to(device=weight.device, dtype=weight.dtype)
    was_training = block.training
    block.eval()
    layer.eval()
    try:
        ref = _outputs(block(x.clone()))
        got = _outputs(layer(x.clone()))
    finally:
        block.train(was_training)
        layer.train(was_training)
    if len(ref) != len(got):
        return f"returns {len(got)} tensors where the block returns {len(ref)}"
    tol = 1e-4 if weight.dtype in (torch.float32, torch.float64) else 3e-2
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            return f"returns shape {tuple(g.shape)} where the block returns {tuple(r.shape)}"
        scale = max(1.0, float(r.abs().max()))
        delta = float((r.float() - g.float()).abs().max())
        if not delta <= tol * scale:
            return (f"differs from transformers' forward on a probe input by {delta:.3g} "
                    f"(scale {scale:.3g}); left unpatched")
    return None


def patch(
    model: nn.Module,
    *,
    backend: Backend | None = None,
    verify: bool = True,
    aux_loss_weight: float = 0.0,
    z_loss_weight: float = 0.0,
    capacity_factor: float | None = None,
    drop_policy: DropPolicy = "position",
    bias_update_rate: float = 0.0,
) -> PatchReport:
    """Replace every transformers sparse-MoE block of ``model`` by a moekit layer, in place.

    Each replacement is a :class:`~moekit.layers.MoELayer` (``TransformersMoE``) that shares the
    block's tensors: no copy, the same parameter names and ``state_dict`` keys (an optimizer built
    before keeps training the same tensors; ``save_pretrained`` writes a checkpoint vanilla
    transformers loads). The block's router module keeps running, so ``output_router_logits``,
    the aux loss and ``generate`` are unchanged; moekit routes from its logits with the block's
    rule as data, then dispatches and runs the experts itself. Blocks moekit cannot express
    exactly are left as they are and listed in ``report.unsupported`` with the reason.

    Parameters
    ----------
    model : any module holding transformers MoE blocks (a ``PreTrainedModel``, a decoder layer).
    backend : moekit's dispatch backend: None (automatic), ``"grouped_mm"`` or ``"loop"``.
    verify : compare each replacement with the block's own forward on a probe input (float32:
        1e-4 relative) before swapping it in; one that differs is left unpatched and reported.
        Always on for a transformers release moekit's table was not checked against.
    aux_loss_weight, z_loss_weight : moekit's balancing losses in each layer's ``aux_loss``
        (add ``moekit.layers.total_aux_loss(model)`` to your loss); 0 keeps the model's own
        training objective.
    capacity_factor, drop_policy : token-choice capacity (None: dropless, as transformers).
    bias_update_rate : aux-loss-free balancing of the blocks that have a choice bias
        (DeepSeek-V3's ``e_score_correction_bias`` and the like): call
        ``moekit.layers.update_router_biases(model)`` after each optimizer step; the bias
        transformers saves is the one that moves.

    Returns
    -------
    PatchReport
        ``patched`` {block class: count}, ``unsupported`` {block class: reason}, ``notes``.

    Raises
    ------
    ImportError
        transformers is missing or older than 5.

    Examples
    --------
    >>> import torch
    >>> from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    >>> from moekit.integrations.transformers import patch, unpatch
    >>> cfg = Qwen3MoeConfig(hidden_size=16, moe_intermediate_size=8, num_hidden_layers=2,
    ...                      num_attention_heads=2, num_key_value_heads=1, num_experts=4,
    ...                      num_experts_per_tok=2, vocab_size=50)
    >>> model = Qwen3MoeForCausalLM(cfg).eval()
    >>> report = patch(model)
    >>> report.patched
    {'Qwen3MoeSparseMoeBlock': 2}
    >>> unpatch(model)
    2
    """
    version = require_transformers("moekit.integrations.transformers.patch")
    notes: list[str] = []
    if not is_checked(version):
        warnings.warn(unchecked_message(version), stacklevel=2)
        notes.append(unchecked_message(version))
        verify = True
    patched: Counter[str] = Counter()
    unsupported: dict[str, str] = {}
    layers: list[TransformersMoE] = []
    for parent, name, child in list(_walk(model)):
        if isinstance(child, TransformersMoE):
            patched[type(child.original.block).__name__] += 1
            continue
        spec, reason = _lookup(child)
        cls_name = type(child).__name__
        if spec is None:
            if reason is not None:
                unsupported[cls_name] = reason
            continue
        try:
            layer = build_layer(child, spec, backend=backend)
        except _Refused as refused:
            unsupported[cls_name] = str(refused)
            continue
        if verify:
            why = verify_layer(child, layer)
            if why is not None:
                unsupported[cls_name] = why
                continue
        setattr(parent, name, layer)
        patched[cls_name] += 1
        layers.append(layer)
    notes += _apply_options(layers, aux_loss_weight=aux_loss_weight, z_loss_weight=z_loss_weight,
                            capacity_factor=capacity_factor, drop_policy=drop_policy,
                            bias_update_rate=bias_update_rate)
    return PatchReport(dict(patched), unsupported, tuple(notes))


def _apply_options(layers: list[TransformersMoE], *, aux_loss_weight: float, z_loss_weight: float,
                   capacity_factor: float | None, drop_policy: DropPolicy,
                   bias_update_rate: float) -> list[str]:
    notes: list[str] = []
    without_bias: set[str] = set()
    for layer in layers:
        cfg = layer.config
        router = cfg.router
        if bias_update_rate:
            if router.expert_bias:
                router = dataclasses.replace(router, bias_update_rate=bias_update_rate)
            else:
                without_bias.add(type(layer.original.block).__name__)
        layer.config = dataclasses.replace(
            cfg, router=router, aux_loss_weight=aux_loss_weight, z_loss_weight=z_loss_weight,
            dispatch=dataclasses.replace(cfg.dispatch, capacity_factor=capacity_factor,
                                         drop_policy=drop_policy))
        layer.moekit_router.config = router
    if without_bias:
        notes.append(f"bias_update_rate applies to blocks with a choice bias; "
                     f"{', '.join(sorted(without_bias))} have none (use aux_loss_weight)")
    return notes


def unpatch(model: nn.Module) -> int:
    """Put the original transformers blocks back where :func:`patch` replaced them.

    The blocks get the current tensors (trained, moved or cast since patching) under their own
    names. Returns the number of blocks restored.
    """
    restored = 0
    for parent, name, child in list(_walk(model)):
        if not isinstance(child, TransformersMoE):
            continue
        block, hf_experts = child.original.block, child.original.experts
        for pname, param in child.named_parameters(recurse=False):
            setattr(block, pname, param)
        for bname, buf in child.named_buffers(recurse=False):
            block._buffers[bname] = buf
        for cname, sub in child.named_children():
            if cname == "moekit_router":
                continue
            if cname == child.spec.experts:
                for pname in child.experts.layout.names:
                    head, _, leaf = pname.partition(".")
                    if not leaf:
                        setattr(hf_experts, pname, child.experts.get_parameter(pname))
                setattr(block, cname, hf_experts)
            else:
                setattr(block, cname, sub)
        block.train(child.training)
        setattr(parent, name, block)
        restored += 1
    return restored

