"""The routing counter behind the demo's heatmap, against a slot-by-slot count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moekit.viz import CHARACTER_KINDS, character_kinds, count_routing_by_kind


@pytest.mark.parametrize("seed", [0, 1])
def test_counts_match_a_slot_by_slot_loop(seed):
    rng = np.random.default_rng(seed)
    T, K, E, n_kinds = 200, 3, 5, 4
    indices = rng.integers(-1, E, size=(T, K))  # -1: dropped
    kinds = rng.integers(0, n_kinds, size=T)
    expected = np.zeros((n_kinds, E))
    for t in range(T):
        for k in range(K):
            if indices[t, k] >= 0:
                expected[kinds[t], indices[t, k]] += 1
    got = count_routing_by_kind(torch.as_tensor(indices), kinds, n_kinds=n_kinds, n_experts=E)
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == (indices >= 0).sum()


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="indices has 2 tokens but kinds has 3"):
        count_routing_by_kind([[0], [1]], [0, 1, 1], n_kinds=2, n_experts=2)
    with pytest.raises(ValueError, match=r"kinds must be integers in \[0, n_kinds=2\)"):
        count_routing_by_kind([[0], [1]], [0, 2], n_kinds=2, n_experts=2)
    with pytest.raises(ValueError, match="n_experts=2"):
        count_routing_by_kind([[0], [2]], [0, 1], n_kinds=2, n_experts=2)


def test_character_kinds():
    text = "In the beginning, God 7"
    kinds = [CHARACTER_KINDS[k] for k in character_kinds(text)]
    assert kinds[:4] == ["capital", "consonant", "space", "consonant"]
    assert kinds[text.index(",")] == "punctuation" and kinds[-1] == "other"
    assert kinds[text.index("e")] == "vowel"
