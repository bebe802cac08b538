"""Predict with a model saved by `moekit fit`, one output row per input row.

Reads the CSV (it needs the model's feature columns, in any order; other columns, the target
among them, are ignored) and writes a CSV with, for each input row:

- row: the 1-based data row of the input file;
- the columns named by --keep (ids, say), copied as they are;
- prediction: the predicted value (regressor) or most probable class (classifier);
- lower, upper: the central (1 - alpha) predictive interval (regressor), or
  proba_<class>: the probability of each class (classifier);
- expert: the most likely expert for the row (0-based, argmax of the gate probabilities), and
  expert_proba: that expert's gate probability.

When the input holds the target column too, the score on those rows is printed: R^2, RMSE, MAE
and the log-likelihood for a regressor; accuracy, log-loss and (two classes) AUC for a classifier.
The delimiter is detected as `moekit fit` does; --delimiter, --decimal and --encoding set it.

Example:

    moekit predict outcome.moekit new_patients.csv --keep patient_id --output preds.csv
    moekit predict outcome.moekit new_patients.csv -o - | head
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from moekit.cli._csv_options import add_csv_arguments, csv_options
from moekit.cli.errors import CLIError, check_output_path, silence_stdout, write_error

if TYPE_CHECKING:
    import numpy as np

HELP = "predict with a saved model; writes one CSV row per input row"

DEFAULT_ALPHA = 0.1
OUTPUT_COLUMNS = ("row", "prediction", "lower", "upper", "expert", "expert_proba")


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
    parser.add_argument("--alpha", type=_alpha, default=None,
                        help="miscoverage of a regressor's predictive interval: 0.1 gives a "
                             f"90%% interval (default: {DEFAULT_ALPHA}); not for classifiers")
    parser.add_argument("--keep", action="append", default=[], metavar="COLUMN",
                        help="copy this input column (an id, say) into the output, after 'row'; "
                             "repeatable")
    parser.add_argument("--dropna", action="store_true",
                        help="rows with a missing feature get empty prediction cells instead of "
                             "stopping with an error")
    add_csv_arguments(parser)


# ----------------------------------------------------------------------------- numbers
def _format(value: Any) -> Any:
    import numpy as np

    if isinstance(value, float | np.floating):
        return repr(float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, np.generic):
        return value.item()
    return value


def as_probabilities(P: np.ndarray) -> np.ndarray:
    """Rows of ``P`` as probabilities: in [0, 1] and summing to 1.

    Rows that already are (within 1e-12) are returned unchanged; others are clipped to [0, 1]
    and divided by their sum (a sum of values <= s divided by s stays <= 1 in floating point).
    """
    import numpy as np

    P = np.asarray(P, dtype=np.float64)
    total = P.sum(axis=1, keepdims=True)
    if P.min(initial=0.0) >= 0.0 and P.max(initial=0.0) <= 1.0 and np.all(
            np.abs(total - 1.0) <= 1e-12):
        return P
    P = np.clip(P, 0.0, 1.0)
    return P / np.maximum(P.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)


def regression_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R^2, RMSE and MAE of predictions ``pred`` of ``y`` (both of shape (n,))."""
    import numpy as np

    residual = y - pred
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else float("nan")
    return {"r2": r2, "rmse": float(np.sqrt(np.mean(residual**2))),
            "mae": float(np.mean(np.abs(residual)))}


