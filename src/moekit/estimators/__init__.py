"""Statistical mixtures of experts fitted by EM (NumPy/SciPy/scikit-learn only, never torch).

- :class:`MixtureOfExpertsRegressor`: Gaussian linear, Student-t, Poisson or any scikit-learn
  regressor as experts, under a multinomial-logit gate; online EM through ``partial_fit``.
- :class:`MixtureOfExpertsClassifier`: logistic / multinomial experts.
- :class:`HierarchicalMixtureOfExpertsRegressor`: a tree of gates (Jordan & Jacobs 1994).
- :func:`select_n_experts`: choose K by BIC / AIC / ICL.
- :func:`make_moe_regression`: synthetic data with known parameters.
"""

from ._classifier import MixtureOfExpertsClassifier
from ._hierarchical import HierarchicalMixtureOfExpertsRegressor
from ._regressor import MixtureOfExpertsRegressor, PredictiveDistribution
from ._selection import NExpertsSelection, select_n_experts
from .datasets import make_moe_regression

__all__ = [
    "HierarchicalMixtureOfExpertsRegressor",
    "MixtureOfExpertsClassifier",
    "MixtureOfExpertsRegressor",
    "NExpertsSelection",
    "PredictiveDistribution",
    "make_moe_regression",
    "select_n_experts",
]
