"""Reference models: forward/backward with every router, dense twins, config errors."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
import torch.nn.functional as F

from moekit.layers import FeedForward, MoEConfig, MoELayer, SoftMoE, SoftMoEConfig, total_aux_loss
from moekit.models import (
    AudioClassifier,
    AudioClassifierConfig,
    ImageClassifier,
    ImageClassifierConfig,
    TransformerLM,
    TransformerLMConfig,
    count_parameters,
    dense_twin,
    dense_twin_config,
)

ROUTERS = ["topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice"]
LM_ROUTERS = ["topk", "switch", "noisy_topk", "sigmoid_bias"]


def _top_k(router: str) -> int:
    return 1 if router == "switch" else 2


def lm_config(**kw) -> TransformerLMConfig:
    base = dict(vocab_size=11, block_size=8, d_model=16, n_layers=2, n_heads=2, d_ff=16,
                num_experts=4)
    base.update(kw)
    base.setdefault("top_k", _top_k(base.get("router", "topk")))
    return TransformerLMConfig.create(**base)


def _forward_backward(model: torch.nn.Module, x: torch.Tensor, n_out: int) -> None:
    model.train()
    logits = model(x)
    assert logits.shape[-1] == n_out and torch.isfinite(logits).all()
    loss = logits.float().pow(2).mean() + total_aux_loss(model)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("router", LM_ROUTERS)
@pytest.mark.parametrize("position", ["rope", "learned"])
def test_lm_forward_backward_each_router(router, position):
    torch.manual_seed(0)
    model = TransformerLM(lm_config(router=router, position=position))
    assert sum(isinstance(m, MoELayer) for m in model.modules()) == 2
    _forward_backward(model, torch.randint(0, 11, (3, 8)), 11)
    if router != "sigmoid_bias":
        assert total_aux_loss(model).item() > 0


def test_flat_keywords_build_the_nested_config():
    flat = TransformerLMConfig.create(vocab_size=11, d_model=16, n_heads=2, d_ff=12,
                                      num_experts=6, top_k=2, router="sigmoid_bias",
                                      num_shared_experts=1, z_loss_weight=1e-3)
    moe = MoEConfig.create(d_model=16, d_ff=12, num_experts=6, top_k=2, router="sigmoid_bias",
                           num_shared_experts=1, aux_loss_weight=0.01, z_loss_weight=1e-3)
    assert flat == TransformerLMConfig(vocab_size=11, d_model=16, n_heads=2, d_ff=12, moe=moe)
    assert flat.moe.aux_loss_weight == 0.01  # the models' default, also for sigmoid_bias
    layer = next(m for m in TransformerLM(flat).modules() if isinstance(m, MoELayer))
    assert layer.config == moe
    assert TransformerLMConfig.create(vocab_size=11, mlp="dense").moe is None
    soft = ImageClassifierConfig.create(router="soft", num_experts=3, slots_per_expert=2,
                                        d_ff=20, activation="relu")
    assert soft.moe == SoftMoEConfig(d_model=64, d_ff=20, num_experts=3, slots_per_expert=2,
                                     activation="relu")


# --- causality: the logits at position t depend on tokens 0..t only ---------------------------

def _accepted(router: str, capacity_factor: float | None) -> TransformerLMConfig | None:
    try:
        return TransformerLMConfig.create(
            vocab_size=50, block_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=32,
            num_experts=4, top_k=_top_k(router), router=router, capacity_factor=capacity_factor,
            num_shared_experts=1 if router == "sigmoid_bias" else 0)
    except ValueError as err:
        assert "not causal" in str(err)
        return None


def _future_leak(model: TransformerLM, cut: int) -> tuple[float, float]:
    """(max change of the logits before ``cut``, after it) when only tokens >= cut change."""
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 50, (3, 64), generator=g)
    b = a.clone()
    b[:, cut:] = (a[:, cut:] + 7) % 50
    torch.manual_seed(5)  # the same router noise (noisy_topk in training) for both forwards
    la = model(a)
    torch.manual_seed(5)
    lb = model(b)
    return ((la - lb)[:, :cut].abs().max().item(), (la - lb)[:, cut:].abs().max().item())


@pytest.mark.parametrize("capacity_factor", [None, 1.0])
@pytest.mark.parametrize("router", ROUTERS)
def test_every_router_the_lm_accepts_is_causal(router, capacity_factor):
    config = _accepted(router, capacity_factor)
    if config is None:  # refused with a message that says why (checked in _accepted)
        assert router == "expert_choice" or capacity_factor is not None
        return
    torch.manual_seed(0)
    model = TransformerLM(config)
    for layer in model.modules():
        if isinstance(layer, MoELayer) and hasattr(layer.router, "expert_bias"):
            layer.router.expert_bias.normal_()  # a learned-looking bias, not all zeros
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            before, after = _future_leak(model, cut=40)
        assert before == 0.0, (router, training, before)
        assert after > 1e-3  # the change is visible where it should be


def test_the_lm_refuses_non_causal_routing_and_says_what_to_use():
    with pytest.raises(ValueError, match="router='expert_choice' is not causal.*use one of 'topk'"):
        lm_config(router="expert_choice")
    with pytest.raises(ValueError, match=r"capacity_factor=1.25 is not causal.*capacity_factor=None"):
        lm_config(capacity_factor=1.25)
    with pytest.raises(TypeError, match="Soft MoE mixes the tokens"):
        TransformerLMConfig(vocab_size=11, d_model=16, n_heads=2,
                            moe=SoftMoEConfig(d_model=16, d_ff=16, num_experts=2))


def test_lm_ties_embedding_and_head():
    model = TransformerLM(lm_config(n_layers=1, num_experts=2, top_k=1))
    assert model.lm_head.weight is model.tok_emb.weight


def test_d_model_of_the_nested_config_must_match():
    moe = MoEConfig.create(d_model=32, d_ff=16, num_experts=4)
    with pytest.raises(ValueError, match="d_model=16 but its moe config has d_model=32"):
        TransformerLMConfig(vocab_size=11, d_model=16, n_heads=2, moe=moe)
    with pytest.raises(ValueError, match="ImageClassifier has d_model=64"):
        ImageClassifierConfig(moe=moe)
    with pytest.raises(TypeError, match="moe=.*must be a moekit.layers.MoEConfig"):
        AudioClassifierConfig(n_features=4, max_frames=4, num_classes=2, moe={"num_experts": 4})


# --- dense twins ----------------------------------------------------------------------------

@pytest.mark.parametrize("shared", [0, 1])
@pytest.mark.parametrize("router", ["topk", "noisy_topk", "switch"])
def test_dense_twin_has_the_same_active_parameters(router, shared):
    config = lm_config(vocab_size=23, d_ff=12, num_experts=6, router=router,
                       num_shared_experts=shared)
    moe = TransformerLM(config)
    dense = dense_twin(moe)
    assert isinstance(dense, TransformerLM) and dense_twin(config).config == dense.config
    moe_total, moe_active = count_parameters(moe)
    dense_total, dense_active = count_parameters(dense)
    assert dense_active == dense_total == moe_active
    assert moe_total > moe_active
    assert not any(isinstance(m, MoELayer) for m in dense.modules())
    assert all(isinstance(b.mlp, FeedForward) for b in dense.blocks)
    assert dense_twin_config(config).d_ff == (_top_k(router) + shared) * 12
    _forward_backward(dense, torch.randint(0, 23, (2, 8)), 23)


def _image(router: str, architecture: str = "vit") -> ImageClassifierConfig:
    return ImageClassifierConfig.create(architecture=architecture, d_model=16, d_ff=12,
                                        n_heads=2, n_layers=2, num_experts=4,
                                        top_k=_top_k(router), router=router, slots_per_expert=2)


def _audio(router: str) -> AudioClassifierConfig:
    return AudioClassifierConfig.create(n_features=6, max_frames=8, num_classes=3, d_model=16,
                                        d_ff=12, n_heads=2, n_layers=1, top_k=_top_k(router),
                                        router=router, slots_per_expert=2)


@pytest.mark.parametrize("make", [lambda r: _image(r, "vit"), lambda r: _image(r, "mlp"), _audio])
@pytest.mark.parametrize("router", ["topk", "sigmoid_bias", "expert_choice"])
def test_classifier_dense_twins_match_active_parameters(make, router):
    config = make(router)
    moe_model = ImageClassifier(config) if isinstance(config, ImageClassifierConfig) \
        else AudioClassifier(config)
    dense = dense_twin(moe_model)
    assert type(dense) is type(moe_model) and dense.config.moe is None
    assert dense.config.d_ff == _top_k(router) * 12
    assert count_parameters(dense).active == count_parameters(moe_model).active
    assert count_parameters(dense).total < count_parameters(moe_model).total


@pytest.mark.parametrize("config", [_image("soft"), _audio("soft")], ids=["image", "audio"])
def test_soft_moe_dense_twin_matches_flops_per_sequence(config):
    moe = config.moe
    twin = dense_twin_config(config)
    # N tokens through one FFN of hidden d_ff' == E * P slots through FFNs of hidden d_ff.
    assert config.tokens * twin.d_ff == moe.num_experts * moe.slots_per_expert * moe.d_ff
    assert twin.activation == moe.activation and twin.moe is None


def test_dense_twin_refuses_mixed_blocks_and_other_things():
    with pytest.raises(ValueError, match="moe_every=2"):
        dense_twin_config(lm_config(moe_every=2))
    with pytest.raises(TypeError, match="dense_twin needs a TransformerLM"):
        dense_twin(torch.nn.Linear(2, 2))
    dense = lm_config(mlp="dense")
    assert dense_twin_config(dense) is dense


def test_old_dense_mlp_checkpoints_still_load():
    """Dense MLPs were three nn.Linear (w_gate, w_up, w_down) before FeedForward replaced them."""
    torch.manual_seed(0)
    config = dense_twin_config(lm_config(n_layers=1))
    model = TransformerLM(config).eval()
    state = model.state_dict()
    D, H = 16, config.d_ff
    w_gate, w_up, w_down = torch.randn(H, D), torch.randn(H, D), torch.randn(D, H)  # Linear layout
    for key in ("blocks.0.mlp.w_in", "blocks.0.mlp.w_down"):
        del state[key]
    state.update({"blocks.0.mlp.w_gate.weight": w_gate, "blocks.0.mlp.w_up.weight": w_up,
                  "blocks.0.mlp.w_down.weight": w_down})
    model.load_state_dict(state)
    x = torch.randn(5, D)
    legacy = F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)
    torch.testing.assert_close(model.blocks[0].mlp(x), legacy)


# --- classifiers ----------------------------------------------------------------------------

@pytest.mark.parametrize("router", [*ROUTERS, "soft"])
def test_vit_forward_backward_each_router(router):
    torch.manual_seed(0)
    config = ImageClassifierConfig.create(architecture="vit", d_model=16, d_ff=16, n_heads=2,
                                          n_layers=1, num_experts=4, top_k=_top_k(router),
                                          router=router)
    model = ImageClassifier(config)
    kind = SoftMoE if router == "soft" else MoELayer
    assert any(isinstance(m, kind) for m in model.modules())
    _forward_backward(model, torch.rand(5, 1, 8, 8), 10)


@pytest.mark.parametrize("router", ROUTERS)
def test_mlp_image_classifier_each_router(router):
    torch.manual_seed(0)
    config = ImageClassifierConfig.create(architecture="mlp", d_model=16, d_ff=16, n_layers=2,
                                          num_experts=4, top_k=_top_k(router), router=router)
    _forward_backward(ImageClassifier(config), torch.rand(6, 8, 8), 10)


@pytest.mark.parametrize("router", [*ROUTERS, "soft"])
def test_audio_classifier_each_router(router):
    torch.manual_seed(0)
    config = AudioClassifierConfig.create(n_features=12, max_frames=14, num_classes=5,
                                          d_model=16, d_ff=16, n_heads=2, n_layers=1,
                                          top_k=_top_k(router), router=router)
    _forward_backward(AudioClassifier(config), torch.randn(4, 14, 12), 5)


def test_soft_moe_parameters_are_all_active():
    config = ImageClassifierConfig.create(router="soft", d_model=16, d_ff=16, n_heads=2,
                                          n_layers=1)
    total, active = count_parameters(ImageClassifier(config))
    assert total == active


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: lm_config(num_experts=4, top_k=5),
         "top_k=5 must be <= num_experts=4; lower top_k or add experts"),
        (lambda: lm_config(router="lottery"), "router='lottery' is not one of the supported"),
        (lambda: TransformerLMConfig(vocab_size=11, d_model=30, n_heads=4),
         "d_model=30 must be divisible by n_heads=4"),
        (lambda: lm_config(router="switch", top_k=2), "use top_k=1"),
        (lambda: TransformerLMConfig(vocab_size=0), "vocab_size=0 must be >= 1"),
        (lambda: ImageClassifierConfig.create(architecture="mlp", router="soft"),
         "needs architecture='vit'"),
        (lambda: ImageClassifierConfig(image_size=8, patch_size=3), "patch_size=3 must divide"),
        (lambda: AudioClassifierConfig.create(n_features=4, max_frames=4, num_classes=2,
                                              activation="tanh"), "activation='tanh'"),
        (lambda: TransformerLMConfig(vocab_size=11, dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
    ],
)
def test_config_errors_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()


def test_inputs_of_the_wrong_shape_are_explained():
    model = ImageClassifier(ImageClassifierConfig(d_model=16, d_ff=16, n_heads=2, n_layers=1))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 8, 8\)"):
        model(torch.rand(2, 1, 7, 7))
    lm = TransformerLM(lm_config(block_size=4, n_layers=1, d_ff=8, num_experts=2, top_k=1))
    with pytest.raises(ValueError, match="exceeds block_size=4"):
        lm(torch.zeros(1, 5, dtype=torch.long))


def test_generate_appends_tokens():
    torch.manual_seed(0)
    lm = TransformerLM(lm_config(block_size=4, n_layers=1, d_ff=8, num_experts=2, top_k=1)).eval()
    out = lm.generate(torch.zeros(2, 1, dtype=torch.long), max_new_tokens=6)
    assert out.shape == (2, 7) and out.max() < 11


@pytest.mark.parametrize("name", ["transformer_lm", "image_classifier", "audio_classifier", "twin"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"moekit.models.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("config", [
    lm_config(router="sigmoid_bias", num_shared_experts=1, n_layers=3, moe_every=2),
    lm_config(mlp="dense"),
    _image("soft"), _image("expert_choice", "mlp"), _audio("noisy_topk"),
], ids=["lm", "lm-dense", "image-soft", "image-mlp", "audio"])
def test_configs_round_trip_through_a_dict(config):
    import dataclasses
    import json

    data = json.loads(json.dumps(dataclasses.asdict(config)))  # as a run's config.json holds it
    assert type(config).from_dict(data) == config


def test_flat_dicts_of_earlier_versions_still_build():
    # moekit 0.1 wrote the flat fields into config.json; from_dict reads them through create
    old = dict(vocab_size=11, block_size=8, d_model=16, n_layers=2, n_heads=2, d_ff=16,
               num_experts=4, top_k=2, router="topk", activation="swiglu", capacity_factor=None,
               num_shared_experts=0, aux_loss_weight=0.01, z_loss_weight=0.0, mlp="moe",
               moe_every=1, position="rope", dropout=0.0, tie_weights=True)
    assert TransformerLMConfig.from_dict(old) == TransformerLMConfig.create(**old)
    with pytest.raises(TypeError, match="from_dict needs a mapping"):
        TransformerLMConfig.from_dict([1, 2])
