"""Apply expert parallelism to a model from outside: shard the experts, swap the dispatcher.

Legend: E experts of a layer, R ranks of the expert-parallel (EP) group, L = E / R.

:func:`apply_expert_parallel` walks the model's :class:`~moekit.layers.MoELayer`\\ s and, on rank
r of the EP group, replaces each layer's ``experts`` by the experts ``[r*L, (r+1)*L)`` (a
:class:`~moekit.layers.GroupedExperts` with the same parameter names, sliced along the expert
dimension) and its ``dispatcher`` by an :class:`~moekit.parallel.AllToAllDispatcher` around the
local one. It also installs the reductions that make balancing global: ``layer.reduce_sums``
(aux losses of the whole batch) and ``router.reduce_counts`` (``sigmoid_bias`` counts), both over
the *batch group*: every rank whose tokens make up one step's batch (the whole mesh of a 2-D
``(dp, ep)`` DeviceMesh, else the world). Model code is unchanged; nothing is monkey-patched.

Checks, each an error on every rank at once (never a hang): the process group is initialised;
every rank built the same MoE layers (num_experts, top_k, router, sizes); E is divisible by R
(naming the layer); the model has MoE layers; it was not converted before.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from moekit.layers import GroupedExperts, ModuleExperts, MoELayer
from moekit.layers.routing import ROUTERS
from moekit.parallel.all_to_all import AllToAllDispatcher
from moekit.parallel.collectives import CountsOverGroup, SumOverGroup, collective


@dataclass(frozen=True, kw_only=True)
class ExpertParallelPlan:
    """What :func:`apply_expert_parallel` did, for training code that composes with it.

    Attributes
    ----------
    layers : names of the converted MoE layers, in model order.
    ep_group : the expert-parallel group (tokens travel within it).
    ep_size, ep_rank : its size R and this rank's index.
    batch_group : the ranks whose tokens form one batch (aux losses and bias counts are reduced
        over it; DDP averages the replicated parameters over it).
    replica_group : the ranks holding the same expert shard as this one (the ``dp`` dimension of
        a 2-D mesh), over which expert gradients must be averaged; None when each shard lives on
        one rank of the batch group.
    expert_parameters : names of the sharded parameters (``blocks.0.mlp.experts.w_in``, ...).
    """

    layers: tuple[str, ...]
    ep_group: dist.ProcessGroup
    ep_size: int
    ep_rank: int
    batch_group: dist.ProcessGroup
    replica_group: dist.ProcessGroup | None
    expert_parameters: tuple[str, ...]


def _require_initialised() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "apply_expert_parallel needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group('gloo' on CPU or 'nccl' on GPU) first, e.g. "
            "under `torchrun --nproc-per-node N script.py` (or use `moekit train CONFIG --nproc N`)")


def _groups(group: dist.ProcessGroup | DeviceMesh | None, batch_group: dist.ProcessGroup | None,
            ) -> tuple[dist.ProcessGroup, dist.ProcessGroup, dist.ProcessGroup | None]:
    """(EP group, batch group, replica group) of the ``group`` argument."""
    world = cast(dist.ProcessGroup, dist.group.WORLD)  # initialised (checked before)
    replica: dist.ProcessGroup | None = None
    if group is None:
        ep = world
    elif isinstance(group, DeviceMesh):
        if group.ndim == 1:
            ep = group.get_group()
        elif group.ndim == 2:
            names = group.mesh_dim_names or ()
            ep_dim = names.index("ep") if "ep" in names else 1
            ep, replica = group.get_group(ep_dim), group.get_group(1 - ep_dim)
            if batch_group is None:
                ranks = group.mesh.flatten().tolist()
                batch_group = world if len(ranks) == dist.get_world_size() else \
                    dist.new_group(sorted(ranks))
        else:
            raise ValueError(f"group is a {group.ndim}-D DeviceMesh; pass a 1-D mesh (expert "
                             "parallel) or a 2-D mesh ('dp', 'ep') of data x expert parallel")
    elif isinstance(group, dist.ProcessGroup):
        ep = group
    else:
        raise TypeError(f"group is a {type(group).__name__}; pass None (the world), a "
                        "torch.distributed ProcessGroup, or a 1-D or 2-D DeviceMesh")
    if batch_group is None:
        batch_group = world
    if replica is not None and dist.get_world_size(replica) == 1:
        replica = None
    return ep, batch_group, replica


def _fingerprint(layer: MoELayer) -> list[int]:
    cfg = layer.config
    return [cfg.num_experts, cfg.top_k, ROUTERS.index(cfg.router.kind), cfg.d_model, cfg.d_ff,
            zlib.crc32(repr(cfg).encode())]


_FIELDS = ("num_experts", "top_k", "router", "d_model", "d_ff", "config")


def _check_same_everywhere(names: list[str], layers: list[MoELayer],
                           group: dist.ProcessGroup) -> None:
    """Every rank of ``group`` holds the same MoE layers; else the same error on every rank."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    device = next((p.device for p in layers[0].parameters()), torch.device("cpu"))
    if device.type == "meta":
        device = torch.device("cuda" if dist.get_backend(group) == "nccl" else "cpu")
    counts = torch.zeros(size, dtype=torch.int64, device=device)
    counts[rank] = len(layers)
    with collective("configuration check (all_reduce)", group, "apply_expert_parallel"):
        dist.all_reduce(counts, group=group)
    n = counts.tolist()
    if len(set(n)) > 1:
        raise ValueError(f"the ranks hold different numbers of MoE layers ({n} on ranks "
                         f"0..{size - 1}); every rank must build the same model")
    table = torch.zeros(size, len(layers), len(_FIELDS), dtype=torch.int64, device=device)
    table[rank] = torch.tensor([_fingerprint(layer) for layer in layers], dtype=torch.int64)
    with collective("configuration check (all_reduce)", group, "apply_expert_parallel"):
        dist.all_reduce(table, group=group)
    rows = table.cpu()
    for i, name in enumerate(names):
        for other in range(1, size):
            for f, field in enumerate(_FIELDS):
                a, b = int(rows[0, i, f]), int(rows[other, i, f])
                if a != b:
                    if field == "router":
                        a_s, b_s = ROUTERS[a], ROUTERS[b]
                        what = f"router={a_s!r} on rank 0 but {b_s!r} on rank {other}"
                    elif field == "config":
                        what = f"its MoEConfig differs between rank 0 and rank {other}"
                    else:
                        what = f"{field}={a} on rank 0 but {b} on rank {other}"
                    raise ValueError(f"MoE layer {name!r} differs across ranks: {what}; every "
                                     "rank must build the same model (same config) before "
                                     "apply_expert_parallel")


