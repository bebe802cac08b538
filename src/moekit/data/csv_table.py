"""Read a numeric CSV table into NumPy arrays, with errors that name the column, row and fix.

Only the standard library's :mod:`csv` and NumPy: no pandas. The first line is the header. Every
cell of every feature column must parse as a finite number; categorical columns are refused with
a message that says which column and how to fix it (encode it, or drop it with ``drop=``). Missing
cells (empty, ``NA``, ``NaN``, ``null``, ``None``) are refused too, unless ``dropna=True``, which
drops the rows that hold them and records which rows were kept.

The dialect is found, or checked, up front (:mod:`moekit.data.csv_dialect`): the delimiter is
sniffed among ``,``, ``;``, tab and ``|`` unless given; ``decimal=","`` reads decimal commas; the
encoding is UTF-8 (or UTF-16 with a byte-order mark) unless given, and undecodable bytes get a
message naming the line and the ``encoding`` to pass. A first column with an empty name (the index
that pandas' ``to_csv`` writes unless ``index=False``) is not data: it is skipped.

Line numbers in messages are the file's physical lines (the header is line 1); row numbers count
data rows from 1.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from moekit.data.csv_dialect import (
    CSVTableError,
    delimiter_flag,
    open_text,
    read_header_row,
    resolve_delimiter,
)

__all__ = [
    "CSVTableError",
    "Table",
    "is_missing",
    "parse_labels",
    "parse_number",
    "read_header",
    "read_table",
]

# Cells read as missing values (compared case-insensitively, after stripping whitespace).
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none"})
_DECIMAL_COMMA = re.compile(r"^[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?$")


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
    delimiter : str
        The delimiter used (given, or sniffed).
    index_column : bool
        True when the first column had no name (a pandas index) and was skipped.
    passthrough : dict of str to list of str
        The raw cells (stripped) of each ``keep=`` column, one per data row of the file
        (``n_rows_read`` of them, dropped rows included).
    """

    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str]
    target: str | None
    rows: np.ndarray
    n_rows_read: int
    delimiter: str = ","
    index_column: bool = False
    passthrough: dict[str, list[str]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.X, self.y, self.feature_names))

    @property
    def n_dropped(self) -> int:
        """Number of data rows dropped by ``dropna=True``."""
        return self.n_rows_read - len(self.rows)


def is_missing(cell: str) -> bool:
    """Whether a cell reads as a missing value (empty, NA, NaN, N/A, null, None)."""
    return cell.strip().lower() in MISSING_TOKENS


def parse_number(cell: str, decimal: str = ".") -> float:
    """``float(cell)``, reading ``decimal`` as the decimal mark; raises ValueError."""
    cell = cell.strip()
    if decimal != ".":
        cell = cell.replace(decimal, ".")
    return float(cell)


def parse_labels(values: Sequence[str], decimal: str = ".") -> np.ndarray:
    """Class labels: integers when every label is one, else floats, else strings."""
    try:
        return np.asarray([int(v) for v in values])
    except ValueError:
        pass
    try:
        return np.asarray([parse_number(v, decimal) for v in values])
    except ValueError:
        return np.asarray(values, dtype=str)


def _non_numeric_hint(cell: str, decimal: str) -> str:
    if decimal == "." and _DECIMAL_COMMA.match(cell):
        return "; it looks like a decimal comma: pass --decimal , (decimal=',')"
    return ""


def read_header(
    path: str | os.PathLike[str], *, delimiter: str | None = None, encoding: str | None = None
) -> list[str]:
    """Return the column names of a CSV file (its first non-blank line).

    Parameters
    ----------
    path : str or path-like
        The CSV file.
    delimiter : str, optional
        Field separator; sniffed among ``,``, ``;``, tab and ``|`` by default.
    encoding : str, optional
        Text encoding; UTF-8 (or UTF-16 with a byte-order mark) by default.

    Returns
    -------
    list of str
        The names, without an unnamed first column (a pandas index), which is not data.
    """
    spath = os.fspath(path)
    with open_text(spath, encoding) as f:
        delimiter = resolve_delimiter(f, delimiter)
        header, index_column = read_header_row(csv.reader(f, delimiter=delimiter), spath,
                                                delimiter)
    return header[1:] if index_column else header


