"""Fit a mixture of experts to a CSV table and save it (no pickle).

Reads a CSV file with a header, uses one column as the target and every other numeric column as
a feature, fits a mixture-of-experts regressor (or classifier with --classifier, or a tree of
gates with --hierarchical) by EM, prints its summary and the log-likelihood, BIC and AIC on the
training data, and saves the model to a single file that `moekit predict` reads.

The delimiter (comma, semicolon, tab or |) is detected from the first lines; --delimiter,
--decimal and --encoding read files written in other conventions. Before fitting, the target is
checked against the model: a continuous target with --classifier, or a two-valued one without
it, stops with an explanation (--no-target-check overrides).

Examples:

    moekit fit patients.csv --target outcome --experts 3 --output outcome.moekit
    moekit fit patients.csv --target outcome --experts auto --max-experts 6 --standardize \\
        --output outcome.moekit
    moekit fit patients.csv --target readmitted --classifier --experts 2 --drop id \\
        --output readmit.moekit
    moekit fit export.csv --delimiter ';' --decimal , --encoding cp1252 --target y -k 2 -o m.moekit
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any

from moekit.cli._csv_options import add_csv_arguments, csv_options
from moekit.cli._fit_checks import check_options, check_target, feature_warnings, product
from moekit.cli.errors import (
    CLIError,
    check_output_path,
    positive_int,
    silence_stdout,
    write_error,
)

if TYPE_CHECKING:
    from moekit.data.csv_table import Table

HELP = "fit a mixture of experts to a CSV table and save the model"

EXPERT_CHOICES = ("linear", "poisson", "student_t")
CRITERIA = ("bic", "aic", "icl")
DEFAULT_MAX_EXPERTS = 5

# rows x (features + 1) x experts x restarts above which progress is shown by default (a fit of
# about this size takes a few seconds or more).
PROGRESS_WORK = 1e6
# rows x parameters up to which `moekit fit` computes standard errors itself when the estimator
# skipped them (the observed information costs about 2 * n_parameters gradient passes: ~10 s here).
SE_AUTO_MAX_WORK = 2e6


# ----------------------------------------------------------------------------- argument types
def _experts(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _branching(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected children per level as integers separated by commas, e.g. 2,2; got {text!r}"
        ) from None
    if not levels or min(levels) < 2:
        raise argparse.ArgumentTypeError(
            f"every level of the tree needs at least 2 children, e.g. 2,2 or 3,2; got {text!r}"
        )
    return levels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", metavar="DATA.csv", help="CSV file with a header line")
    parser.add_argument("--target", required=True, metavar="COLUMN",
                        help="name of the column to predict")
    parser.add_argument("--experts", "-k", type=_experts, default=None, metavar="K",
                        help="number of experts, or 'auto' to choose it by an information "
                             "criterion (see --max-experts, --criterion); required unless "
                             "--hierarchical gives the tree")
    parser.add_argument("--max-experts", type=positive_int, default=None, metavar="N",
                        help=f"with --experts auto: try 1..N experts (default: "
                             f"{DEFAULT_MAX_EXPERTS})")
    parser.add_argument("--criterion", choices=CRITERIA, default=None,
                        help="with --experts auto: the criterion to minimise (default: bic)")
    parser.add_argument("--hierarchical", type=_branching, default=None, metavar="BRANCHING",
                        help="fit a hierarchical mixture (a tree of gates) with this many "
                             "children per level, e.g. 2,2 for 4 experts (regressors only)")
    parser.add_argument("--expert", choices=EXPERT_CHOICES, default=None,
                        help="expert distribution of a regressor: linear (Gaussian, the default), "
                             "poisson (counts), student_t (robust to outliers)")
    parser.add_argument("--classifier", action="store_true",
                        help="the target holds class labels: fit a classifier (logistic experts)")
    parser.add_argument("--no-target-check", action="store_true",
                        help="fit even when the target does not look like the model's kind (a "
                             "continuous target with --classifier, a two-valued one without it)")
    parser.add_argument("--standardize", action="store_true",
                        help="standardise the features inside the model (the penalties then act "
                             "on standardised coefficients, and the summary reports those)")
    parser.add_argument("--gate-alpha", type=_nonnegative_float, default=None,
                        metavar="A", help="ridge penalty on the gate's coefficients; 0 for "
                                          "maximum likelihood (default: the estimator's)")
    parser.add_argument("--expert-alpha", type=_nonnegative_float, default=None,
                        metavar="A", help="ridge penalty on the experts' coefficients "
                                          "(default: the estimator's)")
    parser.add_argument("--n-init", type=positive_int, default=3, metavar="N",
                        help="number of EM restarts, each from its own start; the best "
                             "log-likelihood is kept (default: 3)")
    parser.add_argument("--max-iter", type=positive_int, default=None, metavar="N",
                        help="most EM iterations per restart (default: the estimator's)")
    parser.add_argument("--tol", type=_nonnegative_float, default=None,
                        metavar="T", help="stop a restart when an EM iteration changes the "
                                          "log-likelihood by less than T per row; 0 runs "
                                          "--max-iter iterations (default: the estimator's)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed for the initialisation (default: 0)")
    parser.add_argument("--drop", action="append", default=[], metavar="COLUMN",
                        help="ignore this column (an id, text, uncoded categories); repeatable")
    parser.add_argument("--dropna", action="store_true",
                        help="drop rows with a missing value instead of stopping with an error")
    add_csv_arguments(parser)
    parser.add_argument("--se", action="store_true",
                        help="compute standard errors even on large data, where the estimator "
                             "skips them at fit time (costs about 2 x n_parameters passes over "
                             "the data)")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--verbose", "-v", action="count", default=0,
                      help="print one line per EM restart (-vv: per iteration); by default "
                           "only fits expected to take more than a few seconds do")
    talk.add_argument("--quiet", "-q", action="store_true",
                      help="no progress and no summary table: only the result line, warnings "
                           "and errors")
    parser.add_argument("--output", "-o", required=True, metavar="MODEL",
                        help="where to save the fitted model (e.g. model.moekit); replaced "
                             "atomically if it exists")


# ----------------------------------------------------------------------------- estimator
def progress_level(args: argparse.Namespace, n_rows: int, n_features: int,
                   n_experts: list[int]) -> int:
    """The estimators' ``verbose``: --quiet 0, --verbose as counted, else 1 for long fits."""
    if args.quiet:
        return 0
    if args.verbose:
        return int(args.verbose)
    work = n_rows * (n_features + 1) * sum(n_experts) * args.n_init
    return 1 if work >= PROGRESS_WORK else 0


