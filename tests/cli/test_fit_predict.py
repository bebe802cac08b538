"""`moekit fit` then `moekit predict`, end to end through moekit.cli.main.main."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

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


# ----------------------------------------------------------------------------- helpers
def fit_argv(data: Path, model: Path, *extra: str, target: str = "y") -> list[str]:
    return ["fit", str(data), "--target", target, "--n-init", "1", "--max-iter", "30",
            "-o", str(model), *extra]


def regression_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y, _ = make_moe_regression(n_samples=n, n_features=3, n_experts=2, random_state=seed)
    return X, y


def write_rows(path: Path, header: list[str], rows: Any, *, delimiter: str = ",",
               encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def predictions(path: Path) -> np.ndarray:
    return np.array([float(r["prediction"]) for r in read_csv(path)])


# ----------------------------------------------------------------------------- CSV dialects
@pytest.mark.parametrize(("delimiter", "decimal"), [(";", ","), ("\t", "."), ("|", ".")])
def test_dialects_fit_and_predict_like_a_comma_file(tmp_path: Path, delimiter: str,
                                                    decimal: str) -> None:
    X, y = regression_rows(120)
    cells = [[repr(float(v)) for v in (*x, t)] for x, t in zip(X, y)]
    rows = [[c.replace(".", decimal) for c in row] for row in cells]
    comma = write_rows(tmp_path / "comma.csv", ["a", "b", "c", "y"], cells)
    other = write_rows(tmp_path / "other.csv", ["a", "b", "c", "y"], rows, delimiter=delimiter)
    flags = ["--decimal", ","] if decimal == "," else []
    assert main(fit_argv(comma, tmp_path / "a.moekit", "-k", "2", "-q")) == 0
    assert main(fit_argv(other, tmp_path / "b.moekit", "-k", "2", "-q", *flags)) == 0
    assert main(["predict", str(tmp_path / "a.moekit"), str(comma), "-o",
                 str(tmp_path / "pa.csv")]) == 0
    assert main(["predict", str(tmp_path / "b.moekit"), str(other), "-o",
                 str(tmp_path / "pb.csv"), *flags]) == 0
    np.testing.assert_array_equal(predictions(tmp_path / "pa.csv"),
                                  predictions(tmp_path / "pb.csv"))


def test_forced_wrong_delimiter_and_latin1_errors(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    X, y = regression_rows(60)
    semi = write_rows(tmp_path / "semi.csv", ["age", "bmi", "bp", "y"],
                      [[*x, t] for x, t in zip(X, y)], delimiter=";")
    assert main(fit_argv(semi, tmp_path / "m", "-k", "1", "--delimiter", ",")) == 2
    err = capsys.readouterr().err
    assert "the file looks ';'-separated" in err and "pass --delimiter ';'" in err
    latin = write_rows(tmp_path / "latin.csv", ["edad", "índice", "presión", "y"],
                       [[*x, t] for x, t in zip(X, y)], encoding="latin-1")
    assert main(fit_argv(latin, tmp_path / "m", "-k", "1")) == 2
    err = capsys.readouterr().err
    assert err.startswith("moekit fit: error: ") and "Traceback" not in err
    assert "is not UTF-8 text: line 1 holds byte(s) 0xed" in err
    assert "pass --encoding latin-1" in err
    assert main(fit_argv(latin, tmp_path / "m.moekit", "-k", "1", "--encoding", "latin-1")) == 0
    assert main(["predict", str(tmp_path / "m.moekit"), str(latin), "-o",
                 str(tmp_path / "p.csv")]) == 2
    assert "pass --encoding latin-1" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "m.moekit"), str(latin), "-o",
                 str(tmp_path / "p.csv"), "--encoding", "latin-1"]) == 0


def test_pandas_index_column_is_noted_and_skipped(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    X, y = regression_rows(60)
    indexed = write_rows(tmp_path / "i.csv", ["", "a", "b", "c", "y"],
                         [[i, *x, t] for i, (x, t) in enumerate(zip(X, y))])
    assert main(fit_argv(indexed, tmp_path / "m.moekit", "-k", "1")) == 0
    out = capsys.readouterr().out
    assert "note: the first column has no name: taken as the row index that pandas writes" in out
    assert "on 60 rows x 3 features" in out
    assert main(["predict", str(tmp_path / "m.moekit"), str(indexed), "-o",
                 str(tmp_path / "p.csv")]) == 0


def test_index_like_feature_columns_warn(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    X, y = regression_rows(40)
    data = write_rows(tmp_path / "d.csv", ["Unnamed: 0", "n", "a", "y"],
                      [[i, i + 1, x[0], t] for i, (x, t) in enumerate(zip(X, y))])
    assert main(fit_argv(data, tmp_path / "m.moekit", "-k", "1")) == 0
    err = capsys.readouterr().err
    assert ("warning: column 'Unnamed: 0' looks like an index that pandas wrote (to_csv without "
            "index=False), not data: drop it with --drop 'Unnamed: 0'") in err
    assert "warning: column 'n' numbers the rows (1, 2, 3, ...)" in err


# ----------------------------------------------------------------------------- target checks
def test_classifier_on_continuous_target_stops_before_fitting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.csv"
    write_table(data, n=200)
    argv = fit_argv(data, tmp_path / "m.moekit", "-k", "2", "--classifier", "--drop", "id",
                    "--drop", "label")
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "moekit fit: error: target 'y' has 200 distinct values in 200 rows; that looks "
        "continuous: drop --classifier to fit a regression (or pass --no-target-check to fit "
        "a 200-class classifier anyway)\n")
    assert "fitting" not in captured.out and not (tmp_path / "m.moekit").exists()
    # Text labels that are nearly all distinct (an id column) are refused too.
    assert main(fit_argv(data, tmp_path / "m", "-k", "1", "--classifier", "--drop", "y",
                         "--drop", "label", target="id")) == 2
    assert "target 'id' has 200 distinct labels in 200 rows" in capsys.readouterr().err


def test_two_valued_target_without_classifier(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 2))
    y01 = (X[:, 0] + rng.normal(size=80) > 0).astype(int)
    data = write_rows(tmp_path / "d.csv", ["a", "b", "y"], [[*x, t] for x, t in zip(X, y01)])
    assert main(fit_argv(data, tmp_path / "m.moekit", "-k", "2")) == 2
    assert capsys.readouterr().err.startswith(
        "moekit fit: error: target 'y' has only 2 distinct values (0, 1) in 80 rows: did you "
        "mean --classifier? A linear regression does not suit a two-valued target")
    # Poisson experts: a warning, and the fit goes on.
    assert main(fit_argv(data, tmp_path / "m.moekit", "-k", "1", "--expert", "poisson")) == 0
    assert ("warning: target 'y' has only 2 distinct values (0, 1) in 80 rows: did you mean "
            "--classifier?") in capsys.readouterr().err
    # The override fits the regression anyway; --classifier is the right call and passes.
    assert main(fit_argv(data, tmp_path / "m.moekit", "-k", "1", "--no-target-check")) == 0
    assert "distinct values" not in capsys.readouterr().err
    assert main(fit_argv(data, tmp_path / "m.moekit", "-k", "1", "--classifier")) == 0
    # Few integer values: a hint only.
    y4 = np.clip(np.round(X[:, 0] + 1.5), 0, 3).astype(int)
    few = write_rows(tmp_path / "few.csv", ["a", "b", "y"], [[*x, t] for x, t in zip(X, y4)])
    capsys.readouterr()
    assert main(fit_argv(few, tmp_path / "m.moekit", "-k", "1")) == 0
    assert ("warning: target 'y' has only 4 distinct values (0, 1, 2, 3) in 80 rows; if they "
            "are classes, did you mean --classifier?") in capsys.readouterr().err
    const = write_rows(tmp_path / "c.csv", ["a", "y"], [[x[0], 7] for x in X])
    assert main(fit_argv(const, tmp_path / "m.moekit", "-k", "1")) == 2
    assert "holds the same value (7) in all 80 rows" in capsys.readouterr().err


# ----------------------------------------------------------------------------- model flags
def test_penalty_and_tolerance_flags_reach_the_estimator(tmp_path: Path) -> None:
    from moekit.estimators import MixtureOfExpertsRegressor
    from moekit.estimators.persistence import load_model

    X, y = regression_rows(150)
    data = write_rows(tmp_path / "d.csv", ["a", "b", "c", "y"], [[*x, t] for x, t in zip(X, y)])
    model = tmp_path / "m.moekit"
    assert main(fit_argv(data, model, "-k", "2", "--gate-alpha", "0.25", "--expert-alpha",
                         "0.5", "--tol", "1e-3", "--seed", "3", "-q")) == 0
    loaded = load_model(model)
    params = loaded.get_params()
    assert (params["gate_alpha"], params["expert_alpha"], params["tol"]) == (0.25, 0.5, 1e-3)
    reference = MixtureOfExpertsRegressor(n_experts=2, gate_alpha=0.25, expert_alpha=0.5,
                                          tol=1e-3, n_init=1, max_iter=30,
                                          random_state=3).fit(X, y)
    np.testing.assert_allclose(loaded.predict(X), reference.predict(X), rtol=1e-12)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--gate-alpha", "-1", "expected a finite number >= 0, got '-1'"),
    ("--tol", "nan", "expected a finite number >= 0, got 'nan'"),
    ("--decimal", ";", "invalid choice: ';'"),
    ("--delimiter", "ab", "expected one character (e.g. ';'), or tab, got 'ab'"),
    ("--hierarchical", "2,1", "every level of the tree needs at least 2 children"),
    ("--experts", "many", "expected a positive integer or 'auto', got 'many'"),
])
def test_bad_flag_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str,
                         value: str, message: str) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "d.csv", "--target", "y", "-o", "m", flag, value])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    ([], "how many experts? pass --experts K"),
    (["-k", "2", "--max-experts", "3"], "--max-experts applies to --experts auto only"),
    (["-k", "3", "--hierarchical", "2,2"], "--experts 3 disagrees with --hierarchical 2,2"),
    (["-k", "auto", "--hierarchical", "2,2"], "with --hierarchical the tree 2,2 sets it"),
    (["--hierarchical", "2,2", "--classifier"], "there is no hierarchical classifier"),
])
def test_contradictory_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             args: list[str], message: str) -> None:
    data = tmp_path / "d.csv"
    data.write_text("a,y\n1,2\n3,4\n")
    assert main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m"), *args]) == 2
    assert message in capsys.readouterr().err


def test_hierarchical_flag_fits_the_tree(tmp_path: Path) -> None:
    from moekit.estimators import HierarchicalMixtureOfExpertsRegressor
    from moekit.estimators.persistence import load_model

    X, y, _ = make_moe_regression(n_samples=160, n_features=2, n_experts=4, random_state=1)
    data = write_rows(tmp_path / "d.csv", ["a", "b", "y"], [[*x, t] for x, t in zip(X, y)])
    model = tmp_path / "h.moekit"
    assert main(fit_argv(data, model, "--hierarchical", "2,2", "-q")) == 0
    loaded = load_model(model)
    assert isinstance(loaded, HierarchicalMixtureOfExpertsRegressor)
    assert tuple(loaded.branching) == (2, 2) and loaded.n_experts_ == 4
    reference = HierarchicalMixtureOfExpertsRegressor(branching=(2, 2), n_init=1, max_iter=30,
                                                      random_state=0).fit(X, y)
    np.testing.assert_allclose(loaded.predict(X), reference.predict(X), rtol=1e-12)
    assert main(["predict", str(model), str(data), "-o", str(tmp_path / "p.csv")]) == 0
    assert {r["expert"] for r in read_csv(tmp_path / "p.csv")} <= {"0", "1", "2", "3"}


def test_experts_auto_prints_the_criterion_table(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from moekit.estimators import MixtureOfExpertsRegressor, select_n_experts
    from moekit.estimators.persistence import load_model

    X, y = regression_rows(150)
    data = write_rows(tmp_path / "d.csv", ["a", "b", "c", "y"], [[*x, t] for x, t in zip(X, y)])
    model = tmp_path / "m.moekit"
    assert main(fit_argv(data, model, "--experts", "auto", "--max-experts", "3",
                         "--criterion", "aic")) == 0
    out = capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence at max_iter=30, as in the command
        reference = select_n_experts(
            X, y, n_experts_range=[1, 2, 3], criterion="aic",
            estimator=MixtureOfExpertsRegressor(n_init=1, max_iter=30, random_state=0))
    assert "choosing the number of experts by AIC (lower is better):" in out
    table = {int(line.split()[0]): float(line.split()[1]) for line in out.splitlines()
             if line.strip() and line.split()[0].isdigit() and len(line.split()) >= 3}
    assert sorted(table) == [1, 2, 3]
    for k, score in reference.scores.items():
        assert table[k] == pytest.approx(score, rel=1e-5)
    best = reference.best_n_experts
    assert any(line.split()[0] == str(best) and line.endswith("<- chosen")
               for line in out.splitlines() if line.strip())
    assert load_model(model).n_experts == best


def test_standardize_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`standardize` arrives with the estimators' rewrite (est-core); until then the flag must
    say plainly that it is unavailable. Which branch runs depends on the installed estimators."""
    from moekit.estimators import MixtureOfExpertsRegressor
    from moekit.estimators.persistence import load_model

    X, y = regression_rows(120)
    X = X * np.array([1e-3, 1.0, 1e3])
    data = write_rows(tmp_path / "d.csv", ["a", "b", "c", "y"], [[*x, t] for x, t in zip(X, y)])
    model = tmp_path / "m.moekit"
    rc = main(fit_argv(data, model, "-k", "2", "--standardize", "-q"))
    if "standardize" not in MixtureOfExpertsRegressor().get_params():
        assert rc == 2
        assert "--standardize needs a MixtureOfExpertsRegressor with a 'standardize' parameter" \
            in capsys.readouterr().err
        return
    assert rc == 0
    loaded = load_model(model)
    assert loaded.get_params()["standardize"] is True
    reference = MixtureOfExpertsRegressor(n_experts=2, standardize=True, n_init=1, max_iter=30,
                                          random_state=0).fit(X, y)
    np.testing.assert_allclose(loaded.predict(X), reference.predict(X), rtol=1e-12)


