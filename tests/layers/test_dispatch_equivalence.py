"""Fast dispatch ≡ loop dispatch ≡ token-by-token reference, forward and backward."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moekit.layers import MoELayer
from moekit.layers.reference import reference_moe_forward

ROUTERS = ["topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice"]


def grads(moe: MoELayer, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in moe.parameters() if p.requires_grad]
    return list(torch.autograd.grad(y, [x, *params], g, allow_unused=True, materialize_grads=True))


@settings(max_examples=40, deadline=None)
@given(
    router=st.sampled_from(ROUTERS),
    tokens=st.integers(0, 24),
    d_model=st.sampled_from([4, 8, 6]),
    d_ff=st.sampled_from([4, 8, 5]),
    num_experts=st.integers(1, 6),
    top_k=st.integers(1, 3),
    capacity_factor=st.sampled_from([None, 0.5, 1.0, 1.5]),
    drop_policy=st.sampled_from(["position", "score"]),
    activation=st.sampled_from(["swiglu", "gelu", "relu"]),
    expert_bias=st.booleans(),
    shared=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_grouped_equals_loop_equals_reference(router, tokens, d_model, d_ff, num_experts, top_k,
                                              capacity_factor, drop_policy, activation,
                                              expert_bias, shared, seed):
    top_k = 1 if router == "switch" else min(top_k, num_experts)
    torch.manual_seed(seed)
    moe = MoELayer(d_model, d_ff, num_experts, top_k, router=router, activation=activation,
                   capacity_factor=capacity_factor, drop_policy=drop_policy,
                   expert_bias=expert_bias, num_shared_experts=shared, aux_loss_weight=0.01)
    moe.eval()  # no router noise, no bias update: the three paths see the same routing
    if expert_bias:
        with torch.no_grad():
            for name, p in moe.experts.named_parameters():
                if name.startswith("b_"):
                    p.normal_()
    x = torch.randn(tokens, d_model, requires_grad=True)
    g = torch.randn(tokens, d_model)
    outs, all_grads = {}, {}
    for backend in ("grouped_mm", "loop"):
        moe.backend = backend
        outs[backend] = moe(x)
        all_grads[backend] = grads(moe, x, outs[backend], g)
    ref = reference_moe_forward(moe, x)
    ref_grads = grads(moe, x, ref, g)
    for backend in ("grouped_mm", "loop"):
        torch.testing.assert_close(outs[backend], ref, atol=1e-5, rtol=1e-4)
        for a, b in zip(all_grads[backend], ref_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("router", ROUTERS)
def test_gradcheck_float64(router):
    torch.manual_seed(0)
    k = 1 if router == "switch" else 2
    moe = MoELayer(3, 4, 3, k, router=router, capacity_factor=1.0).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(moe, (x,))
    # also through the expert weights, with the router frozen to a fixed routing
    moe.router.weight.requires_grad_(False)
    w = moe.experts.w_in
    assert torch.autograd.gradcheck(lambda w_: torch.func.functional_call(moe, {"experts.w_in": w_}, (x,)),
                                    (w.detach().clone().requires_grad_(),))


def test_bfloat16_grouped_close_to_loop():
    torch.manual_seed(0)
    moe = MoELayer(16, 32, 4, 2).to(torch.bfloat16).eval()
    x = torch.randn(40, 16, dtype=torch.bfloat16)
    y_fast = moe(x)
    moe.backend = "loop"
    y_loop = moe(x)
    assert y_fast.dtype == torch.bfloat16
    torch.testing.assert_close(y_fast.float(), y_loop.float(), atol=3e-2, rtol=3e-2)
