"""read_table: numeric tables in, errors that name the column, row and fix for everything else."""

from __future__ import annotations

import codecs
import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from moekit.data.csv_dialect import sniff_delimiter
from moekit.data.csv_table import (
    CSVTableError,
    is_missing,
    parse_labels,
    parse_number,
    read_header,
    read_table,
)


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


# ----------------------------------------------------------------------------- dialects
def _random_table(seed: int) -> tuple[list[str], list[list[str]]]:
    """A header and rows of text cells: numbers in varied formats and a free-text id column
    whose cells hold the other delimiters (so they must be quoted when written)."""
    rng = np.random.default_rng(seed)
    n_rows, n_cols = int(rng.integers(3, 40)), int(rng.integers(1, 6))
    header = ["id"] + [f"x{j}" for j in range(n_cols)]
    rows = []
    for i in range(n_rows):
        numbers = [repr(float(v)) for v in rng.normal(scale=10.0 ** rng.integers(-3, 4),
                                                      size=n_cols)]
        rows.append([f"p{i};a,b\tc|d"] + numbers)
    return header, rows


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_sniffed_delimiter_reads_what_was_written(tmp_path: Path, seed: int,
                                                  delimiter: str) -> None:
    header, rows = _random_table(seed)
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    table = read_table(path, keep=["id"])
    assert table.delimiter == delimiter
    assert table.feature_names == header[1:]
    np.testing.assert_array_equal(table.X, [[float(v) for v in r[1:]] for r in rows])
    assert table.passthrough["id"] == [r[0] for r in rows]
    assert read_header(path) == header


def test_sniff_delimiter_rules() -> None:
    assert sniff_delimiter("a;b;c\n1,5;2,5;3\n") == ";"  # decimal commas do not fool it
    assert sniff_delimiter("single\n1\n2\n") == ","
    assert sniff_delimiter("") == ","
    # A ragged data row: still the delimiter that splits the header, so the row is reported.
    assert sniff_delimiter("a;b;c\n1;2\n") == ";"


@pytest.mark.parametrize(("delimiter", "flag"), [(";", "';'"), ("\t", "tab")])
def test_wrong_delimiter_says_which_to_pass(tmp_path: Path, delimiter: str, flag: str) -> None:
    path = write(tmp_path, f"age{delimiter}bmi{delimiter}y\n1{delimiter}2{delimiter}3\n")
    with pytest.raises(CSVTableError) as err:
        read_table(path, target="y", delimiter=",")
    msg = str(err.value)
    assert "is a single column that holds" in msg
    assert f"the file looks {flag}-separated" in msg and f"pass --delimiter {flag}" in msg
    assert read_table(path, target="y").feature_names == ["age", "bmi"]


def test_ragged_row_names_detected_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "a;b;c\n1;2;3\n4;5\n")
    with pytest.raises(CSVTableError, match=r"the delimiter is ';', detected from the first lines"):
        read_table(path)


def test_decimal_comma(tmp_path: Path) -> None:
    path = write(tmp_path, "a;b;y\n1,5;-2,25;3\n1e3;,5;4,0\n")
    table = read_table(path, target="y", decimal=",")
    np.testing.assert_array_equal(table.X, [[1.5, -2.25], [1000.0, 0.5]])
    np.testing.assert_array_equal(table.y, [3.0, 4.0])
    with pytest.raises(CSVTableError, match=r"non-numeric value '1,5' in column 'a', data row 1 "
                                            r".*it looks like a decimal comma: pass --decimal ,"):
        read_table(path, target="y")
    with pytest.raises(CSVTableError, match=r"decimal=',' is also the delimiter"):
        read_table(write(tmp_path, "a,b\n1,2\n", "c.csv"), decimal=",")
    labels = read_table(path, target="y", decimal=",", target_kind="label").y
    assert labels.dtype.kind == "f" and labels.tolist() == [3.0, 4.0]


