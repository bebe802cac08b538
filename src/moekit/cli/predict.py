"""Predict with a model saved by `moekit fit`, one output row per input row.

Reads the CSV (it needs the model's feature columns, in any order; other columns, the target
among them, are ignored) and writes a CSV with, for each input row:

- row: the 1-based data row of the input file;
- prediction: the predicted value (regressor) or most probable class (classifier);
- lower, upper: the central (1 - alpha) predictive interval (regressor), or
  proba_<class>: the probability of each class (classifier);
- expert: the most likely expert for the row (0-based, argmax of the gate probabilities), and
  expert_proba: that expert's gate probability.

When the input holds the target column too, the score on those rows is printed.

Example:

    moekit predict outcome.moekit new_patients.csv --output preds.csv --alpha 0.1
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from moekit.cli.errors import CLIError

if TYPE_CHECKING:
    import numpy as np

HELP = "predict with a saved model; writes one CSV row per input row"


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"alpha={value} must be in (0, 1): 0.1 gives a 90% interval"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model file written by `moekit fit`")
    parser.add_argument("csv", metavar="DATA.csv",
                        help="CSV file with a header naming (at least) the model's feature columns")
    parser.add_argument("--output", "-o", required=True, metavar="PREDS.csv",
                        help="where to write the predictions ('-' for standard output); "
                             "replaced atomically if it exists")
    parser.add_argument("--alpha", type=_alpha, default=0.1,
                        help="miscoverage of the regressor's predictive interval: 0.1 gives a "
                             "90%% interval (default: 0.1)")
    parser.add_argument("--dropna", action="store_true",
                        help="rows with a missing feature get empty prediction cells instead of "
                             "stopping with an error")


def _format(value: Any) -> Any:
    import numpy as np

    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_csv_atomic(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV file atomically (a failure keeps any previous file)."""
    from moekit._files import atomic_open

    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def predictions_table(
    estimator: Any, X: np.ndarray, alpha: float
) -> tuple[list[str], list[np.ndarray]]:
    """Column names and columns (each of length n_rows) of the prediction output."""
    import numpy as np

    gate = np.asarray(estimator.gate_proba(X))
    expert = gate.argmax(axis=1)
    if hasattr(estimator, "predict_proba"):
        proba = np.asarray(estimator.predict_proba(X))
        classes = np.asarray(estimator.classes_)
        names = ["prediction"] + [f"proba_{c}" for c in classes.tolist()]
        columns = [classes[proba.argmax(axis=1)]] + [proba[:, j] for j in range(proba.shape[1])]
    else:
        lower, upper = _interval(estimator, X, alpha)
        names = ["prediction", "lower", "upper"]
        columns = [np.asarray(estimator.predict(X)), lower, upper]
    names += ["expert", "expert_proba"]
    columns += [expert, gate[np.arange(len(X)), expert]]
    return names, columns


def _interval(estimator: Any, X: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    interval = estimator.predict_interval(X, alpha=alpha)
    if isinstance(interval, tuple):
        lower, upper = interval
        return np.asarray(lower), np.asarray(upper)
    interval = np.asarray(interval)
    return interval[:, 0], interval[:, 1]


def run(args: argparse.Namespace) -> int:
    from moekit.data.csv_table import CSVTableError, read_header, read_table
    from moekit.estimators.persistence import ModelFileError, load_model, read_model_info

    try:
        info = read_model_info(args.model)
        estimator = load_model(args.model)
    except ModelFileError as err:
        raise CLIError(str(err)) from None
    feature_names = info.get("feature_names")
    target = info.get("target")
    try:
        header = read_header(args.csv)
        if feature_names is None:  # saved from Python without names: take columns by position
            feature_names = [c for c in header if c != target]
        table = read_table(args.csv, features=feature_names, dropna=args.dropna)
    except CSVTableError as err:
        raise CLIError(str(err)) from None
    n_features = getattr(estimator, "n_features_in_", len(feature_names))
    if len(feature_names) != n_features:
        raise CLIError(
            f"the model expects {n_features} features but {args.csv!r} gives "
            f"{len(feature_names)}; save the model with its feature names (`moekit fit` does)"
        )

    names, columns = predictions_table(estimator, table.X, args.alpha)
    out_rows: list[list[Any]] = [[i + 1] + [""] * len(names) for i in range(table.n_rows_read)]
    for k, i in enumerate(table.rows.tolist()):
        out_rows[i][1:] = [_format(col[k]) for col in columns]
    header_out = ["row", *names]
    if args.output == "-":
        writer = csv.writer(sys.stdout)
        writer.writerow(header_out)
        writer.writerows(out_rows)
    else:
        try:
            write_csv_atomic(args.output, header_out, out_rows)
        except OSError as err:
            raise CLIError(f"cannot write {args.output!r}: {err}") from None
    out = sys.stderr if args.output == "-" else sys.stdout
    if table.n_dropped:
        print(f"{table.n_dropped} of {table.n_rows_read} rows had missing values; their "
              "prediction cells are empty", file=out)
    if target is not None and target in header:
        _print_score(estimator, args.csv, feature_names, target, out)
    if args.output != "-":
        print(f"wrote {table.n_rows_read} predictions to {os.path.abspath(args.output)}", file=out)
    return 0


def _print_score(estimator: Any, path: str, feature_names: list[str], target: str,
                 out: Any) -> None:
    from moekit.data.csv_table import CSVTableError, read_table

    kind: Literal["float", "label"] = "label" if hasattr(estimator, "predict_proba") else "float"
    try:
        table = read_table(path, target=target, features=feature_names, dropna=True,
                           target_kind=kind)
    except CSVTableError as err:
        print(f"not scoring against {target!r}: {err}", file=out)
        return
    X, y = table.X, table.y
    name = "accuracy" if kind == "label" else "R^2"
    try:
        score = float(estimator.score(X, y))
        loglik = float(estimator.log_likelihood(X, y)) / len(X)
    except ValueError as err:  # e.g. a label the classifier never saw
        print(f"not scoring against {target!r}: {err}", file=out)
        return
    print(f"score on the {len(X)} rows with target {target!r}: {name} = {score:.4f}, "
          f"log-likelihood per row = {loglik:.4f}", file=out)
