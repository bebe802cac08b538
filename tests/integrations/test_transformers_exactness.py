"""moekit layers reproduce transformers' sparse MoE blocks exactly (float32, CPU).

For seeded random configurations of each block (sizes, experts, top-k, DeepSeek-V3 groups and
scaling, norm_topk_prob both ways, shared experts, batch shapes down to one token), the block gets
random weights (and a nonzero ``e_score_correction_bias``), ``from_transformers`` converts it, and
outputs plus gradients (input, router, experts) must agree for every transformers experts
implementation that runs on CPU and both moekit backends. The Switch loss is checked against
transformers' ``load_balancing_loss_func``. No downloads: blocks are built from config classes.
"""

from __future__ import annotations

import doctest
import importlib
import random
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from moekit.integrations import transformers as mt  # noqa: E402
from moekit.layers import MoELayer, switch_load_balancing_loss  # noqa: E402

KINDS = ("mixtral", "qwen3_moe", "olmoe", "qwen2_moe", "deepseek_v3")
SEEDS = range(4)
# transformers' experts implementations (transformers/integrations/moe.py); "deepgemm" and
# "sonicmoe" need CUDA kernels and are not exercised here.
HF_IMPLS = ("eager", "batched_mm", "grouped_mm")
BACKENDS = ("loop", "grouped_mm")
SHAPES = ((1, 1), (2, 5), (3, 7), (1, 16))  # (batch, seq); seed 0 is a single token


def _block_class(kind: str) -> type[nn.Module]:
    module = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
    name = {"mixtral": "MixtralSparseMoeBlock", "qwen3_moe": "Qwen3MoeSparseMoeBlock",
            "olmoe": "OlmoeSparseMoeBlock", "qwen2_moe": "Qwen2MoeSparseMoeBlock",
            "deepseek_v3": "DeepseekV3MoE"}[kind]
    return getattr(module, name)  # type: ignore[no-any-return]


