"""Plots of the language showcase: routing by group per layer, and a per-group score table.

Same conventions as :mod:`moekit.viz` (matplotlib's object API, atomic PNG writes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from moekit.viz._io import new_figure, save_figure


def plot_routing_by_group(shares_GLE: np.ndarray, group_names: Sequence[str],
                          path: str | os.PathLike[str], *, title: str,
                          n_tokens: Sequence[int] | None = None,
                          separator_after: int | None = None) -> Path:
    """One heatmap per MoE layer: rows the groups, columns the experts, cells the share of a
    group's token-slots the expert took (each row of a panel sums to 1).

    Parameters
    ----------
    shares_GLE : ndarray of shape (G, L, E)
    group_names : sequence of str, length G
    n_tokens : token count per group, shown beside its name
    separator_after : draw a line under this many rows (e.g. between the corpus's languages and
        a user's own texts)
    """
    shares = np.asarray(shares_GLE, dtype=np.float64)
    if shares.ndim != 3:
        raise ValueError(f"shares must have shape (groups, layers, experts), got {shares.shape}")
    n_groups, n_layers, n_experts = shares.shape
    if len(group_names) != n_groups:
        raise ValueError(f"{len(group_names)} group names for {n_groups} rows")
    labels = [f"{name} ({n:,})" if n_tokens is not None else str(name)
              for name, n in zip(group_names, n_tokens or [0] * n_groups)]
    width = min(22.0, 1.6 + n_layers * (0.9 + 0.32 * n_experts))
    fig = new_figure(width, 1.4 + 0.36 * n_groups)
    axes = np.atleast_1d(fig.subplots(1, n_layers, sharey=True, squeeze=False)[0])
    vmax = max(float(shares.max()), 1e-9)
    images = []
    for layer, ax in enumerate(axes):
        images.append(ax.imshow(shares[:, layer, :], cmap="magma_r", vmin=0.0, vmax=vmax,
                                aspect="auto"))
        ax.set_title(f"layer {layer + 1}", fontsize="small")
        ax.set_xticks(range(n_experts), [str(e) for e in range(n_experts)],
                      fontsize="x-small")
        ax.set_xlabel("expert", fontsize="small")
        if separator_after is not None and 0 < separator_after < n_groups:
            ax.axhline(separator_after - 0.5, color="tab:cyan", lw=2.0)
    axes[0].set_yticks(range(n_groups), labels, fontsize="small")
    fig.colorbar(images[0], ax=list(axes), label="share of the row's token-slots", shrink=0.9)
    fig.suptitle(title, fontsize="medium")
    return save_figure(fig, path)


def routing_lift(shares_GLE: np.ndarray, reference_rows: int) -> np.ndarray:
    """log2 of each share over the mean share of the first ``reference_rows`` groups.

    +1: the group sends twice the average group's share to that expert; -1: half. An expert no
    reference group uses gives 0 (nothing to compare with).
    """
    shares = np.asarray(shares_GLE, dtype=np.float64)
    ref = shares[:reference_rows].mean(axis=0, keepdims=True)
    ratio = np.divide(shares, ref, out=np.ones_like(shares), where=ref > 0)
    return np.log2(np.clip(ratio, 1 / 64, 64))


def plot_routing_lift(shares_GLE: np.ndarray, group_names: Sequence[str],
                      path: str | os.PathLike[str], *, title: str, reference_rows: int,
                      limit: float = 2.0) -> Path:
    """Heatmaps of :func:`routing_lift` per layer: which experts a group prefers (red) or avoids
    (blue) compared with the average of the reference groups."""
    lift = routing_lift(shares_GLE, reference_rows)
    n_groups, n_layers, n_experts = lift.shape
    width = min(22.0, 1.6 + n_layers * (0.9 + 0.32 * n_experts))
    fig = new_figure(width, 1.4 + 0.36 * n_groups)
    axes = np.atleast_1d(fig.subplots(1, n_layers, sharey=True, squeeze=False)[0])
    images = []
    for layer, ax in enumerate(axes):
        images.append(ax.imshow(lift[:, layer, :], cmap="RdBu_r", vmin=-limit, vmax=limit,
                                aspect="auto"))
        ax.set_title(f"layer {layer + 1}", fontsize="small")
        ax.set_xticks(range(n_experts), [str(e) for e in range(n_experts)],
                      fontsize="x-small")
        ax.set_xlabel("expert", fontsize="small")
        if 0 < reference_rows < n_groups:
            ax.axhline(reference_rows - 0.5, color="black", lw=2.0)
    axes[0].set_yticks(range(n_groups), list(group_names), fontsize="small")
    fig.colorbar(images[0], ax=list(axes), shrink=0.9,
                 label="log2(share / average language's share)")
    fig.suptitle(title, fontsize="medium")
    return save_figure(fig, path)


def plot_scores_by_group(scores: Mapping[str, Mapping[str, Sequence[float]]],
                         group_names: Sequence[str], path: str | os.PathLike[str], *,
                         ylabel: str, title: str) -> Path:
    """For each group, each model's mean over seeds (square) +-1 sd (whisker), seeds as dots.

    Parameters
    ----------
    scores : model name -> group name -> values over seeds
    """
    models = list(scores)
    n_models = len(models)
    fig = new_figure(max(6.0, 1.2 + 1.0 * len(group_names)), 3.8)
    ax = fig.add_subplot()
    step = 0.6 / max(n_models, 1)
    colours = ["tab:red", "tab:blue", "tab:gray", "tab:green"]
    for m, model in enumerate(models):
        x = np.arange(len(group_names)) + (m - (n_models - 1) / 2) * step
        vals = [np.asarray(scores[model][g], dtype=np.float64) for g in group_names]
        means = [float(v.mean()) for v in vals]
        sds = [float(v.std(ddof=1)) if len(v) > 1 else 0.0 for v in vals]
        colour = colours[m % len(colours)]
        ax.errorbar(x, means, yerr=sds, fmt="s", color=colour, capsize=4, markersize=6,
                    label=model)
        for xi, v in zip(x, vals):
            ax.plot(np.full(len(v), xi + step / 4), v, "o", color=colour, alpha=0.4,
                    markersize=3)
    ax.set_xticks(range(len(group_names)), list(group_names))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
