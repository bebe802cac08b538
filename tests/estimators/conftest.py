"""Shared fixtures for moekit.estimators tests: small synthetic mixtures with known truth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moekit.estimators import make_moe_regression


@pytest.fixture(scope="module")
def two_regimes():
    return make_moe_regression(n_samples=1500, n_features=2, n_experts=2, noise=0.3,
                               random_state=0)


def _best_permutation(fitted: np.ndarray, true: np.ndarray) -> list[int]:
    """Permutation p minimising ||fitted[p] - true||: fitted[p[j]] matches true[j]."""
    K = len(true)
    return list(min(itertools.permutations(range(K)),
                    key=lambda p: float(np.sum((fitted[list(p)] - true) ** 2))))


@pytest.fixture
def best_permutation():
    return _best_permutation
