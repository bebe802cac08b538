"""Hugging Face transformers models on moekit.

Two mechanisms:

1. **A registered experts implementation** (:func:`register`, done on import when transformers
   is installed): ``from_pretrained(path, experts_implementation="moekit")`` or
   ``model.set_experts_implementation("moekit")`` runs the experts of every model decorated with
   ``@use_experts_implementation`` through moekit, leaving everything else transformers'.
2. **Whole-model patching** (:func:`patch`, :func:`unpatch`): every sparse-MoE block moekit can
   express exactly becomes a moekit :class:`~moekit.layers.MoELayer` sharing the block's tensors
   (same names, same ``state_dict``), so moekit's statistics (:func:`routing_report`), balancing
   options and expert parallelism apply; the rest is listed with the reason.

:func:`from_transformers` / :func:`to_transformers` convert single blocks with copies of the
weights (five block types); the copy helpers are public too.
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
from moekit.integrations.transformers.layer import TransformersMoE
from moekit.integrations.transformers.patching import PatchReport, patch, unpatch
from moekit.integrations.transformers.registry import register
from moekit.integrations.transformers.report import RoutingReport, routing_report

__all__ = [
    "SUPPORTED_BLOCKS",
    "PatchReport",
    "RoutingReport",
    "TransformersMoE",
    "copy_experts_from_transformers",
    "copy_experts_to_transformers",
    "copy_mlp_from_transformers",
    "copy_mlp_to_transformers",
    "from_transformers",
    "layer_kwargs_from_transformers",
    "patch",
    "register",
    "routing_report",
    "to_transformers",
    "unpatch",
]


def _register_on_import() -> None:
    if importlib.util.find_spec("transformers") is None:
        return
    try:
        register()
    except ImportError:  # transformers < 5: register() explains when called explicitly
        return


_register_on_import()
