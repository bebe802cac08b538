"""Shared helpers of the plotting modules: array conversion, figures, atomic PNG writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from moekit._files import atomic_open


def to_numpy(x: Any, name: str, *, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Convert an array-like or torch tensor to a float64 NumPy array, checking its rank."""
    if hasattr(x, "detach"):  # a torch tensor; torch itself is never imported here
        x = x.detach().cpu().float().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be numeric (a NumPy array, a list or a torch tensor), "
            f"got {type(x).__name__}"
        ) from err
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and arr.ndim not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name} must be {want}, got shape {arr.shape}")
    return arr


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Render ``fig`` as PNG to ``path`` atomically; return the path."""
    path = Path(path)
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    return path


def new_figure(width: float = 7.0, height: float = 4.2) -> Figure:
    """A figure not registered with pyplot, so nothing leaks between calls."""
    return Figure(figsize=(width, height), layout="constrained")