def _format_columns(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return shown + more


def read_table(
    path: str | os.PathLike[str],
    target: str | None = None,
    *,
    features: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    keep: Sequence[str] = (),
    dropna: bool = False,
    target_required: bool = True,
    target_kind: Literal["float", "label"] = "float",
    delimiter: str | None = None,
    decimal: str = ".",
    encoding: str | None = None,
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
    keep : sequence of str, default=()
        Columns whose raw cells are returned in ``Table.passthrough`` for every data row (ids
        to carry through to predictions); they are not features unless named in ``features``.
    dropna : bool, default=False
        Drop rows with a missing cell in a column that is read, instead of raising.
    target_required : bool, default=True
        When False, a ``target`` absent from the header is not an error: ``y`` is None.
    target_kind : {"float", "label"}, default="float"
        ``"float"``: the target must be numeric. ``"label"``: class labels, returned as
        integers when every label is an integer, else floats, else strings.
    delimiter : str, optional
        Field separator. By default it is sniffed among ``,``, ``;``, tab and ``|`` from the
        first lines (the one that splits the header and the first rows consistently).
    decimal : {".", ","}, default="."
        Decimal mark of the numbers (``","`` for files from locales that write ``1,5``; the
        delimiter must then be another character, usually ``;``).
    encoding : str, optional
        Text encoding (e.g. ``"latin-1"``, ``"cp1252"``). By default UTF-8, with or without a
        byte-order mark, or UTF-16 when the file starts with a UTF-16 byte-order mark.

    Returns
    -------
    Table
        Unpacks as ``(X, y, feature_names)``; also carries ``rows``, ``n_rows_read``,
        ``delimiter``, ``index_column`` and ``passthrough``.

    Raises
    ------
    CSVTableError
        (a ValueError) for a missing, binary or empty file, undecodable bytes, a missing header
        name, ragged rows, a missing target or feature column, a non-numeric cell, or a missing
        value; the message names the line and the fix.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("age,bmi,y\\n50,22.5,1.5\\n61,30.1,2.0\\n")
    >>> X, y, names = read_table(path, target="y")
    >>> X.shape, y.tolist(), names
    ((2, 2), [1.5, 2.0], ['age', 'bmi'])
    >>> with open(path, "w") as f:
    ...     _ = f.write("age;bmi;y\\n50;22,5;1,5\\n")
    >>> read_table(path, target="y", decimal=",").X.tolist()
    [[50.0, 22.5]]
    """
    spath = os.fspath(path)
    if decimal not in (".", ","):
        raise CSVTableError(f"decimal={decimal!r} must be '.' or ','")
    with open_text(spath, encoding) as f:
        delimiter_given = delimiter is not None
        delimiter = resolve_delimiter(f, delimiter)
        if decimal == delimiter:
            raise CSVTableError(
                f"decimal={decimal!r} is also the delimiter of {spath!r}; a file with decimal "
                "commas separates its fields with another character, usually ';': pass "
                "--delimiter ';' (delimiter=';')"
            )
        reader = csv.reader(f, delimiter=delimiter)
        header, index_column = read_header_row(reader, spath, delimiter)
        index = {name: i for i, name in enumerate(header) if name}
        names = [name for name in header if name]

        for what, columns in (("drop", drop), ("keep", keep)):
            unknown = [c for c in columns if c not in index]
            if unknown:
                raise CSVTableError(
                    f"cannot {what} column(s) {unknown}: not in the header of {spath!r}; "
                    f"available columns: {_format_columns(names)}"
                )
        if target is not None and target in drop:
            raise CSVTableError(f"column {target!r} is both the target and dropped; choose one")
        if target is not None and target not in index:
            if target_required:
                raise CSVTableError(
                    f"target column {target!r} not found in {spath!r}; available columns: "
                    f"{_format_columns(names)}"
                )
            target = None
        if features is None:
            feature_names = [c for c in names if c != target and c not in drop and c not in keep]
        else:
            feature_names = list(features)
            missing = [c for c in feature_names if c not in index]
            if missing:
                raise CSVTableError(
                    f"feature column(s) {_format_columns(missing)} not found in {spath!r}; the "
                    f"model needs them; available columns: {_format_columns(names)}"
                )
        if not feature_names:
            raise CSVTableError(
                f"{spath!r} has no feature columns left (columns: {_format_columns(names)}); "
                "it needs at least one numeric column besides the target"
            )
        feature_idx = [index[c] for c in feature_names]
        target_idx = index[target] if target is not None else None
        keep_idx = {c: index[c] for c in keep}
        passthrough: dict[str, list[str]] = {c: [] for c in keep}
        how = "" if delimiter_given else ", detected from the first lines; --delimiter sets it"

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
                    f"delimiter (the delimiter is {delimiter_flag(delimiter)}{how}), or quote "
                    "cells that contain it"
                )
            for name, j in keep_idx.items():
                passthrough[name].append(row[j].strip())
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
                    value = parse_number(cell, decimal)
                except ValueError:
                    raise CSVTableError(
                        f"non-numeric value {cell!r} in column {name!r}, data row {n_rows} "
                        f"({spath!r} line {line}){_non_numeric_hint(cell, decimal)}; every "
                        "feature must be a number: encode the categories as numbers (e.g. one "
                        f"0/1 column per category) or drop the column with --drop {name} "
                        f"(drop=[{name!r}])"
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
                        value = parse_number(cell, decimal)
                    except ValueError:
                        raise CSVTableError(
                            f"non-numeric value {cell!r} in target column {target!r}, data row "
                            f"{n_rows} ({spath!r} line {line}){_non_numeric_hint(cell, decimal)}"
                            "; a regression target must be a number: if it holds class labels, "
                            "did you mean --classifier?"
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
        y = np.asarray([parse_number(c, decimal) for c in y_cells], dtype=np.float64)
    else:
        y = parse_labels(y_cells, decimal)
    return Table(
        X=X,
        y=y,
        feature_names=feature_names,
        target=target,
        rows=np.asarray(kept, dtype=np.int64),
        n_rows_read=n_rows,
        delimiter=delimiter,
        index_column=index_column,
        passthrough=passthrough,
    )
