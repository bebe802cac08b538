"""moekit: Mixtures of Experts, from the statistics classroom to sparse layers on GPUs.

Subpackages:

- :mod:`moekit.estimators`: statistical MoE fitted by EM (NumPy/SciPy/scikit-learn only).
- :mod:`moekit.layers`: sparse MoE layers for PyTorch.
- :mod:`moekit.models`, :mod:`moekit.train`, :mod:`moekit.viz`: reference models, training, plots.

``import moekit`` is light: it imports neither torch nor scikit-learn.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