def test_verbose_and_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from moekit.cli.fit import progress_level

    X, y = regression_rows(100)
    data = write_rows(tmp_path / "d.csv", ["a", "b", "c", "y"], [[*x, t] for x, t in zip(X, y)])
    argv = ["fit", str(data), "--target", "y", "-k", "2", "--n-init", "2", "--max-iter", "20",
            "-o", str(tmp_path / "m.moekit")]
    assert main(argv) == 0  # a small fit: no progress by default
    captured = capsys.readouterr()
    default_lines = (captured.out + captured.err).splitlines()
    assert "parameter" in captured.out  # the summary table
    assert main([*argv, "--verbose"]) == 0
    captured = capsys.readouterr()
    verbose_lines = (captured.out + captured.err).splitlines()
    extra = [line for line in verbose_lines
             if line not in default_lines and not line.startswith("fit time")]
    # One line per restart (whatever the estimators' wording), and none without --verbose.
    assert len(extra) == 2 and len(verbose_lines) == len(default_lines) + 2, extra
    assert all("log-likelihood" in line for line in extra)
    assert main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert not any(line in captured.out + captured.err for line in extra)
    assert "parameter" not in captured.out and "fitting" not in captured.out
    assert "log-likelihood:" in captured.out and "saved model to" in captured.out
    with pytest.raises(SystemExit):
        main([*argv, "--quiet", "--verbose"])
    assert "not allowed with argument" in capsys.readouterr().err

    def level(**kw: Any) -> int:
        args = argparse.Namespace(**{"quiet": False, "verbose": 0, "n_init": 3, **kw})
        return progress_level(args, 50_000, 10, [3])

    # The audit's 50,000-row fit (48-236 s) shows progress; a 331-row one does not.
    assert level() == 1 and level(quiet=True) == 0 and level(verbose=2) == 2
    assert progress_level(argparse.Namespace(quiet=False, verbose=0, n_init=3), 331, 10, [2]) == 0


