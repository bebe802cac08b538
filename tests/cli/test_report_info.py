"""`moekit report` and `moekit info` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moekit.cli.main import main


def _run_folder(root: Path) -> Path:
    root.mkdir()
    with open(root / "metrics.jsonl", "w") as fh:
        for s in range(6):
            print(json.dumps({"step": s, "loss": 2.0 - 0.1 * s, "model": "moe",
                              "expert_load": [0.5, 0.5]}), file=fh)
            print(json.dumps({"step": s, "loss": 2.1 - 0.1 * s, "model": "dense"}), file=fh)
    return root


def test_report_prints_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_folder(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [str(run / "report.html")]
    assert "data:image/png;base64," in (run / "report.html").read_text()


def test_report_of_a_relative_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run_folder(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "run"]) == 0  # used to look for run/run/report_plots/*.png
    assert "data:image/png;base64," in (tmp_path / "run" / "report.html").read_text()


def test_report_output_and_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_folder(tmp_path / "run")
    target = tmp_path / "summary.html"
    assert main(["report", str(run), "--output", str(target), "--format", "both"]) == 0
    assert capsys.readouterr().out.split() == [str(target), str(tmp_path / "summary.md")]
    assert "(run/report_plots/loss.png)" in (tmp_path / "summary.md").read_text()


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics in" in capsys.readouterr().err
    run = _run_folder(tmp_path / "run")
    assert main(["report", str(run), "--output", str(tmp_path / "no" / "r.html")]) == 2
    assert "--output" in capsys.readouterr().err


def test_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    import numpy
    import torch

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "moekit        0.1.0" in out
    assert f"numpy        {numpy.__version__}" in out
    assert f"torch        {torch.__version__}" in out
    assert "kernel backends:" in out and "cpu cores" in out


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= {"moekit", "python", "packages", "devices", "kernel_backends"}
    assert info["packages"]["scikit-learn"]
    assert isinstance(info["devices"]["cuda"], list)
