"""State dicts across expert parallelism: the single-process layout, gathered and re-sliced.

Legend: E experts of a layer, R ranks of its expert-parallel group, L = E / R.

Under expert parallelism each rank's ``model.state_dict()`` holds its own experts (``(L, ...)``
slices along the expert dimension, same keys) and the replicated rest. :func:`full_state_dict`
gathers the slices (an all-gather over each layer's EP group) into exactly the state dict of the
single-process model; :func:`load_full_state_dict` loads one into any EP layout (each rank keeps
its slice). Together they make checkpoints independent of the number of ranks: save at 2, load
at 4 or in one process, and back. The optimizer state of the expert parameters (Adam's moments)
is gathered and sliced the same way (:func:`full_optimizer_state_dict`).

Replicated parameters sharded by FSDP2 (``fully_shard``, DTensors) are gathered to full tensors
and loaded back as this rank's shard, so the layout of a checkpoint never depends on DDP or FSDP.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from moekit.parallel.collectives import collective
from moekit.parallel.sharding import expert_layers


def _expert_tensors(model: nn.Module) -> dict[str, tuple[dist.ProcessGroup, int, int]]:
    """state-dict key -> (EP group, rank, size) for every sharded tensor of ``model``."""
    out: dict[str, tuple[dist.ProcessGroup, int, int]] = {}
    for name, layer, dispatcher in expert_layers(model):
        base = f"{name}.experts" if name else "experts"
        for key, _ in layer.experts.named_parameters():
            out[f"{base}.{key}"] = (dispatcher.group, dispatcher.rank, dispatcher.num_ranks)
    return out


def _is_dtensor(t: object) -> bool:
    return hasattr(t, "full_tensor") and hasattr(t, "device_mesh")


def _full(t: Any) -> Any:
    """A DTensor (an FSDP2 shard) gathered to the full tensor (a collective), else ``t``."""
    return t.full_tensor() if _is_dtensor(t) else t


def _like(value: torch.Tensor, own: Any) -> Any:
    """``value`` (a full tensor) as ``own`` holds it: this rank's DTensor shard where ``own``
    is a DTensor, else ``value`` itself."""
    if not _is_dtensor(own) or _is_dtensor(value):
        return value
    from torch.distributed.tensor import distribute_tensor

    local_only = ({"src_data_rank": None} if "src_data_rank" in
                  inspect.signature(distribute_tensor).parameters else {})
    return distribute_tensor(value.to(own.device, own.dtype), own.device_mesh, own.placements,
                             **local_only)


def _gather(t: torch.Tensor, group: dist.ProcessGroup, size: int, what: str) -> torch.Tensor:
    pieces = [torch.empty_like(t) for _ in range(size)]
    with collective("all_gather", group, what):
        dist.all_gather(pieces, t.detach().contiguous(), group=group)
    return torch.cat(pieces, dim=0)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the single-process model, on every rank (same keys, full experts).

    A collective: call it on every rank. Replicated tensors are this rank's own (DDP keeps them
    equal); expert tensors are gathered. Tensors stay on the model's device; tied weights keep
    sharing storage as in ``model.state_dict()``.

    Examples
    --------
    >>> import torch
    >>> from moekit.layers import MoELayer
    >>> from moekit.parallel import full_state_dict
    >>> moe = MoELayer(8, 16, 4)              # in one process it is model.state_dict()
    >>> sorted(full_state_dict(moe)) == sorted(moe.state_dict())
    True
    """
    sharded = _expert_tensors(model)
    out: dict[str, torch.Tensor] = {}
    gathered: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key in sharded:
            group, _, size = sharded[key]
            out[key] = _gather(value, group, size, f"full_state_dict ({key!r})")
        elif _is_dtensor(value):  # FSDP2: gather once per storage, so tied weights stay tied
            tie = (_ptr(value), tuple(value.shape))
            if tie not in gathered:
                gathered[tie] = _full(value)
            out[key] = gathered[tie]
        else:
            out[key] = value
    return out


def load_full_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                         strict: bool = True) -> None:
    """Load a single-process state dict into ``model``; each rank keeps its experts' slice.

    Works in one process too (then it is ``model.load_state_dict``). Keys missing because the
    saved model tied them (a head sharing the embedding's tensor) are filled from their twin.

    Raises
    ------
    ValueError : missing or unexpected keys (with ``strict``), or an expert tensor whose first
        dimension is not the layer's ``num_experts``.
    """
    sharded = _expert_tensors(model)
    own = model.state_dict()
    local: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in sharded and key in own:
            _, rank, size = sharded[key]
            L = own[key].shape[0]
            if value.shape[0] != L * size or value.shape[1:] != own[key].shape[1:]:
                raise ValueError(f"state dict entry {key!r} has shape {tuple(value.shape)}, but "
                                 f"the model's full tensor is {(L * size, *own[key].shape[1:])}; "
                                 "load a state dict of the same model")
            local[key] = value[rank * L:(rank + 1) * L]
        else:
            local[key] = _like(value, own[key]) if key in own else value
    _fill_tied(model, own, local)
    missing = sorted(set(own) - set(local))
    unexpected = sorted(set(local) - set(own))
    if strict and (missing or unexpected):
        raise ValueError(f"state dict does not match the model: missing {missing}, unexpected "
                         f"{unexpected}; build the model with the config it was saved from")
    model.load_state_dict(local, strict=False)


