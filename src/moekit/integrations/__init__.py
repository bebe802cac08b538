"""Bridges between moekit and other libraries.

- :mod:`moekit.integrations.transformers`: build a :class:`~moekit.layers.MoELayer` from a Hugging
  Face ``transformers`` sparse MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3) with
  the block's weights and routing semantics, and copy weights back.

Nothing is imported here: ``import moekit.integrations`` does not import ``transformers`` (nor
torch). Import the submodule you need, e.g.
``from moekit.integrations.transformers import from_transformers``.
"""

__all__: list[str] = []
