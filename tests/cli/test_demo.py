"""`moekit demo --quick` end to end: fits, trains, writes a report with its plots."""

from __future__ import annotations

import pytest

from moekit.cli.main import main


@pytest.mark.slow
def test_demo_quick_writes_report(tmp_path, capsys):
    out = tmp_path / "tour"
    assert main(["demo", "--quick", "--output", str(out), "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"report written to {out / 'report.html'}" in printed
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 5  # fit, gate regions, curves, load, routing
    assert "Part 1: statistical mixtures of experts" in html and "Part 2" in html
    for name in ("estimator_fit", "gate_regions", "lm_curves", "lm_routing"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert (out / "lm" / "moe" / "metrics.jsonl").exists()
    assert (out / "lm" / "dense" / "metrics.jsonl").exists()
    # a second run into the same folder refuses instead of mixing runs
    assert main(["demo", "--quick", "--output", str(out), "--steps", "2"]) == 2
    assert "--force" in capsys.readouterr().err
