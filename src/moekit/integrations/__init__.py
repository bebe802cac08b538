"""Bridges between moekit and other libraries.

- :mod:`moekit.integrations.transformers`: Hugging Face transformers models on moekit: a
  registered experts implementation (``experts_implementation="moekit"``), whole-model patching
  of sparse-MoE blocks into moekit layers on the model's own tensors (``patch``/``unpatch``),
  routing reports, and single-block conversion with copied weights (``from_transformers``).

Nothing is imported here: ``import moekit.integrations`` does not import ``transformers`` (nor
torch); ``import moekit.integrations.transformers`` does, when it is installed, to register. Import the submodule you need, e.g.
``from moekit.integrations.transformers import from_transformers``.
"""

__all__: list[str] = []
