"""What each rank runs in the expert-parallel tests (imported by the spawned processes).

Every case builds a single-process reference layer/model and an expert-parallel copy of it (same
weights), runs the global batch through the reference and each rank's share through the copy,
does all its collectives, and only then compares; so a failed comparison on one rank never
leaves another waiting in a collective. Cases return "ok" or the traceback; the parent asserts.

The loss convention (see moekit.parallel.all_to_all): the single-process loss is
L = (1/T) sum_t y_t . g_t + aux; rank r back-propagates L_r = (W/T) sum_{t in r} y_t . g_t + aux
(W ranks in the batch); replicated gradients are then averaged over the batch (what DDP does),
expert gradients over the ranks holding the same shard (the dp dimension, when there is one).
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist

from moekit.layers import MoELayer, update_router_biases
from moekit.layers.experts import GroupedExperts
from moekit.parallel import apply_expert_parallel, full_state_dict, load_full_state_dict
from moekit.parallel.collectives import all_to_all

ROUTERS = ("topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice")
D, F, E = 8, 12, 4


def make_layer(router: str, *, seed: int = 0, capacity_factor: float | None = None,
               shared: int = 0, backend: str | None = None, num_experts: int = E,
               top_k: int | None = None, dtype: torch.dtype = torch.float64) -> MoELayer:
    torch.manual_seed(seed)
    k = top_k if top_k is not None else (1 if router == "switch" else 2)
    layer = MoELayer(D, F, num_experts, k, router=router, capacity_factor=capacity_factor,
                     num_shared_experts=shared, aux_loss_weight=0.05, z_loss_weight=0.01,
                     backend=backend, expert_bias=True)  # type: ignore[arg-type]
    with torch.no_grad():  # non-zero expert biases and noise weights, so their gradients matter
        for p in layer.parameters():
            if p.dim() <= 2 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return layer.to(dtype)


def batch(counts: list[int], dead: tuple[int, ...], seed: int = 1,
          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Global inputs and output weights ``(T, D)``; ``dead`` experts are never chosen (feature 0
    is about 3 and their router weight on it is very negative; see :func:`kill_experts`)."""
    g = torch.Generator().manual_seed(seed)
    T = sum(counts)
    x = torch.randn(T, D, generator=g, dtype=dtype)
    if dead:
        x[:, 0] = 3 + 0.1 * x[:, 0]
    return x, torch.randn(T, D, generator=g, dtype=dtype)


def kill_experts(layer: MoELayer, dead: tuple[int, ...]) -> None:
    with torch.no_grad():
        for e in dead:
            layer.router.weight[e, 0] = -40.0


def average(tensors: list[torch.Tensor], group: dist.ProcessGroup | None = None) -> None:
    size = dist.get_world_size(group)
    for t in tensors:
        dist.all_reduce(t, group=group)
        t.div_(size)


def split_params(layer: torch.nn.Module) -> tuple[dict[str, torch.nn.Parameter],
                                                   dict[str, torch.nn.Parameter]]:
    """(expert parameters, replicated parameters) by name."""
    expert, rest = {}, {}
    for name, p in layer.named_parameters():
        (expert if ".experts." in f".{name}" and _is_grouped(layer, name) else rest)[name] = p
    return expert, rest


def _is_grouped(model: torch.nn.Module, name: str) -> bool:
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return isinstance(owner, GroupedExperts)


def run_cases(cases: list[tuple[str, Callable[[], Any]]]) -> dict[str, str]:
    """name -> "ok", "skipped: <reason>" (a case that returns a reason) or the traceback."""
    out: dict[str, str] = {}
    for name, case in cases:
        try:
            reason = case()
            out[name] = f"skipped: {reason}" if isinstance(reason, str) else "ok"
        except Exception:
            out[name] = traceback.format_exc()
    return out


# --- the layer against the single-process layer ------------------------------------------------

