"""Training on several processes: expert parallelism for the experts, DDP for everything else.

``moekit train CONFIG --nproc N`` spawns N local processes (gloo on CPU, NCCL with one GPU per
process); ``torchrun --nproc-per-node N -m moekit train CONFIG`` (any number of nodes) does the
same under torchrun. Each process is one rank and runs the ordinary loop
(:func:`moekit.train.train`) with a :class:`DistributedTraining` that supplies the pieces:

- **Data**: step s trains on ``train_data.batch(s)``, the same global batch as a single-process
  run; rank r takes rows ``[r*B/W, (r+1)*B/W)`` (``batch_size`` must be a multiple of W).
- **Model**: :func:`moekit.parallel.apply_expert_parallel` over all W ranks (each holds E/W
  experts of every MoE layer), then ``DistributedDataParallel`` over the replicated parameters
  (the expert shards are excluded; DDP cannot express "reduce over the ranks holding this
  shard"). Expert gradients come out of the dispatcher already averaged (its gradient
  convention), so after DDP's averaging every gradient equals the single-process one.
- **Gradient clipping**: the norm of the whole model (expert shards summed over the group).
- **Checkpoints**: the single-process layout (:mod:`moekit.train.checkpoint`), gathered on rank
  0 with :func:`moekit.parallel.full_state_dict` (optimizer moments included) and written there
  atomically; they load into one process, or into any number of ranks that divides E.
- **Logging**: losses averaged over the ranks; only rank 0 writes files and progress.

- **FSDP2 instead of DDP** (``data_parallel="fsdp"``, ``moekit train --data-parallel fsdp``):
  the replicated parameters are sharded over the ranks by ``fully_shard`` (one group for the
  whole model, the expert shards left out through ``ignored_params``), so each rank holds 1/W of
  them and of their Adam moments; gradients equal DDP's. Probed, never version-gated:
  :func:`fsdp2_unavailable` gives the reason a torch cannot (no ``fully_shard``, no
  ``ignored_params``, not on this device), and asking for it there is a ValueError that says so.
  Checkpoints stay in the single-process layout (the DTensor shards are gathered and re-sliced).

Every collective is bounded by the process group's timeout (:data:`DEFAULT_TIMEOUT_S`, 300
s, for ``--nproc`` and under torchrun): a rank that dies makes the others stop with a
:class:`moekit.parallel.CollectiveError` (at once on gloo, whose sockets close with the process).
"""

from __future__ import annotations

