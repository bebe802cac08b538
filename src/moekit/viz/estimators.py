"""Plot a statistical MoE fitted to 1-D data: the data, each expert's line, the mixture's mean and
predictive interval, and the gate's probabilities underneath."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from moekit.viz._io import new_figure, save_figure, to_numpy

__all__ = ["plot_estimator_fit"]


def _as_1d(v: Any, name: str) -> np.ndarray:
    arr = to_numpy(v, name, ndim=(1, 2))
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape (n,) or (n, 1), got {arr.shape}")
    return arr


def _column(v: Any, name: str, n: int) -> np.ndarray | None:
    if v is None:
        return None
    arr = _as_1d(v, name)
    if arr.shape[0] != n:
        raise ValueError(f"{name} must have shape (n_grid,) = ({n},), got {arr.shape}")
    return arr


def _per_expert(v: Any, name: str, n: int) -> np.ndarray | None:
    if v is None:
        return None
    arr = to_numpy(v, name, ndim=2)
    if arr.shape[0] != n:
        raise ValueError(f"{name} must have shape (n_grid, n_experts) with n_grid={n}, "
                         f"got {arr.shape}")
    return arr


def plot_estimator_fit(
    x: Any,
    y: Any,
    path: str | os.PathLike[str],
    *,
    x_grid: Any,
    mean: Any = None,
    lower: Any = None,
    upper: Any = None,
    expert_means: Any = None,
    gate_proba: Any = None,
    interval_label: str = "predictive interval",
    title: str | None = None,
) -> Path:
    """Show a mixture of experts fitted to 1-D data.

    Top panel: the data, each expert's mean line (drawn solid where the gate gives it at least
    half the weight, faint elsewhere), the mixture's mean and a shaded predictive interval.
    Bottom panel (when ``gate_proba`` is given): the gate's probability of each expert.

    Parameters
    ----------
    x, y : array-like or tensor of shape (n_samples,) (``x`` may be (n_samples, 1))
        The data.
    path : path-like
        PNG file to write (atomically).
    x_grid : array-like of shape (n_grid,) or (n_grid, 1)
        Sorted inputs at which the following were evaluated.
    mean : array-like of shape (n_grid,) or None
        The mixture's predictive mean, e.g. ``est.predict(x_grid)``.
    lower, upper : array-like of shape (n_grid,) or None
        Bounds of a predictive interval, e.g. from ``est.predict_interval``; both or neither.
    expert_means : array-like of shape (n_grid, n_experts) or None
        Each expert's mean at the grid points.
    gate_proba : array-like of shape (n_grid, n_experts) or None
        The gate's probabilities at the grid points, e.g. ``est.gate_proba(x_grid)``.
    interval_label : str, default="predictive interval"
        Legend text of the shaded band, e.g. ``"90% predictive interval"``.
    title : str or None

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> x = np.linspace(-3, 3, 50); y = np.where(x < 0, 1 - 1.5 * x, -1 + 2 * x)
    >>> g = np.linspace(-3, 3, 100); p = 1 / (1 + np.exp(-4 * g))
    >>> experts = np.column_stack([1 - 1.5 * g, -1 + 2 * g])
    >>> gate = np.column_stack([1 - p, p])
    >>> m = (experts * gate).sum(axis=1)
    >>> plot_estimator_fit(x, y, os.path.join(tempfile.mkdtemp(), "fit.png"), x_grid=g,
    ...                    mean=m, lower=m - 1, upper=m + 1, expert_means=experts,
    ...                    gate_proba=gate).name
    'fit.png'
    """
    xd = _as_1d(x, "x")
    yd = _as_1d(y, "y")
    if xd.shape != yd.shape:
        raise ValueError(f"x has {xd.shape[0]} samples but y has {yd.shape[0]}; pass matching data")
    g = _as_1d(x_grid, "x_grid")
    n = g.shape[0]
    m = _column(mean, "mean", n)
    lo = _column(lower, "lower", n)
    hi = _column(upper, "upper", n)
    if (lo is None) != (hi is None):
        raise ValueError("give both lower and upper for a predictive interval, or neither")
    experts = _per_expert(expert_means, "expert_means", n)
    gate = _per_expert(gate_proba, "gate_proba", n)
    if experts is not None and gate is not None and experts.shape[1] != gate.shape[1]:
        raise ValueError(f"expert_means has {experts.shape[1]} experts but gate_proba has "
                         f"{gate.shape[1]}; they must describe the same experts")

    fig = new_figure(7.0, 5.6 if gate is not None else 4.2)
    if gate is not None:
        ax, ax_gate = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        ax, ax_gate = fig.add_subplot(), None
    ax.scatter(xd, yd, s=10, c="0.4", alpha=0.6, label="data")
    if lo is not None and hi is not None:
        ax.fill_between(g, lo, hi, color="C7", alpha=0.25, label=interval_label)
    if experts is not None:
        for e in range(experts.shape[1]):
            color = f"C{e % 10}"
            ax.plot(g, experts[:, e], color=color, lw=0.8, alpha=0.35)
            if gate is not None:
                strong = np.where(gate[:, e] >= 0.5, experts[:, e], np.nan)
                ax.plot(g, strong, color=color, lw=2.0, label=f"expert {e}")
            else:
                ax.lines[-1].set(alpha=1.0, lw=1.5, label=f"expert {e}")
    if m is not None:
        ax.plot(g, m, color="k", lw=1.5, ls="--", label="mixture mean")
    # keep the axis on the data and the fit: faint expert lines may run far off elsewhere
    shown = [yd] + [v for v in (m, lo, hi) if v is not None]
    if experts is not None and gate is not None:
        shown.append(experts[gate >= 0.5])
    elif experts is not None:
        shown.append(experts.ravel())
    finite = np.concatenate([v.ravel() for v in shown])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo_y, hi_y = finite.min(), finite.max()
        pad = 0.08 * max(hi_y - lo_y, 1e-9)
        ax.set_ylim(lo_y - pad, hi_y + pad)
    ax.set_ylabel("y")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    ax.set_title(title or "mixture of experts fit")
    if ax_gate is not None and gate is not None:
        for e in range(gate.shape[1]):
            ax_gate.plot(g, gate[:, e], color=f"C{e % 10}", lw=1.5)
        ax_gate.set_ylim(-0.05, 1.05)
        ax_gate.set_ylabel("gate")
        ax_gate.grid(alpha=0.3)
        ax_gate.set_xlabel("x")
    else:
        ax.set_xlabel("x")
    return save_figure(fig, path)
