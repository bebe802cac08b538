"""A small health table for the statistical MoE: scikit-learn's bundled diabetes data.

No network: the table ships inside scikit-learn. Returned as plain NumPy arrays (no pandas).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TabularDataset", "load_health_table"]

# Readable descriptions of scikit-learn's short column names (from its DESCR).
_FEATURE_DESCRIPTIONS: dict[str, str] = {
    "age": "age in years",
    "sex": "sex (coded 1 or 2)",
    "bmi": "body mass index",
    "bp": "average blood pressure",
    "s1": "tc, total serum cholesterol",
    "s2": "ldl, low-density lipoproteins",
    "s3": "hdl, high-density lipoproteins",
    "s4": "tch, total cholesterol / HDL",
    "s5": "ltg, possibly log of serum triglycerides level",
    "s6": "glu, blood sugar level",
}


@dataclass(frozen=True)
class TabularDataset:
    """A regression table.

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_features), float64
    y : ndarray of shape (n_samples,), float64
    feature_names : tuple of str, length n_features
    feature_descriptions : tuple of str, length n_features
    target_name : str
    description : str
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    feature_descriptions: tuple[str, ...]
    target_name: str
    description: str


def load_health_table(*, scaled: bool = False) -> TabularDataset:
    """Load the diabetes table of Efron, Hastie, Johnstone & Tibshirani (2004).

    442 diabetes patients; ten baseline measurements (age, sex, body mass index, average blood
    pressure and six blood serum measurements) and the target, a quantitative measure of disease
    progression one year after baseline (about 25 to 346). Bundled with scikit-learn
    (``sklearn.datasets.load_diabetes``), so nothing is downloaded.

    Parameters
    ----------
    scaled : bool, default=False
        ``False`` gives the original units (years, mmHg, ...), which make fitted coefficients
        readable; ``True`` gives scikit-learn's version where each column is mean-centred and
        scaled so its sum of squares is 1.

    Returns
    -------
    TabularDataset
        ``X`` (442, 10) float64, ``y`` (442,) float64, ``feature_names`` ``('age', 'sex', 'bmi',
        'bp', 's1', ..., 's6')`` with readable ``feature_descriptions``, ``target_name``
        ``'disease_progression'``.

    Examples
    --------
    >>> from moekit.data.tabular import load_health_table
    >>> data = load_health_table()
    >>> data.X.shape, data.y.shape, data.feature_names[:3]
    ((442, 10), (442,), ('age', 'sex', 'bmi'))
    """
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=scaled)
    names = tuple(str(n) for n in bunch.feature_names)
    return TabularDataset(
        X=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target, dtype=np.float64),
        feature_names=names,
        feature_descriptions=tuple(_FEATURE_DESCRIPTIONS.get(n, n) for n in names),
        target_name="disease_progression",
        description=(
            "Diabetes progression one year after baseline for 442 patients "
            "(Efron et al. 2004, via scikit-learn)"
            + ("; features mean-centred and scaled" if scaled else "; original units")
        ),
    )
