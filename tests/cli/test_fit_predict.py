"""`moekit fit` then `moekit predict`, end to end through moekit.cli.main.main."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from moekit.cli.main import main
from moekit.estimators.datasets import make_moe_regression


def write_table(path: Path, n: int = 200, *, with_target: bool = True) -> None:
    X, y, _ = make_moe_regression(n_samples=n, n_features=3, n_experts=2, random_state=0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "age", "bmi", "bp"] + (["y", "label"] if with_target else []))
        for i, (row, target) in enumerate(zip(X, y)):
            extra = [target, "high" if target > 0 else "low"] if with_target else []
            writer.writerow([f"p{i}", *row, *extra])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fit_then_predict_regressor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, model, preds = tmp_path / "d.csv", tmp_path / "m.moekit", tmp_path / "preds.csv"
    write_table(data)
    rc = main(["fit", str(data), "--target", "y", "--experts", "2", "--drop", "id",
               "--drop", "label", "--n-init", "1", "--max-iter", "50", "--output", str(model)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "expert 1: bmi" in out and "log-likelihood:" in out and "BIC:" in out
    assert f"saved model to {model}" in out

    new = tmp_path / "new.csv"
    write_table(new, n=30, with_target=False)
    assert main(["predict", str(model), str(new), "--output", str(preds), "--alpha", "0.2"]) == 0
    rows = read_csv(preds)
    assert len(rows) == 30
    assert list(rows[0]) == ["row", "prediction", "lower", "upper", "expert", "expert_proba"]
    lower = np.array([float(r["lower"]) for r in rows])
    upper = np.array([float(r["upper"]) for r in rows])
    pred = np.array([float(r["prediction"]) for r in rows])
    assert np.all(lower <= upper) and np.all(np.isfinite(pred))
    assert {r["expert"] for r in rows} <= {"0", "1"}
    assert "wrote 30 predictions" in capsys.readouterr().out

    # With the target present, predict also prints a score.
    assert main(["predict", str(model), str(data), "--output", str(preds)]) == 0
    assert "score on the 200 rows with target 'y': R^2 =" in capsys.readouterr().out
    assert len(read_csv(preds)) == 200


def test_fit_then_predict_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, model, preds = tmp_path / "d.csv", tmp_path / "c.moekit", tmp_path / "p.csv"
    write_table(data, n=120)
    rc = main(["fit", str(data), "--target", "label", "--classifier", "--experts", "2",
               "--drop", "id", "--drop", "y", "--n-init", "1", "--max-iter", "20",
               "-o", str(model)])
    assert rc == 0
    assert "moekit fit: warning: EM did not converge" in capsys.readouterr().err
    assert main(["predict", str(model), str(data), "-o", str(preds)]) == 0
    rows = read_csv(preds)
    assert len(rows) == 120
    assert list(rows[0]) == ["row", "prediction", "proba_high", "proba_low", "expert",
                             "expert_proba"]
    assert {r["prediction"] for r in rows} <= {"high", "low"}
    total = np.array([float(r["proba_high"]) + float(r["proba_low"]) for r in rows])
    np.testing.assert_allclose(total, 1.0)
    assert "accuracy =" in capsys.readouterr().out


def test_bad_csv_exits_2_naming_column_and_row(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("age,sex,y\n50,1,2.0\n61,0,3.5\n70,female,1.0\n")
    rc = main(["fit", str(data), "--target", "y", "--experts", "2", "-o", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("moekit fit: error: non-numeric value 'female' in column 'sex', "
                          "data row 3")
    assert "--drop sex" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("a,y\n1,2\n2,\n", [], "missing value '' in target column 'y', data row 2"),
        ("a,y\n1,2\n2\n", [], r"line 3 (data row 2) has 1 field(s), expected 2"),
        ("a,b\n1,2\n", [], "target column 'y' not found"),
        ("a,y\n1,2\n3,4\n", ["--experts", "5"], "too few to fit 5 experts"),
        ("a,y\n1,2\n3,4\n", ["--classifier", "--expert", "poisson"], "--expert poisson applies"),
    ],
)
def test_fit_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                         args: list[str], message: str) -> None:
    data = tmp_path / "d.csv"
    data.write_text(text)
    argv = ["fit", str(data), "--target", "y", "--experts", "1", "-o", str(tmp_path / "m")]
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_predict_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tmp_path / "d.csv", tmp_path / "m.moekit"
    write_table(data, n=60)
    assert main(["fit", str(data), "--target", "y", "--experts", "2", "--drop", "id",
                 "--drop", "label", "--n-init", "1", "--max-iter", "10", "-o", str(model)]) == 0
    capsys.readouterr()
    other = tmp_path / "other.csv"
    other.write_text("age,bp\n1,2\n")
    assert main(["predict", str(model), str(other), "-o", str(tmp_path / "p.csv")]) == 2
    assert "feature column(s) 'bmi' not found" in capsys.readouterr().err
    assert main(["predict", str(data), str(data), "-o", str(tmp_path / "p.csv")]) == 2
    assert "is not a moekit model file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(model), str(data), "-o", str(tmp_path / "p.csv"), "--alpha", "2"])
    assert "alpha=2.0 must be in (0, 1)" in capsys.readouterr().err


def test_predict_dropna_keeps_one_row_per_input_row(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tmp_path / "d.csv", tmp_path / "m.moekit"
    write_table(data, n=60)
    assert main(["fit", str(data), "--target", "y", "--experts", "2", "--drop", "id",
                 "--drop", "label", "--n-init", "1", "--max-iter", "10", "-o", str(model)]) == 0
    holes = tmp_path / "holes.csv"
    holes.write_text("age,bmi,bp\n0.1,0.2,0.3\n0.5,,0.1\n1,2,3\n")
    assert main(["predict", str(model), str(holes), "-o", str(tmp_path / "p.csv")]) == 2
    assert "missing value '' in column 'bmi', data row 2" in capsys.readouterr().err
    assert main(["predict", str(model), str(holes), "-o", str(tmp_path / "p.csv"),
                 "--dropna"]) == 0
    rows = read_csv(tmp_path / "p.csv")
    assert [r["row"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["prediction"] == "" and rows[2]["prediction"] != ""
