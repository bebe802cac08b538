"""Read a numeric CSV table into NumPy arrays, with errors that name the column, row and fix.

Only the standard library's :mod:`csv` and NumPy: no pandas. The first line is the header. Every
cell of every feature column must parse as a finite number; categorical columns are refused with
a message that says which column and how to fix it (encode it, or drop it with ``drop=``). Missing
cells (empty, ``NA``, ``NaN``, ``null``, ``None``) are refused too, unless ``dropna=True``, which
drops the rows that hold them and records which rows were kept.

Line numbers in messages are the file's physical lines (the header is line 1); row numbers count
data rows from 1.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import numpy as np

__all__ = ["CSVTableError", "Table", "read_header", "read_table"]

# Cells read as missing values (compared case-insensitively, after stripping whitespace).
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none"})


class CSVTableError(ValueError):
    """A CSV file that cannot be read as a numeric table; the message says where and how to fix."""


@dataclass(frozen=True, kw_only=True)
class Table:
    """A numeric table read from CSV.

    Unpacks as ``X, y, feature_names = read_table(...)``.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features), float64
        The feature columns, in file order (or in the order of ``features=`` when given).
    y : ndarray of shape (n_rows,) or None
        The target column (float64, or labels for ``target_kind="label"``); None without a target.
    feature_names : list of str
        Names of the columns of ``X``.
    target : str or None
        Name of the target column read, None when there was none.
    rows : ndarray of shape (n_rows,), int
        0-based index, among all data rows of the file, of each row kept (differs from
        ``arange(n_rows_read)`` only when ``dropna=True`` dropped rows).
    n_rows_read : int
        Number of data rows in the file, dropped ones included.
    """

    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str]
    target: str | None
    rows: np.ndarray
    n_rows_read: int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.X, self.y, self.feature_names))

    @property
    def n_dropped(self) -> int:
        """Number of data rows dropped by ``dropna=True``."""
        return self.n_rows_read - len(self.rows)


def _open_checked(path: str | os.PathLike[str]) -> TextIO:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CSVTableError(f"file {path!r} does not exist; check the path")
    if os.path.isdir(path):
        raise CSVTableError(f"{path!r} is a directory; give the path of a CSV file")
    # utf-8-sig drops the byte-order mark that spreadsheet programs write.
    return open(path, newline="", encoding="utf-8-sig")


def _read_header_row(reader: Any, path: str) -> list[str]:
    for row in reader:
        if row and any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            break
    else:
        raise CSVTableError(
            f"{path!r} is empty; expected a header line of column names followed by data rows"
        )
    blank = [i + 1 for i, name in enumerate(header) if not name]
    if blank:
        raise CSVTableError(
            f"{path!r} line {reader.line_num}: the header has an empty column name at "
            f"position(s) {blank}; the first line must name every column"
        )
    dupes = sorted(name for name, count in Counter(header).items() if count > 1)
    if dupes:
        raise CSVTableError(
            f"{path!r}: the header names column(s) {dupes} more than once; rename them"
        )
    return header


def read_header(path: str | os.PathLike[str], *, delimiter: str = ",") -> list[str]:
    """Return the column names of a CSV file (its first non-blank line).

    Parameters
    ----------
    path : str or path-like
        The CSV file.
    delimiter : str, default=","
        Field separator.

    Returns
    -------
    list of str
    """
    with _open_checked(path) as f:
        return _read_header_row(csv.reader(f, delimiter=delimiter), os.fspath(path))


def _format_columns(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return shown + more


def _parse_label(values: list[str]) -> np.ndarray:
    for kind in (int, float):
        try:
            return np.asarray([kind(v) for v in values])
        except ValueError:
            continue
    return np.asarray(values, dtype=str)


def read_table(
    path: str | os.PathLike[str],
    target: str | None = None,
    *,
    features: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    dropna: bool = False,
    target_required: bool = True,
    target_kind: Literal["float", "label"] = "float",
    delimiter: str = ",",
) -> Table:
    """Read a CSV file with a header into a float64 feature matrix and an optional target.

    Parameters
    ----------
    path : str or path-like
        The CSV file. The first non-blank line is the header; blank lines are skipped.
    target : str, optional
        Name of the target column, returned as ``y`` and left out of ``X``.
    features : sequence of str, optional
        Read exactly these columns, in this order, as ``X`` (other columns are ignored and
        never parsed). By default every column but the target and ``drop`` is a feature.
    drop : sequence of str, default=()
        Columns to ignore (identifiers, free text, categories you have not encoded).
    dropna : bool, default=False
        Drop rows with a missing cell in a column that is read, instead of raising.
    target_required : bool, default=True
        When False, a ``target`` absent from the header is not an error: ``y`` is None.
    target_kind : {"float", "label"}, default="float"
        ``"float"``: the target must be numeric. ``"label"``: class labels, returned as
        integers when every label is an integer, else floats, else strings.
    delimiter : str, default=","
        Field separator.

    Returns
    -------
    Table
        Unpacks as ``(X, y, feature_names)``; also carries ``rows`` and ``n_rows_read``.

    Raises
    ------
    CSVTableError
        (a ValueError) for a missing or empty file, a missing header name, ragged rows, a
        missing target or feature column, a non-numeric cell, or a missing value.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("age,bmi,y\\n50,22.5,1.5\\n61,30.1,2.0\\n")
    >>> X, y, names = read_table(path, target="y")
    >>> X.shape, y.tolist(), names
    ((2, 2), [1.5, 2.0], ['age', 'bmi'])
    """
    spath = os.fspath(path)
    with _open_checked(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = _read_header_row(reader, spath)
        index = {name: i for i, name in enumerate(header)}

        unknown_drop = [c for c in drop if c not in index]
        if unknown_drop:
            raise CSVTableError(
                f"cannot drop column(s) {unknown_drop}: not in the header of {spath!r}; "
                f"available columns: {_format_columns(header)}"
            )
        if target is not None and target in drop:
            raise CSVTableError(f"column {target!r} is both the target and dropped; choose one")
        if target is not None and target not in index:
            if target_required:
                raise CSVTableError(
                    f"target column {target!r} not found in {spath!r}; available columns: "
                    f"{_format_columns(header)}"
                )
            target = None
        if features is None:
            feature_names = [c for c in header if c != target and c not in drop]
        else:
            feature_names = list(features)
            missing = [c for c in feature_names if c not in index]
            if missing:
                raise CSVTableError(
                    f"feature column(s) {_format_columns(missing)} not found in {spath!r}; the "
                    f"model needs them; available columns: {_format_columns(header)}"
                )
        if not feature_names:
            raise CSVTableError(
                f"{spath!r} has no feature columns left (columns: {_format_columns(header)}); "
                "it needs at least one numeric column besides the target"
            )
        feature_idx = [index[c] for c in feature_names]
        target_idx = index[target] if target is not None else None

        X_rows: list[list[float]] = []
        y_cells: list[str] = []
        kept: list[int] = []
        n_rows = 0
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            n_rows += 1
            line = reader.line_num
            if len(row) != len(header):
                raise CSVTableError(
                    f"{spath!r} line {line} (data row {n_rows}) has {len(row)} field(s), "
                    f"expected {len(header)} like the header; check for a missing or extra "
                    f"delimiter {delimiter!r}, or quote cells that contain it"
                )
            values: list[float] = []
            has_missing = False
            for name, j in zip(feature_names, feature_idx):
                cell = row[j].strip()
                if cell.lower() in MISSING_TOKENS:
                    if dropna:
                        has_missing = True
                        break
                    raise CSVTableError(
                        f"missing value {row[j]!r} in column {name!r}, data row {n_rows} "
                        f"({spath!r} line {line}); fill it in, or pass --dropna (dropna=True) "
                        "to drop rows with missing values"
                    )
                try:
                    value = float(cell)
                except ValueError:
                    raise CSVTableError(
                        f"non-numeric value {cell!r} in column {name!r}, data row {n_rows} "
                        f"({spath!r} line {line}); every feature must be a number: encode the "
                        f"categories as numbers (e.g. one 0/1 column per category) or drop the "
                        f"column with --drop {name} (drop=[{name!r}])"
                    ) from None
                if not math.isfinite(value):
                    raise CSVTableError(
                        f"non-finite value {cell!r} in column {name!r}, data row {n_rows} "
                        f"({spath!r} line {line}); replace it with a finite number"
                    )
                values.append(value)
            if has_missing:
                continue
            if target_idx is not None:
                cell = row[target_idx].strip()
                if cell.lower() in MISSING_TOKENS:
                    if dropna:
                        continue
                    raise CSVTableError(
                        f"missing value {row[target_idx]!r} in target column {target!r}, data "
                        f"row {n_rows} ({spath!r} line {line}); fill it in, or pass --dropna "
                        "(dropna=True) to drop rows with missing values"
                    )
                if target_kind == "float":
                    try:
                        value = float(cell)
                    except ValueError:
                        raise CSVTableError(
                            f"non-numeric value {cell!r} in target column {target!r}, data row "
                            f"{n_rows} ({spath!r} line {line}); a regression target must be a "
                            "number (for class labels fit a classifier: --classifier)"
                        ) from None
                    if not math.isfinite(value):
                        raise CSVTableError(
                            f"non-finite value {cell!r} in target column {target!r}, data row "
                            f"{n_rows} ({spath!r} line {line}); replace it with a finite number"
                        )
                y_cells.append(cell)
            X_rows.append(values)
            kept.append(n_rows - 1)

    if n_rows == 0:
        raise CSVTableError(f"{spath!r} has a header but no data rows")
    if not kept:
        raise CSVTableError(
            f"every one of the {n_rows} data row(s) of {spath!r} has a missing value, so "
            "dropna left nothing; fill in the missing values or drop the emptiest columns"
        )
    X = np.asarray(X_rows, dtype=np.float64).reshape(len(kept), len(feature_names))
    y: np.ndarray | None
    if target_idx is None:
        y = None
    elif target_kind == "float":
        y = np.asarray([float(c) for c in y_cells], dtype=np.float64)
    else:
        y = _parse_label(y_cells)
    return Table(
        X=X,
        y=y,
        feature_names=feature_names,
        target=target,
        rows=np.asarray(kept, dtype=np.int64),
        n_rows_read=n_rows,
    )
