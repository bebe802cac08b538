"""Dense twins: the baseline an MoE model should be compared with.

The dense twin of a model replaces each MoE MLP by one dense MLP (:class:`moekit.layers.FeedForward`)
that costs a token what the MoE MLP costs it, so both models spend the same compute per token and
the MoE model holds more parameters in total:

- token-choice routers (and ``expert_choice``, at its average of ``top_k`` experts per token):
  hidden size ``top_k * d_ff`` plus the shared experts' hidden size. Under the convention of
  :func:`moekit.models.count_parameters` the twin has exactly the MoE model's *active* parameters.
- Soft MoE: every expert processes ``slots_per_expert`` slots per sequence of N tokens, so the
  sequence's E * P slot-FFNs are matched by N dense FFN rows of hidden size
  ``round(E * P * d_ff / N)`` (the same FLOPs per sequence; N = patches of the ViT, or
  ``max_frames`` of the audio model).

Everything else (attention, embeddings, depth, width) stays as it is.
"""

from __future__ import annotations

import dataclasses
from typing import overload

from torch import nn

from moekit.layers import MoEConfig, SoftMoEConfig
from moekit.models.audio_classifier import AudioClassifier, AudioClassifierConfig
from moekit.models.image_classifier import ImageClassifier, ImageClassifierConfig
from moekit.models.transformer_lm import TransformerLM, TransformerLMConfig

ModelConfig = TransformerLMConfig | ImageClassifierConfig | AudioClassifierConfig
_MODELS: dict[type, type[nn.Module]] = {
    TransformerLMConfig: TransformerLM,
    ImageClassifierConfig: ImageClassifier,
    AudioClassifierConfig: AudioClassifier,
}


def _dense_hidden(moe: MoEConfig | SoftMoEConfig, tokens: int) -> int:
    if isinstance(moe, SoftMoEConfig):
        return max(1, round(moe.num_experts * moe.slots_per_expert * moe.d_ff / tokens))
    shared = moe.shared.d_ff if moe.shared is not None else 0
    return moe.top_k * moe.experts.d_ff + shared


@overload
def dense_twin_config(config: TransformerLMConfig) -> TransformerLMConfig: ...
@overload
def dense_twin_config(config: ImageClassifierConfig) -> ImageClassifierConfig: ...
@overload
def dense_twin_config(config: AudioClassifierConfig) -> AudioClassifierConfig: ...


def dense_twin_config(config: ModelConfig) -> ModelConfig:
    """The config of the dense model with the same compute per token as ``config``.

    ``config`` is a :class:`TransformerLMConfig`, :class:`ImageClassifierConfig` or
    :class:`AudioClassifierConfig`; a dense config comes back unchanged. A language model needs
    ``moe_every=1`` (blocks with dense and MoE MLPs would need two hidden sizes).

    Examples
    --------
    >>> from moekit.models import TransformerLMConfig, dense_twin_config
    >>> moe = TransformerLMConfig.create(vocab_size=65, d_ff=48, top_k=2, num_shared_experts=1)
    >>> dense_twin_config(moe).d_ff, dense_twin_config(moe).moe
    (144, None)
    """
    if not isinstance(config, tuple(_MODELS)):
        raise TypeError(f"dense_twin_config needs a TransformerLMConfig, ImageClassifierConfig or "
                        f"AudioClassifierConfig, got {type(config).__name__}; pass model.config")
    moe = config.moe
    if moe is None:
        return config
    if isinstance(config, TransformerLMConfig) and config.moe_every != 1:
        raise ValueError(f"dense_twin needs moe_every=1, got moe_every={config.moe_every}: blocks "
                         "with dense and MoE MLPs would need two hidden sizes; set moe_every=1")
    activation = moe.activation if isinstance(moe, SoftMoEConfig) else moe.experts.activation
    tokens = config.tokens if isinstance(config, (ImageClassifierConfig, AudioClassifierConfig)) \
        else config.block_size
    return dataclasses.replace(config, moe=None, d_ff=_dense_hidden(moe, tokens),
                               activation=activation)


@overload
def dense_twin(model: TransformerLM | TransformerLMConfig) -> TransformerLM: ...
@overload
def dense_twin(model: ImageClassifier | ImageClassifierConfig) -> ImageClassifier: ...
@overload
def dense_twin(model: AudioClassifier | AudioClassifierConfig) -> AudioClassifier: ...


def dense_twin(model: nn.Module | ModelConfig) -> nn.Module:
    """The dense model (fresh weights) with the same compute per token as ``model``.

    Parameters
    ----------
    model : TransformerLM, ImageClassifier or AudioClassifier, or the config of one.

    Examples
    --------
    >>> from moekit.models import TransformerLM, TransformerLMConfig, count_parameters, dense_twin
    >>> moe = TransformerLM(TransformerLMConfig.create(vocab_size=65, d_model=32, n_heads=2,
    ...                                                d_ff=32, num_experts=4, top_k=2))
    >>> count_parameters(dense_twin(moe)).active == count_parameters(moe).active
    True
    """
    config = model.config if isinstance(model, (TransformerLM, ImageClassifier, AudioClassifier)) \
        else model
    if not isinstance(config, (TransformerLMConfig, ImageClassifierConfig, AudioClassifierConfig)):
        raise TypeError(f"dense_twin needs a TransformerLM, ImageClassifier or AudioClassifier "
                        f"(or its config), got {type(model).__name__}")
    return _MODELS[type(config)](dense_twin_config(config))
