"""Soft MoE: token permutation equivariance, convex slots, gradients."""

from __future__ import annotations

import torch

from moekit.layers import SoftMoE


def test_permuting_tokens_permutes_outputs():
    torch.manual_seed(0)
    layer = SoftMoE(8, 16, 3, slots_per_expert=2)
    x = torch.randn(2, 7, 8)
    perm = torch.randperm(7)
    torch.testing.assert_close(layer(x)[:, perm], layer(x[:, perm]), atol=1e-5, rtol=1e-5)


def test_sequences_do_not_mix_across_the_batch():
    torch.manual_seed(0)
    layer = SoftMoE(8, 16, 3)
    x = torch.randn(3, 5, 8)
    y = layer(x)
    x2 = x.clone()
    x2[1] = torch.randn(5, 8)
    y2 = layer(x2)
    torch.testing.assert_close(y[[0, 2]], y2[[0, 2]])
    assert not torch.allclose(y[1], y2[1])


def test_one_expert_one_slot_on_identical_tokens_is_the_expert():
    torch.manual_seed(0)
    layer = SoftMoE(8, 16, 1, slots_per_expert=1)
    token = torch.randn(8)
    x = token.expand(1, 4, 8).clone()
    expected = layer.experts.forward_expert(0, token[None])[0]
    torch.testing.assert_close(layer(x)[0], expected.expand(4, 8), atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    torch.manual_seed(0)
    layer = SoftMoE(3, 4, 2, slots_per_expert=2).double()
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
