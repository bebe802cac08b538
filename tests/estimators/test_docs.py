"""The Examples sections of the public docstrings run; the surface and the docs are in step."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

MODULES = ["_regressor", "_classifier", "_hierarchical", "_selection", "datasets", "persistence"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"moekit.estimators.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_public_surface():
    import moekit.estimators as est

    assert sorted(est.__all__) == [
        "HierarchicalMixtureOfExpertsRegressor", "MixtureOfExpertsClassifier",
        "MixtureOfExpertsRegressor", "NExpertsSelection", "PredictiveDistribution",
        "load_model", "make_moe_regression", "save_model", "select_n_experts"]


def test_cli_contract_parameters_are_there():
    """The parameter names `moekit fit` relies on (see docs/estimators.md)."""
    from moekit.estimators import (
        HierarchicalMixtureOfExpertsRegressor,
        MixtureOfExpertsClassifier,
        MixtureOfExpertsRegressor,
    )

    contract = {"expert", "gate_alpha", "expert_alpha", "n_init", "init", "max_iter", "tol",
                "warm_start", "random_state", "verbose", "standardize"}
    for cls in (MixtureOfExpertsRegressor, MixtureOfExpertsClassifier):
        assert contract | {"n_experts"} <= set(cls().get_params())
    assert contract | {"branching"} <= set(HierarchicalMixtureOfExpertsRegressor().get_params())
    assert MixtureOfExpertsRegressor().standardize is False


def test_estimator_docs_cite_only_existing_files_and_real_attributes():
    import moekit.estimators as est

    text = (ROOT / "docs" / "estimators.md").read_text()
    for path in re.findall(r"`((?:src|tests|benchmarks|docs|examples)/[\w./-]+)`", text):
        assert (ROOT / path).exists(), path
    m = est.MixtureOfExpertsRegressor(2, random_state=0)
    X, y, _ = est.make_moe_regression(200, 2, 2, random_state=0)
    m.fit(X, y)
    for attr in re.findall(r"`(\w+_)`", text):
        assert hasattr(m, attr) or hasattr(est.MixtureOfExpertsClassifier, attr) or attr in (
            "conformity_scores_", "classes_", "expert_df_", "experts_", "suff_h_",
            "feature_names_in_",
            "n_samples_seen_", "n_batches_"), attr
