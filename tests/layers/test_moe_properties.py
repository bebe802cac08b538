"""Properties of MoELayer: dense equivalence, capacity by hand, edge cases, state, compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moekit.layers import FeedForward, MoELayer, capacity_keep, total_aux_loss, update_router_biases
from moekit.layers.reference import reference_keep


@pytest.mark.parametrize("backend", ["grouped_mm", "loop"])
@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
def test_one_expert_equals_dense_ffn_outputs_and_gradients(backend, activation):
    torch.manual_seed(0)
    moe = MoELayer(8, 12, num_experts=1, top_k=1, activation=activation, backend=backend)
    dense = FeedForward(8, 12, activation)
    with torch.no_grad():
        dense.w_in.copy_(moe.experts.w_in[0])
        dense.w_down.copy_(moe.experts.w_down[0])
    x = torch.randn(3, 7, 8, requires_grad=True)
    y_moe, y_dense = moe(x), dense(x)
    torch.testing.assert_close(y_moe, y_dense)
    g = torch.randn_like(y_moe)
    gx_moe, gin_moe, gdown_moe = torch.autograd.grad(y_moe, (x, moe.experts.w_in, moe.experts.w_down), g)
    gx_dense, gin_dense, gdown_dense = torch.autograd.grad(y_dense, (x, dense.w_in, dense.w_down), g)
    torch.testing.assert_close(gx_moe, gx_dense)
    torch.testing.assert_close(gin_moe[0], gin_dense)
    torch.testing.assert_close(gdown_moe[0], gdown_dense)


def test_capacity_by_position_hand_worked():
    # 4 tokens, top-2, 2 experts, capacity_factor 0.5 -> C = ceil(0.5*4*2/2) = 2.
    indices = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 0]])
    weights = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]])
    keep = capacity_keep(indices, weights, 2, 2, "position")
    # First choices first: expert 0 takes tokens 0 and 1 (token 2's first choice is dropped);
    # expert 1 takes token 3's first choice, then token 0's second choice; the rest drop.
    expected = torch.tensor([[True, True], [True, False], [False, False], [True, False]])
    assert torch.equal(keep, expected)


def test_capacity_by_score_hand_worked():
    indices = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 0]])
    weights = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]])
    keep = capacity_keep(indices, weights, 2, 2, "score")
    # Expert 0 keeps its two best slots: token 2 (0.9) and token 1 (0.7);
    # expert 1 keeps token 3 (0.8) and token 0 (0.4).
    expected = torch.tensor([[False, True], [True, False], [True, False], [True, False]])
    assert torch.equal(keep, expected)


@pytest.mark.parametrize("policy", ["position", "score"])
def test_capacity_matches_reference_on_random_routings(policy):
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        T, E, K = 13, 4, 2
        indices = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
        weights = torch.rand(T, K, generator=g)
        for cf in (0.25, 0.75, 1.0, 2.0):
            cap = -(-int(cf * T * K * 1000) // (E * 1000))  # ceil without float noise
            keep = capacity_keep(indices, weights, E, cap, policy)
            ref = reference_keep(indices, weights, E, cf, policy)
            assert torch.equal(keep, ref)
            counts = torch.bincount(indices[keep], minlength=E)
            assert int(counts.max()) <= cap


def test_dropped_slots_contribute_zero_and_are_reported():
    torch.manual_seed(0)
    moe = MoELayer(8, 16, 4, 2, capacity_factor=0.25).eval()
    x = torch.randn(32, 8)
    y = moe(x)
    stats = moe.stats
    kept_slots = int((stats.indices >= 0).sum())
    assert 0 < kept_slots < 64
    assert stats.dropped_fraction.item() == pytest.approx(1 - kept_slots / 64)
    fully_dropped = (stats.indices < 0).all(dim=1)
    assert fully_dropped.any()
    assert torch.all(y[fully_dropped] == 0)


@pytest.mark.parametrize("backend", ["grouped_mm", "loop"])
def test_empty_input(backend):
    moe = MoELayer(8, 16, 4, 2, backend=backend)
    x = torch.randn(0, 8, requires_grad=True)
    y = moe(x)
    assert y.shape == (0, 8)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == (0, 8)
    assert int(moe.stats.tokens_per_expert.sum()) == 0
    assert torch.isfinite(moe.aux_loss)


@pytest.mark.parametrize("backend", ["grouped_mm", "loop"])
def test_every_token_to_one_expert_and_idle_experts(backend):
    torch.manual_seed(0)
    moe = MoELayer(8, 16, 6, 1, router="switch", backend=backend)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[3, 0] = 100.0
    x = torch.randn(20, 8)
    x[:, 0] = x[:, 0].abs() + 1  # every token picks expert 3
    y = moe(x)
    counts = moe.stats.tokens_per_expert
    assert counts.tolist() == [0, 0, 0, 20, 0, 0]
    expected = moe.experts.forward_expert(3, x) * 1.0  # switch weight ~1 with logit 100
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    assert moe.stats.balance() == pytest.approx(6.0)


def test_sigmoid_bias_updates_in_training_only_and_towards_balance():
    torch.manual_seed(0)
    moe = MoELayer(8, 16, 4, 1, router="sigmoid_bias", bias_update_rate=0.01)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 5.0  # expert 0 overloaded
    x = torch.randn(64, 8)
    x[:, 0] = 1.0
    moe.eval()
    moe(x).sum().backward()
    assert update_router_biases(moe) == 1
    assert torch.all(moe.router.expert_bias == 0), "eval mode must not touch the bias"
    moe.train()
    y = moe(x)
    assert torch.all(moe.router.expert_bias == 0), "the forward itself must not move the bias"
    y.sum().backward()
    update_router_biases(moe)
    bias = moe.router.expert_bias
    assert bias[0] < 0 and torch.all(bias[1:] > 0)
    before = bias.clone()
    with torch.no_grad():
        moe.eval()
        moe(x)
    update_router_biases(moe)
    assert torch.equal(moe.router.expert_bias, before)
    update_router_biases(moe)  # nothing counted since the last step: no change
    assert torch.equal(moe.router.expert_bias, before)


def _biased_moe(seed: int = 0) -> MoELayer:
    torch.manual_seed(seed)
    moe = MoELayer(8, 16, 6, 2, router="sigmoid_bias", bias_update_rate=0.01)
    with torch.no_grad():
        moe.router.weight.mul_(3.0)
    return moe


def test_sigmoid_bias_moves_once_per_step_under_gradient_accumulation():
    """Four micro-batches then one update equal one update from the whole batch's counts."""
    x = torch.randn(4, 16, 8)
    whole, micro = _biased_moe(), _biased_moe()
    whole(x.reshape(-1, 8)).sum().backward()
    update_router_biases(whole)
    for chunk in x:
        micro(chunk).sum().backward()
    assert torch.all(micro.router.expert_bias == 0)
    update_router_biases(micro)
    torch.testing.assert_close(micro.router.expert_bias, whole.router.expert_bias)
    assert whole.router.expert_bias.abs().sum() > 0


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_sigmoid_bias_counts_a_checkpointed_forward_once(use_reentrant):
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(32, 8, requires_grad=True)
    plain, ckpt = _biased_moe(), _biased_moe()
    plain(x).sum().backward()
    checkpoint(ckpt, x, use_reentrant=use_reentrant).sum().backward()
    torch.testing.assert_close(ckpt.router.pending_counts, plain.router.pending_counts)
    assert plain.router.pending_counts.sum() == 32 * 2
    update_router_biases(plain)
    update_router_biases(ckpt)
    torch.testing.assert_close(ckpt.router.expert_bias, plain.router.expert_bias)