def log_loss(y_index: np.ndarray, P: np.ndarray) -> float:
    """Mean negative log-probability of the true classes ``y_index`` under rows of ``P``.

    Probabilities are clipped to [eps, 1 - eps] (eps of float64) first, as scikit-learn's
    ``log_loss`` does, so a confident mistake costs a large but finite amount.
    """
    import numpy as np

    eps = np.finfo(np.float64).eps
    p = np.clip(P[np.arange(len(y_index)), y_index], eps, 1.0 - eps)
    return float(-np.mean(np.log(p)))


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2.

    ``positive`` is boolean of shape (n,); nan when one of the two classes is absent. Computed
    from average ranks (the Mann-Whitney U statistic), O(n log n).
    """
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


# ----------------------------------------------------------------------------- predictions
def predictions_table(
    estimator: Any, X: np.ndarray, alpha: float
) -> tuple[list[str], list[np.ndarray]]:
    """Column names and columns (each of length n_rows) of the prediction output."""
    import numpy as np

    gate = as_probabilities(estimator.gate_proba(X))
    expert = gate.argmax(axis=1)
    if hasattr(estimator, "predict_proba"):
        proba = as_probabilities(estimator.predict_proba(X))
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


def write_csv_atomic(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV file atomically (a failure keeps any previous file)."""
    from moekit._files import atomic_open

    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _feature_names(info: dict[str, Any], estimator: Any, header: list[str],
                   target: str | None, keep: list[str]) -> tuple[list[str], bool]:
    """The model's feature columns, and whether they were guessed from the CSV's header."""
    names = info.get("feature_names")
    if names is None and getattr(estimator, "feature_names_in_", None) is not None:
        names = [str(n) for n in estimator.feature_names_in_]  # fitted on a DataFrame
    if names is not None:
        return list(names), False
    return [c for c in header if c != target and c not in keep], True


# ----------------------------------------------------------------------------- the command
def run(args: argparse.Namespace) -> int:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Columns are matched by name here; the arrays handed on carry none, and
            # scikit-learn would say so for a model fitted on a DataFrame.
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            status = _run(args)
    except BrokenPipeError:  # `moekit predict ... -o - | head`: the reader has what it wanted
        silence_stdout()
        return 0
    for message in dict.fromkeys(str(w.message) for w in caught):  # once each, no source line
        print(f"moekit predict: warning: {message}", file=sys.stderr)
    return status


def _run(args: argparse.Namespace) -> int:
    from moekit.data.csv_table import CSVTableError, read_header, read_table

    to_stdout = args.output == "-"
    if not to_stdout:
        check_output_path(args.output, "preds.csv")
    try:  # before the estimators (and scikit-learn, ~0.8 s) are imported: errors come fast
        header = read_header(args.csv, delimiter=args.delimiter, encoding=args.encoding)
    except CSVTableError as err:
        raise CLIError(str(err)) from None
    from moekit.estimators.persistence import ModelFileError, load_model, read_model_info

    try:
        info = read_model_info(args.model)
        estimator = load_model(args.model)
    except ModelFileError as err:
        raise CLIError(str(err)) from None
    is_classifier = hasattr(estimator, "predict_proba")
    if is_classifier and args.alpha is not None:
        raise CLIError(
            f"--alpha sets the width of a regressor's predictive interval, but {args.model!r} "
            "is a classifier, whose output is class probabilities: drop --alpha"
        )
    target = info.get("target")
    keep = list(dict.fromkeys(args.keep))
    clash = [c for c in keep if c in OUTPUT_COLUMNS or c.startswith("proba_")]
    if clash:
        raise CLIError(f"--keep {clash[0]} is also the name of an output column; rename that "
                       "column in the input, or do not keep it")
    feature_names, guessed = _feature_names(info, estimator, header, target, keep)
    n_features = getattr(estimator, "n_features_in_", len(feature_names))
    if len(feature_names) != n_features:
        raise CLIError(
            f"the model expects {n_features} features but {args.csv!r} gives "
            f"{len(feature_names)}"
            + (" (its columns other than the target and --keep); the model was saved without "
               "feature names: save it with save_model(model, path, feature_names=[...]), or "
               "fit it on a DataFrame" if guessed else "")
        )
    score_target = target if target is not None and target in header else None
    passthrough = keep + ([score_target] if score_target and score_target not in keep else [])
    try:
        table = read_table(args.csv, features=feature_names, keep=passthrough,
                           dropna=args.dropna, **csv_options(args))
    except CSVTableError as err:
        raise CLIError(str(err)) from None

    names, columns = predictions_table(estimator, table.X, args.alpha or DEFAULT_ALPHA)
    out_rows: list[list[Any]] = [[i + 1, *(table.passthrough[c][i] for c in keep)]
                                 + [""] * len(names) for i in range(table.n_rows_read)]
    start = 1 + len(keep)
    for k, i in enumerate(table.rows.tolist()):
        out_rows[i][start:] = [_format(col[k]) for col in columns]
    header_out = ["row", *keep, *names]
    if to_stdout:
        writer = csv.writer(sys.stdout)
        writer.writerow(header_out)
        writer.writerows(out_rows)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
    else:
        try:
            write_csv_atomic(args.output, header_out, out_rows)
        except OSError as err:
            raise write_error(args.output, err) from None
    out = sys.stderr if to_stdout else sys.stdout
    if table.n_dropped:
        print(f"{table.n_dropped} of {table.n_rows_read} rows had missing values; their "
              "prediction cells are empty", file=out)
    if score_target is not None:
        cells = [table.passthrough[score_target][i] for i in table.rows.tolist()]
        print(score_line(estimator, table.X, cells, score_target, args.decimal), file=out)
    if not to_stdout:
        print(f"wrote {table.n_rows_read} predictions to {os.path.abspath(args.output)}", file=out)
    return 0


