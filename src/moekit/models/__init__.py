"""Reference models built from :mod:`moekit.layers`.

- :class:`TransformerLM` (+ :func:`dense_twin`): decoder-only language model with MoE MLPs.
- :class:`ImageClassifier`: MLP-MoE or small ViT (sparse or Soft MoE) for small images.
- :class:`AudioClassifier`: small transformer with MoE MLPs over spectrogram frames.
- :func:`count_parameters`: total and active (per-token) parameter counts.
"""

from moekit.models.audio_classifier import AudioClassifier, AudioClassifierConfig
from moekit.models.blocks import DenseMLP
from moekit.models.image_classifier import ImageClassifier, ImageClassifierConfig
from moekit.models.params import ParameterCount, count_parameters
from moekit.models.transformer_lm import (
    TransformerLM,
    TransformerLMConfig,
    dense_twin,
    dense_twin_config,
)

__all__ = [
    "AudioClassifier",
    "AudioClassifierConfig",
    "DenseMLP",
    "ImageClassifier",
    "ImageClassifierConfig",
    "ParameterCount",
    "TransformerLM",
    "TransformerLMConfig",
    "count_parameters",
    "dense_twin",
    "dense_twin_config",
]
