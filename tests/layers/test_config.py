"""MoEConfig: one frozen config per layer, built from the keywords or given directly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from moekit.kernels import choose_backend
from moekit.layers import (
    DispatchConfig,
    ExpertsConfig,
    MoEConfig,
    MoELayer,
    RouterConfig,
    SharedExpertsConfig,
)


def test_keywords_and_config_build_the_same_layer():
    kw = dict(d_model=16, d_ff=24, num_experts=6, top_k=2, router="sigmoid_bias", n_group=3,
              topk_group=2, routed_scaling_factor=2.5, capacity_factor=1.5, drop_policy="score",
              num_shared_experts=2, shared_d_ff=8, shared_expert_gate=True, expert_bias=True,
              z_loss_weight=1e-3)
    torch.manual_seed(0)
    a = MoELayer(**kw)
    torch.manual_seed(0)
    b = MoELayer.from_config(MoEConfig.create(**kw))
    assert a.config == b.config
    assert a.config.shared == SharedExpertsConfig(d_ff=16, gate=True)
    assert a.config.dispatch == DispatchConfig(capacity_factor=1.5, drop_policy="score")
    assert a.config.aux_loss_weight == 0.0  # sigmoid_bias balances without the aux loss
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    x = torch.randn(10, 16)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_layer_attributes_are_views_of_the_config():
    moe = MoELayer(8, 16, 4, 2, capacity_factor=1.25)
    assert (moe.d_model, moe.d_ff, moe.num_experts, moe.top_k) == (8, 16, 4, 2)
    assert moe.capacity_factor == 1.25 and moe.aux_loss_weight == 0.01
    with pytest.raises(AttributeError):
        moe.top_k = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        moe.config.z_loss_weight = 1.0  # type: ignore[misc]


def test_expert_choice_capacity_lives_on_the_router():
    cfg = MoEConfig.create(d_model=8, d_ff=16, num_experts=4, router="expert_choice",
                           capacity_factor=2.0)
    assert cfg.router.capacity_factor == 2.0 and cfg.dispatch.capacity_factor is None
    assert cfg.capacity_factor == 2.0
    with pytest.raises(ValueError, match="does not apply to router='expert_choice'"):
        MoEConfig(router=RouterConfig(kind="expert_choice", d_model=8, num_experts=4),
                  experts=ExpertsConfig(d_ff=16), dispatch=DispatchConfig(capacity_factor=1.0))
    with pytest.raises(ValueError, match="applies to kind='expert_choice' only"):
        RouterConfig(kind="topk", d_model=8, num_experts=4, capacity_factor=1.0)


@pytest.mark.parametrize(
    ("build", "error", "pattern"),
    [
        (lambda: ExpertsConfig(d_ff=0), ValueError, r"d_ff=0 must be >= 1"),
        (lambda: ExpertsConfig(d_ff=8, activation="tanh"), ValueError, r"activation='tanh'"),
        (lambda: DispatchConfig(capacity_factor=-1.0), ValueError, r"capacity_factor=-1.0 must be > 0"),
        (lambda: DispatchConfig(capacity_factor="1"), TypeError, r"capacity_factor='1' must be a number"),
        (lambda: DispatchConfig(backend="cuda"), ValueError, r"backend='cuda' is not one of"),
        (lambda: MoEConfig(router=RouterConfig(d_model=8, num_experts=4), experts=16),
         TypeError, r"experts=16 must be a ExpertsConfig"),
        (lambda: MoEConfig.create(d_model=8, d_ff=8, num_experts=4, aux_loss_weight=-1.0),
         ValueError, r"aux_loss_weight=-1.0 must be >= 0"),
        (lambda: MoEConfig.create(d_model=8, d_ff=8, num_experts=4, num_shared_experts=1.5),
         TypeError, r"num_shared_experts=1.5 must be an int >= 0"),
    ],
)
def test_config_errors_name_parameter_value_and_fix(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


def test_from_config_refuses_something_else():
    with pytest.raises(TypeError, match="pass a moekit.layers.MoEConfig"):
        MoELayer.from_config({"d_model": 8})  # type: ignore[arg-type]


def test_layer_repr_shows_router_and_dispatch_settings():
    text = repr(MoELayer(8, 16, 4, 2, router="sigmoid_bias", capacity_factor=1.5))
    assert "kind='sigmoid_bias', d_model=8, num_experts=4, top_k=2" in text
    assert "capacity_factor=1.5" in text and f"backend={choose_backend()[0]!r}" in text
