"""The finance showcase, top to bottom: market regimes from a gate on lagged volatility.

The S&P 500's daily returns 1999-2018. Each day's return (in %) is predicted from what was known
the evening before: yesterday's return, the 5- and 20-day trailing volatility and the 60-day
trend. Returns are unpredictable in the mean, so the question is how well each model knows how
uncertain tomorrow is: held-out log-likelihood per day (higher is better) on time-ordered
splits (test on two years, train on every day before). The number of experts is chosen by BIC
on the training days; a GARCH(1,1) with Student-t innovations is the econometrician's baseline.
Last, the gate's regimes per year, out of sample, beside the realised volatility.

    pip install 'moekit[showcases]'                 # brings arch (the data and GARCH)
    python examples/showcases/finance.py
    python examples/showcases/finance.py --seeds 2 --n-init 2 --max-experts 3   # a quick run

`moekit showcase finance` runs the full comparison (a heteroscedastic linear model, Gaussian
GARCH, Markov switching, the Dow Jones 1929-2021) and draws the regimes over the price series.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from arch import arch_model
from scipy import stats
from threadpoolctl import threadpool_limits

from moekit.data.finance import load_sp500, market_features, rolling_origin_splits
from moekit.estimators import MixtureOfExpertsRegressor, select_n_experts

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--seeds", type=int, default=4,
                    help="test periods of two years, the last ending in 2018 (default: 4)")
parser.add_argument("--n-init", type=int, default=3, help="EM restarts per fit (default: 3)")
parser.add_argument("--max-experts", type=int, default=4, help="BIC tries 1..K (default: 4)")
args = parser.parse_args()

feats = market_features(load_sp500())
y = feats.y
starts = [f"{2019 - 2 * (args.seeds - i)}-01-01" for i in range(args.seeds)]
splits = rolling_origin_splits(feats.dates, starts, test_years=2)
print(f"{feats.name}: {len(y)} days, features {list(feats.feature_names)}\n")
print(f"{'test years':<12}{'linear':>9}{'GARCH-t':>9}{'MoE':>9}  experts by BIC")

with threadpool_limits(limits=1), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for r, (train, test) in enumerate(splits):
        Z = (feats.X - feats.X[train].mean(axis=0)) / feats.X[train].std(axis=0)
        # linear regression with a Gaussian of its residual sd
        X1 = np.column_stack([np.ones(len(Z)), Z])
        coef = np.linalg.lstsq(X1[train], y[train], rcond=None)[0]
        sd = np.std(y[train] - X1[train] @ coef)
        linear = stats.norm.logpdf(y[test], X1[test] @ coef, sd).mean()
        # GARCH(1,1)-t fitted on the training days, filtered through the test days
        fitted = arch_model(y[train], vol="GARCH", dist="t").fit(disp="off")
        fixed = arch_model(y[: test[-1] + 1], vol="GARCH", dist="t").fix(fitted.params)
        nu = fitted.params["nu"]
        vol = np.asarray(fixed.conditional_volatility)[test]
        garch = stats.t.logpdf(np.asarray(fixed.resid)[test], nu,
                               scale=vol * np.sqrt((nu - 2) / nu)).mean()
        # the mixture, K chosen by BIC on the training days
        selection = select_n_experts(
            Z[train], y[train], range(1, args.max_experts + 1),
            estimator=MixtureOfExpertsRegressor(n_init=args.n_init, random_state=r))
        moe = selection.best_estimator
        ll = moe.log_likelihood(Z[test], y[test]) / len(test)
        print(f"{starts[r][:4]}-{int(starts[r][:4]) + 1:<7}{linear:9.4f}{garch:9.4f}{ll:9.4f}"
              f"  {selection.best_n_experts}")
        if r == 0:
            first = (moe, Z, test)

moe, Z, test = first
turbulent = int(np.argmax(moe.expert_scale_))
print(f"\nsplit 0's experts: daily sd {np.round(moe.expert_scale_, 2).tolist()} %; the most "
      f"turbulent is expert {turbulent}")
print(f"{'year':<6}{'P(turbulent)':>13}{'realised vol':>14}   (out of sample from "
      f"{str(feats.dates[test[0]])[:4]})")
years = feats.dates.astype("datetime64[Y]").astype(int) + 1970
gate = moe.gate_proba(Z)[:, turbulent]
for year in range(1999, 2019):
    rows = years == year
    print(f"{year:<6}{gate[rows].mean():13.2f}{np.std(y[rows]) * np.sqrt(252):13.1f}%")
