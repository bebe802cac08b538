"""Plots the showcases share: models' scores with their spread, regimes over a price series,
and predictive densities per group. Same conventions as :mod:`moekit.viz` (matplotlib's object
API, atomic PNG writes)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from moekit.showcases._base import Evaluation
from moekit.viz._io import new_figure, save_figure

_KIND_COLOURS = {"moe": "tab:red", "baseline": "tab:blue", "oracle": "tab:gray"}


def plot_model_comparison(ev: Evaluation, path: str | os.PathLike[str]) -> Path:
    """Each model's metric: one dot per replicate, the mean as a bar, +-1 sd as a whisker."""
    models = list(ev.models)
    fig = new_figure(7.0, 0.9 + 0.42 * len(models))
    ax = fig.add_subplot()
    for i, m in enumerate(models):
        colour = _KIND_COLOURS[m.kind]
        ax.errorbar(m.mean, i, xerr=m.spread, fmt="s", color=colour, capsize=4, markersize=7)
        ax.plot(m.values, np.full(len(m.values), i), "o", color=colour, alpha=0.35,
                markersize=4)
    ax.set_yticks(range(len(models)), [m.name for m in models])
    ax.invert_yaxis()
    better = "right" if ev.metric.direction == "higher" else "left"
    ax.set_xlabel(f"{ev.metric.description} ({better} is better)")
    ax.set_title(f"{ev.dataset}: mean +- sd over {len(ev.replicates)} replicates "
                 "(red: MoE)", fontsize="medium")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_regimes(dates: np.ndarray, prices: np.ndarray, gate: np.ndarray,
                 expert_names: Sequence[str], path: str | os.PathLike[str], *,
                 split_date: np.datetime64 | None = None, title: str = "") -> Path:
    """Price (log scale) coloured by the gate's most likely expert, and the gate over time.

    Parameters
    ----------
    dates : ndarray of shape (n,), datetime64
    prices : ndarray of shape (n,)
    gate : ndarray of shape (n, K)
        Gate probabilities, experts ordered from calmest to most turbulent.
    expert_names : sequence of str, length K
    split_date : datetime64 or None
        Drawn as a vertical line: the gate is out of sample after it.
    """
    n, k = gate.shape
    colours = _regime_colours(k)
    t = dates.astype("datetime64[D]").astype("O")
    fig = new_figure(9.0, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1.0])
    top.semilogy(t, prices, color="black", lw=0.6)
    regime = gate.argmax(axis=1)
    # shade runs of days with the same most likely expert
    edges = np.flatnonzero(np.diff(regime)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [n]])
    for s, e in zip(starts, ends):
        top.axvspan(t[s], t[min(e, n - 1)], color=colours[regime[s]], alpha=0.25, lw=0)
    top.set_ylabel("price (log scale)")
    top.set_title(title or "regimes the gate found (shade: most likely expert)",
                  fontsize="medium")
    bottom.stackplot(t, gate.T, colors=colours, labels=list(expert_names), alpha=0.8)
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("gate probability")
    bottom.legend(loc="upper left", fontsize="x-small", ncol=k)
    if split_date is not None:
        when = np.asarray(split_date, dtype="datetime64[D]").astype("O")
        for ax in (top, bottom):
            ax.axvline(when, color="black", ls="--", lw=1.0)
        top.text(when, top.get_ylim()[1], " out of sample", va="top", fontsize="x-small")
    return save_figure(fig, path)


def _regime_colours(k: int) -> list[str]:
    fixed = {1: ["tab:green"], 2: ["tab:green", "tab:red"], 3: ["tab:green", "gold", "tab:red"],
             4: ["tab:green", "gold", "tab:orange", "tab:red"]}
    return fixed.get(k, [f"C{i}" for i in range(k)])


def plot_group_densities(y: np.ndarray, groups: np.ndarray, group_names: Sequence[str],
                         densities: Mapping[str, np.ndarray], grid: np.ndarray,
                         path: str | os.PathLike[str], *, xlabel: str, title: str) -> Path:
    """Histogram of held-out y per group, with each model's predictive density for the group.

    Parameters
    ----------
    y : ndarray of shape (n,)
    groups : ndarray of shape (n,), int
    densities : mapping of model name to ndarray of shape (n_groups, n_grid)
        The model's density of y averaged over the group's rows, on ``grid``.
    grid : ndarray of shape (n_grid,)
    """
    n_groups = len(group_names)
    fig = new_figure(4.2 * n_groups, 3.6)
    axes = np.atleast_1d(fig.subplots(1, n_groups, sharey=True))
    styles = ["-", "--", ":", "-."]
    for gi, ax in enumerate(axes):
        rows = groups == gi
        ax.hist(y[rows], bins=30, density=True, color="lightgray", label="held-out patients")
        for j, (name, dens) in enumerate(densities.items()):
            ax.plot(grid, dens[gi], styles[j % len(styles)], lw=1.6, label=name)
        ax.set_title(f"{group_names[gi]} (n={int(rows.sum())})", fontsize="medium")
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("density")
    axes[-1].legend(fontsize="x-small")
    fig.suptitle(title, fontsize="medium")
    return save_figure(fig, path)
