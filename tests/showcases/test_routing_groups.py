"""Routing by group: the counts, shares, mutual information and read-outs the language showcase
reports, on hand-made cases with known answers and against slow loops and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from moekit.showcases._routing_groups import (
    expert_counts,
    expert_shares,
    mutual_information_bits,
    pooled_features,
    readout,
    routing_features,
)


def _counts_loop(idx, groups, n_groups, num_experts):
    out = np.zeros((n_groups, idx.shape[1], num_experts), dtype=np.int64)
    for t in range(idx.shape[0]):
        for layer in range(idx.shape[1]):
            for slot in range(idx.shape[2]):
                e = idx[t, layer, slot]
                if e >= 0:
                    out[groups[t], layer, e] += 1
    return out


def test_counts_and_shares_on_a_hand_made_case():
    # 4 tokens, 2 layers, top-2; group 0 = tokens 0, 1; group 1 = tokens 2, 3.
    idx = np.array([
        [[0, 1], [2, 3]],
        [[0, 2], [2, -1]],   # a dropped slot in layer 2 is not counted
        [[3, 1], [0, 1]],
        [[3, 2], [0, 1]],
    ])
    groups = np.array([0, 0, 1, 1])
    counts = expert_counts(idx, groups, 2, 4)
    assert counts[0, 0].tolist() == [2, 1, 1, 0]
    assert counts[0, 1].tolist() == [0, 0, 2, 1]
    assert counts[1, 0].tolist() == [0, 1, 1, 2]
    assert counts[1, 1].tolist() == [2, 2, 0, 0]
    shares = expert_shares(counts)
    np.testing.assert_allclose(shares[0, 1], [0, 0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(shares[1, 0], [0, 0.25, 0.25, 0.5])
    np.testing.assert_allclose(shares.sum(-1), 1.0)


def test_counts_match_a_loop_on_random_routing():
    rng = np.random.default_rng(3)
    idx = rng.integers(-1, 6, size=(500, 3, 2))
    groups = rng.integers(0, 4, size=500)
    np.testing.assert_array_equal(expert_counts(idx, groups, 4, 6),
                                  _counts_loop(idx, groups, 4, 6))


def test_a_group_without_tokens_gets_a_zero_row():
    counts = expert_counts(np.array([[[1]]]), np.array([0]), 2, 2)
    np.testing.assert_array_equal(expert_shares(counts)[1], [[0.0, 0.0]])


def test_mutual_information_equals_scikit_learn_on_random_routing():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 5, size=2000)
    experts = (groups * 2 + rng.integers(0, 3, size=2000)) % 7  # partly determined by group
    counts = np.zeros((5, 7))
    np.add.at(counts, (groups, experts), 1)
    expected = mutual_info_score(groups, experts) / math.log(2)  # nats -> bits
    assert mutual_information_bits(counts) == pytest.approx(expected, rel=1e-9)


def test_mutual_information_bounds():
    assert mutual_information_bits(np.eye(6) * 40) == pytest.approx(math.log2(6))
    assert mutual_information_bits(np.ones((6, 8))) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information_bits(np.zeros((2, 3))) == 0.0


def test_routing_features_are_multi_hot_per_layer():
    idx = np.array([[[2, 0], [1, -1]]])  # one token, layer 0 -> experts 2 and 0, layer 1 -> 1
    np.testing.assert_array_equal(routing_features(idx, 3), [[1, 0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(routing_features(idx, 3, [1]), [[0, 1, 0]])


def test_pooled_features_are_segment_means():
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    pooled, ids = pooled_features(feats, np.array([5, 5, 2, 5]))
    assert ids.tolist() == [2, 5]
    np.testing.assert_allclose(pooled, [[1.0, 1.0], [1 / 3, 1 / 3]])


def test_readout_reads_a_group_that_routing_encodes():
    rng = np.random.default_rng(1)
    n = 600
    groups = rng.integers(0, 3, size=n)
    noise = rng.integers(0, 4, size=n)
    # layer 0 ignores the group; layer 1 sends group g to expert g, 90% of the time
    layer1 = np.where(rng.random(n) < 0.9, groups, noise)
    idx = np.stack([noise, layer1], axis=1)[:, :, None]
    X = routing_features(idx, 4)
    res = readout(X[:400], groups[:400], X[400:], groups[400:], n_groups=3)
    assert res["accuracy"] > 0.85
    assert abs(res["chance"] - np.mean(groups[400:] == np.bincount(groups[:400]).argmax())) < 1e-12
    confusion = np.array(res["confusion"])
    assert confusion.sum() == 200 and np.trace(confusion) == round(res["accuracy"] * 200)
    # routing that is the same for every group carries nothing to read
    blind = readout(routing_features(noise[:, None, None], 4)[:400], groups[:400],
                    routing_features(noise[:, None, None], 4)[400:], groups[400:], n_groups=3)
    assert blind["accuracy"] < res["chance"] + 0.1


def test_routing_lift_compares_each_group_with_the_average_reference_group():
    from moekit.showcases._routing_plots import routing_lift

    shares = np.array([[[0.5, 0.5, 0.0]], [[0.25, 0.25, 0.5]], [[0.0, 0.0, 1.0]]])  # G=3, L=1
    lift = routing_lift(shares, reference_rows=2)  # reference: the mean of rows 0 and 1
    np.testing.assert_allclose(lift[0, 0], [np.log2(0.5 / 0.375), np.log2(0.5 / 0.375), -6.0])
    np.testing.assert_allclose(lift[1, 0, :2], np.log2(0.25 / 0.375))
    assert lift[1, 0, 2] == pytest.approx(1.0) and lift[2, 0, 2] == pytest.approx(2.0)
    assert lift[2, 0, 0] == -6.0  # never used: clipped at 1/64, not -inf


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="indices must lie in"):
        expert_counts(np.array([[[4]]]), np.array([0]), 1, 4)
    with pytest.raises(ValueError, match="groups must have shape"):
        expert_counts(np.zeros((3, 1, 1), dtype=int), np.array([0]), 1, 2)
    with pytest.raises(TypeError, match="indices must be integers"):
        routing_features(np.zeros((1, 1, 1)), 2)
    with pytest.raises(ValueError, match="at least two groups"):
        readout(np.zeros((3, 2)), np.zeros(3, dtype=int), np.zeros((1, 2)), np.zeros(1, int),
                n_groups=2)
