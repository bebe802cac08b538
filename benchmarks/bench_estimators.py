"""Fit time and log-likelihood of moekit's EM estimators beside scikit-learn, in one run.

For each case ``ROWSxFEATURESxEXPERTS`` the data are ``make_moe_regression`` with a fixed seed,
and the same data are given to every model:

- ``MixtureOfExpertsRegressor(n_experts=K)`` with its defaults (restarts, iterations, tolerance),
  beside scikit-learn's ``GaussianMixture(K, covariance_type="full")`` fitted on the joint
  ``[X, y]`` (the closest peer that is also EM with K components and restarts) and
  ``LinearRegression`` (the 1-expert MoE). Log-likelihoods are per row of the training data:
  moekit's and LinearRegression's are conditional, log p(y | x); for the Gaussian mixture the
  conditional log p(y | x) = log p(x, y) - log p(x) it implies is shown.
- ``MixtureOfExpertsClassifier(n_experts=K)`` with its defaults on ``y > median(y)``, beside
  ``LogisticRegression()`` (the 1-expert classifier): training log loss per row (lower is better).

Times are CPU seconds of this process (``time.process_time``: all threads, so a BLAS that spins
idle threads is charged for them) and wall seconds. ``--threads N`` sets the BLAS thread count of
the whole run with threadpoolctl (default: leave it as the environment set it). ``--before
PATH`` adds the columns of an earlier run's JSON (same cases) and the ratio of CPU times.

Run from the repository root:

    python benchmarks/bench_estimators.py --threads 1 --json bench_estimators.json
    python benchmarks/bench_estimators.py --threads 1 --max-rows 1000000 \\
        --before benchmarks/results/bench_estimators_before.json

The default cases take a few minutes on 2 cores; ``--max-rows 1000000`` adds the 10^6-row case
(GaussianMixture alone takes a couple of minutes there, so it runs one initialisation above
200,000 rows, flagged ``1 init`` in the table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import warnings
from typing import Any

import numpy as np
from scipy import stats
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import log_loss
from sklearn.mixture import GaussianMixture

from moekit import __version__
from moekit.estimators import MixtureOfExpertsClassifier, MixtureOfExpertsRegressor
from moekit.estimators.datasets import make_moe_regression

CASES = ("1000x20x8", "5000x10x3", "10000x20x8", "100000x20x8", "1000000x20x8")
GMM_ONE_INIT_ABOVE = 200_000


def parse_case(text: str) -> tuple[int, int, int]:
    try:
        n, d, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"case {text!r} must be ROWSxFEATURESxEXPERTS, e.g. 1000x20x8") from None
    if min(n, d, k) < 1:
        raise argparse.ArgumentTypeError(f"case {text!r}: every number must be >= 1")
    return n, d, k


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated ROWSxFEATURESxEXPERTS (default: {','.join(CASES)})")
    p.add_argument("--max-rows", type=int, default=100_000,
                   help="skip cases with more rows than this (default: 100000; 1000000 adds the "
                        "10^6-row case)")
    p.add_argument("--classifier-max-rows", type=int, default=100_000,
                   help="run the classifier rows only up to this many rows (default: 100000)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads for the whole run, set with threadpoolctl (default: as "
                        "the environment has it)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and fits (default: 0)")
    p.add_argument("--before", metavar="PATH", default=None,
                   help="JSON of an earlier run of this script: adds its times, likelihoods "
                        "and the CPU-time ratio")
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


def timed(fn: Any) -> tuple[Any, float, float]:
    """(result, CPU seconds of this process, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def run_case(n: int, d: int, k: int, args: argparse.Namespace) -> dict[str, Any]:
    X, y, _ = make_moe_regression(n_samples=n, n_features=d, n_experts=k, random_state=args.seed)
    row: dict[str, Any] = {"case": f"{n}x{d}x{k}", "n_rows": n, "n_features": d, "n_experts": k}

    moe = MixtureOfExpertsRegressor(n_experts=k, random_state=args.seed)
    _, row["moekit_cpu_s"], row["moekit_wall_s"] = timed(lambda: moe.fit(X, y))
    row["moekit_n_init"] = int(moe.n_init)
    row["moekit_iter"] = int(moe.n_iter_)
    row["moekit_converged"] = bool(moe.converged_)
    row["moekit_ll_per_row"] = float(moe.log_likelihood(X, y)) / n

    lr, row["linreg_cpu_s"], _ = timed(lambda: LinearRegression().fit(X, y))
    sigma2 = float(np.mean((y - lr.predict(X)) ** 2))
    row["linreg_ll_per_row"] = -0.5 * (np.log(2 * np.pi * sigma2) + 1.0)

    gmm_n_init = 1 if n > GMM_ONE_INIT_ABOVE else int(moe.n_init)
    gmm = GaussianMixture(n_components=k, covariance_type="full", n_init=gmm_n_init,
                          random_state=args.seed)
    _, row["gmm_cpu_s"], row["gmm_wall_s"] = timed(lambda: gmm.fit(np.column_stack([X, y])))
    row["gmm_n_init"] = gmm_n_init
    row["gmm_ll_per_row"] = gmm_conditional_loglik(gmm, X, y) / n

    if n <= args.classifier_max_rows:
        labels = (y > np.median(y)).astype(int)
        clf = MixtureOfExpertsClassifier(n_experts=k, random_state=args.seed)
        _, row["moekit_clf_cpu_s"], row["moekit_clf_wall_s"] = timed(lambda: clf.fit(X, labels))
        row["moekit_clf_iter"] = int(clf.n_iter_)
        row["moekit_clf_logloss"] = float(log_loss(labels, np.clip(clf.predict_proba(X), 0, 1)))
        logreg, row["logreg_cpu_s"], _ = timed(lambda: LogisticRegression().fit(X, labels))
        row["logreg_logloss"] = float(log_loss(labels, logreg.predict_proba(X)))
    return row


def _fmt(v: Any, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{spec}}"


def print_table(rows: list[dict[str, Any]], before: dict[str, dict[str, Any]]) -> None:
    head = (f"{'case':>13} {'moe cpu s':>9} {'before':>8} {'x faster':>8} {'wall s':>7} "
            f"{'iters':>5} {'conv':>4} | {'ll/row moe':>10} {'before':>8} {'gmm y|x':>8} "
            f"{'linreg':>8} | {'gmm cpu s':>9} {'moe/gmm':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        b = before.get(r["case"], {})
        speedup = b["moekit_cpu_s"] / r["moekit_cpu_s"] if b.get("moekit_cpu_s") else None
        gmm_note = " (1 init)" if r["gmm_n_init"] == 1 and r["moekit_n_init"] != 1 else ""
        print(f"{r['case']:>13} {r['moekit_cpu_s']:>9.3f} {_fmt(b.get('moekit_cpu_s'), '.3f', 8)} "
              f"{_fmt(speedup, '.1f', 8)} {r['moekit_wall_s']:>7.2f} {r['moekit_iter']:>5} "
              f"{'yes' if r['moekit_converged'] else 'no':>4} | {r['moekit_ll_per_row']:>10.4f} "
              f"{_fmt(b.get('moekit_ll_per_row'), '.4f', 8)} {r['gmm_ll_per_row']:>8.4f} "
              f"{r['linreg_ll_per_row']:>8.4f} | {r['gmm_cpu_s']:>9.3f} "
              f"{r['moekit_cpu_s'] / r['gmm_cpu_s']:>7.2f}{gmm_note}")
    clf_rows = [r for r in rows if "moekit_clf_cpu_s" in r]
    if clf_rows:
        print()
        head = (f"{'case':>13} {'clf cpu s':>9} {'before':>8} {'x faster':>8} {'iters':>5} | "
                f"{'logloss moe':>11} {'before':>8} {'logreg':>8} | {'logreg s':>8} "
                f"{'moe/logreg':>10}")
        print(head)
        print("-" * len(head))
        for r in clf_rows:
            b = before.get(r["case"], {})
            speedup = (b["moekit_clf_cpu_s"] / r["moekit_clf_cpu_s"]
                       if b.get("moekit_clf_cpu_s") else None)
            print(f"{r['case']:>13} {r['moekit_clf_cpu_s']:>9.3f} "
                  f"{_fmt(b.get('moekit_clf_cpu_s'), '.3f', 8)} {_fmt(speedup, '.1f', 8)} "
                  f"{r['moekit_clf_iter']:>5} | {r['moekit_clf_logloss']:>11.4f} "
                  f"{_fmt(b.get('moekit_clf_logloss'), '.4f', 8)} {r['logreg_logloss']:>8.4f} | "
                  f"{r['logreg_cpu_s']:>8.3f} "
                  f"{r['moekit_clf_cpu_s'] / max(r['logreg_cpu_s'], 1e-9):>10.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cases = [parse_case(c) for c in args.cases.split(",") if c.strip()]
    except argparse.ArgumentTypeError as err:
        print(f"bench_estimators: {err}", file=sys.stderr)
        return 2
    cases = [c for c in cases if c[0] <= args.max_rows]
    if not cases:
        print(f"no case has at most --max-rows {args.max_rows} rows", file=sys.stderr)
        return 2
    before: dict[str, dict[str, Any]] = {}
    if args.before:
        with open(args.before) as f:
            before = {r["case"]: r for r in json.load(f)["results"]}
    limit: Any = contextlib.nullcontext()
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=args.threads, user_api="blas")
    from threadpoolctl import threadpool_info

    with limit:
        blas = [f"{i['internal_api']} {i['num_threads']} thread(s)" for i in threadpool_info()
                if i["user_api"] == "blas"]
        print(f"moekit {__version__}, estimator defaults; seed {args.seed}; BLAS: "
              f"{', '.join(blas) or 'unknown'}; {os.cpu_count()} CPUs visible; load average "
              f"{os.getloadavg()[0]:.1f}")
        rows = []
        for n, d, k in cases:
            rows.append(run_case(n, d, k, args))
            print(f"  done {rows[-1]['case']}", file=sys.stderr, flush=True)
        print_table(rows, before)
    if args.json:
        payload = {
            "benchmark": "bench_estimators",
            "moekit_version": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu_count": os.cpu_count(),
            "blas": blas,
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "before")},
            "results": rows,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
