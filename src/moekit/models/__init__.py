"""Reference models built from :mod:`moekit.layers`.

Each model config nests the layer's own config in its ``moe`` field
(:class:`moekit.layers.MoEConfig`, :class:`moekit.layers.SoftMoEConfig` for Soft MoE, or None for
dense MLPs, which are :class:`moekit.layers.FeedForward`); ``Config.create(...)`` takes the flat
keywords of experiment files instead.

- :class:`TransformerLM`: decoder-only language model with MoE MLPs (causal routers only).
- :class:`ImageClassifier`: MLP-MoE or small ViT (sparse or Soft MoE) for small images.
- :class:`AudioClassifier`: small transformer with MoE MLPs over spectrogram frames.
- :func:`dense_twin`, :func:`dense_twin_config`: the dense baseline of any of them.
- :func:`count_parameters`: total and active (per-token) parameter counts.
"""

from moekit._deps import require

require("torch", feature="moekit.models")

from moekit.models.audio_classifier import AudioClassifier, AudioClassifierConfig
from moekit.models.image_classifier import ImageClassifier, ImageClassifierConfig
from moekit.models.params import ParameterCount, count_parameters
from moekit.models.transformer_lm import TransformerLM, TransformerLMConfig
from moekit.models.twin import dense_twin, dense_twin_config

__all__ = [
    "AudioClassifier",
    "AudioClassifierConfig",
    "ImageClassifier",
    "ImageClassifierConfig",
    "ParameterCount",
    "TransformerLM",
    "TransformerLMConfig",
    "count_parameters",
    "dense_twin",
    "dense_twin_config",
]