def layer_equivalence(router: str, counts: list[int], *, dead: tuple[int, ...] = (),
                      capacity_factor: float | None = None, backend: str | None = None,
                      group: Any = None, dtype: torch.dtype = torch.float64,
                      shared: int = 0) -> None:
    """Outputs, aux loss, input and parameter gradients, routing counts and bytes vs one process.

    ``expert_choice`` and ``capacity_factor`` decide per source rank (documented): their
    reference runs the single-process layer on each rank's tokens separately (the aux loss is
    still the global-batch one)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    assert len(counts) == world
    ref = make_layer(router, capacity_factor=capacity_factor, backend=backend, dtype=dtype,
                     shared=shared)
    kill_experts(ref, dead)
    ep = copy.deepcopy(ref)
    plan = apply_expert_parallel(ep, group)
    ep_rank, ep_size = plan.ep_rank, plan.ep_size
    x_all, g_all = batch(counts, dead, dtype=dtype)
    T = x_all.shape[0]
    offsets = [sum(counts[:r]) for r in range(world)]
    lo, hi = offsets[rank], offsets[rank] + counts[rank]
    noise = torch.randn(T, E, generator=torch.Generator().manual_seed(7), dtype=dtype)
    per_rank = capacity_factor is not None or router == "expert_choice"

    def noise_of(lo_: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: noise[lo_:lo_ + t.shape[0]].to(t.dtype)

    x_ref = x_all.clone().requires_grad_()
    with mock.patch("torch.randn_like", side_effect=noise_of(0)):
        y_full = ref(x_ref)
    aux_ref = ref.aux_loss
    if per_rank:
        y_ref = torch.cat([ref(x_ref[o:o + c]) for o, c in zip(offsets, counts) if c > 0])
    else:
        y_ref = y_full
    loss_ref = (y_ref * g_all).sum() / T + aux_ref
    loss_ref.backward()

    x_loc = x_all[lo:hi].clone().requires_grad_()
    with mock.patch("torch.randn_like", side_effect=noise_of(lo)):
        y_loc = ep(x_loc)
    loss = (y_loc * g_all[lo:hi]).sum() * (world / T) + ep.aux_loss
    loss.backward()
    expert, rest = split_params(ep)
    average([p.grad for p in rest.values()])
    if plan.replica_group is not None:
        average([p.grad for p in expert.values()], plan.replica_group)
    stats = ep.stats
    kept = stats.indices
    L = E // ep_size
    pairs = torch.zeros(ep_size, dtype=torch.int64)
    for t in range(kept.shape[0]):
        for d in {int(e) // L for e in kept[t] if e >= 0}:
            pairs[d] += 1
    every = [torch.zeros_like(pairs) for _ in range(ep_size)]
    dist.all_gather(every, pairs, group=plan.ep_group)
    # --- all collectives done; compare ---
    out_tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y_loc, y_ref[lo:hi].detach(), **out_tol)
    # gradients include the aux losses' float32 part: float32-level tolerance in float64
    tol = dict(rtol=1e-6, atol=1e-8) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    # the aux losses are float32 by design (moekit.layers.losses): float32 tolerance
    torch.testing.assert_close(ep.aux_loss.detach(), aux_ref.detach(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(x_loc.grad / world, x_ref.grad[lo:hi], **tol)
    ref_params = dict(ref.named_parameters())
    for name, p in rest.items():
        torch.testing.assert_close(p.grad, ref_params[name].grad, **tol, msg=name)
    for name, p in expert.items():
        full = ref_params[name].grad
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, full[ep_rank * L:(ep_rank + 1) * L], **tol, msg=name)
    comm = stats.comm
    assert comm is not None
    expected = torch.stack(every)
    assert torch.equal(comm.pairs, expected), (comm.pairs, expected)
    row_bytes = D * x_loc.element_size()
    assert comm.row_bytes == row_bytes
    off_diagonal = expected.sum(1) - expected.diagonal()
    assert torch.equal(comm.bytes_sent, off_diagonal * row_bytes)
    assert torch.equal(comm.bytes_received, (expected.sum(0) - expected.diagonal()) * row_bytes)
    assert comm.tokens.tolist() == [counts[r] for r in _group_ranks(plan.ep_group)]
    if router != "expert_choice" and set(range(ep_rank * L, (ep_rank + 1) * L)) <= set(dead):
        assert int(comm.slots[ep_rank]) == 0  # this rank's experts received nothing


def _group_ranks(group: dist.ProcessGroup) -> list[int]:
    return [dist.get_global_rank(group, i) for i in range(dist.get_world_size(group))]


# --- a few optimizer steps, sigmoid_bias bias included -----------------------------------------

def optimizer_steps(router: str, steps: int = 3) -> None:
    world, rank = dist.get_world_size(), dist.get_rank()
    counts = [3 + 2 * r for r in range(world)]
    ref = make_layer(router)
    ep = copy.deepcopy(ref)
    apply_expert_parallel(ep)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.1)
    ep_opt = torch.optim.AdamW(ep.parameters(), lr=0.05, weight_decay=0.1)
    lo = sum(counts[:rank])
    for step in range(steps):
        x, g = batch(counts, (), seed=100 + step)
        T = x.shape[0]
        ((ref(x) * g).sum() / T + ref.aux_loss).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        update_router_biases(ref)
        y = ep(x[lo:lo + counts[rank]])
        ((y * g[lo:lo + counts[rank]]).sum() * world / T + ep.aux_loss).backward()
        _, rest = split_params(ep)
        average([p.grad for p in rest.values()])
        ep_opt.step()
        ep_opt.zero_grad()
        update_router_biases(ep)
    full = full_state_dict(ep)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(full[key], value, rtol=1e-9, atol=1e-10, msg=key)
    if router == "sigmoid_bias":
        assert float(ref.router.expert_bias.abs().sum()) > 0  # the bias did move


# --- the all-to-all's autograd: a dot-product (adjoint) test with uneven and zero splits -------

def all_to_all_adjoint() -> None:
    world, rank = dist.get_world_size(), dist.get_rank()
    g = torch.Generator().manual_seed(rank)
    # rank r sends (r + d) % 3 rows to rank d: some splits are zero.
    send = [(rank + d) % 3 for d in range(world)]
    recv = [(s + rank) % 3 for s in range(world)]
    x = torch.randn(sum(send), 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(sum(recv), 5, generator=g, dtype=torch.float64)
    out = all_to_all(x, recv, send, dist.group.WORLD)
    (grad,) = torch.autograd.grad((out * y).sum(), x)
    sums = torch.stack([(out * y).sum().detach(), (x * grad).sum().detach()])
    dist.all_reduce(sums)
    # <A x, y> == <x, A^T y> summed over ranks, and rows arrive from their sources in order
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-12, atol=1e-12)
    assert out.shape == (sum(recv), 5)


# --- checks that raise the same error on every rank --------------------------------------------

def expect_error(fn: Callable[[], Any], kind: type[BaseException], text: str) -> None:
    try:
        fn()
    except kind as err:
        assert text in str(err), f"{text!r} not in {str(err)!r}"
        return
    raise AssertionError(f"no {kind.__name__} raised (expected {text!r})")


def faults() -> None:
    rank = dist.get_rank()
    model = torch.nn.ModuleDict({"mlp": make_layer("topk", num_experts=3)})
    expect_error(lambda: apply_expert_parallel(model), ValueError,
                 "MoE layer 'mlp': num_experts=3 is not divisible by the expert-parallel group "
                 "size 2")
    expect_error(lambda: apply_expert_parallel(make_layer("topk", num_experts=4 * (1 + rank))),
                 ValueError, "num_experts=4 on rank 0 but 8 on rank 1")
    expect_error(lambda: apply_expert_parallel(make_layer("topk", top_k=1 + rank)), ValueError,
                 "top_k=1 on rank 0 but 2 on rank 1")
    expect_error(lambda: apply_expert_parallel(make_layer(("topk", "sigmoid_bias")[rank % 2])),
                 ValueError, "router='topk' on rank 0 but 'sigmoid_bias' on rank 1")
    layer = make_layer("topk")
    apply_expert_parallel(layer)
    expect_error(lambda: apply_expert_parallel(layer), ValueError, "already applied")


def state_dicts() -> None:
    """full_state_dict is the single-process state dict; load_full_state_dict re-slices it; a
    backend switch keeps the all-to-all dispatcher."""
    ref = make_layer("sigmoid_bias", shared=1)
    ep = copy.deepcopy(ref)
    apply_expert_parallel(ep)
    full = full_state_dict(ep)
    assert sorted(full) == sorted(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(full[key], value), key
    other = make_layer("sigmoid_bias", shared=1, seed=5)
    apply_expert_parallel(other)
    load_full_state_dict(other, ref.state_dict())
    again = full_state_dict(other)
    for key, value in ref.state_dict().items():
        assert torch.equal(again[key], value), key
    other.backend = "loop"
    assert type(other.dispatcher).__name__ == "AllToAllDispatcher"
    assert type(other.dispatcher.local).__name__ == "LoopDispatcher"


def with_training(cases: dict[str, str], rank: int, world: int,
                  jobs: list[tuple[str, int, bool]]) -> dict[str, Any]:
    """The layer cases' results plus the training jobs of train_cases (same process group)."""
    from train_cases import ranks

    return {"cases": cases, "train": ranks(rank, world, jobs) if jobs else []}


