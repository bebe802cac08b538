"""Routing semantics of each router, from the routing table in src/moekit/layers/routing.py."""

from __future__ import annotations

import pytest
import torch

from moekit.layers import Router, RouterConfig


def make(kind: str, **kw) -> Router:
    torch.manual_seed(0)
    cfg = RouterConfig(kind=kind, d_model=8, num_experts=kw.pop("num_experts", 6),
                       top_k=kw.pop("top_k", 2), **kw)
    return Router(cfg)


def test_topk_weights_are_the_renormalised_top_probabilities():
    r = make("topk").eval()
    x = torch.randn(10, 8)
    out = r(x)
    probs = torch.softmax(x @ r.weight.t(), dim=-1)
    top, idx = probs.topk(2, dim=-1)
    assert torch.equal(out.indices_TK, idx)
    torch.testing.assert_close(out.weights_TK, top / top.sum(-1, keepdim=True))
    raw = make("topk", normalize=False)(x)
    torch.testing.assert_close(raw.weights_TK, top)


def test_switch_weight_is_the_probability_itself():
    r = make("switch", top_k=1)
    x = torch.randn(10, 8)
    out = r(x)
    probs = torch.softmax(x @ r.weight.t(), dim=-1)
    torch.testing.assert_close(out.weights_TK[:, 0], probs.max(-1).values)


def test_router_maths_runs_in_float32_for_bfloat16_inputs():
    r = make("topk")
    out = r(torch.randn(4, 8, dtype=torch.bfloat16))
    assert out.logits_TE.dtype == torch.float32 and out.weights_TK.dtype == torch.float32


def test_noisy_topk_is_deterministic_in_eval_and_noisy_in_training():
    r = make("noisy_topk")
    with torch.no_grad():
        r.noise_weight.normal_()
    x = torch.randn(50, 8)
    r.eval()
    a, b = r(x), r(x)
    assert torch.equal(a.indices_TK, b.indices_TK)
    torch.testing.assert_close(a.weights_TK.sum(-1), torch.ones(50))
    r.train()
    c, d = r(x), r(x)
    assert not torch.equal(c.indices_TK, d.indices_TK)
    assert c.load_E is not None and c.load_E.shape == (6,) and torch.all(c.load_E >= 0)
    c.load_E.sum().backward()  # the smooth load is differentiable w.r.t. the router
    assert r.weight.grad is not None and r.noise_weight.grad is not None


def test_sigmoid_bias_group_limited_selection_by_hand():
    r = make("sigmoid_bias", num_experts=8, top_k=2, n_group=4, topk_group=2,
             routed_scaling_factor=2.5).eval()
    with torch.no_grad():
        r.expert_bias.copy_(torch.linspace(-0.2, 0.2, 8))
    x = torch.randn(16, 8)
    out = r(x)
    with torch.no_grad():
        scores = torch.sigmoid(x @ r.weight.t())
        choice = scores + r.expert_bias
    for t in range(16):
        groups = choice[t].view(4, 2).sum(-1)  # top-2 of 2 experts = both
        best_groups = set(groups.topk(2).indices.tolist())
        allowed = [e for e in range(8) if e // 2 in best_groups]
        picked = sorted(allowed, key=lambda e: -float(choice[t, e]))[:2]
        assert sorted(out.indices_TK[t].tolist()) == sorted(picked)
        w = scores[t, out.indices_TK[t]]
        torch.testing.assert_close(out.weights_TK[t], 2.5 * w / w.sum())


def test_expert_choice_each_expert_takes_its_top_tokens():
    r = make("expert_choice", num_experts=4, top_k=1, capacity_factor=2.0)
    x = torch.randn(12, 8)
    out = r(x)
    assert out.keep_TK is not None
    probs = torch.softmax(x @ r.weight.t(), dim=-1)
    for e in range(4):
        chosen = set(torch.where(out.keep_TK[:, e])[0].tolist())
        assert chosen == set(probs[:, e].topk(6).indices.tolist())  # C = ceil(2*12*1/4) = 6


@pytest.mark.parametrize("kind", ["topk", "noisy_topk", "sigmoid_bias"])
def test_balance_loss_is_differentiable(kind):
    r = make(kind)
    out = r(torch.randn(20, 8))
    loss = r.balance_loss(out)
    loss.backward()
    assert torch.isfinite(loss) and r.weight.grad is not None


def test_router_maths_stays_float32_under_autocast():
    r = make("topk")
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = r(x)
    assert out.logits_TE.dtype == torch.float32
    torch.testing.assert_close(out.logits_TE, x @ r.weight.detach().t())  # no bf16 rounding
