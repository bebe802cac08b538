"""Expert parallelism pieces that need no second process: the send plan, the layer hooks it uses,
errors raised before any collective, and the layering rule."""

from __future__ import annotations

import ast
import datetime
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from moekit.layers import MoELayer, switch_load_balancing_loss
from moekit.layers.losses import importance_load_loss, router_z_loss
from moekit.parallel import (
    apply_expert_parallel,
    full_state_dict,
    load_full_state_dict,
    plan_routes,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "moekit"


def test_hand_worked_routes_send_each_token_once_per_rank():
    # 4 experts on 2 ranks (experts 0,1 on rank 0; 2,3 on rank 1), K = 3 slots, 3 tokens.
    indices = torch.tensor([[0, 1, 3],    # token 0: rank 0 twice, rank 1 once -> 2 rows
                            [2, 3, 2],    # token 1: rank 1 only (three slots) -> 1 row
                            [1, 0, 2]])   # token 2: ranks 0 and 1 -> 2 rows
    keep = torch.tensor([[True, True, True], [True, True, True], [True, False, False]])
    routes = plan_routes(indices, keep, experts_per_rank=2, num_ranks=2)
    # rows sorted by destination rank, then token; token 2 keeps only its slot on rank 0
    assert routes.token_P.tolist() == [0, 2, 0, 1]
    assert routes.dest_P.tolist() == [0, 0, 1, 1]
    assert routes.send_R.tolist() == [2, 2]
    assert routes.first_TK.tolist() == [[True, False, True], [True, False, False],
                                        [True, False, False]]
    # every kept slot points at the row of its (token, rank) pair
    assert routes.row_TK[0].tolist() == [0, 0, 2]
    assert routes.row_TK[1].tolist() == [3, 3, 3]
    assert routes.row_TK[2, 0].item() == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_routes_match_a_brute_force_count(seed):
    g = torch.Generator().manual_seed(seed)
    T, K, E, R = 37, 3, 8, 4
    indices = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    keep = torch.rand(T, K, generator=g) < 0.7
    routes = plan_routes(indices, keep, E // R, R)
    pairs = sorted({(int(indices[t, k]) // (E // R), t) for t in range(T) for k in range(K)
                    if keep[t, k]})
    assert list(zip(routes.dest_P.tolist(), routes.token_P.tolist())) == pairs
    for t in range(T):
        for k in range(K):
            if keep[t, k]:
                row = int(routes.row_TK[t, k])
                assert (int(routes.dest_P[row]), int(routes.token_P[row])) == \
                    (int(indices[t, k]) // (E // R), t)


def _capture(fn, *args):
    captured = []
    fn(*args, reduce_sums=lambda s: captured.append(s.detach()) or s)
    return captured[0]


@pytest.mark.parametrize("loss", ["switch", "z", "importance_load"])
def test_reduce_sums_gives_the_whole_batch_loss_and_its_gradient(loss):
    """Two halves of a batch: half A's loss with B's sums added by ``reduce_sums`` equals the
    loss of the whole batch, and so does the gradient with respect to A's rows."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    indices = logits.detach().topk(2, dim=-1)[1]

    def compute(lg, idx, reduce_sums=None):
        if loss == "switch":
            return switch_load_balancing_loss(lg.softmax(-1), idx, reduce_sums)
        if loss == "z":
            return router_z_loss(lg, reduce_sums)
        gates = torch.zeros_like(lg).scatter(1, idx, lg.softmax(-1).gather(1, idx))
        return importance_load_loss(gates, lg.softmax(-1).sum(0), reduce_sums)

    whole = compute(logits, indices)
    (grad_whole,) = torch.autograd.grad(whole, logits)
    a, b = slice(0, 5), slice(5, 12)
    sums_b = _capture(compute, logits[b].detach(), indices[b])
    half = compute(logits[a], indices[a], lambda s: s + sums_b)
    (grad_half,) = torch.autograd.grad(half, logits)
    torch.testing.assert_close(half, whole.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_half[a], grad_whole[a], rtol=1e-5, atol=1e-7)
    same = compute(logits, indices, lambda s: s).detach()
    assert float(same) == pytest.approx(float(whole.detach()), rel=1e-6)


def test_layer_reduce_sums_hook_and_no_hook_agree_in_one_process():
    torch.manual_seed(0)
    moe = MoELayer(8, 16, 4, 2, z_loss_weight=0.1)
    x = torch.randn(10, 8)
    moe(x)
    plain = moe.aux_loss.detach().clone()
    moe.reduce_sums = lambda s: s  # one process: the identity
    moe(x)
    torch.testing.assert_close(moe.aux_loss.detach(), plain, rtol=1e-6, atol=1e-8)
    assert moe.stats.comm is None


def test_without_a_process_group_errors_clearly():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="needs an initialised torch.distributed process group"):
        apply_expert_parallel(MoELayer(8, 16, 4))


@pytest.fixture
def world_of_one():
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0,
                                world_size=1, timeout=datetime.timedelta(seconds=30))
        try:
            yield
        finally:
            dist.destroy_process_group()


def test_errors_in_a_world_of_one(world_of_one):
    with pytest.raises(ValueError, match="has no moekit.layers.MoELayer"):
        apply_expert_parallel(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="experts=\\[...\\] modules"):
        apply_expert_parallel(MoELayer(4, 8, 2, 1, experts=[torch.nn.Linear(4, 4)] * 2))
    with pytest.raises(TypeError, match="pass None \\(the world\\)"):
        apply_expert_parallel(MoELayer(4, 8, 2, 1), group="world")  # type: ignore[arg-type]
    torch.manual_seed(0)
    moe = MoELayer(8, 16, 4, 2)
    reference = MoELayer(8, 16, 4, 2)
    reference.load_state_dict(moe.state_dict())
    plan = apply_expert_parallel(moe)
    assert plan.ep_size == 1 and plan.expert_parameters == ("experts.w_in", "experts.w_down")
    with pytest.raises(ValueError, match="already applied"):
        apply_expert_parallel(moe)
    x = torch.randn(6, 8)
    torch.testing.assert_close(moe(x), reference(x))
    assert moe.stats.comm is not None and moe.stats.comm.pairs.tolist() == [[6]]
    assert moe.stats.comm.bytes_sent.tolist() == [0]  # a rank's own rows cross no wire
    with pytest.raises(ValueError, match="has shape"):
        load_full_state_dict(moe, {**full_state_dict(moe),
                                   "experts.w_in": torch.zeros(3, 8, 32)})


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["layers", "kernels"])
def test_layers_and_kernels_never_import_distributed_code(package):
    for path in sorted((SRC / package).rglob("*.py")):
        bad = {n for n in _imports(path)
               if n.startswith(("torch.distributed", "moekit.parallel"))}
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"