def fsdp2_composition() -> str | None:
    """FSDP2 (``fully_shard``) for the replicated parameters, expert parallelism for the experts:
    gradients equal one process's after FSDP's reduce-scatter. Probed, not version-gated: a
    torch whose fully_shard is missing, cannot leave parameters out, or does not run on CPU
    returns the reason (the test then skips with it)."""
    import inspect

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard  # older torch
        except ImportError:
            return "this torch has no FSDP2 fully_shard"
    if "ignored_params" not in inspect.signature(fully_shard).parameters:
        return "this torch's fully_shard cannot leave the expert shards out (no ignored_params)"
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # older torch
        from torch.distributed._tensor import DTensor

    world, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(D, D), make_layer("topk"), torch.nn.Linear(D, D))
    ref = ref.double()
    ep = copy.deepcopy(ref)
    plan = apply_expert_parallel(ep)
    names = set(plan.expert_parameters)
    experts = {p for n, p in ep.named_parameters() if n in names}
    mesh = init_device_mesh("cpu", (world,))
    try:
        fully_shard(ep, mesh=mesh, ignored_params=experts)
    except (RuntimeError, NotImplementedError, ValueError, AssertionError) as err:
        return f"fully_shard does not run on CPU here: {str(err).splitlines()[0]}"
    counts = [6, 3][:world] + [4] * max(0, world - 2)
    x_all, g_all = batch(counts, ())
    T, lo = x_all.shape[0], sum(counts[:rank])
    y_ref = ref(x_all)
    ((y_ref * g_all).sum() / T + ref[1].aux_loss).backward()
    y = ep(x_all[lo:lo + counts[rank]])
    ((y * g_all[lo:lo + counts[rank]]).sum() * world / T + ep[1].aux_loss).backward()
    grads = {}
    for n, p in ep.named_parameters():
        g = p.grad
        grads[n] = g.full_tensor() if isinstance(g, DTensor) else g
    L = E // world
    for n, p in ref.named_parameters():
        want = p.grad[rank * L:(rank + 1) * L] if n in names else p.grad
        torch.testing.assert_close(grads[n], want, rtol=1e-6, atol=1e-8, msg=n)
    torch.testing.assert_close(y, y_ref[lo:lo + counts[rank]].detach(), rtol=1e-9, atol=1e-10)
    return None


