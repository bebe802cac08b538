"""What `moekit fit` checks before it fits: contradictory flags, a target that does not suit the
model (a continuous one for a classifier, a two-valued one for a regression), and feature columns
that are a row index rather than data."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any

from moekit.cli.errors import CLIError

if TYPE_CHECKING:
    import numpy as np

    from moekit.data.csv_table import Table

__all__ = ["FEW_VALUES", "MAX_CLASSES", "check_options", "check_target", "feature_warnings",
           "product"]

# A numeric target with more distinct values than this is continuous, not class labels.
MAX_CLASSES = 20
# Few-valued integer targets (up to this many values) fitted as a regression get a hint.
FEW_VALUES = 5


def check_options(args: argparse.Namespace) -> None:
    """Refuse contradictory flags before any data is read."""
    if args.classifier and args.expert is not None:
        raise CLIError(
            f"--expert {args.expert} applies to regressors; a --classifier's experts are "
            "logistic regressions: drop --expert or --classifier"
        )
    if args.hierarchical is not None:
        leaves = product(args.hierarchical)
        spelled = ",".join(map(str, args.hierarchical))
        if args.classifier:
            raise CLIError(
                "--hierarchical fits a regressor (HierarchicalMixtureOfExpertsRegressor); there "
                "is no hierarchical classifier: drop --hierarchical or --classifier"
            )
        if args.experts == "auto":
            raise CLIError(
                "--experts auto chooses the size of a flat mixture; with --hierarchical the "
                f"tree {spelled} sets it ({leaves} experts): drop --experts"
            )
        if args.experts is not None and args.experts != leaves:
            raise CLIError(
                f"--experts {args.experts} disagrees with --hierarchical {spelled}, a tree with "
                f"{leaves} experts: drop --experts"
            )
    elif args.experts is None:
        raise CLIError(
            "how many experts? pass --experts K (a number, or auto to choose it by BIC), or "
            "--hierarchical 2,2 for a tree"
        )
    if args.experts != "auto":
        given = [flag for flag, value in (("--max-experts", args.max_experts),
                                          ("--criterion", args.criterion)) if value is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise CLIError(f"{' and '.join(given)} {verb} to --experts auto only")


def product(levels: tuple[int, ...]) -> int:
    out = 1
    for v in levels:
        out *= v
    return out


def _shown(values: Any, limit: int = 5) -> str:
    items = [f"{v:g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)
             for v in values.tolist()[:limit]]
    return ", ".join(items) + (", ..." if len(values) > limit else "")


def check_target(y: np.ndarray, target: str, *, classifier: bool, expert: str) -> list[str]:
    """Stop when the target does not suit the model; return warnings for doubtful cases.

    The rules:

    - with ``--classifier``, a numeric target with more than ``MAX_CLASSES`` distinct values, or
      one where most rows have a value of their own (more than 5 distinct values, in fewer than
      twice as many rows), is continuous: an error (such a fit runs for minutes and is
      meaningless); so is a text target where most rows have a label of their own (an id);
    - without it, a constant target is an error; a two-valued target is an error for Gaussian
      and Student-t experts (their components collapse onto the two values) and a warning for
      Poisson experts (a Poisson model of a 0/1 target is a known approximation); an integer
      target with at most ``FEW_VALUES`` values gets a warning (ordinal scores are often
      regressed on purpose).

    ``--no-target-check`` skips these checks.
    """
    import numpy as np

    values = np.unique(y)
    n, n_distinct = len(y), len(values)
    numeric = y.dtype.kind in "iuf"
    mostly_unique = n_distinct > 5 and 2 * n_distinct > n
    if classifier:
        if numeric and (n_distinct > MAX_CLASSES or mostly_unique):
            raise CLIError(
                f"target {target!r} has {n_distinct} distinct values in {n} rows; that looks "
                "continuous: drop --classifier to fit a regression (or pass --no-target-check "
                f"to fit a {n_distinct}-class classifier anyway)"
            )
        if not numeric and mostly_unique:
            raise CLIError(
                f"target {target!r} has {n_distinct} distinct labels in {n} rows, so most "
                "classes have a single row (is it an identifier?); check --target (or pass "
                "--no-target-check to fit it anyway)"
            )
        return []
    if n_distinct == 1:
        raise CLIError(
            f"target {target!r} holds the same value ({_shown(values)}) in all {n} rows; there "
            "is nothing to fit: check --target"
        )
    if n_distinct == 2:
        message = (f"target {target!r} has only 2 distinct values ({_shown(values)}) in {n} "
                   "rows: did you mean --classifier?")
        if expert == "poisson":
            return [message]
        raise CLIError(
            f"{message} A {expert} regression does not suit a two-valued target (its experts "
            "collapse onto the two values); pass --no-target-check to fit it anyway"
        )
    if n_distinct <= FEW_VALUES and expert != "poisson" and np.all(values == np.round(values)):
        return [f"target {target!r} has only {n_distinct} distinct values ({_shown(values)}) in "
                f"{n} rows; if they are classes, did you mean --classifier?"]
    return []


def feature_warnings(table: Table) -> list[str]:
    """Feature columns that look like a row index rather than data."""
    import numpy as np

    out = []
    for j, name in enumerate(table.feature_names):
        column = table.X[:, j]
        if re.fullmatch(r"Unnamed: \d+", name):
            out.append(f"column {name!r} looks like an index that pandas wrote (to_csv without "
                       f"index=False), not data: drop it with --drop '{name}', or re-save the "
                       "file with index=False")
        elif len(column) >= 10 and (np.array_equal(column, table.rows)
                                    or np.array_equal(column, table.rows + 1)):
            out.append(f"column {name!r} numbers the rows ({_shown(column[:3])}, ...): an "
                       f"index, not a feature? drop it with --drop {name}")
    return out