# ----------------------------------------------------------------------------- predict
def test_api_model_from_a_dataframe_predicts_by_column_name(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from moekit.estimators import MixtureOfExpertsRegressor
    from moekit.estimators.persistence import save_model

    X, y = regression_rows(120)
    frame = pd.DataFrame(X, columns=["age", "bmi", "bp"])
    model = MixtureOfExpertsRegressor(n_experts=2, n_init=1, max_iter=30,
                                      random_state=0).fit(frame, y)
    path = tmp_path / "api.moekit"
    save_model(model, path)  # no feature_names given
    shuffled = frame[["bp", "age", "bmi"]].assign(y=y)
    shuffled.to_csv(tmp_path / "new.csv", index=False)
    assert main(["predict", str(path), str(tmp_path / "new.csv"), "-o",
                 str(tmp_path / "p.csv")]) == 0
    np.testing.assert_allclose(predictions(tmp_path / "p.csv"), model.predict(frame),
                               rtol=1e-12)


def test_keep_columns_are_copied_through(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tmp_path / "d.csv", tmp_path / "m.moekit"
    write_table(data, n=60)
    assert main(fit_argv(data, model, "-k", "2", "--drop", "id", "--drop", "label", "-q")) == 0
    holes = write_rows(tmp_path / "h.csv", ["id", "age", "bmi", "bp"],
                       [["p1", 0.1, 0.2, 0.3], ["p2", 0.5, "", 0.1], ["p;3", 1, 2, 3]])
    out = tmp_path / "p.csv"
    assert main(["predict", str(model), str(holes), "-o", str(out), "--keep", "id",
                 "--dropna"]) == 0
    rows = read_csv(out)
    assert list(rows[0])[:3] == ["row", "id", "prediction"]
    assert [r["id"] for r in rows] == ["p1", "p2", "p;3"]
    assert rows[1]["prediction"] == "" and rows[2]["prediction"] != ""
    assert main(["predict", str(model), str(holes), "-o", str(out), "--keep", "nope"]) == 2
    assert "cannot keep column(s) ['nope']" in capsys.readouterr().err


def test_alpha_on_a_classifier_is_refused(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tmp_path / "d.csv", tmp_path / "c.moekit"
    write_table(data, n=80)
    assert main(fit_argv(data, model, "-k", "1", "--classifier", "--drop", "id", "--drop", "y",
                         target="label")) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(data), "-o", str(tmp_path / "p.csv"),
                 "--alpha", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "--alpha sets the width of a regressor's predictive interval" in err
    assert "is a classifier" in err and "drop --alpha" in err


def test_classifier_output_probabilities_and_score(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.metrics import log_loss as sk_log_loss
    from sklearn.metrics import roc_auc_score

    data, model, out = tmp_path / "d.csv", tmp_path / "c.moekit", tmp_path / "p.csv"
    write_table(data, n=150)
    assert main(fit_argv(data, model, "-k", "2", "--classifier", "--drop", "id", "--drop", "y",
                         target="label")) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(data), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out)
    P = np.array([[float(r["proba_high"]), float(r["proba_low"])] for r in rows])
    assert P.min() >= 0.0 and P.max() <= 1.0
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    gate = np.array([float(r["expert_proba"]) for r in rows])
    assert gate.min() >= 0.0 and gate.max() <= 1.0
    truth = [r["label"] for r in read_csv(data)]
    expected_ll = sk_log_loss(truth, P, labels=["high", "low"])  # refuses values > 1
    expected_auc = roc_auc_score([t == "low" for t in truth], P[:, 1])
    accuracy = np.mean([r["prediction"] == t for r, t in zip(rows, truth)])
    assert (f"score on the 150 rows with target 'label': accuracy = {accuracy:.4f}, "
            f"log-loss = {expected_ll:.4f}, AUC = {expected_auc:.4f} (positive class 'low')"
            ) in printed


def test_regression_score_line_and_no_negative_zero(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    counts = rng.poisson(np.exp(0.4 * X[:, 0] - 1.0))
    data = write_rows(tmp_path / "d.csv", ["a", "b", "n"], [[*x, t] for x, t in zip(X, counts)])
    model, out = tmp_path / "m.moekit", tmp_path / "p.csv"
    assert main(fit_argv(data, model, "-k", "1", "--expert", "poisson", "-q",
                         target="n")) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(data), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    text = out.read_text()
    assert "-0.0" not in text
    assert {float(r["lower"]) for r in read_csv(out)} >= {0.0}
    pred = predictions(out)
    rmse = float(np.sqrt(np.mean((counts - pred) ** 2)))
    mae = float(np.mean(np.abs(counts - pred)))
    assert f"RMSE = {rmse:.4g}, MAE = {mae:.4g}, log-likelihood per row =" in printed


def test_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import log_loss as sk_log_loss
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

    from moekit.cli.predict import as_probabilities, log_loss, regression_scores, roc_auc

    rng = np.random.default_rng(0)
    for _ in range(5):
        n, k = int(rng.integers(5, 60)), int(rng.integers(2, 5))
        P = rng.dirichlet(np.ones(k) * 0.3, size=n)
        y = rng.integers(0, k, size=n)
        assert log_loss(y, P) == pytest.approx(sk_log_loss(y, P, labels=list(range(k))),
                                               rel=1e-12)
        positive = rng.random(n) < 0.4
        positive[:2] = [True, False]
        score = rng.integers(0, 4, size=n).astype(float)  # many ties
        assert roc_auc(positive, score) == pytest.approx(roc_auc_score(positive, score),
                                                         rel=1e-12)
        t, p = rng.normal(size=n), rng.normal(size=n)
        got = regression_scores(t, p)
        assert got["r2"] == pytest.approx(r2_score(t, p), rel=1e-12)
        assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(t, p)), rel=1e-12)
        assert got["mae"] == pytest.approx(mean_absolute_error(t, p), rel=1e-12)
    # Rows a hair outside [0, 1] (the audit saw 1.000000000000001) are clipped and renormalised;
    # valid rows are returned untouched.
    bad = np.array([[1.000000000000001, -1e-17], [0.25, 0.75], [0.5, 0.5000000000001]])
    fixed = as_probabilities(bad)
    assert fixed.min() >= 0.0 and fixed.max() <= 1.0
    np.testing.assert_allclose(fixed.sum(axis=1), 1.0, atol=1e-15)
    np.testing.assert_allclose(fixed, bad, atol=1e-12)
    good = rng.dirichlet(np.ones(3), size=4)
    assert as_probabilities(good) is not None and np.array_equal(as_probabilities(good), good)


def test_missing_output_folder_fails_fast_with_one_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tmp_path / "d.csv", tmp_path / "m.moekit"
    write_table(data, n=60)
    missing = tmp_path / "nope" / "out.csv"
    assert main(fit_argv(data, missing, "-k", "1", "--drop", "id", "--drop", "label")) == 2
    captured = capsys.readouterr()
    assert "fitting" not in captured.out  # refused before the fit, not after it
    assert captured.err == (f"moekit fit: error: cannot write {str(missing)!r}: folder "
                            f"{str(missing.parent)!r} does not exist; create it first\n")
    assert main(fit_argv(data, model, "-k", "1", "--drop", "id", "--drop", "label", "-q")) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(data), "-o", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("cannot write") == 1 and "does not exist; create it first" in err
    assert main(["predict", str(model), str(data), "-o", str(tmp_path)]) == 2
    assert "is a directory; give a file name such as preds.csv" in capsys.readouterr().err


# ----------------------------------------------------------------------------- processes
def _env() -> dict[str, str]:
    import moekit

    src = str(Path(moekit.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_predict_to_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    from moekit.estimators import MixtureOfExpertsRegressor
    from moekit.estimators.persistence import save_model

    X, y = regression_rows(3000)
    data = write_rows(tmp_path / "d.csv", ["a", "b", "c"], X.tolist())  # ~250 KB of output
    model = MixtureOfExpertsRegressor(n_experts=1, n_init=1, max_iter=5).fit(X[:100], y[:100])
    save_model(model, tmp_path / "m.moekit", feature_names=["a", "b", "c"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "moekit", "predict", str(tmp_path / "m.moekit"), str(data),
         "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # like `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert first.startswith(b"row,prediction,lower,upper")
    assert err == "", err


def test_fit_and_predict_work_without_torch(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    write_table(data, n=60)
    code = (
        "import importlib.abc, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):  # as if torch were not installed\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(\"No module named 'torch'\")\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from moekit.cli.main import main\n"
        f"assert main(['fit', {str(data)!r}, '--target', 'y', '-k', '1', '--drop', 'id', "
        f"'--drop', 'label', '-q', '-o', {str(tmp_path / 'm.moekit')!r}]) == 0\n"
        f"assert main(['predict', {str(tmp_path / 'm.moekit')!r}, {str(data)!r}, "
        f"'-o', {str(tmp_path / 'p.csv')!r}]) == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(read_csv(tmp_path / "p.csv")) == 60


def test_keep_refuses_output_column_names(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tmp_path / "d.csv", tmp_path / "m.moekit"
    write_table(data, n=40)
    assert main(fit_argv(data, model, "-k", "1", "--drop", "id", "--drop", "label", "-q")) == 0
    renamed = tmp_path / "r.csv"
    renamed.write_text(data.read_text().replace("id,", "prediction,", 1))
    assert main(["predict", str(model), str(renamed), "-o", str(tmp_path / "p.csv"), "--keep",
                 "prediction"]) == 2
    assert "--keep prediction is also the name of an output column" in capsys.readouterr().err


def test_csv_mistakes_are_told_before_scikit_learn_is_imported(tmp_path: Path) -> None:
    """Importing the estimators costs ~0.8 s (scikit-learn); a wrong file should not wait."""
    latin = tmp_path / "latin.csv"
    latin.write_bytes("índice,y\n1,2\n".encode("latin-1"))
    code = (
        "import sys\n"
        "from moekit.cli.main import main\n"
        f"assert main(['fit', {str(latin)!r}, '--target', 'y', '-k', '1', '-o', "
        f"{str(tmp_path / 'm')!r}]) == 2\n"
        f"assert main(['predict', {str(tmp_path / 'm')!r}, {str(latin)!r}, '-o', '-']) == 2\n"
        "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("is not UTF-8 text") == 2
