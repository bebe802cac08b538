"""Reference models: forward/backward with every router, dense twin, config errors."""

from __future__ import annotations

import pytest
import torch

from moekit.layers import MoELayer, SoftMoE, total_aux_loss
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


def _top_k(router: str) -> int:
    return 1 if router == "switch" else 2


def _forward_backward(model: torch.nn.Module, x: torch.Tensor, n_out: int) -> None:
    model.train()
    logits = model(x)
    assert logits.shape[-1] == n_out and torch.isfinite(logits).all()
    loss = logits.float().pow(2).mean() + total_aux_loss(model)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("position", ["rope", "learned"])
def test_lm_forward_backward_each_router(router, position):
    torch.manual_seed(0)
    config = TransformerLMConfig(vocab_size=11, block_size=8, d_model=16, n_layers=2, n_heads=2,
                                 d_ff=16, num_experts=4, top_k=_top_k(router), router=router,
                                 position=position)
    model = TransformerLM(config)
    assert sum(isinstance(m, MoELayer) for m in model.modules()) == 2
    _forward_backward(model, torch.randint(0, 11, (3, 8)), 11)
    if router not in ("sigmoid_bias", "expert_choice"):
        assert total_aux_loss(model).item() > 0


def test_lm_is_causal():
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=11, block_size=8, d_model=16, n_layers=2,
                                              n_heads=2, d_ff=16, num_experts=4, top_k=2)).eval()
    x = torch.randint(0, 11, (1, 8))
    y = x.clone()
    y[0, 5:] = (y[0, 5:] + 1) % 11
    with torch.no_grad():
        assert torch.allclose(model(x)[0, :5], model(y)[0, :5], atol=1e-5)


def test_lm_ties_embedding_and_head():
    model = TransformerLM(TransformerLMConfig(vocab_size=11, block_size=8, d_model=16, n_layers=1,
                                              n_heads=2, d_ff=16, num_experts=2, top_k=1))
    assert model.lm_head.weight is model.tok_emb.weight


@pytest.mark.parametrize("shared", [0, 1])
@pytest.mark.parametrize("router", ["topk", "noisy_topk", "switch"])
def test_dense_twin_has_the_same_active_parameters(router, shared):
    config = TransformerLMConfig(vocab_size=23, block_size=8, d_model=16, n_layers=2, n_heads=2,
                                 d_ff=12, num_experts=6, top_k=_top_k(router), router=router,
                                 num_shared_experts=shared)
    moe, dense = TransformerLM(config), dense_twin(config)
    moe_total, moe_active = count_parameters(moe)
    dense_total, dense_active = count_parameters(dense)
    assert dense_active == dense_total == moe_active
    assert moe_total > moe_active
    assert not any(isinstance(m, MoELayer) for m in dense.modules())
    assert dense_twin_config(config).d_ff == (_top_k(router) + shared) * 12
    _forward_backward(dense, torch.randint(0, 23, (2, 8)), 23)


def test_dense_twin_refuses_mixed_blocks():
    config = TransformerLMConfig(vocab_size=11, n_layers=2, moe_every=2)
    with pytest.raises(ValueError, match="moe_every=2"):
        dense_twin_config(config)


@pytest.mark.parametrize("router", [*ROUTERS, "soft"])
def test_vit_forward_backward_each_router(router):
    torch.manual_seed(0)
    config = ImageClassifierConfig(architecture="vit", d_model=16, d_ff=16, n_heads=2, n_layers=1,
                                   num_experts=4, top_k=_top_k(router), router=router)
    model = ImageClassifier(config)
    kind = SoftMoE if router == "soft" else MoELayer
    assert any(isinstance(m, kind) for m in model.modules())
    _forward_backward(model, torch.rand(5, 1, 8, 8), 10)


@pytest.mark.parametrize("router", ROUTERS)
def test_mlp_image_classifier_each_router(router):
    torch.manual_seed(0)
    config = ImageClassifierConfig(architecture="mlp", d_model=16, d_ff=16, n_layers=2,
                                   num_experts=4, top_k=_top_k(router), router=router)
    _forward_backward(ImageClassifier(config), torch.rand(6, 8, 8), 10)


@pytest.mark.parametrize("router", [*ROUTERS, "soft"])
def test_audio_classifier_each_router(router):
    torch.manual_seed(0)
    config = AudioClassifierConfig(n_features=12, max_frames=14, num_classes=5, d_model=16,
                                   d_ff=16, n_heads=2, n_layers=1, top_k=_top_k(router),
                                   router=router)
    _forward_backward(AudioClassifier(config), torch.randn(4, 14, 12), 5)


def test_soft_moe_parameters_are_all_active():
    config = ImageClassifierConfig(router="soft", d_model=16, d_ff=16, n_heads=2, n_layers=1)
    total, active = count_parameters(ImageClassifier(config))
    assert total == active


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TransformerLMConfig(vocab_size=11, num_experts=4, top_k=5),
         "top_k=5 must be <= num_experts=4; lower top_k or add experts"),
        (lambda: TransformerLMConfig(vocab_size=11, router="lottery"),
         "router='lottery' is not one of 'topk'"),
        (lambda: TransformerLMConfig(vocab_size=11, d_model=30, n_heads=4),
         "d_model=30 must be divisible by n_heads=4"),
        (lambda: TransformerLMConfig(vocab_size=11, router="switch", top_k=2),
         "set top_k=1"),
        (lambda: TransformerLMConfig(vocab_size=0), "vocab_size=0 must be > 0"),
        (lambda: ImageClassifierConfig(architecture="mlp", router="soft"),
         "needs architecture='vit'"),
        (lambda: ImageClassifierConfig(image_size=8, patch_size=3), "patch_size=3 must divide"),
        (lambda: AudioClassifierConfig(n_features=4, max_frames=4, num_classes=2,
                                       activation="tanh"), "activation='tanh'"),
    ],
)
def test_config_errors_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()


def test_inputs_of_the_wrong_shape_are_explained():
    model = ImageClassifier(ImageClassifierConfig(d_model=16, d_ff=16, n_heads=2, n_layers=1))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 8, 8\)"):
        model(torch.rand(2, 1, 7, 7))
    lm = TransformerLM(TransformerLMConfig(vocab_size=11, block_size=4, d_model=16, n_heads=2,
                                           n_layers=1, d_ff=8, num_experts=2, top_k=1))
    with pytest.raises(ValueError, match="exceeds block_size=4"):
        lm(torch.zeros(1, 5, dtype=torch.long))


def test_generate_appends_tokens():
    torch.manual_seed(0)
    lm = TransformerLM(TransformerLMConfig(vocab_size=11, block_size=4, d_model=16, n_heads=2,
                                           n_layers=1, d_ff=8, num_experts=2, top_k=1)).eval()
    out = lm.generate(torch.zeros(2, 1, dtype=torch.long), max_new_tokens=6)
    assert out.shape == (2, 7) and out.max() < 11
