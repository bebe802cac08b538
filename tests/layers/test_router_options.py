"""The token-choice routing options (select, choice bias, groups, renormalisation, precisions).

Each option is checked against a direct transcription of its definition on fresh random logits,
through ``Router.route_logits`` (logits computed elsewhere) and through the router's own forward.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers import Router, RouterConfig
from moekit.layers.routing import TensorRef


def router(**kw) -> Router:
    bias_from = kw.pop("bias_from", None)
    cfg = RouterConfig(d_model=8, num_experts=kw.pop("num_experts", 8), top_k=kw.pop("top_k", 2), **kw)
    return Router(cfg, own_weight=False, bias_from=bias_from).eval()


def logits(T: int = 12, E: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, E, generator=torch.Generator().manual_seed(seed)) * 2


def test_route_logits_equals_the_forward_of_a_router_with_its_own_weight() -> None:
    for kind, extra in (("topk", {}), ("switch", {"top_k": 1}), ("sigmoid_bias", {}),
                        ("expert_choice", {})):
        torch.manual_seed(1)
        r = Router(RouterConfig(kind=kind, d_model=8, num_experts=6, **{"top_k": 2, **extra}))
        x = torch.randn(10, 8)
        a, b = r(x), r.route_logits(x @ r.weight.t())
        assert torch.equal(a.indices_TK, b.indices_TK)
        torch.testing.assert_close(a.weights_TK, b.weights_TK)


def test_select_logits_softmax_is_the_softmax_of_the_top_logits() -> None:
    lg = logits()
    out = router(kind="topk", select="logits", top_k=3).route_logits(lg)
    top, idx = lg.topk(3, dim=-1)
    assert torch.equal(out.indices_TK, idx)
    torch.testing.assert_close(out.weights_TK, top.softmax(-1))
    torch.testing.assert_close(out.probs_TE, lg.softmax(-1))  # stats see the full softmax


def test_select_logits_sigmoid_scores_each_kept_logit() -> None:
    lg = logits(seed=1)
    out = router(kind="sigmoid_bias", select="logits", expert_bias=False, normalize=False,
                 top_k=1).route_logits(lg)
    top, idx = lg.topk(1, dim=-1)
    assert torch.equal(out.indices_TK, idx)
    torch.testing.assert_close(out.weights_TK, top.sigmoid())


def test_choice_bias_moves_the_choice_not_the_weights_for_softmax_scores() -> None:
    lg = logits(seed=2)
    bias = torch.linspace(-0.3, 0.3, 8)
    owner = nn.Module()
    owner.register_buffer("b", bias.clone())
    r = router(kind="topk", expert_bias=True, bias_from=TensorRef(owner, "b"), normalize=True,
               normalize_min=1e-12)
    out = r.route_logits(lg)
    probs = lg.softmax(-1)
    idx = (probs + bias).topk(2, dim=-1)[1]
    assert torch.equal(out.indices_TK.sort(-1)[0], idx.sort(-1)[0])
    w = probs.gather(1, out.indices_TK)
    torch.testing.assert_close(out.weights_TK, w / w.sum(-1, keepdim=True).clamp_min(1e-12))


def test_choice_bias_on_logits_for_select_logits() -> None:
    lg = logits(seed=3)
    r = Router(RouterConfig(kind="sigmoid_bias", d_model=8, num_experts=8, top_k=2,
                            select="logits", normalize=True, normalize_eps=0.0), own_weight=False)
    with torch.no_grad():
        r.expert_bias.copy_(torch.linspace(1, -1, 8))
    out = r.eval().route_logits(lg)
    idx = (lg + r.expert_bias).topk(2, dim=-1)[1]
    assert torch.equal(out.indices_TK, idx)
    w = lg.gather(1, idx).sigmoid()
    torch.testing.assert_close(out.weights_TK, w / w.sum(-1, keepdim=True))


def test_group_max_limits_the_choice_to_the_best_groups() -> None:
    lg = logits(T=20, E=8, seed=4)
    r = router(kind="topk", n_group=4, topk_group=2, group_score="max", normalize=False,
               routed_scaling_factor=1.5, group_fill="zero")
    out = r.route_logits(lg)
    probs = lg.softmax(-1)
    group_best = probs.view(20, 4, 2).max(-1).values.topk(2, dim=-1)[1]
    for t in range(20):
        allowed = {int(g) * 2 + i for g in group_best[t] for i in range(2)}
        assert set(out.indices_TK[t].tolist()) <= allowed
        masked = torch.tensor([probs[t, e] if e in allowed else 0.0 for e in range(8)])
        top = masked.topk(2).values
        torch.testing.assert_close(out.weights_TK[t].sort().values, (top * 1.5).sort().values)


def test_group_fill_zero_differs_from_minus_inf_only_for_negative_choices() -> None:
    # groups {0, 1} and {2, 3}; the bias makes every choice score negative, group {0, 1} wins
    lg = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    owner = nn.Module()
    owner.register_buffer("b", torch.tensor([-2.0, -2.0, -3.0, -3.0]))
    kw = dict(kind="sigmoid_bias", num_experts=4, top_k=2, n_group=2, topk_group=1,
              bias_from=TensorRef(owner, "b"))
    assert set(router(**kw).route_logits(lg).indices_TK[0].tolist()) == {0, 1}
    # with zero fill the dropped group's experts (0) beat the kept ones (< 0), as AXK2 computes
    assert set(router(**kw, group_fill="zero").route_logits(lg).indices_TK[0].tolist()) == {2, 3}
    owner.b.copy_(torch.tensor([0.0, 0.0, -0.2, -0.2]))  # positive choices: fill is irrelevant
    assert set(router(**kw, group_fill="zero").route_logits(lg).indices_TK[0].tolist()) == {0, 1}


def test_renormalisation_eps_floor_and_p_norm() -> None:
    lg = logits(seed=5)
    probs = lg.softmax(-1)
    top = probs.topk(3, dim=-1).values
    out = router(kind="topk", top_k=3, normalize_eps=1e-2).route_logits(lg)
    torch.testing.assert_close(out.weights_TK, top / (top.sum(-1, keepdim=True) + 1e-2))
    out = router(kind="topk", top_k=3, normalize_min=0.9).route_logits(lg)
    torch.testing.assert_close(out.weights_TK, top / top.sum(-1, keepdim=True).clamp_min(0.9))
    out = router(kind="topk", top_k=3, normalize_p=2.0).route_logits(lg)
    torch.testing.assert_close(out.weights_TK, top / top.norm(p=2, dim=-1, keepdim=True))


def test_precisions_round_where_asked() -> None:
    lg = logits(seed=6).bfloat16()
    out = router(kind="topk", select="logits", score_precision="logits").route_logits(lg)
    top = lg.topk(2, dim=-1).values
    assert torch.equal(out.weights_TK, F.softmax(top, dim=-1).float())  # softmax in bfloat16
    out = router(kind="topk", weights_precision="logits").route_logits(lg)
    assert out.weights_TK.dtype == torch.float32
    assert torch.equal(out.weights_TK, out.weights_TK.bfloat16().float())
    out = router(kind="topk", weights_precision="input").route_logits(lg.float(),
                                                                     input_dtype=torch.float16)
    assert torch.equal(out.weights_TK, out.weights_TK.half().float())
    plain = router(kind="topk").route_logits(lg)
    assert not torch.equal(plain.weights_TK, plain.weights_TK.bfloat16().float())


def test_borrowed_bias_is_read_at_call_time_updated_in_place_and_copied_with_its_owner() -> None:
    owner = nn.Module()
    owner.register_buffer("bias", torch.zeros(1, 8))  # (1, E) as ERNIE 4.5 stores it
    r = Router(RouterConfig(kind="sigmoid_bias", d_model=8, num_experts=8, top_k=2,
                            bias_update_rate=0.1), own_weight=False,
               bias_from=TensorRef(owner, "bias"))
    assert "expert_bias" not in dict(r.named_buffers())
    lg = logits(seed=7).requires_grad_()
    r.train().route_logits(lg).weights_TK.sum().backward()
    r.update_bias()
    step = owner.bias.abs()
    assert step.sum() > 0 and torch.all((step == 0) | (step == 0.1))
    with torch.no_grad():
        owner.bias.fill_(5.0)
        owner.bias[0, 3] = 50.0
    assert 3 in r.eval().route_logits(logits(seed=8)).indices_TK[:, 0].tolist()
    pair = copy.deepcopy(nn.ModuleDict({"owner": owner, "router": r}))
    assert pair["router"].bias_from.owner is pair["owner"]


def test_router_without_weight_explains_how_to_route() -> None:
    r = router(kind="topk")
    with pytest.raises(TypeError, match="own_weight=False.*route_logits"):
        r(torch.randn(3, 8))
    noisy = Router(RouterConfig(kind="noisy_topk", d_model=8, num_experts=4, top_k=2))
    with pytest.raises(ValueError, match="needs the input for its noise"):
        noisy.route_logits(torch.randn(3, 4))
    with pytest.raises(ValueError, match="expert_bias=False"):
        Router(RouterConfig(kind="topk", d_model=8, num_experts=4), own_weight=False,
               bias_from=TensorRef(nn.Linear(1, 1), "weight"))


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"kind": "expert_choice", "select": "logits"}, r"select apply to the token-choice routers"),
    ({"kind": "switch", "top_k": 1, "expert_bias": True}, r"expert_bias=True applies to router='topk'"),
    ({"kind": "topk", "select": "logits", "n_group": 2, "topk_group": 1, "group_score": "max"},
     r"need select='scores'"),
    ({"kind": "topk", "normalize_eps": -1.0}, r"normalize_eps=-1.0 must be a number >= 0"),
    ({"kind": "topk", "normalize_p": 0}, r"normalize_p=0 must be a number > 0"),
    ({"kind": "topk", "group_fill": "nan"}, r"group_fill='nan' is not one of"),
    ({"kind": "noisy_topk", "routed_scaling_factor": 2.0},
     r"routed_scaling_factor apply to the token-choice routers"),
])
def test_option_errors_name_the_option_and_the_fix(kw: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        RouterConfig(d_model=8, num_experts=8, **{"top_k": 2, **kw})