def random_config(kind: str, seed: int, **overrides: Any) -> Any:
    """A small random config of ``kind``; seed parity fixes norm_topk_prob so both are covered."""
    rng = random.Random(f"{kind}-{seed}")
    D, F, E = rng.choice((8, 16, 24)), rng.choice((4, 8, 12)), rng.choice((4, 6, 8))
    common = {"hidden_size": D, "hidden_act": "gelu" if seed == 3 else "silu"}
    norm = seed % 2 == 0
    if kind == "mixtral":
        kw = dict(intermediate_size=F, num_local_experts=E, num_experts_per_tok=rng.randint(1, min(4, E)))
    elif kind == "qwen3_moe":
        kw = dict(moe_intermediate_size=F, num_experts=E, num_experts_per_tok=rng.randint(1, min(4, E)),
                  norm_topk_prob=norm)
    elif kind == "olmoe":
        kw = dict(intermediate_size=F, num_experts=E, num_experts_per_tok=rng.randint(1, min(4, E)),
                  norm_topk_prob=norm)
    elif kind == "qwen2_moe":
        kw = dict(moe_intermediate_size=F, num_experts=E, num_experts_per_tok=rng.randint(1, min(4, E)),
                  norm_topk_prob=norm, shared_expert_intermediate_size=rng.choice((4, 12, 20)))
    else:
        E = rng.choice((4, 8, 12, 16))
        n_group = rng.choice([g for g in (1, 2, 4) if E % g == 0 and E // g >= 2])
        topk_group = rng.randint(1, n_group)
        top_k = rng.randint(1, min(4, topk_group * (E // n_group)))
        kw = dict(moe_intermediate_size=F, n_routed_experts=E, num_experts_per_tok=top_k,
                  n_group=n_group, topk_group=topk_group, norm_topk_prob=norm,
                  routed_scaling_factor=rng.choice((1.0, 2.5)), n_shared_experts=rng.choice((1, 2)))
    config_cls = getattr(transformers, {
        "mixtral": "MixtralConfig", "qwen3_moe": "Qwen3MoeConfig", "olmoe": "OlmoeConfig",
        "qwen2_moe": "Qwen2MoeConfig", "deepseek_v3": "DeepseekV3Config"}[kind])
    return config_cls(**{**common, **kw, **overrides})


def random_block(kind: str, seed: int, impl: str = "eager", **overrides: Any) -> nn.Module:
    """The block with random weights (some are created with torch.empty), in eval mode."""
    config = random_config(kind, seed, **overrides)
    config._experts_implementation = impl
    torch.manual_seed(seed)
    block = _block_class(kind)(config)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
        for name, buf in block.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.3)
    return block.eval()


def _close(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale = max(1.0, float(ref.detach().abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def _expert_grads_hf(block: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HF expert gradients in moekit's layout: (w_gate, w_up, w_down) grads."""
    g = block.experts.gate_up_proj.grad
    F = g.shape[1] // 2
    return (g[:, :F].transpose(1, 2), g[:, F:].transpose(1, 2),
            block.experts.down_proj.grad.transpose(1, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("impl", HF_IMPLS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_and_gradients_match(kind: str, seed: int, impl: str, backend: str) -> None:
    block: Any = random_block(kind, seed, impl)
    layer = mt.from_transformers(block, backend=backend)  # type: ignore[arg-type]
    assert not layer.training and layer.backend == backend
    B, S = SHAPES[seed % len(SHAPES)]
    D = block.experts.gate_up_proj.shape[-1]
    torch.manual_seed(100 + seed)
    x = torch.randn(B, S, D)
    grad_out = torch.randn(B, S, D)

    x_hf = x.clone().requires_grad_()
    y_hf = block(x_hf)
    y_hf.backward(grad_out)
    x_mk = x.clone().requires_grad_()
    y_mk = layer(x_mk)
    y_mk.backward(grad_out)

    assert y_mk.shape == y_hf.shape and y_mk.dtype == y_hf.dtype
    _close(y_mk, y_hf, "output")
    _close(x_mk.grad, x_hf.grad, "d input")
    _close(layer.router.weight.grad, block.gate.weight.grad, "d router weight")
    g_gate, g_up = layer.experts.split_gate_up(layer.experts.w_in.grad)
    for name, g_mk, g_hf in zip(("w_gate", "w_up", "w_down"), (g_gate, g_up, layer.experts.w_down.grad),
                                _expert_grads_hf(block)):
        _close(g_mk, g_hf, f"d experts.{name}")
    if layer.shared_experts is not None:
        mlp = getattr(block, "shared_experts", None) or block.shared_expert
        _close(layer.shared_experts.w_down.grad, mlp.down_proj.weight.grad.T, "d shared w_down")
    if layer.shared_gate is not None:
        _close(layer.shared_gate.weight.grad, block.shared_expert_gate.weight.grad, "d shared gate")


@pytest.mark.parametrize("kind", KINDS)
def test_training_mode_matches_without_bias_updates(kind: str) -> None:
    """Training mode changes nothing in these blocks (no jitter, no dropout); DeepSeek-V3's bias
    stays fixed by default, as in transformers."""
    block: Any = random_block(kind, 1).train()
    layer = mt.from_transformers(block)
    assert layer.training
    x = torch.randn(2, 3, block.experts.gate_up_proj.shape[-1])
    for _ in range(2):  # a second step would see a moved bias
        _close(layer(x), block(x), "output in training mode")
    if kind == "deepseek_v3":
        torch.testing.assert_close(layer.router.expert_bias, block.gate.e_score_correction_bias,
                                   rtol=0, atol=0)


def test_deepseek_bias_and_groups_change_the_routing() -> None:
    """The DeepSeek configs are sensitive to e_score_correction_bias and group limits: zeroing
    either changes the output, so the exactness test above really checks both."""
    block: Any = random_block("deepseek_v3", 0, n_routed_experts=16, n_group=4, topk_group=1,
                              num_experts_per_tok=2)
    x = torch.randn(64, block.experts.gate_up_proj.shape[-1])
    layer = mt.from_transformers(block)
    ref = layer(x)
    _close(ref, block(x[None])[0], "output")
    with torch.no_grad():
        layer.router.expert_bias.zero_()
    assert not torch.allclose(layer(x), ref, atol=1e-3)
    ungrouped = mt.from_transformers(random_block("deepseek_v3", 0, n_routed_experts=16, n_group=1,
                                                  topk_group=1, num_experts_per_tok=2))
    assert not torch.allclose(ungrouped(x), ref, atol=1e-3)


def test_both_norm_topk_prob_settings_covered() -> None:
    for kind in ("qwen3_moe", "olmoe", "qwen2_moe", "deepseek_v3"):
        seen = {random_config(kind, s).norm_topk_prob for s in SEEDS}
        assert seen == {True, False}, kind


@pytest.mark.parametrize("kind", KINDS)
def test_layer_kwargs(kind: str) -> None:
    block: Any = random_block(kind, 0)
    kw = mt.layer_kwargs_from_transformers(block)
    cfg = block.experts.config
    assert kw["top_k"] == cfg.num_experts_per_tok
    assert kw["router"] == ("sigmoid_bias" if kind == "deepseek_v3" else "topk")
    assert kw["activation"] == "swiglu"
    assert kw["normalize"] == (True if kind == "mixtral" else cfg.norm_topk_prob)
    if kind == "deepseek_v3":
        assert (kw["n_group"], kw["topk_group"], kw["routed_scaling_factor"]) == (
            cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor)
        assert kw["shared_d_ff"] == cfg.moe_intermediate_size * cfg.n_shared_experts
    if kind == "qwen2_moe":
        assert kw["shared_expert_gate"] and kw["shared_d_ff"] == cfg.shared_expert_intermediate_size
    assert mt.layer_kwargs_from_transformers(random_block(kind, 3))["activation"] == "geglu"


@pytest.mark.parametrize("kind", KINDS)
def test_to_transformers_round_trip(kind: str) -> None:
    """New moekit weights copied into a fresh block make it compute what the layer computes."""
    layer = mt.from_transformers(random_block(kind, 2))
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        if kind == "deepseek_v3":
            layer.router.expert_bias.copy_(torch.randn_like(layer.router.expert_bias) * 0.3)
    fresh: Any = random_block(kind, 2)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    mt.to_transformers(layer, fresh)
    x = torch.randn(3, 4, layer.d_model)
    _close(fresh(x), layer(x), "block after to_transformers")
    back = mt.from_transformers(fresh)
    for (name, a), b in zip(layer.state_dict().items(), back.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_weight_layout_gate_is_first_half() -> None:
    block: Any = random_block("mixtral", 0)
    layer = mt.from_transformers(block)
    F = layer.d_ff
    torch.testing.assert_close(layer.experts.w_gate[0], block.experts.gate_up_proj[0, :F].T)
    torch.testing.assert_close(layer.experts.w_up[0], block.experts.gate_up_proj[0, F:].T)
    torch.testing.assert_close(layer.experts.w_down[0], block.experts.down_proj[0].T)


def test_dtype_device_and_no_shared_storage() -> None:
    block: Any = random_block("qwen2_moe", 0).to(torch.float64)
    layer = mt.from_transformers(block)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    x = torch.randn(2, 3, layer.d_model, dtype=torch.float64)
    y = layer(x)
    assert y.dtype == torch.float64
    # transformers computes the router softmax in float32 even for float64 input, moekit in
    # float64: agreement to float32 rounding of the combine weights, not to float64.
    torch.testing.assert_close(y, block(x), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        layer.experts.w_up.zero_()
    assert block.experts.gate_up_proj.abs().sum() > 0  # copies, not views


# --- load balancing loss ------------------------------------------------------------------


@pytest.mark.parametrize("module", ("mixtral", "qwen3_moe", "olmoe", "qwen2_moe"))
@pytest.mark.parametrize("top_k", (1, 2, 3, 8))
def test_switch_loss_matches_load_balancing_loss_func(module: str, top_k: int) -> None:
    hf_loss = importlib.import_module(f"transformers.models.{module}.modeling_{module}") \
        .load_balancing_loss_func
    gen = torch.Generator().manual_seed(top_k)
    for T, E in ((1, 8), (37, 8), (64, 16)):
        logits = torch.randn(T, E, generator=gen) * 2
        probs = logits.softmax(dim=-1)
        indices = probs.topk(top_k, dim=-1).indices
        ours = switch_load_balancing_loss(probs, indices)
        theirs = hf_loss((logits,), E, top_k)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ("mixtral", "qwen3_moe", "olmoe", "qwen2_moe"))
def test_layer_aux_loss_is_weighted_hf_loss(kind: str) -> None:
    """``layer.aux_loss`` = router_aux_loss_coef * transformers' loss on the block's router logits."""
    block: Any = random_block(kind, 1).train()
    layer = mt.from_transformers(block)
    coef = block.experts.config.router_aux_loss_coef
    assert layer.aux_loss_weight == coef
    x = torch.randn(4, 9, layer.d_model)
    layer(x)
    router_logits = block.gate(x)[0]
    hf_loss = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}") \
        .load_balancing_loss_func((router_logits,), layer.num_experts, layer.top_k)
    assert layer.aux_loss is not None
    torch.testing.assert_close(layer.aux_loss, coef * hf_loss, rtol=1e-6, atol=1e-9)
    assert mt.from_transformers(random_block("deepseek_v3", 0)).aux_loss_weight == 0.0
    assert mt.from_transformers(block, aux_loss_weight=0.5).aux_loss_weight == 0.5


# --- errors -------------------------------------------------------------------------------


def test_unsupported_block_type() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.modules\.linear\.Linear.*MixtralSparseMoeBlock"):
        mt.from_transformers(nn.Linear(4, 4))
    decoder_layer = nn.Module()
    decoder_layer.mlp = random_block("mixtral", 0)
    with pytest.raises(TypeError, match="not the decoder layer"):
        mt.from_transformers(decoder_layer)


def test_jitter_noise_is_refused() -> None:
    block = random_block("mixtral", 0, router_jitter_noise=0.1)
    with pytest.raises(ValueError, match=r"jitter_noise=0\.1 \(config\.router_jitter_noise\)"):
        mt.from_transformers(block)


def test_unsupported_activation() -> None:
    block = random_block("olmoe", 0, hidden_act="gelu_pytorch_tanh")
    with pytest.raises(ValueError, match=r"OlmoeSparseMoeBlock\.experts uses activation .*'silu'"):
        mt.from_transformers(block)


def test_bias_update_rate_only_for_deepseek() -> None:
    with pytest.raises(ValueError, match="bias_update_rate=0.001 applies to DeepSeek-V3"):
        mt.from_transformers(random_block("qwen3_moe", 0), bias_update_rate=1e-3)
    layer = mt.from_transformers(random_block("deepseek_v3", 0), bias_update_rate=1e-3)
    assert layer.router.config.bias_update_rate == 1e-3


def test_to_transformers_refuses_mismatched_layer() -> None:
    block: Any = random_block("mixtral", 0)
    kw = mt.layer_kwargs_from_transformers(block)
    other = MoELayer(**{**kw, "top_k": 1 if kw["top_k"] > 1 else 2})
    with pytest.raises(ValueError, match=r"top_k: layer has \d, MixtralSparseMoeBlock needs \d"):
        mt.to_transformers(other, block)
    with pytest.raises(TypeError, match="pass a moekit MoELayer"):
        mt.to_transformers(nn.Linear(2, 2), block)  # type: ignore[arg-type]


def test_copy_helpers_check_sizes() -> None:
    from moekit.layers import GroupedExperts

    block: Any = random_block("mixtral", 0)
    E, twoF, D = block.experts.gate_up_proj.shape
    with pytest.raises(ValueError, match=rf"build GroupedExperts\({D}, {twoF // 2}, {E}\)"):
        mt.copy_experts_from_transformers(block.experts, GroupedExperts(D, twoF // 2 + 1, E))
    with pytest.raises(ValueError, match="activation='swiglu' or 'geglu'"):
        mt.copy_experts_from_transformers(block.experts, GroupedExperts(D, twoF // 2, E, "gelu"))


# --- packaging ----------------------------------------------------------------------------


def test_import_works_without_transformers_and_registers_with_it() -> None:
    """``moekit.integrations`` never imports transformers; ``.transformers`` imports without it
    (``register()`` then says what to install) and registers "moekit" when it is there."""
    bare = ("import sys; sys.modules['transformers'] = None\n"
            "import moekit.integrations, moekit.integrations.transformers as mt\n"
            "try:\n    mt.register()\nexcept ImportError as err:\n"
            "    assert \"pip install 'transformers>=5'\" in str(err), err\n"
            "else:\n    raise SystemExit('register() ran without transformers')")
    subprocess.run([sys.executable, "-c", bare], check=True)
    parent = ("import sys, moekit.integrations\n"
              "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", parent], check=True)
    with_it = ("import moekit.integrations.transformers\n"
               "from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS\n"
               "assert 'moekit' in ALL_EXPERTS_FUNCTIONS")
    subprocess.run([sys.executable, "-c", with_it], check=True)


@pytest.mark.parametrize("module", ["convert", "weights", "registry", "patching", "report",
                                    "experts"])
def test_docstring_examples_run(module: str) -> None:
    sub = importlib.import_module(f"moekit.integrations.transformers.{module}")
    result = doctest.testmod(sub, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or module == "experts"


# --- aux loss in eval mode ---------------------------------------------------------------------


def test_aux_loss_is_reported_in_eval_too() -> None:
    """The aux loss is computed in every mode (for monitoring), like transformers' router loss."""
    layer = mt.from_transformers(random_block("mixtral", 1))  # eval, aux_loss_weight = coef > 0
    layer(torch.randn(5, layer.d_model))
    assert layer.aux_loss is not None
    assert layer.aux_loss.item() > 0.0
