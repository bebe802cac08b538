"""Sparse Mixture-of-Experts layers for PyTorch (single device; no torch.distributed here).

Pieces (see ``docs/architecture.md``): :class:`Router` -> :class:`Routing` -> a dispatcher
(:mod:`moekit.layers.dispatch`) -> experts -> combine, assembled by :class:`MoELayer` from one
frozen :class:`MoEConfig`. Legend used in the code: T tokens, D model dim, F expert hidden dim,
E experts, K experts per token, C capacity, R dispatched rows.
"""

from moekit._deps import require

require("torch", feature="moekit.layers")

from moekit.layers.config import DispatchConfig, ExpertsConfig, MoEConfig, SharedExpertsConfig
from moekit.layers.dispatch import capacity, capacity_keep
from moekit.layers.experts import FeedForward, GroupedExperts, ModuleExperts
from moekit.layers.losses import (
    cv_squared,
    importance_load_loss,
    router_z_loss,
    switch_load_balancing_loss,
)
from moekit.layers.moe import MoELayer, total_aux_loss
from moekit.layers.routing import (
    Router,
    RouterConfig,
    Routing,
    register_router_bias_update,
    update_router_biases,
)
from moekit.layers.soft import SoftMoE, SoftMoEConfig
from moekit.layers.stats import CommStats, RoutingStats

__all__ = [
    "CommStats",
    "DispatchConfig",
    "ExpertsConfig",
    "FeedForward",
    "GroupedExperts",
    "MoEConfig",
    "MoELayer",
    "ModuleExperts",
    "Router",
    "RouterConfig",
    "Routing",
    "RoutingStats",
    "SharedExpertsConfig",
    "SoftMoE",
    "SoftMoEConfig",
    "capacity",
    "capacity_keep",
    "cv_squared",
    "importance_load_loss",
    "register_router_bias_update",
    "router_z_loss",
    "switch_load_balancing_loss",
    "total_aux_loss",
    "update_router_biases",
]
