"""Fit a mixture of experts to a CSV table and save it (no pickle).

Reads a CSV file with a header, uses one column as the target and every other numeric column as
a feature, fits a mixture-of-experts regressor (or classifier with --classifier) by EM, prints
its summary and the log-likelihood, BIC and AIC on the training data, and saves the model to a
single file that `moekit predict` reads.

Example:

    moekit fit patients.csv --target outcome --experts 3 --output outcome.moekit
    moekit fit patients.csv --target readmitted --classifier --experts 2 --drop id \\
        --output readmit.moekit
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

from moekit.cli.errors import CLIError

HELP = "fit a mixture of experts to a CSV table and save the model"

EXPERT_CHOICES = ("linear", "poisson", "student_t")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", metavar="DATA.csv", help="CSV file with a header line")
    parser.add_argument("--target", required=True, metavar="COLUMN",
                        help="name of the column to predict")
    parser.add_argument("--experts", "-k", required=True, type=_positive_int, metavar="K",
                        help="number of experts")
    parser.add_argument("--expert", choices=EXPERT_CHOICES, default=None,
                        help="expert distribution of a regressor: linear (Gaussian, the default), "
                             "poisson (counts), student_t (robust to outliers)")
    parser.add_argument("--classifier", action="store_true",
                        help="the target holds class labels: fit a classifier (logistic experts)")
    parser.add_argument("--n-init", type=_positive_int, default=3, metavar="N",
                        help="number of EM restarts, each from its own k-means start; the best "
                             "log-likelihood is kept (default: 3)")
    parser.add_argument("--max-iter", type=_positive_int, default=None, metavar="N",
                        help="most EM iterations per restart (default: the estimator's, 200)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed for the initialisation (default: 0)")
    parser.add_argument("--drop", action="append", default=[], metavar="COLUMN",
                        help="ignore this column (an id, text, uncoded categories); repeatable")
    parser.add_argument("--dropna", action="store_true",
                        help="drop rows with a missing value instead of stopping with an error")
    parser.add_argument("--se", action="store_true",
                        help="compute standard errors even on large data, where the estimator "
                             "skips them at fit time (costs about 2 x n_parameters passes over "
                             "the data)")
    parser.add_argument("--output", "-o", required=True, metavar="MODEL",
                        help="where to save the fitted model (e.g. model.moekit); replaced "
                             "atomically if it exists")


def build_estimator(args: argparse.Namespace) -> Any:
    """The estimator described by the command-line flags (unfitted)."""
    from moekit.estimators import MixtureOfExpertsClassifier, MixtureOfExpertsRegressor

    kwargs: dict[str, Any] = {
        "n_experts": args.experts, "n_init": args.n_init, "random_state": args.seed,
    }
    if args.max_iter is not None:
        kwargs["max_iter"] = args.max_iter
    if args.classifier:
        if args.expert is not None:
            raise CLIError(
                f"--expert {args.expert} applies to regressors; a --classifier's experts are "
                "logistic regressions: drop --expert or --classifier"
            )
        return MixtureOfExpertsClassifier(**kwargs)
    return MixtureOfExpertsRegressor(expert=args.expert or "linear", **kwargs)


def run(args: argparse.Namespace) -> int:
    from moekit.data.csv_table import CSVTableError, read_table
    from moekit.estimators.persistence import ModelFileError, save_model

    estimator = build_estimator(args)
    try:
        table = read_table(
            args.csv,
            target=args.target,
            drop=args.drop,
            dropna=args.dropna,
            target_kind="label" if args.classifier else "float",
        )
    except CSVTableError as err:
        raise CLIError(str(err)) from None
    X, y = table.X, table.y
    if y is None:  # cannot happen: read_table raised if the target column is missing
        raise CLIError(f"target column {args.target!r} was not read from {args.csv!r}")
    if table.n_dropped:
        print(f"dropped {table.n_dropped} of {table.n_rows_read} rows with missing values")
    if len(y) < 2 * args.experts:
        raise CLIError(
            f"{len(y)} row(s) is too few to fit {args.experts} experts; use fewer experts "
            "(--experts) or more data"
        )
    kind = "classifier" if args.classifier else f"regressor, {args.expert or 'linear'} experts"
    print(f"fitting {args.experts} experts ({kind}) on {len(y)} rows x {X.shape[1]} features "
          f"of {args.csv!r}, target {args.target!r}")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator.fit(X, y)
    except ValueError as err:
        raise CLIError(f"fitting failed: {err}") from None
    for warning in caught:  # shown as one line each, without the source line
        print(f"moekit fit: warning: {warning.message}", file=sys.stderr)
    seconds = time.perf_counter() - start

    print(_summary(estimator, X, y, table.feature_names, args.se))
    loglik = float(estimator.log_likelihood(X, y))
    print(f"log-likelihood: {loglik:.6g}  ({loglik / len(y):.6g} per row)")
    print(f"BIC: {float(estimator.bic(X, y)):.6g}   AIC: {float(estimator.aic(X, y)):.6g}")
    print(f"fit time: {seconds:.2f} s")
    try:
        path = save_model(
            estimator,
            args.output,
            feature_names=table.feature_names,
            target=args.target,
            metadata={"data": args.csv, "n_rows": int(len(y))},
        )
    except (ModelFileError, OSError) as err:
        raise CLIError(f"cannot save the model to {args.output!r}: {err}") from None
    print(f"saved model to {path}")
    return 0



# rows x parameters up to which `moekit fit` computes standard errors itself when the estimator
# skipped them (the observed information costs about 2 * n_parameters gradient passes: ~10 s here).
SE_AUTO_MAX_WORK = 2e6


def _summary(estimator: Any, X: Any, y: Any, feature_names: list[str], force_se: bool) -> str:
    """The estimator's summary table, with standard errors when they are affordable."""
    covariance = getattr(estimator, "covariance_", None)
    if covariance is not None and getattr(covariance, "size", 0) > 0:
        return str(estimator.summary(feature_names=feature_names))
    if force_se or len(X) * getattr(estimator, "n_parameters_", 0) <= SE_AUTO_MAX_WORK:
        try:
            return str(estimator.summary(X, y, feature_names=feature_names))
        except TypeError:  # an estimator whose summary takes no data
            return str(estimator.summary(feature_names=feature_names))
    return (f"(summary table skipped: standard errors for {len(X)} rows and "
            f"{getattr(estimator, 'n_parameters_', '?')} parameters take a while; pass --se to "
            "compute them)")
