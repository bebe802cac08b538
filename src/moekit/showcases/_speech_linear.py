"""The speech showcase's linear references: a pooled logistic regression, one per language told
the language (the oracle), and a linear reader of the language from the raw features."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["language_id_from_features", "linear_scores"]


def linear_scores(x_tr: np.ndarray, y_tr: np.ndarray, lang_tr: np.ndarray, x_va: np.ndarray,
                   y_va: np.ndarray, lang_va: np.ndarray, x_real: np.ndarray | None,
                   lang_real: np.ndarray | None) -> dict[str, Any]:
    """Pooled logistic regression, and one per language told the language (the oracle).

    Returns the predictions on the held-out and the real clips, and each model's fitting time
    (``pooled_s``, ``oracle_s``: wall seconds, the scaling included in both).
    """
    import time

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    scaler = StandardScaler().fit(x_tr)
    ztr, zva = scaler.transform(x_tr), scaler.transform(x_va)
    zre = scaler.transform(x_real) if x_real is not None else None
    scaling_s = time.perf_counter() - started

    def fit(rows: np.ndarray) -> Any:
        return LogisticRegression(C=0.1, max_iter=300).fit(ztr[rows], y_tr[rows])

    started = time.perf_counter()
    pooled = fit(np.ones(len(y_tr), dtype=bool))
    out: dict[str, Any] = {"pooled_valid": pooled.predict(zva),
                           "pooled_real": pooled.predict(zre) if zre is not None else None,
                           "pooled_s": scaling_s + time.perf_counter() - started}
    started = time.perf_counter()
    oracle_va = np.empty(len(y_va), dtype=np.int64)
    oracle_re = np.empty(len(zre), dtype=np.int64) if zre is not None else None
    for lang in np.unique(lang_tr):
        model = fit(lang_tr == lang)
        rows = lang_va == lang
        if rows.any():
            oracle_va[rows] = model.predict(zva[rows])
        if zre is not None and oracle_re is not None and lang_real is not None:
            rows_re = lang_real == lang
            if rows_re.any():
                oracle_re[rows_re] = model.predict(zre[rows_re])
    out["oracle_valid"], out["oracle_real"] = oracle_va, oracle_re
    out["oracle_s"] = scaling_s + time.perf_counter() - started
    return out


def language_id_from_features(x_tr: np.ndarray, lang_tr: np.ndarray, x_va: np.ndarray,
                               lang_va: np.ndarray) -> float:
    """Accuracy of a logistic regression naming the language of the held-out clips."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(C=0.1, max_iter=300).fit(scaler.transform(x_tr), lang_tr)
    return float(clf.score(scaler.transform(x_va), lang_va))
