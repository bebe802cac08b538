"""Fit a mixture of experts to a health table and choose the number of experts by BIC.

The table is scikit-learn's bundled diabetes data (442 patients, 10 baseline measurements, and
a measure of disease progression one year later): no network needed. Each expert is a linear
regression with its own noise level; the gate decides, from a patient's measurements, which
expert describes them. BIC (lower is better) trades the likelihood against the number of
parameters, so on 442 rows it asks for strong evidence before adding an expert.

    python examples/fit_health_table.py
    python examples/fit_health_table.py --max-experts 5 --n-init 10 --save diabetes.moekit
"""

from __future__ import annotations

import argparse

from sklearn.datasets import load_diabetes

from moekit.estimators import MixtureOfExpertsRegressor, select_n_experts
from moekit.estimators.persistence import save_model

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--max-experts", type=int, default=4,
                    help="try 1..MAX experts (default: 4)")
parser.add_argument("--n-init", type=int, default=3,
                    help="EM restarts per fit; the best is kept (default: 3)")
parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
parser.add_argument("--save", metavar="PATH", default=None,
                    help="save the chosen model to PATH (e.g. diabetes.moekit)")
args = parser.parse_args()

# Standardised measurements: every coefficient reads "per standard deviation" of its column,
# and EM converges faster on columns of similar scale.
data = load_diabetes(scaled=False)
names = list(data.feature_names)
X = (data.data - data.data.mean(axis=0)) / data.data.std(axis=0)
y = data.target
print(f"diabetes: {X.shape[0]} patients, features {names}\n")

# One fit per number of experts; the lowest BIC wins.
template = MixtureOfExpertsRegressor(n_init=args.n_init, random_state=args.seed)
selection = select_n_experts(X, y, range(1, args.max_experts + 1), criterion="bic",
                             estimator=template)
print(f"{'experts':>7} {'BIC':>10}")
for k, bic in selection.scores.items():
    print(f"{k:>7} {bic:>10.1f}{'  <- chosen' if k == selection.best_n_experts else ''}")
best = selection.best_estimator
print(f"\nlog-likelihood {best.log_likelihood(X, y):.1f}, AIC {best.aic(X, y):.1f}\n")
print(best.summary(feature_names=names))

# Which expert describes each patient, and a 90% predictive interval for the first few.
expert = best.gate_proba(X).argmax(axis=1)
lower, upper = best.predict_interval(X[:5], alpha=0.1)
predicted = best.predict(X[:5])
for i in range(5):
    print(f"patient {i}: expert {expert[i]}, predicted {predicted[i]:.0f}, "
          f"90% interval [{lower[i]:.0f}, {upper[i]:.0f}], observed {y[i]:.0f}")

if args.save:
    path = save_model(best, args.save, feature_names=names, target="progression")
    print(f"\nsaved to {path}; the model expects standardised columns")