def _fill_tied(model: nn.Module, own: Mapping[str, torch.Tensor],
               local: dict[str, torch.Tensor]) -> None:
    """Fill keys absent from ``local`` whose tensor the model shares with a present key."""
    by_storage: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for key, t in own.items():
        by_storage.setdefault((_ptr(t), tuple(t.shape)), []).append(key)
    for keys in by_storage.values():
        present = [k for k in keys if k in local]
        if len(keys) > 1 and present and _ptr(own[keys[0]]) != 0:
            for k in keys:
                local.setdefault(k, local[present[0]])


def _ptr(t: Any) -> int:
    return int((t.to_local() if _is_dtensor(t) else t).data_ptr())


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state_dict(model: nn.Module,
                              optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as the single-process optimizer would hold it.

    The state tensors of expert parameters that have the parameter's shape (Adam's moments) are
    gathered along the expert dimension; the rest (step counts, hyper-parameters) is this rank's.
    Parameter indices match the single-process optimizer's when both were built over
    ``model.parameters()`` in the same way. A collective: call it on every rank.
    """
    names = _expert_tensors(model)
    sharded = {id(p): names[name] for name, p in model.named_parameters() if name in names}
    sd = optimizer.state_dict()
    params = _optimizer_params(optimizer)
    _check_same_state(params, sd, sharded, "full_optimizer_state_dict")
    state: dict[int, dict[str, Any]] = {}
    for index in sorted(sd["state"]):
        param = params[index]
        entry = dict(sd["state"][index])
        if id(param) in sharded:
            group, _, size = sharded[id(param)]
            for key in sorted(entry):
                value = entry[key]
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    entry[key] = _gather(value, group, size, f"optimizer state ({key!r})")
        else:
            entry = {key: _full(entry[key]) for key in sorted(entry)}  # FSDP2's moments
        state[index] = entry
    return {"state": state, "param_groups": sd["param_groups"]}


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer,
                                   state_dict: Mapping[str, Any]) -> None:
    """Load a single-process optimizer state dict; expert moments are sliced to this rank's."""
    names = _expert_tensors(model)
    sharded = {id(p): names[name] for name, p in model.named_parameters() if name in names}
    params = _optimizer_params(optimizer)
    state: dict[int, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        index = int(index)
        if index >= len(params):
            raise ValueError(f"optimizer state holds parameter {index}, but the optimizer has "
                             f"{len(params)} parameters; load a state saved from the same model")
        param = params[index]
        entry = dict(entry)
        if id(param) in sharded:
            _, rank, size = sharded[id(param)]
            L = param.shape[0]
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and value.shape == (L * size, *param.shape[1:]):
                    entry[key] = value[rank * L:(rank + 1) * L].clone()
        elif _is_dtensor(param):  # FSDP2: the moments are shards like the parameter
            entry = {key: _like(value, param) if isinstance(value, torch.Tensor)
                     and value.shape == param.shape else value for key, value in entry.items()}
        state[index] = entry
    optimizer.load_state_dict({"state": state, "param_groups": state_dict["param_groups"]})


def _check_same_state(params: list[nn.Parameter], sd: Mapping[str, Any],
                      sharded: Mapping[int, tuple[dist.ProcessGroup, int, int]], what: str) -> None:
    """Every rank of each EP group holds state for the same expert parameters (else an error on
    every rank, before any gather could hang)."""
    groups: dict[int, tuple[dist.ProcessGroup, list[int]]] = {}
    for index, param in enumerate(params):
        if id(param) in sharded:
            group = sharded[id(param)][0]
            groups.setdefault(id(group), (group, []))[1].append(index)
    for group, indices in groups.values():
        has = torch.tensor([int(i in sd["state"]) for i in indices], dtype=torch.int64,
                           device=params[indices[0]].device)
        low = has.clone()
        with collective("all_reduce", group, what):
            dist.all_reduce(has, op=dist.ReduceOp.MAX, group=group)
            dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
        if not torch.equal(has, low):
            raise ValueError(f"{what}: the ranks hold optimizer state for different expert "
                             "parameters (a rank skipped a step?); every rank must step together")
