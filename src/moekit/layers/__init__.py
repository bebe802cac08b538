"""Sparse Mixture-of-Experts layers for PyTorch (single device; no torch.distributed here).

See ``docs/layers-api.md`` and the class docstrings. Legend used in the code: T tokens,
D model dim, F expert hidden dim, E experts, K experts per token, C capacity.
"""

from moekit.layers.dispatch import capacity, capacity_keep
from moekit.layers.experts import FeedForward, GroupedExperts, ModuleExperts
from moekit.layers.losses import (
    cv_squared,
    importance_load_loss,
    router_z_loss,
    switch_load_balancing_loss,
)
from moekit.layers.moe import MoELayer, RoutingStats, total_aux_loss
from moekit.layers.routing import Router, RouterConfig, Routing
from moekit.layers.soft import SoftMoE

__all__ = [
    "FeedForward",
    "GroupedExperts",
    "MoELayer",
    "ModuleExperts",
    "Router",
    "RouterConfig",
    "Routing",
    "RoutingStats",
    "SoftMoE",
    "capacity",
    "capacity_keep",
    "cv_squared",
    "importance_load_loss",
    "router_z_loss",
    "switch_load_balancing_loss",
    "total_aux_loss",
]
