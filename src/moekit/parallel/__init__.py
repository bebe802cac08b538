"""Expert parallelism on ``torch.distributed``, applied from outside the model.

Each rank of a process group holds ``E / R`` of every MoE layer's experts; tokens travel to the
ranks holding their experts and back by all-to-all (gloo on CPU, NCCL on GPU, launched by
``torchrun`` or ``moekit train --nproc N``). The model code is unchanged: :mod:`moekit.layers`
never imports ``torch.distributed``; this package replaces each layer's ``experts`` and
``dispatcher`` and installs the global-batch reductions of its balancing statistics.

::

    import torch.distributed as dist
    from moekit.parallel import apply_expert_parallel, full_state_dict, load_full_state_dict
    dist.init_process_group()                  # under torchrun; gloo on CPU, NCCL on GPU
    model = MyModel()                          # any nn.Module holding moekit MoELayers
    apply_expert_parallel(model, group=None)   # None = WORLD; a ProcessGroup or a DeviceMesh
    y = model(x_local)                         # each rank passes its own tokens (any count, 0 too)
    sd = full_state_dict(model)                # the single-process state dict, same keys
    load_full_state_dict(model, sd)            # each rank keeps its shard

Modules: :mod:`~moekit.parallel.all_to_all` (the dispatcher and its gradient convention),
:mod:`~moekit.parallel.collectives` (moekit's own differentiable collectives),
:mod:`~moekit.parallel.sharding` (applying it), :mod:`~moekit.parallel.state` (state dicts).
"""

from moekit.parallel.all_to_all import AllToAllDispatcher, ExpertParallelMetadata, plan_routes
from moekit.parallel.collectives import CollectiveError
from moekit.parallel.sharding import ExpertParallelPlan, apply_expert_parallel
from moekit.parallel.state import (
    full_optimizer_state_dict,
    full_state_dict,
    load_full_optimizer_state_dict,
    load_full_state_dict,
)

__all__ = [
    "AllToAllDispatcher",
    "CollectiveError",
    "ExpertParallelMetadata",
    "ExpertParallelPlan",
    "apply_expert_parallel",
    "full_optimizer_state_dict",
    "full_state_dict",
    "load_full_optimizer_state_dict",
    "load_full_state_dict",
    "plan_routes",
]