def protocol_matches_call() -> None:
    """dispatch -> experts -> combine (the seam an outer caller uses) equals the dispatcher's
    call, forward and backward."""
    world, rank = dist.get_world_size(), dist.get_rank()
    layer = make_layer("topk")
    apply_expert_parallel(layer)
    counts = [4 + 3 * r for r in range(world)]
    x_all, g_all = batch(counts, ())
    lo = sum(counts[:rank])
    x = x_all[lo:lo + counts[rank]]
    grads = []
    outs = []
    for use_call in (True, False):
        xr = x.clone().requires_grad_()
        routing = layer.router(xr)
        if use_call:
            y = layer.dispatcher(xr, routing, None, layer.experts)
        else:
            x_RD, tokens_L, meta = layer.dispatcher.dispatch(xr, routing, None)
            y = layer.dispatcher.combine(layer.experts(x_RD, tokens_L, full=meta.full), meta)
        (y * g_all[lo:lo + counts[rank]]).sum().backward()
        outs.append(y.detach())
        grads.append((xr.grad, layer.experts.w_in.grad.clone(), layer.router.weight.grad.clone()))
        layer.zero_grad()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def two_ranks(rank: int, world: int) -> dict[str, str]:
    cases: list[tuple[str, Callable[[], Any]]] = []
    for router in ROUTERS:
        cases.append((f"{router} uneven", lambda r=router: layer_equivalence(r, [5, 9])))
        cases.append((f"{router} idle rank", lambda r=router: layer_equivalence(
            r, [11, 0], dead=(2, 3))))
    cases += [
        ("topk capacity per source rank", lambda: layer_equivalence(
            "topk", [12, 5], capacity_factor=0.75)),
        ("switch capacity per source rank", lambda: layer_equivalence(
            "switch", [9, 6], capacity_factor=1.0)),
        ("loop backend, shared expert", lambda: layer_equivalence(
            "topk", [6, 4], backend="loop", shared=1)),
        ("float32", lambda: layer_equivalence("topk", [7, 5], dtype=torch.float32)),
        ("steps topk", lambda: optimizer_steps("topk")),
        ("steps sigmoid_bias", lambda: optimizer_steps("sigmoid_bias")),
        ("all_to_all adjoint", all_to_all_adjoint),
        ("faults", faults),
        ("state dicts", state_dicts),
        ("FSDP2 for the replicated parameters", fsdp2_composition),
        ("dispatch and combine equal the call", protocol_matches_call),
        ("triton backend (sorted fallback off GPU)", lambda: layer_equivalence(
            "sigmoid_bias", [5, 8], backend="triton")),
    ]
    return run_cases(cases)