# ----------------------------------------------------------------------------- encodings
def test_latin1_file_error_names_line_bytes_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("edad,índice_masa,y\n50,22.5,1\n61,30.1,2\n".encode("latin-1"))
    with pytest.raises(CSVTableError) as err:
        read_table(path, target="y")
    msg = str(err.value)
    assert "is not UTF-8 text: line 1 holds byte(s) 0xed that UTF-8 cannot decode" in msg
    assert "'edad,índice_masa,y'" in msg  # what the bytes read as in Latin-1
    assert "pass --encoding latin-1 (encoding='latin-1')" in msg and "cp1252" in msg
    table = read_table(path, target="y", encoding="latin-1")
    assert table.feature_names == ["edad", "índice_masa"]
    # Bad bytes further down are located too.
    later = tmp_path / "later.csv"
    later.write_bytes(b"a,y\n1,2\n3,4\n5\xe9,6\n")
    with pytest.raises(CSVTableError, match=r"line 4 holds byte\(s\) 0xe9"):
        read_table(later, target="y")
    with pytest.raises(CSVTableError, match=r"cannot be decoded as 'ascii': line 4"):
        read_table(later, target="y", encoding="ascii")


def test_encodings_with_byte_order_marks(tmp_path: Path) -> None:
    text = "a\tb\tµ\n1\t2\t3\n"
    for name, data in [("u8.csv", codecs.BOM_UTF8 + text.encode()),
                       ("u16.csv", text.encode("utf-16")),  # Excel's "Unicode text"
                       ("u16be.csv", codecs.BOM_UTF16_BE + text.encode("utf-16-be"))]:
        (tmp_path / name).write_bytes(data)
        table = read_table(tmp_path / name)
        assert table.feature_names == ["a", "b", "µ"], name
        np.testing.assert_array_equal(table.X, [[1, 2, 3]])
    (tmp_path / "cp.csv").write_bytes("prix €,y\n1,2\n".encode("cp1252"))
    assert read_header(tmp_path / "cp.csv", encoding="cp1252") == ["prix €", "y"]
    with pytest.raises(CSVTableError, match=r"unknown encoding 'klingon'.*latin-1, cp1252"):
        read_table(tmp_path / "cp.csv", encoding="klingon")


def test_binary_files_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "m.moekit"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("model.json", "{}")
    with pytest.raises(CSVTableError, match=r"is a zip archive \(a moekit model file\?\)"):
        read_table(archive)
    nul = tmp_path / "nul.csv"
    nul.write_bytes("a,b\n1,2\n".encode("utf-16-le"))  # UTF-16 without its byte-order mark
    with pytest.raises(CSVTableError, match=r"holds NUL bytes.*--encoding utf-16-le"):
        read_table(nul)
    assert read_table(nul, encoding="utf-16-le").feature_names == ["a", "b"]


# ----------------------------------------------------------------------------- index, keep
def test_pandas_index_column_is_skipped(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(12, 3)), columns=["a", "b", "y"])
    frame.to_csv(tmp_path / "with_index.csv")  # pandas' default: index=True, unnamed
    frame.to_csv(tmp_path / "plain.csv", index=False)
    indexed = read_table(tmp_path / "with_index.csv", target="y")
    plain = read_table(tmp_path / "plain.csv", target="y")
    assert indexed.index_column and not plain.index_column
    assert indexed.feature_names == plain.feature_names == ["a", "b"]
    np.testing.assert_array_equal(indexed.X, plain.X)
    np.testing.assert_array_equal(indexed.y, plain.y)
    assert read_header(tmp_path / "with_index.csv") == ["a", "b", "y"]
    # An empty name elsewhere is still an error.
    with pytest.raises(CSVTableError, match=r"empty column name at position\(s\) \[1, 3\]"):
        read_table(write(tmp_path, ",a,\n1,2,3\n", "blank2.csv"))


def test_keep_returns_raw_cells_for_every_row(tmp_path: Path) -> None:
    path = write(tmp_path, "id,a,y\n p1 ,1,2\np2,,3\np3,4,5\n")
    table = read_table(path, target="y", keep=["id"], dropna=True)
    assert table.passthrough == {"id": ["p1", "p2", "p3"]}  # dropped row 2 included
    assert table.feature_names == ["a"] and table.rows.tolist() == [0, 2]
    with pytest.raises(CSVTableError, match=r"cannot keep column\(s\) \['nope'\]"):
        read_table(path, keep=["nope"])


def test_cell_helpers() -> None:
    assert is_missing(" NA ") and is_missing("") and not is_missing("0")
    assert parse_number(" 1,5 ", ",") == 1.5 and parse_number("-2.5") == -2.5
    with pytest.raises(ValueError):
        parse_number("1,5")
    assert parse_labels(["1", "2"]).dtype.kind == "i"
    assert parse_labels(["1,5", "2"], ",").tolist() == [1.5, 2.0]
    assert parse_labels(["yes", "1"]).tolist() == ["yes", "1"]