def test_router_bias_update_hook_runs_after_each_optimizer_step():
    from moekit.layers import register_router_bias_update

    moe = _biased_moe()
    opt = torch.optim.SGD(moe.parameters(), lr=0.0)
    handle = register_router_bias_update(opt, moe)
    moe(torch.randn(20, 8)).sum().backward()
    opt.step()
    moved = moe.router.expert_bias.clone()
    assert moved.abs().sum() > 0 and torch.all(moe.router.pending_counts == 0)
    handle.remove()
    moe(torch.randn(20, 8)).sum().backward()
    opt.step()
    assert torch.equal(moe.router.expert_bias, moved)


def test_reduce_counts_sees_the_pending_counts_before_the_update():
    moe = _biased_moe()
    moe(torch.randn(20, 8)).sum().backward()
    seen = []
    update_router_biases(moe, reduce_counts=lambda c: seen.append(c.clone()) or c * 0 + 5.0)
    assert seen and float(seen[0].sum()) == 40.0
    assert torch.all(moe.router.expert_bias == 0)  # reduced counts are uniform: no move
    assert moe.router.reduce_counts is None


def test_nan_input_isolated_and_router_state_untouched():
    torch.manual_seed(0)
    moe = MoELayer(8, 16, 4, 2, router="sigmoid_bias")
    x = torch.randn(10, 8)
    clean = moe.eval()(x)
    x_bad = x.clone()
    x_bad[3, 2] = float("nan")
    moe.train()
    y = moe(x_bad)
    y[[i for i in range(10) if i != 3]].sum().backward()
    update_router_biases(moe)
    assert torch.all(moe.router.expert_bias == 0), "a non-finite batch must not move the bias"
    assert not torch.isfinite(y[3]).all()
    rows = [i for i in range(10) if i != 3]
    torch.testing.assert_close(y[rows], clean[rows])


