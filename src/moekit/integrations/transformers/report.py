"""Routing statistics of every MoE layer of a model, as a table and a plot.

Legend: L layers, E experts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from moekit.layers.moe import MoELayer


@dataclass(frozen=True)
class LayerRouting:
    """One MoE layer's routing in its last forward."""

    name: str
    tokens_per_expert: np.ndarray  # (E,) int
    load: np.ndarray  # (E,) fractions summing to 1
    dropped_fraction: float
    entropy: float
    balance: float  # max load / mean load: 1 is balanced, E is collapse


@dataclass(frozen=True)
class RoutingReport:
    """The routing of every MoE layer of a model (``moe.stats`` of each layer's last forward).

    Attributes
    ----------
    layers : one :class:`LayerRouting` per MoE layer, in module order.
    """

    layers: tuple[LayerRouting, ...]

    def load_matrix(self) -> np.ndarray:
        """(L, E) load of each layer's experts (layers with fewer experts padded with 0)."""
        return self._matrix("load")

    def count_matrix(self) -> np.ndarray:
        """(L, E) token-slots each layer's experts processed (padded with 0)."""
        return self._matrix("tokens_per_expert")

    def _matrix(self, field: str) -> np.ndarray:
        E = max((r.load.shape[0] for r in self.layers), default=0)
        out = np.zeros((len(self.layers), E))
        for i, r in enumerate(self.layers):
            row = getattr(r, field)
            out[i, : row.shape[0]] = row
        return out

    def table(self) -> str:
        """A text table: layer, tokens routed, dropped fraction, entropy, balance, top expert."""
        head = f"{'layer':<40} {'slots':>7} {'dropped':>8} {'entropy':>8} {'max/mean':>9} {'top expert':>11}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            top = int(np.argmax(r.load)) if r.load.size else -1
            share = float(r.load[top]) if r.load.size else 0.0
            lines.append(f"{r.name[-40:]:<40} {int(r.tokens_per_expert.sum()):>7d} "
                         f"{r.dropped_fraction:>8.3f} {r.entropy:>8.3f} {r.balance:>9.2f} "
                         f"{f'{top} ({share:.0%})':>11}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
        """Heatmap of each layer's load per expert (PNG, written atomically); returns the path."""
        from moekit.viz import plot_routing_heatmap

        if not self.layers:
            raise ValueError("the report has no MoE layer to plot; run a forward of a model "
                             "holding moekit MoE layers first")
        counts = self.count_matrix()
        return plot_routing_heatmap(counts, [r.name for r in self.layers], path,
                                    title=title or "load per layer and expert",
                                    annotate=counts.size <= 400)


def routing_report(model: nn.Module) -> RoutingReport:
    """Routing statistics of every moekit MoE layer of ``model`` from its last forward.

    Works for any model holding :class:`~moekit.layers.MoELayer` s, a transformers model after
    :func:`~moekit.integrations.transformers.patch` included. Layers that have not run yet are
    left out.

    Examples
    --------
    >>> import torch
    >>> from moekit.layers import MoELayer
    >>> from moekit.integrations.transformers import routing_report
    >>> model = torch.nn.Sequential(MoELayer(8, 16, 4, 2), MoELayer(8, 16, 4, 2))
    >>> _ = model(torch.randn(10, 8))
    >>> report = routing_report(model)
    >>> [int(r.tokens_per_expert.sum()) for r in report.layers]
    [20, 20]
    """
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, MoELayer) or module.stats is None:
            continue
        s = module.stats
        rows.append(LayerRouting(
            name=name or type(module).__name__,
            tokens_per_expert=s.tokens_per_expert.detach().cpu().numpy(),
            load=s.load.detach().float().cpu().numpy(),
            dropped_fraction=float(s.dropped_fraction),
            entropy=float(s.router_entropy),
            balance=s.balance()))
    return RoutingReport(tuple(rows))
