"""Routing: which expert each kind of input goes to (counted, and plotted), and a gate's regions
in 2-D."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moekit.viz._io import new_figure, save_figure, to_numpy

__all__ = ["CHARACTER_KINDS", "character_kinds", "count_routing_by_kind", "plot_gate_regions",
           "plot_routing_heatmap"]

_MAX_ANNOTATED_CELLS = 400


def plot_routing_heatmap(
    counts: Any,
    kind_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    annotate: bool = True,
) -> Path:
    """Heatmap of the share of each kind of input routed to each expert.

    Parameters
    ----------
    counts : array-like or tensor of shape (n_kinds, E)
        ``counts[k, e]``: how many tokens (or token-slots) of kind ``k`` (a digit class, a part
        of speech, an audio class...) went to expert ``e``. Rows are normalised to sum to 1.
    kind_names : sequence of str, length n_kinds
    path : path-like
        PNG file to write (atomically).
    title : str or None
    annotate : bool, default=True
        Write the percentage in each cell (skipped above 400 cells).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> counts = np.array([[90, 10, 0], [5, 80, 15]])
    >>> plot_routing_heatmap(counts, ["digits", "letters"],
    ...                      os.path.join(tempfile.mkdtemp(), "routing.png")).suffix
    '.png'
    """
    c = to_numpy(counts, "counts", ndim=2)
    n_kinds, n_experts = c.shape
    if n_kinds == 0 or n_experts == 0:
        raise ValueError(f"counts must have at least one row and one column, got shape {c.shape}")
    if (c < 0).any() or not np.isfinite(c).all():
        raise ValueError("counts must hold finite, non-negative numbers")
    names = [str(n) for n in kind_names]
    if len(names) != n_kinds:
        raise ValueError(
            f"kind_names has {len(names)} names but counts has {n_kinds} rows; "
            "give one name per row"
        )
    totals = c.sum(axis=1, keepdims=True)
    share = np.divide(c, totals, out=np.zeros_like(c), where=totals > 0)

    fig = new_figure(max(4.0, 1.0 + 0.55 * n_experts), max(2.5, 0.9 + 0.4 * n_kinds))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_experts), [str(e) for e in range(n_experts)])
    ax.set_yticks(range(n_kinds), [f"{n} (n={t:g})" for n, t in zip(names, totals[:, 0])])
    ax.set_xlabel("expert")
    ax.set_title(title or "share of each kind of input routed to each expert")
    if annotate and share.size <= _MAX_ANNOTATED_CELLS:
        for k in range(n_kinds):
            for e in range(n_experts):
                v = share[k, e]
                ax.text(e, k, f"{100 * v:.0f}%" if totals[k, 0] > 0 else "-",
                        ha="center", va="center", fontsize="x-small",
                        color="white" if v > 0.55 else "black")
    fig.colorbar(im, ax=ax, label="share of the row", shrink=0.9)
    return save_figure(fig, path)


def _gate_output(gate: Any, grid: np.ndarray) -> np.ndarray:
    fn = gate.gate_proba if hasattr(gate, "gate_proba") else gate
    if not callable(fn):
        raise TypeError(
            f"gate must be a callable (m, 2) -> (m, E) probabilities or (m,) labels, or an "
            f"object with a gate_proba method; got {type(gate).__name__}"
        )
    out = to_numpy(fn(grid), "the gate's output", ndim=(1, 2))
    if out.shape[0] != grid.shape[0]:
        raise ValueError(
            f"the gate returned {out.shape[0]} rows for {grid.shape[0]} grid points; it must "
            "return one row per input point"
        )
    return out


def _is_discrete(y: np.ndarray) -> bool:
    return bool(np.all(y == np.round(y)) and len(np.unique(y)) <= 20)


def plot_gate_regions(
    gate: Any,
    X: Any,
    y: Any,
    path: str | os.PathLike[str],
    *,
    grid_size: int = 150,
    title: str | None = None,
    expert_names: Sequence[str] | None = None,
) -> Path:
    """Colour the plane by the expert a gate picks, with the data points on top.

    Parameters
    ----------
    gate : callable or object with ``gate_proba``
        Called with grid points as a float64 array of shape (m, 2). Returns gate probabilities
        (m, E), whose argmax is drawn, or expert labels (m,). A fitted statistical MoE can be
        passed as is (its ``gate_proba`` is used); wrap a torch router, e.g.
        ``lambda g: router_probs(torch.as_tensor(g, dtype=torch.float32))``.
    X : array-like or tensor of shape (n_samples, 2)
        The data; also sets the plotted extent (with a 5 % margin).
    y : array-like of shape (n_samples,) or None
        Labels (integer-valued, at most 20 distinct: coloured by class) or a continuous target
        (coloured on a scale); ``None`` draws plain points.
    path : path-like
        PNG file to write (atomically).
    grid_size : int, default=150
        Grid points per axis.
    title : str or None
    expert_names : sequence of str or None

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> X = np.random.default_rng(0).normal(size=(100, 2))
    >>> gate = lambda g: np.stack([g[:, 0] < 0, g[:, 0] >= 0], axis=1).astype(float)
    >>> plot_gate_regions(gate, X, X[:, 1], os.path.join(tempfile.mkdtemp(), "g.png")).name
    'g.png'
    """
    pts = to_numpy(X, "X", ndim=2)
    if pts.shape[1] != 2 or pts.shape[0] == 0:
        raise ValueError(
            f"X must have shape (n_samples, 2) with n_samples >= 1, got {pts.shape}; "
            "gate regions are drawn for 2-D inputs only (project the data first)"
        )
    if grid_size < 2:
        raise ValueError(f"grid_size={grid_size} must be >= 2")
    labels = None if y is None else to_numpy(y, "y", ndim=1)
    if labels is not None and labels.shape[0] != pts.shape[0]:
        raise ValueError(f"y has {labels.shape[0]} entries but X has {pts.shape[0]} rows")

    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-9)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid_size)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid_size)
    xx, yy = np.meshgrid(xs, ys)
    grid = np.column_stack([xx.ravel(), yy.ravel()])
    out = _gate_output(gate, grid)
    region = (out.argmax(axis=1) if out.ndim == 2 else np.round(out)).astype(int)
    n_experts = out.shape[1] if out.ndim == 2 else int(region.max()) + 1
    region = region.reshape(xx.shape)

    fig = new_figure(6.4, 5.0)
    ax = fig.add_subplot()
    colors = [f"C{e % 10}" for e in range(n_experts)]
    ax.contourf(xx, yy, region, levels=np.arange(n_experts + 1) - 0.5, colors=colors, alpha=0.25)
    for e in np.unique(region):  # each region's outline; shared borders coincide exactly
        if (region != e).any():
            ax.contour(xx, yy, (region == e).astype(float), levels=[0.5], colors="k",
                       linewidths=0.8)
    names = list(expert_names) if expert_names is not None else [
        f"expert {e}" for e in range(n_experts)]
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[e], alpha=0.4, label=names[e] if e < len(names) else str(e))
               for e in np.unique(region)]
    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=10, c="k", alpha=0.7)
    elif _is_discrete(labels):
        markers = "os^vD<>px*h"
        for i, cls in enumerate(np.unique(labels)):
            sel = labels == cls
            ax.scatter(pts[sel, 0], pts[sel, 1], s=14, marker=markers[i % len(markers)],
                       facecolors="none", edgecolors="k", linewidths=0.7, label=f"class {cls:g}")
    else:
        sc = ax.scatter(pts[:, 0], pts[:, 1], s=12, c=labels, cmap="viridis",
                        edgecolors="k", linewidths=0.3)
        fig.colorbar(sc, ax=ax, label="y")
    point_handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + point_handles, fontsize="x-small", loc="upper left",
              bbox_to_anchor=(1.01, 1.0) if labels is None or _is_discrete(labels) else None)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title(title or "gate regions (argmax of gate probabilities)")
    return save_figure(fig, path)


#: The kinds of :func:`character_kinds`, in the order of its indices.
CHARACTER_KINDS: tuple[str, ...] = ("vowel", "consonant", "capital", "space", "punctuation",
                                    "other")


def character_kinds(text: str) -> np.ndarray:
    """The kind of each character of ``text`` as an index into :data:`CHARACTER_KINDS`.

    Lower-case vowels (a e i o u), other lower-case letters, capitals, white space, the
    punctuation ``.,;:!?'-()``, and everything else.

    Examples
    --------
    >>> [CHARACTER_KINDS[k] for k in character_kinds("Ab ,7")]
    ['capital', 'consonant', 'space', 'punctuation', 'other']
    """

    def kind(ch: str) -> int:
        if ch in "aeiou":
            return 0
        if ch.islower():
            return 1
        if ch.isupper():
            return 2
        if ch.isspace():
            return 3
        return 4 if ch in ".,;:!?'-()" else 5

    return np.array([kind(ch) for ch in text], dtype=np.int64)


def count_routing_by_kind(indices: Any, kinds: Any, *, n_kinds: int, n_experts: int) -> np.ndarray:
    """How many token-slots of each kind of input went to each expert: the input of
    :func:`plot_routing_heatmap`.

    Parameters
    ----------
    indices : array-like or tensor of shape (T, K)
        Expert of each token-slot, ``-1`` where the slot was dropped (as in
        ``MoELayer.stats.indices`` after a forward); dropped slots are not counted.
    kinds : array-like of shape (T,)
        Kind of each token, an integer in ``[0, n_kinds)`` (a class label, a part of speech,
        :func:`character_kinds`...).
    n_kinds, n_experts : int

    Returns
    -------
    ndarray of shape (n_kinds, n_experts)
        ``counts[k, e]``.

    Examples
    --------
    >>> count_routing_by_kind([[0, 1], [1, -1], [1, 0]], [0, 1, 1], n_kinds=2, n_experts=2)
    array([[1., 1.],
           [1., 2.]])
    """
    idx = to_numpy(indices, "indices", ndim=2)
    kind = to_numpy(kinds, "kinds", ndim=1)
    if idx.shape[0] != kind.shape[0]:
        raise ValueError(f"indices has {idx.shape[0]} tokens but kinds has {kind.shape[0]}; give "
                         "one kind per token")
    if kind.size and (kind.min() < 0 or kind.max() >= n_kinds or (kind != np.round(kind)).any()):
        raise ValueError(f"kinds must be integers in [0, n_kinds={n_kinds})")
    if idx.size and (idx.max() >= n_experts or idx.min() < -1):
        raise ValueError(f"indices must be expert numbers in [0, n_experts={n_experts}) or -1 "
                         "(dropped)")
    counts = np.zeros((n_kinds, n_experts))
    rows = np.broadcast_to(kind.astype(np.int64)[:, None], idx.shape)
    kept = idx >= 0
    np.add.at(counts, (rows[kept], idx[kept].astype(np.int64)), 1)
    return counts