def test_total_aux_loss_sums_every_layer_and_backpropagates():
    torch.manual_seed(0)
    model = nn.Sequential(MoELayer(8, 16, 4, 2), nn.GELU(), MoELayer(8, 16, 4, 2, z_loss_weight=1e-3))
    assert float(total_aux_loss(model)) == 0.0
    model(torch.randn(10, 8))
    total = total_aux_loss(model)
    assert torch.isclose(total, model[0].aux_loss + model[2].aux_loss)
    total.backward()
    assert model[0].router.weight.grad is not None and model[0].router.weight.grad.abs().sum() > 0


def test_switch_loss_is_top_k_when_balanced():
    from moekit.layers import switch_load_balancing_loss

    probs = torch.full((8, 4), 0.25)
    indices = torch.tensor([[0, 1], [2, 3]] * 4)
    assert float(switch_load_balancing_loss(probs, indices)) == pytest.approx(2.0)


def test_shared_experts_and_gate_add_dense_path():
    torch.manual_seed(0)
    moe = MoELayer(8, 16, 4, 2, num_shared_experts=2, shared_d_ff=6, shared_expert_gate=True).eval()
    assert moe.shared_experts is not None and moe.shared_experts.w_up.shape == (8, 12)
    assert moe.shared_experts.w_in.shape == (8, 24)  # [gate | up]
    x = torch.randn(5, 8)
    y = moe(x)
    routed_only = y - torch.sigmoid(moe.shared_gate(x)) * moe.shared_experts(x)
    moe.shared_experts = None
    torch.testing.assert_close(routed_only, moe(x), atol=1e-6, rtol=1e-5)


def test_module_experts_of_different_architectures():
    torch.manual_seed(0)
    experts = [nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 8)), nn.Identity()]
    moe = MoELayer(8, 16, 3, 2, experts=experts).eval()
    assert moe.backend == "loop"
    x = torch.randn(12, 8)
    y = moe(x)
    routing = moe.router(x)
    expected = torch.zeros_like(x)
    for t in range(12):
        for k in range(2):
            e = int(routing.indices_TK[t, k])
            expected[t] += routing.weights_TK[t, k] * experts[e](x[t : t + 1])[0]
    torch.testing.assert_close(y, expected)


def test_expert_choice_gives_each_expert_exactly_its_capacity():
    torch.manual_seed(0)
    moe = MoELayer(8, 16, 4, 2, router="expert_choice", capacity_factor=1.0)
    moe(torch.randn(10, 8))
    assert moe.stats.tokens_per_expert.tolist() == [5, 5, 5, 5]  # ceil(1.0*10*2/4)


@pytest.mark.parametrize("router", ["topk", "sigmoid_bias", "expert_choice"])
def test_torch_compile_matches_eager(router):
    torch.manual_seed(0)
    moe = MoELayer(16, 32, 4, 2, router=router, capacity_factor=1.25).eval()
    x = torch.randn(2, 12, 16, requires_grad=True)
    eager = moe(x)
    g_eager = torch.autograd.grad(eager.sum(), x)[0]
    compiled = torch.compile(moe, backend="aot_eager", fullgraph=False)
    out = compiled(x)
    g_out = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_out, g_eager)


@pytest.mark.slow
def test_torch_compile_default_backend_matches_eager_in_training():
    """The default (inductor) backend, training mode, capacity drops: outputs and gradients."""
    torch.manual_seed(0)
    moe = MoELayer(16, 32, 4, 2, capacity_factor=1.25)
    x = torch.randn(24, 16, requires_grad=True)
    eager = moe(x)
    g_eager = torch.autograd.grad((eager.sum() + moe.aux_loss), (x, moe.experts.w_in))
    compiled = torch.compile(moe)
    out = compiled(x)
    g_out = torch.autograd.grad((out.sum() + moe.aux_loss), (x, moe.experts.w_in))
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_out, g_eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
