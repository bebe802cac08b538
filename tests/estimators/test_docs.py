"""The Examples sections of the public docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["_regressor", "_classifier", "_hierarchical", "_selection", "datasets"]


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
        "make_moe_regression", "select_n_experts"]


def test_estimators_never_import_torch():
    import subprocess
    import sys

    code = "import sys, moekit.estimators; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