def build_estimator(args: argparse.Namespace, *, n_experts: int = 1) -> Any:
    """The (unfitted) estimator described by the command-line flags."""
    from moekit.estimators import (
        HierarchicalMixtureOfExpertsRegressor,
        MixtureOfExpertsClassifier,
        MixtureOfExpertsRegressor,
    )

    kwargs: dict[str, Any] = {"n_init": args.n_init, "random_state": args.seed}
    for name in ("max_iter", "tol", "gate_alpha", "expert_alpha"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    estimator: Any
    if args.hierarchical is not None:
        estimator = HierarchicalMixtureOfExpertsRegressor(
            branching=tuple(args.hierarchical), expert=args.expert or "linear", **kwargs)
    elif args.classifier:
        estimator = MixtureOfExpertsClassifier(n_experts=n_experts, **kwargs)
    else:
        estimator = MixtureOfExpertsRegressor(n_experts=n_experts,
                                              expert=args.expert or "linear", **kwargs)
    if args.standardize:
        # `standardize` arrives with the estimators' rewrite; until then say so plainly.
        if "standardize" not in estimator.get_params(deep=False):
            raise CLIError(
                f"--standardize needs a {type(estimator).__name__} with a 'standardize' "
                "parameter, which this version of moekit lacks; standardise the columns "
                "before fitting instead"
            )
        estimator.set_params(standardize=True)
    return estimator


def _describe(args: argparse.Namespace) -> str:
    if args.hierarchical is not None:
        spelled = "x".join(map(str, args.hierarchical))
        return (f"a tree of {spelled} = {product(args.hierarchical)} experts (hierarchical "
                f"regressor, {args.expert or 'linear'} experts)")
    kind = ("classifier, logistic experts" if args.classifier
            else f"regressor, {args.expert or 'linear'} experts")
    if args.experts == "auto":
        return f"1 to {args.max_experts or DEFAULT_MAX_EXPERTS} experts ({kind})"
    return f"{args.experts} experts ({kind})"


# ----------------------------------------------------------------------------- the command
def run(args: argparse.Namespace) -> int:
    try:
        fitted = _fit_and_save(args)
    except BrokenPipeError:  # `moekit fit ... | head` closed our output during the fit
        silence_stdout()
        print("moekit fit: standard output closed before the fit finished; no model saved",
              file=sys.stderr)
        return 1
    try:
        _report(args, *fitted)
    except BrokenPipeError:  # the model is saved; the reader stopped reading: that is fine
        silence_stdout()
    return 0


def _fit_and_save(args: argparse.Namespace) -> tuple[Any, Table, float, str]:
    from moekit.data.csv_table import CSVTableError, read_table

    check_options(args)
    check_output_path(args.output, "model.moekit")
    if args.hierarchical is not None:
        ks = [product(args.hierarchical)]
    elif args.experts == "auto":
        ks = list(range(1, (args.max_experts or DEFAULT_MAX_EXPERTS) + 1))
    else:
        ks = [int(args.experts)]
    try:
        table = read_table(args.csv, target=args.target, drop=args.drop, dropna=args.dropna,
                           target_kind="label" if args.classifier else "float",
                           **csv_options(args))
    except CSVTableError as err:
        raise CLIError(str(err)) from None
    # Only now the estimators (and scikit-learn, ~0.8 s), so that CSV mistakes are told at once.
    from moekit.estimators.persistence import ModelFileError, save_model

    estimator = build_estimator(args, n_experts=ks[0])
    X, y = table.X, table.y
    if y is None:  # cannot happen: read_table raised if the target column is missing
        raise CLIError(f"target column {args.target!r} was not read from {args.csv!r}")
    if table.index_column:
        print("note: the first column has no name: taken as the row index that pandas writes "
              "(to_csv without index=False) and skipped")
    if table.n_dropped:
        print(f"dropped {table.n_dropped} of {table.n_rows_read} rows with missing values")
    if len(y) < 2 * max(ks):
        fix = "--max-experts" if args.experts == "auto" else "--experts"
        raise CLIError(
            f"{len(y)} row(s) is too few to fit {max(ks)} experts; use fewer experts ({fix}) "
            "or more data"
        )
    notes = [] if args.no_target_check else check_target(
        y, args.target, classifier=args.classifier, expert=args.expert or "linear")
    notes += feature_warnings(table)
    for note in notes:
        print(f"moekit fit: warning: {note}", file=sys.stderr)

    verbose = progress_level(args, len(y), X.shape[1], ks)
    estimator.set_params(verbose=verbose)
    if not args.quiet:
        print(f"fitting {_describe(args)} on {len(y)} rows x {X.shape[1]} features of "
              f"{args.csv!r}, target {args.target!r}")
        if verbose and not args.verbose:
            print("(a long fit: one line per EM restart follows; --quiet hides them)")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.experts == "auto":
                estimator = _choose_n_experts(args, estimator, X, y, ks)
            else:
                estimator.fit(X, y)
    except ValueError as err:
        raise CLIError(f"fitting failed: {err}") from None
    seconds = time.perf_counter() - start
    for message in dict.fromkeys(str(w.message) for w in caught):  # once each, no source line
        print(f"moekit fit: warning: {message}", file=sys.stderr)
    try:  # saved before the report, so that a failure printing it never loses the fit
        path = save_model(estimator, args.output, feature_names=table.feature_names,
                          target=args.target, metadata={"data": args.csv, "n_rows": int(len(y))})
    except ModelFileError as err:
        raise CLIError(f"cannot save the model to {args.output!r}: {err}") from None
    except OSError as err:
        raise write_error(args.output, err) from None
    return estimator, table, seconds, path


def _choose_n_experts(args: argparse.Namespace, template: Any, X: Any, y: Any,
                      ks: list[int]) -> Any:
    from moekit.estimators import select_n_experts

    criterion = args.criterion or "bic"
    selection = select_n_experts(X, y, n_experts_range=ks, criterion=criterion,
                                 estimator=template)
    scores = {int(k): float(v) for k, v in selection.scores.items()}
    best = int(selection.best_n_experts)
    name = criterion.upper()
    lines = [f"choosing the number of experts by {name} (lower is better):",
             f"{'experts':>9}  {name:>12}  {'vs best':>10}"]
    for k, score in sorted(scores.items()):
        mark = "  <- chosen" if k == best else ""
        diff = f"{score - scores[best]:+.4g}" if k != best else "0"
        lines.append(f"{k:>9}  {score:>12.6g}  {diff:>10}{mark}")
    print("\n".join(lines))
    return selection.best_estimator


def _report(args: argparse.Namespace, estimator: Any, table: Table, seconds: float,
            path: str) -> None:
    X, y = table.X, table.y
    if not args.quiet:
        try:
            print(_summary(estimator, X, y, table.feature_names, args.se))
        except ValueError as err:  # e.g. no standard errors for this kind of expert
            print(f"(no summary table: {err})")
    loglik = float(estimator.log_likelihood(X, y))
    print(f"log-likelihood: {loglik:.6g}  ({loglik / len(X):.6g} per row)")
    print(f"BIC: {float(estimator.bic(X, y)):.6g}   AIC: {float(estimator.aic(X, y)):.6g}")
    if not args.quiet:
        print(f"fit time: {seconds:.2f} s")
    print(f"saved model to {path}")


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
