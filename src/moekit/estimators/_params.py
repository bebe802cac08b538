"""The free parameters of a fitted state as one vector (for inference and EM acceleration).

Order: every gate level's non-reference rows (``coef[:, 1:, :]``), then for each expert its
family's free parameters (``family.get_free``: coefficients, then log(scale) / log(df)).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pack(family: Any, state: dict[str, Any], n_experts: int) -> np.ndarray:
    """Free parameters of ``state`` as one vector."""
    parts = [c[:, 1:, :].ravel() for c in state["gate_coefs_"]]
    if hasattr(family, "get_free_all"):
        parts.append(family.get_free_all(state).ravel())
    else:
        parts += [family.get_free(state, k) for k in range(n_experts)]
    return np.concatenate(parts)


def unpack(family: Any, theta: np.ndarray, state: dict[str, Any], n_experts: int) -> dict:
    """Inverse of :func:`pack`, writing into copies of the arrays of ``state``."""
    new = {k: ([a.copy() for a in v] if isinstance(v, list) else np.array(v, copy=True))
           for k, v in state.items()}
    i = 0
    for c in new["gate_coefs_"]:
        m = c[:, 1:, :].size
        c[:, 1:, :] = theta[i : i + m].reshape(c[:, 1:, :].shape)
        i += m
    if hasattr(family, "set_free_all"):
        family.set_free_all(new, theta[i:].reshape(n_experts, -1))
        return new
    for k in range(n_experts):
        m = len(family.get_free(new, k))
        family.set_free(new, k, theta[i : i + m])
        i += m
    return new
