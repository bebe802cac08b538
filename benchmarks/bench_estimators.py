"""Fit time and log-likelihood of MixtureOfExpertsRegressor as the number of rows grows.

Beside a baseline measured in the same run on the same data: scikit-learn's LinearRegression (one
Gaussian linear model: the 1-expert MoE) and GaussianMixture with as many components as experts,
fitted on the joint (X, y). Ratios are moekit time / baseline time. Log-likelihoods are per row
of the training data: moekit's and LinearRegression's are conditional, log p(y | x); for the
Gaussian mixture both the joint log p(x, y) and the conditional log p(y | x) = log p(x, y) -
log p(x) it implies are shown (the conditional is the one comparable with moekit's).

Data: ``make_moe_regression`` with a fixed seed (20 features, 8 experts by default).

Run from the repository root (a couple of minutes on 2 cores with the defaults):

    python benchmarks/bench_estimators.py
    python benchmarks/bench_estimators.py --max-rows 1000000 --json bench_estimators.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np
from scipy import stats
from scipy.special import logsumexp
from sklearn.linear_model import LinearRegression
from sklearn.mixture import GaussianMixture

from moekit import __version__
from moekit.estimators import MixtureOfExpertsRegressor
from moekit.estimators.datasets import make_moe_regression

SIZES = (1_000, 10_000, 100_000, 1_000_000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-rows", type=int, default=100_000,
                   help="largest n to run, from 1e3, 1e4, 1e5, 1e6 (default: 100000)")
    p.add_argument("--features", type=int, default=20, help="number of features (default: 20)")
    p.add_argument("--experts", type=int, default=8,
                   help="experts of the MoE and components of the Gaussian mixture (default: 8)")
    p.add_argument("--n-init", type=int, default=1,
                   help="restarts for moekit and GaussianMixture alike (default: 1)")
    p.add_argument("--max-iter", type=int, default=100,
                   help="most EM iterations for moekit and GaussianMixture alike (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and fits (default: 0)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write the results as JSON to PATH")
    return p.parse_args(argv)


def gmm_conditional_loglik(gmm: GaussianMixture, X: np.ndarray, y: np.ndarray) -> float:
    """Total log p(y | x) implied by a full-covariance Gaussian mixture fitted on [X, y]."""
    joint = gmm.score_samples(np.column_stack([X, y]))
    d = X.shape[1]
    log_px_k = np.column_stack([
        np.log(w) + stats.multivariate_normal(mean[:d], cov[:d, :d], allow_singular=True).logpdf(X)
        for w, mean, cov in zip(gmm.weights_, gmm.means_, gmm.covariances_)
    ])
    return float(np.sum(joint - logsumexp(log_px_k, axis=1)))


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    data = make_moe_regression(n_samples=n, n_features=args.features, n_experts=args.experts,
                               random_state=args.seed)
    X, y = data[0], data[1]

    moe = MixtureOfExpertsRegressor(n_experts=args.experts, n_init=args.n_init,
                                    max_iter=args.max_iter, random_state=args.seed)
    _, t_moe = timed(lambda: moe.fit(X, y))
    ll_moe = float(moe.log_likelihood(X, y))

    lr, t_lr = timed(lambda: LinearRegression().fit(X, y))
    resid = y - lr.predict(X)
    sigma2 = float(np.mean(resid**2))
    ll_lr = -0.5 * n * (np.log(2 * np.pi * sigma2) + 1.0)

    gmm = GaussianMixture(n_components=args.experts, covariance_type="full", n_init=args.n_init,
                          max_iter=args.max_iter, random_state=args.seed)
    _, t_gmm = timed(lambda: gmm.fit(np.column_stack([X, y])))
    ll_gmm_joint = float(gmm.score(np.column_stack([X, y]))) * n
    ll_gmm_cond = gmm_conditional_loglik(gmm, X, y)

    return {
        "n_rows": n,
        "moekit_s": t_moe,
        "moekit_iter": int(np.max(getattr(moe, "n_iter_", -1))),
        "moekit_converged": bool(getattr(moe, "converged_", False)),
        "linreg_s": t_lr,
        "gmm_s": t_gmm,
        "gmm_iter": int(gmm.n_iter_),
        "ratio_vs_linreg": t_moe / t_lr,
        "ratio_vs_gmm": t_moe / t_gmm,
        "loglik_per_row": {
            "moekit": ll_moe / n,
            "linreg": ll_lr / n,
            "gmm_conditional": ll_gmm_cond / n,
            "gmm_joint": ll_gmm_joint / n,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [n for n in SIZES if n <= args.max_rows]
    if not sizes:
        print(f"--max-rows {args.max_rows} is below the smallest size {SIZES[0]}", file=sys.stderr)
        return 2
    print(f"moekit {__version__}: {args.features} features, {args.experts} experts, "
          f"n_init={args.n_init}, max_iter={args.max_iter}, seed={args.seed}, "
          f"{os.cpu_count()} CPUs visible")
    head = (f"{'rows':>9} {'moekit s':>9} {'linreg s':>9} {'gmm s':>8} {'moe/lin':>8} "
            f"{'moe/gmm':>8} {'iters':>6} | {'ll/row moe':>10} {'linreg':>8} {'gmm y|x':>8} "
            f"{'gmm x,y':>8}")
    print(head)
    print("-" * len(head))
    results = []
    for n in sizes:
        r = run_size(n, args)
        results.append(r)
        ll = r["loglik_per_row"]
        print(f"{n:>9} {r['moekit_s']:>9.3f} {r['linreg_s']:>9.3f} {r['gmm_s']:>8.3f} "
              f"{r['ratio_vs_linreg']:>8.1f} {r['ratio_vs_gmm']:>8.2f} {r['moekit_iter']:>6} | "
              f"{ll['moekit']:>10.4f} {ll['linreg']:>8.4f} {ll['gmm_conditional']:>8.4f} "
              f"{ll['gmm_joint']:>8.3f}", flush=True)
    if args.json:
        payload = {
            "benchmark": "bench_estimators",
            "moekit_version": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
