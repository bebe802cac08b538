"""The routing readouts of the neural showcases, on hand-made cases and on real layers.

The summaries are checked against counts worked out by hand; the recording against the layers
themselves (the Soft MoE weights rebuild the layer's output; routing recorded in batches equals
one forward over everything).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moekit.layers import SoftMoE
from moekit.showcases._routing import (
    ModelRouting,
    expert_group_information,
    group_counts,
    group_readability,
    group_sums,
    record_routing,
    routing_profile,
    share_table,
    soft_moe_weights,
)


def test_group_counts_by_hand():
    # 3 examples of 2 tokens with top-2 slots; example 2's second token lost a slot (-1).
    idx = np.array([[[0, 1], [0, 2]],
                    [[2, 1], [2, 0]],
                    [[1, 0], [1, -1]]])
    counts = group_counts(idx, np.array([0, 1, 0]), n_groups=2, n_experts=3)
    #                 expert:  0  1  2
    expected = np.array([[3, 3, 1],    # group 0: examples 0 and 2 (7 kept slots)
                         [1, 1, 2]])   # group 1: example 1
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == (idx >= 0).sum()


def test_group_counts_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \(n, N, K\)"):
        group_counts(np.zeros((2, 3)), np.zeros(2), n_groups=1, n_experts=2)
    with pytest.raises(ValueError, match="one group per example"):
        group_counts(np.zeros((2, 1, 1), int), np.zeros(3, int), n_groups=1, n_experts=2)
    with pytest.raises(ValueError, match=r"groups must be integers in \[0, n_groups=2\)"):
        group_counts(np.zeros((2, 1, 1), int), np.array([0, 2]), n_groups=2, n_experts=2)
    with pytest.raises(ValueError, match=r"indices must lie in \[-1, 1\] for num_experts=2"):
        group_counts(np.full((1, 1, 1), 2), np.array([0]), n_groups=1, n_experts=2)


def test_routing_profile_and_group_sums_by_hand():
    idx = np.array([[[0, 1], [0, 2]], [[2, -1], [2, -1]], [[-1, -1], [-1, -1]]])
    prof = routing_profile(idx, n_experts=3)
    np.testing.assert_allclose(prof, [[0.5, 0.25, 0.25], [0, 0, 1], [0, 0, 0]])
    sums = group_sums(prof, np.array([1, 1, 0]), n_groups=2)
    np.testing.assert_allclose(sums, [[0, 0, 0], [0.5, 0.25, 1.25]])


def test_information_by_hand():
    assert expert_group_information(np.array([[4, 0, 0], [0, 3, 3]])) == pytest.approx(1.0)
    assert expert_group_information(np.array([[2, 6], [1, 3]])) == pytest.approx(0.0, abs=1e-12)
    # group 0 always to expert 0, group 1 half to each: joint p = [[.5, 0], [.25, .25]]
    p = np.array([[0.5, 0.0], [0.25, 0.25]])
    pe = p.sum(0)
    mi = sum(p[g, e] * math.log(p[g, e] / (0.5 * pe[e])) for g in range(2) for e in range(2)
             if p[g, e] > 0)
    assert expert_group_information(np.array([[2, 0], [1, 1]])) == pytest.approx(
        mi / math.log(2))
    with pytest.raises(ValueError, match="not all zero"):
        expert_group_information(np.zeros((2, 2)))


def test_readability_reads_a_group_the_routing_carries_and_not_one_it_does_not():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 3, size=300)
    onehot = np.eye(3)[groups]  # each group to its own expert
    read = group_readability(onehot[:200], groups[:200], onehot[200:], groups[200:])
    assert read["accuracy"] == 1.0 and read["n_groups"] == 3.0
    assert read["chance"] == pytest.approx(np.mean(groups[200:] == np.bincount(
        groups[:200]).argmax()))
    noise = rng.dirichlet(np.ones(3), size=300)  # routing independent of the group
    blind = group_readability(noise[:200], groups[:200], noise[200:], groups[200:])
    assert blind["accuracy"] < 0.5


def test_share_table_rows_are_percentages_of_each_group():
    rows = share_table(np.array([[1, 3], [0, 0]]), ["a", "b"])
    assert rows == [{"group": "a", "e0": 25.0, "e1": 75.0}, {"group": "b", "e0": 0.0, "e1": 0.0}]


def test_soft_moe_weights_rebuild_the_layer_output():
    torch.manual_seed(0)
    for normalize in (True, False):
        layer = SoftMoE(d_model=8, d_ff=12, num_experts=3, slots_per_expert=2,
                        normalize=normalize)
        x = torch.randn(4, 5, 8)
        dispatch, combine = soft_moe_weights(layer, x)
        torch.testing.assert_close(dispatch.sum(dim=1), torch.ones(4, 6))
        torch.testing.assert_close(combine.sum(dim=2), torch.ones(4, 5))
        slots = torch.einsum("bns,bnd->bsd", dispatch, x)  # (B, S, D), S = E * P, expert-major
        x_ERD = slots.view(4, 3, 2, 8).permute(1, 0, 2, 3).reshape(3, 8, 8)
        out = layer.experts.forward_batched(x_ERD).view(3, 4, 2, 8).permute(1, 0, 2, 3)
        y = torch.einsum("bns,bsd->bnd", combine, out.reshape(4, 6, 8))
        torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-6)


def test_record_routing_in_batches_equals_one_forward():
    from moekit.models import ImageClassifier, ImageClassifierConfig

    torch.manual_seed(0)
    sparse = ImageClassifier(ImageClassifierConfig.create(image_size=8, num_classes=3,
                                                   architecture="vit", patch_size=4, d_model=16,
                                                   n_heads=2, d_ff=8, num_experts=4, top_k=2))
    x = torch.randn(7, 1, 8, 8)
    seen = record_routing(sparse, x, batch_size=3)
    assert sparse.training  # its mode is given back
    sparse.eval()
    with torch.no_grad():
        logits = sparse(x)
    per_layer = [b.mlp.stats.indices.reshape(7, 4, 2).numpy() for b in sparse.blocks]
    np.testing.assert_allclose(seen.logits, logits.numpy(), rtol=1e-5, atol=1e-6)
    assert len(seen.sparse) == 2 and seen.soft == [] and seen.num_experts == [4, 4]
    for got, want in zip(seen.sparse, per_layer):
        np.testing.assert_array_equal(got, want)

    soft = ImageClassifier(ImageClassifierConfig.create(image_size=8, num_classes=3,
                                                 architecture="vit", patch_size=4, d_model=16,
                                                 n_heads=2, d_ff=8, num_experts=4,
                                                 router="soft", slots_per_expert=1))
    seen = record_routing(soft, x, batch_size=2)
    assert seen.sparse == [] and len(seen.soft) == 2
    for share in seen.soft:
        assert share.shape == (7, 4)
        np.testing.assert_allclose(share.sum(axis=1), 1.0)
    # the first layer's shares, by hand from its input: patches -> stem + pos -> ln_2(attn)
    soft.eval()
    inputs = []
    handle = soft.blocks[0].mlp.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    with torch.no_grad():
        soft(x)
    handle.remove()
    with torch.no_grad():
        _, combine = soft_moe_weights(soft.blocks[0].mlp, inputs[0])  # (7, N=4, S=4), P = 1
    np.testing.assert_allclose(seen.soft[0], combine.mean(dim=1).numpy(), rtol=1e-5, atol=1e-7)


def test_model_routing_is_a_plain_record():
    r = ModelRouting(logits=np.zeros((1, 2)), sparse=[], soft=[], num_experts=[])
    assert r.logits.shape == (1, 2)
