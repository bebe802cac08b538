"""Training plots: loss curves of several models side by side, and expert load over time."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moekit.viz._io import new_figure, save_figure, to_numpy

__all__ = ["METRIC_LABELS", "METRIC_TITLES", "model_color", "plot_expert_load", "plot_training_curves",
           "split_records"]

#: Axis labels of the metrics a training run records (``metrics.jsonl``); others show their key.
METRIC_LABELS: dict[str, str] = {
    "loss": "loss (cross-entropy, nats)",
    "accuracy": "accuracy (top-1)",
    "tokens_per_s": "throughput (tokens or examples per second)",
    "lr": "learning rate",
    "aux_loss": "auxiliary loss (weighted)",
    "balance": "expert load max/mean (1 = balanced)",
}
#: Plot titles of those metrics.
METRIC_TITLES: dict[str, str] = {
    "loss": "Loss over training",
    "accuracy": "Validation accuracy over training",
    "tokens_per_s": "Training throughput",
    "lr": "Learning-rate schedule",
    "aux_loss": "Auxiliary loss over training",
    "balance": "Expert load balance over training",
}
# One colour per model wherever it is drawn (the demo, reports): the MoE model blue, its dense
# twin orange, other names the next colours of the cycle in order of appearance.
_FIXED_COLORS = {"moe": "C0", "dense": "C1"}


def model_color(name: str, index: int = 0) -> str:
    """The colour of model ``name`` (the ``index``-th model of a plot) in every moekit plot."""
    if name in _FIXED_COLORS:
        return _FIXED_COLORS[name]
    return f"C{(index + 2) % 10}"


def split_records(
    records: Sequence[Mapping[str, Any]], metric: str
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Pull (step, value) pairs of ``metric`` out of metric records, for train and validation.

    A record counts as validation when ``record["split"] == "val"``; a training record may also
    carry ``val_<metric>``. Records without ``step`` use their position. Non-finite or
    non-numeric values are skipped.

    Returns
    -------
    train, val : list of (step, value)
    """
    train: list[tuple[float, float]] = []
    val: list[tuple[float, float]] = []

    def num(v: Any) -> float | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return float(v) if np.isfinite(v) else None

    for i, rec in enumerate(records):
        step = num(rec.get("step"))
        step = float(i) if step is None else step
        value = num(rec.get(metric))
        if value is not None:
            (val if rec.get("split") == "val" else train).append((step, value))
        extra = num(rec.get(f"val_{metric}"))
        if extra is not None:
            val.append((step, extra))
    return train, val


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    metric: str = "loss",
    *,
    title: str | None = None,
    log_y: bool = False,
    splits: str = "both",
) -> Path:
    """Plot one metric over training steps for several models (e.g. MoE beside its dense twin).

    Parameters
    ----------
    histories : mapping of str to list of dict
        Model name -> metric records as written to ``metrics.jsonl``: dicts with ``step``,
        the metric (e.g. ``loss``), and optionally ``split`` (``"train"`` or ``"val"``) or a
        ``val_<metric>`` key. Training values are drawn as solid lines, validation values
        dashed with markers, one colour per model (:func:`model_color`: ``moe`` blue, ``dense``
        orange).
    path : path-like
        PNG file to write (atomically).
    metric : str, default="loss"
        Key to plot, e.g. ``"loss"``, ``"tokens_per_s"``, ``"lr"``.
    title : str or None
        Default: a readable title for the known metrics (:data:`METRIC_TITLES`).
    log_y : bool, default=False
    splits : {"both", "train", "val"}, default="both"
        Which records to draw; the learning rate, say, has no validation meaning.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If no record of any model holds ``metric``.

    Examples
    --------
    >>> import tempfile, os
    >>> h = {"moe": [{"step": s, "loss": 3 / (s + 1)} for s in range(10)],
    ...      "dense": [{"step": s, "loss": 3.5 / (s + 1)} for s in range(10)]}
    >>> out = plot_training_curves(h, os.path.join(tempfile.mkdtemp(), "loss.png"))
    >>> out.stat().st_size > 0
    True
    """
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError(
            "histories must be a non-empty dict of model name -> list of metric records, "
            f"got {type(histories).__name__}"
        )
    if splits not in ("both", "train", "val"):
        raise ValueError(f"splits={splits!r} must be 'both', 'train' or 'val'")
    fig = new_figure()
    ax = fig.add_subplot()
    drawn = 0
    for i, (name, records) in enumerate(histories.items()):
        train, val = split_records(records, metric)
        train = [] if splits == "val" else train
        val = [] if splits == "train" else val
        color = model_color(name, i)
        if train:
            xs, ys = zip(*sorted(train))
            ax.plot(xs, ys, color=color, lw=1.5, label=f"{name} train")
            drawn += 1
        if val:
            xs, ys = zip(*sorted(val))
            ax.plot(xs, ys, color=color, lw=1.5, ls="--", marker="o", ms=3, label=f"{name} val")
            drawn += 1
    if drawn == 0:
        raise ValueError(
            f"no record holds metric={metric!r} in histories {sorted(histories)!r}; "
            "pick a key that the records contain (e.g. 'loss')"
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title or METRIC_TITLES.get(metric, f"{metric} over training"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_expert_load(
    load_history: Any,
    path: str | os.PathLike[str],
    *,
    steps: Any = None,
    kind: str = "area",
    title: str | None = None,
) -> Path:
    """Plot the share of tokens each expert received over training.

    Parameters
    ----------
    load_history : array-like or tensor of shape (n_steps, E)
        Load per expert at each recorded step: token counts or fractions. Each row is
        normalised to sum to 1 (rows summing to 0 are left at 0).
    path : path-like
        PNG file to write (atomically).
    steps : array-like of shape (n_steps,) or None
        Training step of each row; ``None`` uses 0, 1, 2, ...
    kind : {"area", "lines"}, default="area"
        ``"area"`` stacks the shares (they fill [0, 1]) with dashed guides at the balanced
        multiples of 1/E; ``"lines"`` draws one line per expert and a line at 1/E.
    title : str or None

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> load = np.random.default_rng(0).dirichlet(np.ones(4), size=50)  # (50, 4)
    >>> plot_expert_load(load, os.path.join(tempfile.mkdtemp(), "load.png"), kind="lines").name
    'load.png'
    """
    load = to_numpy(load_history, "load_history", ndim=2)
    n_steps, n_experts = load.shape
    if n_steps == 0 or n_experts == 0:
        raise ValueError(f"load_history must have at least one step and one expert, got "
                         f"shape {load.shape}")
    if (load < 0).any() or not np.isfinite(load).all():
        raise ValueError("load_history must hold finite, non-negative loads")
    if kind not in ("area", "lines"):
        raise ValueError(f"kind={kind!r} must be 'area' or 'lines'")
    x = np.arange(n_steps, dtype=np.float64) if steps is None else to_numpy(steps, "steps", ndim=1)
    if x.shape != (n_steps,):
        raise ValueError(f"steps has {x.shape[0]} entries but load_history has {n_steps} rows")
    totals = load.sum(axis=1, keepdims=True)
    share = np.divide(load, totals, out=np.zeros_like(load), where=totals > 0)

    fig = new_figure()
    ax = fig.add_subplot()
    colors = [f"C{e % 10}" for e in range(n_experts)]
    labels = [f"expert {e}" for e in range(n_experts)]
    balanced = 1.0 / n_experts
    if kind == "area":
        xs, ys = x, share
        if n_steps == 1:  # one step: widen it into a band so the area is visible
            xs, ys = np.array([x[0] - 0.5, x[0] + 0.5]), np.repeat(share, 2, axis=0)
        ax.stackplot(xs, ys.T, labels=labels, colors=colors, alpha=0.85)
        for k in range(1, n_experts):
            ax.axhline(k * balanced, color="k", lw=0.6, ls="--", alpha=0.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of tokens (stacked)")
    else:
        for e in range(n_experts):
            ax.plot(x, share[:, e], color=colors[e], lw=1.2, label=labels[e])
        ax.axhline(balanced, color="k", lw=1.2, ls="--", label=f"balanced 1/E = {balanced:.3g}")
        ax.set_ylabel("share of tokens")
    ax.set_xlabel("optimizer step")
    ax.set_title(title or f"Expert load over training (E = {n_experts})")
    if n_experts <= 16:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)
