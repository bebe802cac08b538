"""read_table: numeric tables in, errors that name the column, row and fix for everything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moekit.data.csv_table import CSVTableError, read_header, read_table


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_features_and_target(tmp_path: Path) -> None:
    path = write(tmp_path, "age,bmi,y\n50,22.5,1.5\n61,30.1,2.0\n\n")
    X, y, names = read_table(path, target="y")
    assert names == ["age", "bmi"]
    assert X.dtype == np.float64
    np.testing.assert_array_equal(X, [[50, 22.5], [61, 30.1]])
    np.testing.assert_array_equal(y, [1.5, 2.0])


def test_without_target_and_with_selected_features(tmp_path: Path) -> None:
    path = write(tmp_path, "id,a,b\nx1,1,2\nx2,3,4\n")
    X, y, names = read_table(path, features=["b", "a"])
    assert y is None and names == ["b", "a"]
    np.testing.assert_array_equal(X, [[2, 1], [4, 3]])
    table = read_table(path, target="y", drop=["id"], target_required=False)
    assert table.y is None and table.feature_names == ["a", "b"]
    assert read_header(path) == ["id", "a", "b"]


def test_label_target(tmp_path: Path) -> None:
    path = write(tmp_path, "a,c\n1,yes\n2,no\n")
    assert read_table(path, target="c", target_kind="label").y.tolist() == ["yes", "no"]
    path = write(tmp_path, "a,c\n1,0\n2,1\n", "ints.csv")
    y = read_table(path, target="c", target_kind="label").y
    assert y.dtype.kind == "i" and y.tolist() == [0, 1]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CSVTableError, match=r"'.*nope\.csv' does not exist; check the path"):
        read_table(tmp_path / "nope.csv")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(CSVTableError, match="is empty; expected a header line"):
        read_table(write(tmp_path, ""))
    with pytest.raises(CSVTableError, match="has a header but no data rows"):
        read_table(write(tmp_path, "a,b\n", "header_only.csv"))


def test_ragged_row_names_line_and_counts(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(CSVTableError, match=r"line 3 \(data row 2\) has 2 field\(s\), expected 3"):
        read_table(path)


def test_missing_target_lists_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "age,bmi\n1,2\n")
    with pytest.raises(
        CSVTableError, match=r"target column 'outcome' not found .* available columns: 'age', 'bmi'"
    ):
        read_table(path, target="outcome")


def test_non_numeric_cell_names_column_row_value_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "age,sex,y\n50,1,2\n61,female,3\n")
    with pytest.raises(CSVTableError) as err:
        read_table(path, target="y")
    msg = str(err.value)
    assert "non-numeric value 'female' in column 'sex', data row 2" in msg
    assert "line 3" in msg
    assert "encode the categories" in msg and "--drop sex" in msg
    X, _, names = read_table(path, target="y", drop=["sex"])
    assert names == ["age"] and X.shape == (2, 1)


def test_non_numeric_target(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,2\n2,high\n")
    with pytest.raises(CSVTableError, match="non-numeric value 'high' in target column 'y'.*--classifier"):
        read_table(path, target="y")


def test_missing_values_name_column_row_and_dropna(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,3\n4,,6\n7,NaN,9\n10,11,\n12,13,14\n")
    with pytest.raises(CSVTableError) as err:
        read_table(path, target="y")
    msg = str(err.value)
    assert "missing value '' in column 'b', data row 2" in msg and "--dropna" in msg
    table = read_table(path, target="y", dropna=True)
    np.testing.assert_array_equal(table.X, [[1, 2], [12, 13]])
    np.testing.assert_array_equal(table.rows, [0, 4])
    assert table.n_rows_read == 5 and table.n_dropped == 3


def test_infinite_value(tmp_path: Path) -> None:
    with pytest.raises(CSVTableError, match="non-finite value 'inf' in column 'a', data row 1"):
        read_table(write(tmp_path, "a\ninf\n"))


def test_header_problems(tmp_path: Path) -> None:
    with pytest.raises(CSVTableError, match="more than once"):
        read_table(write(tmp_path, "a,a\n1,2\n"))
    with pytest.raises(CSVTableError, match="empty column name"):
        read_table(write(tmp_path, "a,,b\n1,2,3\n", "blank.csv"))
    with pytest.raises(CSVTableError, match=r"cannot drop column\(s\) \['zz'\]"):
        read_table(write(tmp_path, "a,b\n1,2\n", "ok.csv"), drop=["zz"])
    with pytest.raises(CSVTableError, match=r"feature column\(s\) 'c' not found"):
        read_table(tmp_path / "ok.csv", features=["a", "c"])