def score_line(estimator: Any, X: np.ndarray, cells: list[str], target: str,
               decimal: str = ".") -> str:
    """One line scoring ``estimator`` on the rows of ``X`` whose target cell is not missing."""
    import numpy as np

    from moekit.data.csv_table import is_missing, parse_labels, parse_number

    present = np.asarray([not is_missing(c) for c in cells], dtype=bool)
    values = [c for c, ok in zip(cells, present) if ok]
    X = X[present]
    if not values:
        return f"not scoring against {target!r}: its cells are all missing"
    head = f"score on the {len(values)} rows with target {target!r}:"
    if hasattr(estimator, "predict_proba"):
        classes = np.asarray(estimator.classes_).tolist()
        by_value = {c: j for j, c in enumerate(classes)}
        by_text = {str(c): j for j, c in enumerate(classes)}
        labels = parse_labels(values, decimal).tolist()
        found = [by_value.get(v, by_text.get(str(v))) for v in labels]
        unseen = sorted({str(v) for v, j in zip(labels, found) if j is None})
        if unseen:
            return (f"not scoring against {target!r}: label(s) {unseen[:5]} are not among the "
                    f"model's classes {classes}")
        y_index = np.asarray(found, dtype=np.int64)
        P = as_probabilities(estimator.predict_proba(X))
        parts = [f"accuracy = {float(np.mean(P.argmax(axis=1) == y_index)):.4f}",
                 f"log-loss = {log_loss(y_index, P):.4f}"]
        if len(classes) == 2:
            auc = roc_auc(y_index == 1, P[:, 1])
            parts.append(f"AUC = {auc:.4f} (positive class {classes[1]!r})")
        return f"{head} {', '.join(parts)}"
    try:
        y = np.asarray([parse_number(c, decimal) for c in values])
    except ValueError:
        bad = next(c for c in values if not _is_number(c, decimal))
        return f"not scoring against {target!r}: it holds the non-numeric value {bad!r}"
    scores = regression_scores(y, np.asarray(estimator.predict(X), dtype=np.float64))
    line = (f"{head} R^2 = {scores['r2']:.4f}, RMSE = {scores['rmse']:.4g}, MAE = "
            f"{scores['mae']:.4g}")
    try:
        loglik = float(estimator.log_likelihood(X, y)) / len(y)
    except ValueError as err:  # e.g. a non-integer count under Poisson experts
        return f"{line} (no log-likelihood: {err})"
    return f"{line}, log-likelihood per row = {loglik:.4f}"


def _is_number(cell: str, decimal: str) -> bool:
    from moekit.data.csv_table import parse_number

    try:
        parse_number(cell, decimal)
    except ValueError:
        return False
    return True
