"""Reading a fitted statistical MoE: its coefficient table with standard errors, as rows."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["coefficient_rows"]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def coefficient_rows(summary: str) -> list[dict[str, Any]]:
    """Parse the parameter lines of an estimator's ``summary()`` into rows.

    Each parameter line ends with four numbers (coefficient, standard error, z, p-value) after
    a name such as ``"expert 1: urgent_admission"`` or ``"gate child 1: cabg"``.

    Returns
    -------
    list of dict
        ``{"block", "term", "coef", "std_err", "z", "p_value"}`` per parameter, ``block``
        being ``"gate child 1"`` or ``"expert 0"`` and NaN standard errors kept as ``None``.

    Raises
    ------
    ValueError
        When no line parses (the summary's layout changed): better to stop than to show an
        empty table.
    """
    rows = []
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) < 5 or ":" not in line:
            continue
        nums = [_number(p) for p in parts[-4:]]
        if any(v is None for v in nums):
            continue
        name = line[: line.rindex(parts[-4])].strip()
        block, _, term = name.partition(":")
        if not term:
            continue
        coef, se, z, p = (float(v) for v in nums)  # type: ignore[arg-type]
        rows.append({"block": block.strip(), "term": term.strip(), "coef": coef,
                     "std_err": None if math.isnan(se) else se,
                     "z": None if math.isnan(z) else z, "p_value": None if math.isnan(p) else p})
    if not rows:
        raise ValueError("no parameter line found in the estimator's summary(); its layout "
                         "changed: update moekit.showcases._reading.coefficient_rows")
    return rows