def four_ranks(rank: int, world: int) -> dict[str, str]:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "ep"))
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("topk 4 ranks", lambda: layer_equivalence("topk", [5, 0, 9, 2], dead=(1,))),
        ("sigmoid_bias 4 ranks", lambda: layer_equivalence("sigmoid_bias", [3, 8, 0, 6])),
        ("noisy_topk 4 ranks", lambda: layer_equivalence("noisy_topk", [4, 4, 7, 1])),
        ("2-D mesh dp x ep", lambda: layer_equivalence("topk", [5, 3, 0, 8], group=mesh)),
        ("2-D mesh sigmoid_bias", lambda: layer_equivalence("sigmoid_bias", [2, 6, 5, 4],
                                                            group=mesh)),
        ("all_to_all adjoint", all_to_all_adjoint),
    ]
    return run_cases(cases)


def dead_rank(rank: int, world: int) -> dict[str, Any]:
    """Rank 1 dies before the second forward; the others must stop with a clear error."""
    import os
    import time

    from moekit.parallel import CollectiveError

    layer = make_layer("topk")
    apply_expert_parallel(layer)
    x, _ = batch([4] * world, ())
    layer(x[:4]).sum().backward()  # one good step together
    dist.barrier()
    if rank == 1:
        os._exit(3)
    start = time.monotonic()
    try:
        layer(x[:4]).sum().backward()
    except CollectiveError as err:
        return {"seconds": time.monotonic() - start, "message": str(err)}
    return {"seconds": time.monotonic() - start, "message": "no error"}


def two_ranks_and_training(rank: int, world: int, jobs: list[tuple[str, int, bool]]) -> Any:
    return with_training(two_ranks(rank, world), rank, world, jobs)


def four_ranks_and_training(rank: int, world: int, jobs: list[tuple[str, int, bool]]) -> Any:
    return with_training(four_ranks(rank, world), rank, world, jobs)