import datetime
import inspect
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from moekit.layers import MoELayer
from moekit.models.params import ParameterCount, count_parameters
from moekit.parallel import (
    ExpertParallelPlan,
    apply_expert_parallel,
    full_optimizer_state_dict,
    full_state_dict,
    load_full_optimizer_state_dict,
    load_full_state_dict,
)
from moekit.train.batches import BatchSource
from moekit.train.checkpoint import (
    CheckpointState,
    capture_rng_state,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

DEFAULT_TIMEOUT_S = 300.0
DATA_PARALLEL = ("ddp", "fsdp")


def _fully_shard() -> Any:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard  # older torch
        except ImportError:
            return None
    return fully_shard


def fsdp2_unavailable() -> str | None:
    """Why this torch cannot run FSDP2 beside expert parallelism, or None when it can.

    Needs ``fully_shard`` with ``ignored_params`` (the expert shards stay out of FSDP). Whether it
    runs on this device is only known when :meth:`DistributedTraining.prepare` tries it.
    """
    fully_shard = _fully_shard()
    if fully_shard is None:
        return "this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)"
    if "ignored_params" not in inspect.signature(fully_shard).parameters:
        return ("this torch's fully_shard has no ignored_params, so it cannot leave the expert "
                "shards out")
    return None


class ShardedBatches:
    """Rank r's rows of every batch of ``source``: ``[r*B/W, (r+1)*B/W)``."""

    def __init__(self, source: BatchSource, rank: int, world_size: int) -> None:
        self.source, self.rank, self.world_size = source, rank, world_size

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.source.batch(index)
        if len(x) % self.world_size:
            raise ValueError(f"batch_size={len(x)} is not divisible by the {self.world_size} "
                             f"processes; use a batch_size that is a multiple of {self.world_size}")
        n = len(x) // self.world_size
        return x[self.rank * n:(self.rank + 1) * n], y[self.rank * n:(self.rank + 1) * n]


class DistributedTraining:
    """The per-rank pieces the training loop uses under torch.distributed (module docstring).

    Build it after ``init_process_group``; ``prepare(model)`` applies expert parallelism (when
    the model has MoE layers) and DDP.
    """

    def __init__(self, data_parallel: str = "ddp") -> None:
        if data_parallel not in DATA_PARALLEL:
            raise ValueError(f"data_parallel={data_parallel!r} must be one of {DATA_PARALLEL}")
        if data_parallel == "fsdp" and (reason := fsdp2_unavailable()) is not None:
            raise ValueError(f"data_parallel='fsdp': {reason}; use data_parallel='ddp'")
        self.data_parallel = data_parallel
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DistributedTraining needs an initialised process group; launch "
                               "with `moekit train CONFIG --nproc N` or under torchrun")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        # DDP's gradient all-reduces run on their own communicator, so they can never interleave
        # with the expert all-to-alls of the backward on another.
        self.dense_group = dist.new_group(list(range(self.world_size)))
        self.plan: ExpertParallelPlan | None = None
        self.model: nn.Module | None = None

    # --- setup ---------------------------------------------------------------------------------

    def shard(self, data: BatchSource) -> BatchSource:
        return ShardedBatches(data, self.rank, self.world_size)

    def prepare(self, model: nn.Module, seed: int) -> nn.Module:
        """Shard the experts, wrap the rest in DDP (or shard it with FSDP2); returns the module
        to call forward on."""
        self.plan = None
        if any(isinstance(m, MoELayer) for m in model.modules()):
            self.plan = apply_expert_parallel(model)
        self.model = model
        if self.data_parallel == "fsdp":
            self._fully_shard(model)
            reseed(seed, self.rank)
            return model
        if self.plan is not None:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, list(self.plan.expert_parameters))
        device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
        # Buffers are never broadcast in forward: a sigmoid_bias router's pending counts are
        # rank-local until the step reduces them (newer torch names the option differently).
        no_sync: dict[str, Any] = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                   inspect.signature(DistributedDataParallel.__init__).parameters
                   else {"broadcast_buffers": False})
        wrapped = DistributedDataParallel(model, device_ids=device_ids,
                                          process_group=self.dense_group, **no_sync)
        # Every rank draws its own random numbers (router noise, dropout) from here on.
        reseed(seed, self.rank)
        return wrapped

    def _fully_shard(self, model: nn.Module) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        experts = self._expert_ids()
        ignored = {p for p in model.parameters() if id(p) in experts}
        device = self._device()
        mesh = init_device_mesh(device.type, (self.world_size,))
        try:
            _fully_shard()(model, mesh=mesh, ignored_params=ignored)
        except (RuntimeError, NotImplementedError, ValueError, AssertionError) as err:
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise ValueError(f"data_parallel='fsdp': FSDP2 does not run on {device.type} with "
                             f"this torch ({first}); use data_parallel='ddp'") from err

    # --- per step ------------------------------------------------------------------------------

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (losses for logging, the same on every rank)."""
        t = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(t, group=self.dense_group)
        return float(t.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one (Ctrl-C reaches ranks at different
        moments; they must stop after the same step)."""
        t = torch.tensor([int(flag)], dtype=torch.int64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.dense_group)
        return bool(t.item())

    def clip_grad_norm_(self, parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over the whole model: the expert shards' squared
        norms are summed over the expert-parallel group."""
        params = [p for p in parameters if p.grad is not None]
        expert_ids = self._expert_ids()
        device = self._device()
        dense = torch.zeros((), dtype=torch.float64, device=device)
        experts = torch.zeros((), dtype=torch.float64, device=device)
        sharded = torch.zeros((), dtype=torch.float64, device=device)
        for p in params:
            grad = _local(p.grad.detach())  # type: ignore[union-attr]
            sq = grad.double().pow(2).sum()
            if id(p) in expert_ids:
                experts += sq
            elif _is_dtensor(p.grad):  # an FSDP2 shard: the squares add up over the ranks
                sharded += sq
            else:
                dense += sq
        if self.plan is not None:
            dist.all_reduce(experts, group=self.plan.ep_group)
        if self.data_parallel == "fsdp":
            dist.all_reduce(sharded, group=self.dense_group)
        total = (dense + experts + sharded).sqrt()
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for p in params:
            grad = _local(p.grad.detach())  # type: ignore[union-attr]
            grad.mul_(coef.to(grad.dtype))
        return total

    def count_parameters(self, model: nn.Module) -> ParameterCount:
        """Counts of the whole model (every rank's experts), as in one process."""
        local = count_parameters(model)
        if self.plan is None:
            return local
        R = self.plan.ep_size
        total, inactive = local.total, 0
        for m in model.modules():  # count_parameters' convention, with every rank's experts
            if isinstance(m, MoELayer):
                routed = sum(p.numel() for p in m.experts.parameters()) * R
                total += routed - routed // R
                inactive += routed - routed * m.top_k // m.num_experts
                inactive += sum(p.numel() for p in m.router.parameters())
        return ParameterCount(total=total, active=total - inactive)

    # --- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, root: str | os.PathLike[str], *, step: int, model: nn.Module,
                        optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                        scaler: torch.amp.GradScaler | None = None,
                        config: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                        keep: int | None = None) -> Path:
        """:func:`moekit.train.save_checkpoint` of the gathered single-process state, written by
        rank 0 (every rank's RNG state is kept in ``extra["rng_per_rank"]``). A collective."""
        model_state = full_state_dict(model)
        optimizer_state = full_optimizer_state_dict(model, optimizer) if optimizer else None
        rngs: list[Any] = [None] * self.world_size
        dist.all_gather_object(rngs, capture_rng_state(), group=self.dense_group)
        final = Path(root) / f"step_{step:06d}"
        if self.is_main:
            final = save_checkpoint(
                root, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler, config=config, extra={**(extra or {}), "rng_per_rank": rngs,
                                                     "world_size": self.world_size},
                keep=keep, model_state={k: v.cpu() for k, v in model_state.items()},
                optimizer_state=optimizer_state)
        dist.barrier(group=self.dense_group)  # nobody reads a checkpoint before it exists
        return final

    def load_checkpoint(self, path: str | os.PathLike[str], *, model: nn.Module,
                        optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                        scaler: torch.amp.GradScaler | None = None,
                        restore_rng: bool = True) -> CheckpointState:
        """Load a single-process (or any-rank-count) checkpoint: each rank keeps its slices.

        RNG states are restored per rank when the checkpoint was saved with as many ranks;
        otherwise every rank is reseeded from (seed, rank, step).
        """
        contents = read_checkpoint(path, device=self._device())
        load_full_state_dict(model, contents.model)
        if optimizer is not None:
            if contents.optimizer is None:
                raise ValueError(f"checkpoint {contents.path} holds no optimizer state")
            load_full_optimizer_state_dict(model, optimizer, contents.optimizer)
        state = contents.state
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if restore_rng:
            rngs = state.get("extra", {}).get("rng_per_rank")
            if rngs is not None and len(rngs) == self.world_size:
                restore_rng_state(rngs[self.rank])
            else:
                restore_rng_state(state["rng"])
                seed = int(state.get("config", {}).get("train", {}).get("seed", 0))
                reseed(seed * 1_000_003 + int(state["step"]), self.rank)
        return CheckpointState(path=contents.path, step=int(state["step"]),
                               config=state.get("config", {}), extra=state.get("extra", {}))

    # --- helpers -------------------------------------------------------------------------------

    def _expert_ids(self) -> set[int]:
        if self.plan is None or self.model is None:
            return set()
        names = set(self.plan.expert_parameters)
        return {id(p) for n, p in self.model.named_parameters() if n in names}

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _is_dtensor(t: object) -> bool:
    return hasattr(t, "to_local") and hasattr(t, "placements")


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2's parameters and gradients), else ``t`` itself."""
    return t.to_local() if _is_dtensor(t) else t  # type: ignore[attr-defined,no-any-return]


def reseed(seed: int, rank: int) -> None:
    """Seed the global RNGs of ``rank`` from ``(seed, rank)`` (rank 0 included)."""
    state = np.random.SeedSequence([seed, rank]).generate_state(2, dtype=np.uint32)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


# --- launching ---------------------------------------------------------------------------------

def under_torchrun() -> bool:
    """True in a process that torchrun (or another launcher setting RANK/WORLD_SIZE) started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """``init_process_group`` from torchrun's environment: NCCL with one GPU per local rank when
    CUDA is available, else gloo."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def _worker(local_rank: int, nproc: int, store: str, timeout_s: float,
            fn: Callable[..., object], args: tuple[Any, ...]) -> None:
    threads = max(1, (os.cpu_count() or 1) // nproc)
    torch.set_num_threads(threads)
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= nproc
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method=f"file://{store}",
                            rank=local_rank, world_size=nproc,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def spawn(nproc: int, fn: Callable[..., object], *args: Any,
          timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Run ``fn(*args)`` on ``nproc`` local processes joined by one process group.

    gloo on CPU (NCCL when there is a GPU per process); the processes meet through a file in a
    temporary folder (no port to choose). If one fails, the others are ended and its error is
    raised here (``torch.multiprocessing.ProcessRaisedException`` / ``ProcessExitedException``).
    """
    import torch.multiprocessing as mp

    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValueError(f"nproc={nproc!r} must be an integer >= 1")
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s} must be > 0")
    with tempfile.TemporaryDirectory(prefix="moekit-dist-") as folder:
        context = mp.spawn(_worker, args=(nproc, str(Path(folder) / "store"), timeout_s, fn, args),
                           nprocs=nproc, join=False)
        interrupted = False
        while True:
            try:
                if context.join():
                    break
            except KeyboardInterrupt:
                # Ctrl-C reached every rank too: they agree on the step, save and stop. Wait for
                # that (the processes are daemons: leaving now would kill them mid-save); a
                # second Ctrl-C gives up.
                if interrupted:
                    raise
                interrupted = True
            except mp.ProcessRaisedException as err:
                if interrupted and "KeyboardInterrupt" in str(err):
                    raise KeyboardInterrupt from None
                raise
        if interrupted:
            raise KeyboardInterrupt
