"""Reading a fitted statistical MoE: its coefficient table with standard errors, as rows."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["coefficient_rows", "model_coefficients"]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _row(name: str, coef: float, se: float, z: float, p: float) -> dict[str, Any] | None:
    block, _, term = name.partition(":")
    if not term:
        return None

    def clean(v: float) -> float | None:
        v = float(v)
        return None if math.isnan(v) else v

    return {"block": block.strip(), "term": term.strip(), "coef": float(coef),
            "std_err": clean(se), "z": clean(z), "p_value": clean(p)}


def coefficient_rows(summary: str) -> list[dict[str, Any]]:
    """Parse the parameter lines of an estimator's ``summary()`` text into rows.

    A parameter line is a name such as ``"expert 1: urgent_admission"`` or ``"gate child 1:
    cabg"`` followed by four numbers (coefficient, standard error, z, p-value) and possibly a
    note.

    Returns
    -------
    list of dict
        ``{"block", "term", "coef", "std_err", "z", "p_value"}`` per parameter, ``block``
        being e.g. ``"gate child 1"`` or ``"expert 0"``; NaN becomes ``None``.

    Raises
    ------
    ValueError
        When no line parses (the summary's layout changed): better to stop than to show an
        empty table.
    """
    rows = []
    for line in summary.splitlines():
        parts = line.split()
        numeric = [_number(p) is not None for p in parts]
        # the first run of four numbers after a name with a colon; words after it are a note
        for i in range(1, len(parts) - 3):
            if all(numeric[i: i + 4]) and not numeric[i - 1]:
                name = " ".join(parts[:i])
                vals = [float(p) for p in parts[i: i + 4]]
                row = _row(name, *vals)
                if row is not None:
                    rows.append(row)
                break
    if not rows:
        raise ValueError("no parameter line found in the estimator's summary(); its layout "
                         "changed: update moekit.showcases._reading.coefficient_rows")
    return rows


def model_coefficients(model: Any, X: Any, y: Any,
                       feature_names: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Coefficient rows with standard errors, and the summary text, of a fitted estimator.

    Uses the estimator's ``summary_frame`` where it has one (a table), else parses
    ``summary()``; the text is returned either way, for the report.
    """
    text = model.summary(X, y, feature_names=feature_names)
    frame_of = getattr(model, "summary_frame", None)
    if frame_of is None:
        return coefficient_rows(text), text
    frame = frame_of(X, y, feature_names=feature_names)
    rows = []
    for name, rec in frame.iterrows():
        label = ": ".join(map(str, name)) if isinstance(name, tuple) else str(name)
        row = _row(label, rec["coef"], rec["std_err"], rec["z"], rec["p_value"])
        if row is not None:
            rows.append(row)
    if not rows:
        raise ValueError("summary_frame() gave no parameter named 'block: term'; update "
                         "moekit.showcases._reading.model_coefficients")
    return rows, text
