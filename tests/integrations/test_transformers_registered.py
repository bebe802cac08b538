"""moekit as a transformers experts implementation equals transformers' own, family by family.

For every family of the installed transformers whose experts use ``@use_experts_implementation``,
a tiny random model is run with ``experts_implementation="eager"`` (transformers' readable loop)
and with ``"moekit"``: logits (or the text model's hidden states), every parameter's gradient,
the router logits and the aux loss must agree to float32 rounding, and greedy ``generate`` must
produce the same tokens. Expert-parallel sentinel ids are checked on a single process, as
transformers' own kernel tests do.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("needs transformers >= 5", allow_module_level=True)

from checks import assert_same, record, run, run_safely  # noqa: E402
from tiny_models import moe_families, tiny_model  # noqa: E402

import moekit.integrations.transformers as mt  # noqa: E402
from moekit.integrations.transformers.experts import (  # noqa: E402
    EXPERTS_FUNCTIONS,
    experts_forward,
    plan_experts,
)

#: families whose tiny models cannot be built from the config class alone (reason shown); the
#: test below keeps this list honest.
UNBUILDABLE = {
    "diffusion_gemma": "its only text class is an encoder whose config needs the full model's",
    "ernie4_5_vl_moe": "its text config takes per-modality expert sizes and a multimodal rope",
}
FAMILIES = [f for f in moe_families() if f not in UNBUILDABLE]


@pytest.mark.parametrize("family", FAMILIES)
def test_moekit_experts_implementation_equals_eager(family: str) -> None:
    model = tiny_model(family)
    ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(1))
    assert any(getattr(m, "_is_expert_parallel", None) is not None for m in model.modules())
    ref, router_logits = run_safely(model, ids, "eager")
    got = run(model, ids, "moekit", router_logits)
    delta = assert_same(ref, got)
    assert model.config._experts_implementation == "moekit"
    record(family, "experts_implementation", f"{delta:.1e}")


def test_loop_kernel_registered_under_another_name_equals_eager() -> None:
    mt.register("moekit_loop", kernel="loop")
    model = tiny_model("gpt_oss")  # interleaved, transposed, biased, clamped SwiGLU
    ids = torch.randint(3, 90, (2, 5), generator=torch.Generator().manual_seed(2))
    assert_same(run(model, ids, "eager"), run(model, ids, "moekit_loop"))


def test_from_pretrained_with_moekit(tmp_path: Any) -> None:
    model = tiny_model("qwen3_moe")
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, experts_implementation="moekit").eval()
    assert loaded.config._experts_implementation == "moekit"
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.set_experts_implementation("eager")
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_register_is_idempotent_and_refuses_transformers_names() -> None:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    assert mt.register() == "moekit" and mt.register() == "moekit"
    assert ALL_EXPERTS_FUNCTIONS["moekit"] is EXPERTS_FUNCTIONS["grouped_mm"]
    with pytest.raises(ValueError, match="one of transformers' own experts implementations"):
        mt.register("grouped_mm")
    with pytest.raises(ValueError, match="kernel='triton2' is not one of"):
        mt.register("moekit_x", kernel="triton2")  # type: ignore[arg-type]
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register("someone_else", lambda *a: None)
    with pytest.raises(ValueError, match="already registered to .*not moekit's"):
        mt.register("someone_else")


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss", "nemotron_h"])
def test_expert_parallel_sentinels_give_zero_output_and_zero_gradient(family: str) -> None:
    """Ids >= num_experts (other ranks' experts under transformers' EP) contribute nothing."""
    model = tiny_model(family)
    experts = next(m for m in model.modules() if hasattr(m, "_is_expert_parallel"))
    E = experts.num_experts
    gen = torch.Generator().manual_seed(4)
    T, K = 9, 2
    x = torch.randn(T, model.config.hidden_size, generator=gen, requires_grad=True)
    idx = torch.randint(0, E, (T, K), generator=gen)
    sentinel = torch.rand(T, K, generator=gen) < 0.4
    idx_ep = torch.where(sentinel, torch.full_like(idx, E), idx)
    w = torch.rand(T, K, generator=gen, requires_grad=True)
    experts._is_expert_parallel = True
    try:
        y = experts_forward(experts, x, idx_ep, w)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    finally:
        experts._is_expert_parallel = False
    gx, gw = x.grad.clone(), w.grad.clone()
    # reference: the routed slots only, with transformers' eager loop
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    model.set_experts_implementation("eager")
    y_ref = experts(x2, idx, w2 * (~sentinel))
    (y_ref * torch.linspace(-1, 1, y_ref.numel()).view_as(y_ref)).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, x2.grad, rtol=1e-5, atol=1e-6)
    assert torch.all(gw[sentinel] == 0)
    torch.testing.assert_close(gw[~sentinel], w2.grad[~sentinel], rtol=1e-5, atol=1e-6)
    assert gw[~sentinel].abs().sum() > 0


def test_plan_reads_known_gate_functions_as_data_and_calls_unknown_ones() -> None:
    gpt = next(m for m in tiny_model("gpt_oss").modules() if type(m).__name__ == "GptOssExperts")
    plan = plan_experts(gpt)
    assert plan.exact_as_data and plan.activation.gate_up == "interleaved"
    assert (plan.activation.glu.swish_alpha, plan.activation.glu.up_offset) == (gpt.alpha, 1.0)
    assert plan.layout.in_bias == "gate_up_proj_bias" and not plan.layout.in_linear
    ink = next(m for m in tiny_model("inkling2").modules() if type(m).__name__ == "Inkling2Experts")
    plan = plan_experts(ink)
    assert not plan.exact_as_data and "no moekit data form" in str(plan.reason)
    with pytest.raises(TypeError, match="is not a transformers experts module"):
        plan_experts(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", sorted(UNBUILDABLE))
def test_unbuildable_families_really_cannot_be_built_tiny(family: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any failure: the point is that it fails
        model = tiny_model(family)
        model(input_ids=torch.randint(3, 90, (1, 4)))
