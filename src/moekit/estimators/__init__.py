"""Statistical mixtures of experts fitted by EM (NumPy/SciPy/scikit-learn only, never torch).

- :class:`MixtureOfExpertsRegressor`: Gaussian linear, Student-t, Poisson or any scikit-learn
  regressor as experts, under a multinomial-logit gate; online EM through ``partial_fit``.
- :class:`MixtureOfExpertsClassifier`: logistic / multinomial experts.
- :class:`HierarchicalMixtureOfExpertsRegressor`: a tree of gates (Jordan & Jacobs 1994).
- :func:`select_n_experts`: choose K by BIC / AIC / ICL.
- :func:`make_moe_regression`: synthetic data with known parameters.
- :func:`save_model`, :func:`load_model`: one pickle-free file per fitted model
  (:mod:`moekit.estimators.persistence`).

See ``docs/estimators.md`` for the model in statisticians' terms, the defaults, and how the
standard errors and intervals are computed.
"""

from ._classifier import MixtureOfExpertsClassifier
from ._hierarchical import HierarchicalMixtureOfExpertsRegressor
from ._regressor import MixtureOfExpertsRegressor, PredictiveDistribution
from ._selection import NExpertsSelection, select_n_experts
from .datasets import make_moe_regression
from .persistence import load_model, save_model

__all__ = [
    "HierarchicalMixtureOfExpertsRegressor",
    "MixtureOfExpertsClassifier",
    "MixtureOfExpertsRegressor",
    "NExpertsSelection",
    "PredictiveDistribution",
    "load_model",
    "make_moe_regression",
    "save_model",
    "select_n_experts",
]
