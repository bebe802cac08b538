"""Input checks shared by every estimator module (no estimator maths here, so no import circle).

- :func:`add_intercept`: the design ``X1 = [1, X]`` every coefficient array is laid out for.
- :func:`check_sample_weight`: ``None`` -> ones; else finite, non-negative, one per row.
- :func:`check_number`: a named int/real parameter against a bound, with the fix in the message.
- :func:`validate_data`: scikit-learn's ``validate_data`` (``n_features_in_``,
  ``feature_names_in_``, dtype), on any scikit-learn version moekit supports.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _sk_validate_data(est, *args, **kwargs):  # type: ignore[no-redef]
        return est._validate_data(*args, **kwargs)


def validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
    """scikit-learn's ``validate_data(estimator, X[, y], reset=..., ...)``."""
    return _sk_validate_data(estimator, *args, **kwargs)


def add_intercept(X: np.ndarray) -> np.ndarray:
    """Prepend a column of ones: (n, p) -> (n, p + 1)."""
    out = np.empty((X.shape[0], X.shape[1] + 1))
    out[:, 0] = 1.0
    out[:, 1:] = X
    return out


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """Validate ``sample_weight``: None -> ones; else finite, non-negative, shape (n_samples,)."""
    if sample_weight is None:
        return np.ones(n_samples)
    sw = np.asarray(sample_weight, dtype=float)
    if sw.ndim == 0:
        return np.full(n_samples, float(sw))
    if sw.shape != (n_samples,):
        raise ValueError(
            f"sample_weight.shape={sw.shape} does not match X: expected ({n_samples},); "
            "pass one weight per row of X"
        )
    if not np.all(np.isfinite(sw)) or np.any(sw < 0):
        raise ValueError("sample_weight must be finite and >= 0; remove NaN/inf/negative weights")
    if not np.any(sw > 0):
        raise ValueError(
            "sample_weight: every weight is zero; at least one row needs a positive weight")
    return sw


def check_number(
    name: str,
    value: Any,
    low: float,
    *,
    integer: bool = False,
    strict: bool = False,
    fix: str = "",
) -> None:
    """Raise TypeError (wrong type) or ValueError (below ``low``) naming ``name`` and the fix."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if integer else "a real number"
        raise TypeError(f"{name}={value!r} must be {what}; {fix}")
    if not np.isfinite(float(value)):
        raise ValueError(f"{name}={value!r} must be finite; {fix}")
    if (value <= low) if strict else (value < low):
        rel = ">" if strict else ">="
        raise ValueError(f"{name}={value!r} must be {rel} {low}; {fix}")