def _shard(experts: GroupedExperts, rank: int, size: int) -> GroupedExperts:
    """The experts ``[rank*L, (rank+1)*L)``: same class, parameter names and kernel, own memory."""
    L = experts.num_experts // size
    with torch.device("meta"):  # no throw-away initialisation; the slices replace every tensor
        local = GroupedExperts(experts.d_model, experts.d_ff, L, experts.activation,
                               bias=experts.b_in is not None, kernel=experts.kernel)
    for name, param in experts.named_parameters(recurse=False):
        piece = param.detach()[rank * L:(rank + 1) * L].clone()
        setattr(local, name, nn.Parameter(piece, requires_grad=param.requires_grad))
    local.train(experts.training)
    return local


def apply_expert_parallel(model: nn.Module, group: dist.ProcessGroup | DeviceMesh | None = None,
                          *, batch_group: dist.ProcessGroup | None = None) -> ExpertParallelPlan:
    """Shard every MoE layer's experts over a process group; tokens travel by all-to-all.

    Call it on every rank, on the same freshly built model (same config and seed), before
    building the optimizer and before wrapping the model in DDP/FSDP. Each rank then passes its
    own tokens (any number, zero included) and every layer behaves like the single-process layer
    on the concatenation of all ranks' tokens: same outputs and gradients (under the averaging
    convention of :mod:`moekit.parallel.all_to_all`), global-batch aux losses, identical
    ``sigmoid_bias`` biases. The exceptions are the decisions bounded per batch, which are made
    per source rank over its own tokens: token-choice capacity (``capacity_factor``) and
    ``expert_choice`` selection (GShard's local groups; the single-process layer run on each
    rank's tokens separately). ``layer.stats.comm`` reports the traffic.

    Parameters
    ----------
    model : any module holding :class:`~moekit.layers.MoELayer`\\ s with grouped FFN experts.
    group : None (the world), a ProcessGroup, a 1-D DeviceMesh, or a 2-D DeviceMesh of data x
        expert parallel (the dimension named ``"ep"``, else the last, is the EP group; each
        shard is replicated along the other).
    batch_group : the ranks whose tokens form one batch; default the whole mesh for a 2-D
        DeviceMesh, else the world.

    Returns
    -------
    ExpertParallelPlan

    Raises
    ------
    RuntimeError : no initialised process group.
    ValueError : no MoE layer, already applied, ``num_experts`` not divisible by the group size
        (naming the layer), or layers that differ across ranks.
    TypeError : a layer built with ``experts=[...]`` modules (only grouped experts are sharded).

    Examples
    --------
    Under ``torchrun --nproc-per-node 2 train.py`` (gloo on CPU)::

        import torch.distributed as dist
        from moekit.parallel import apply_expert_parallel, full_state_dict
        dist.init_process_group("gloo")
        torch.manual_seed(0)                      # the same model on every rank
        model = MyModel()
        plan = apply_expert_parallel(model)       # rank r keeps experts [r*E/2, (r+1)*E/2)
        y = model(x_local)                        # this rank's tokens
        sd = full_state_dict(model)               # the single-process state dict
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}; pass an nn.Module")
    _require_initialised()
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, MoELayer)]
    if not found:
        raise ValueError(f"model ({type(model).__name__}) has no moekit.layers.MoELayer; expert "
                         "parallelism shards the experts of MoE layers (a dense model needs only "
                         "DDP/FSDP)")
    for name, layer in found:
        if isinstance(layer.dispatcher, AllToAllDispatcher):
            raise ValueError(f"apply_expert_parallel was already applied to this model (layer "
                             f"{name!r} already has an AllToAllDispatcher); apply it once, to a "
                             "freshly built model")
        if isinstance(layer.experts, ModuleExperts):
            raise TypeError(f"MoE layer {name!r} holds experts=[...] modules; expert parallelism "
                            "shards grouped FFN experts (MoELayer without experts=)")
    ep, batch, replica = _groups(group, batch_group)
    size, rank = dist.get_world_size(ep), dist.get_rank(ep)
    names = [name or "<model>" for name, _ in found]
    _check_same_everywhere(names, [layer for _, layer in found], batch)
    for name, layer in zip(names, (layer for _, layer in found)):
        if layer.num_experts % size:
            divisors = [d for d in range(1, layer.num_experts + 1) if layer.num_experts % d == 0]
            raise ValueError(f"MoE layer {name!r}: num_experts={layer.num_experts} is not "
                             f"divisible by the expert-parallel group size {size}; use a group "
                             f"size in {divisors} or a multiple of {size} experts")
    expert_params: list[str] = []
    for (prefix, layer), name in zip(found, names):
        context = f"MoE layer {name!r}"
        layer.experts = _shard(cast(GroupedExperts, layer.experts), rank, size)
        layer.dispatcher = AllToAllDispatcher(layer.dispatcher, ep, num_experts=layer.num_experts,
                                              context=context)
        layer.reduce_sums = SumOverGroup(batch, context)
        layer.router.reduce_counts = CountsOverGroup(batch, context)
        base = f"{prefix}.experts" if prefix else "experts"
        expert_params += [f"{base}.{p}" for p, _ in layer.experts.named_parameters()]
    return ExpertParallelPlan(layers=tuple(names), ep_group=ep, ep_size=size, ep_rank=rank,
                              batch_group=batch, replica_group=replica,
                              expert_parameters=tuple(expert_params))


def expert_layers(model: nn.Module) -> list[tuple[str, MoELayer, AllToAllDispatcher]]:
    """``(name, layer, dispatcher)`` of every MoE layer that expert parallelism converted."""
    return [(name, m, m.dispatcher) for name, m in model.named_modules()
            if isinstance(m, MoELayer) and isinstance(m.dispatcher, AllToAllDispatcher)]
