"""`moekit demo --quick` end to end: fits, trains, writes a report with its plots."""

from __future__ import annotations

import pytest

from moekit.cli.main import main


@pytest.mark.slow
def test_demo_quick_writes_report(tmp_path, capsys, monkeypatch):
    import moekit.train.checkpoint as checkpoint

    def no_reload(*args, **kwargs):
        raise AssertionError("the demo reloaded a checkpoint instead of using its trained model")

    monkeypatch.setattr(checkpoint, "load_checkpoint", no_reload)
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


def test_demo_on_cuda_without_a_gpu_fails_up_front(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "tour"
    assert main(["demo", "--quick", "--device", "cuda", "--output", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "--device cuda: torch" in lines[0] and "sees no CUDA GPU" in lines[0]
    assert "use --device cpu or --device auto" in lines[0]
    assert captured.out == "" and not out.exists()  # nothing was fitted or written first


def test_readme_and_help_state_the_same_demo_time():
    import re
    from pathlib import Path

    from moekit.cli import demo

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"`moekit demo` takes (about [a-z ]+?) on (\d) CPU cores", readme)
    assert stated is not None
    assert f"# {stated.group(1)} on {stated.group(2)} CPU cores" in (demo.__doc__ or "")
