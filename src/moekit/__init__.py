"""moekit: Mixtures of Experts, from the statistics classroom to sparse layers on GPUs.

Subpackages:

- :mod:`moekit.estimators`: statistical MoE fitted by EM (NumPy/SciPy/scikit-learn only).
- :mod:`moekit.layers`: sparse MoE layers for PyTorch.
- :mod:`moekit.parallel`: expert parallelism on torch.distributed, applied from outside a model.
- :mod:`moekit.models`, :mod:`moekit.train`, :mod:`moekit.viz`: reference models, training, plots.
- :mod:`moekit.showcases`: the five domain showcases (`moekit showcase NAME`).

``import moekit`` is light: subpackages load on first use, so it imports neither torch nor
scikit-learn by itself.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

_SUBPACKAGES = ("data", "estimators", "integrations", "kernels", "layers", "models", "parallel",
                "showcases", "train", "viz")

__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str) -> ModuleType:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"moekit.{name}")
    raise AttributeError(f"module 'moekit' has no attribute {name!r}")
