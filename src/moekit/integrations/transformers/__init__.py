"""Hugging Face transformers models on moekit.

Two mechanisms:

1. **A registered experts implementation** (:func:`register`, done on import when transformers
   is installed): ``from_pretrained(path, experts_implementation="moekit")`` or
   ``model.set_experts_implementation("moekit")`` runs the experts of every model decorated with
   ``@use_experts_implementation`` through moekit, leaving everything else transformers'.
"""

from __future__ import annotations

import importlib.util

from moekit.integrations.transformers.convert import (
    SUPPORTED_BLOCKS,
    copy_experts_from_transformers,
    copy_experts_to_transformers,
    copy_mlp_from_transformers,
    copy_mlp_to_transformers,
    from_transformers,
    layer_kwargs_from_transformers,
    to_transformers,
)
from moekit.integrations.transformers.registry import register

__all__ = [
    "SUPPORTED_BLOCKS",
    "copy_experts_from_transformers",
    "copy_experts_to_transformers",
    "copy_mlp_from_transformers",
    "copy_mlp_to_transformers",
    "from_transformers",
    "layer_kwargs_from_transformers",
    "register",
    "to_transformers",
]


def _register_on_import() -> None:
    if importlib.util.find_spec("transformers") is None:
        return
    try:
        register()
    except ImportError:  # transformers < 5: register() explains when called explicitly
        return


_register_on_import()
