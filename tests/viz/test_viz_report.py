"""Reports: HTML self-contained with embedded images and tables, Markdown referencing files,
robust to missing pieces, clear errors, atomic writes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from moekit.viz.report import (
    RunFolderError,
    Section,
    Table,
    build_report_from_run,
    write_report,
)
from moekit.viz.training import plot_expert_load

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()[:10]  # prefix of any PNG in base64


def fabricate_run(root: Path, *, crash_line: bool = True) -> Path:
    """A run folder as a training run leaves it: moe/ and dense/ sub-runs, config, results."""
    for name, scale in (("moe", 1.0), ("dense", 1.1)):
        sub = root / name
        sub.mkdir(parents=True)
        with open(sub / "metrics.jsonl", "w") as fh:
            for s in range(0, 100, 10):
                rec: dict = {"step": s, "loss": scale * 3 / (1 + s / 20), "lr": 1e-3,
                             "tokens_per_s": 1000.0 + s}
                if name == "moe":
                    rec["expert_load"] = [0.4 - s / 1000, 0.2, 0.2, 0.2 + s / 1000]
                print(json.dumps(rec), file=fh)
                if s % 30 == 0:
                    print(json.dumps({"step": s, "split": "val", "loss": scale * 3.2 / (1 + s / 20)}),
                          file=fh)
            if crash_line:
                fh.write('{"step": 100, "lo')  # a crash mid-write
        (sub / "config.json").write_text(json.dumps({"model": {"experts": 4}, "name": name}))
    (root / "results.json").write_text(json.dumps(
        [{"model": "moe", "val_loss": 1.2345678, "params": 1000},
         {"model": "dense", "val_loss": 1.4, "params": 800}]))
    plot_expert_load([[1.0, 2.0], [2.0, 1.0]], root / "routing_extra.png")
    return root


def test_report_from_fabricated_run(tmp_path: Path) -> None:
    run = fabricate_run(tmp_path / "run")
    paths = build_report_from_run(run)
    assert [p.name for p in paths] == ["report.html", "report.md"]
    html = paths[0].read_text()
    md = paths[1].read_text()
    # tables: the summary per model, the results, the configuration
    assert "<table>" in html and "Training summary per model" in html
    assert "<td>moe</td>" in html and "<td>dense</td>" in html
    assert "1.235" in html  # floats to 4 significant digits
    assert "model.experts" in html  # config flattened
    # images are embedded, none referenced by path
    assert html.count(f'src="data:image/png;base64,{PNG_B64}') >= 4
    assert 'src="report_plots' not in html
    for png in ("loss.png", "tokens_per_s.png", "expert_load_moe.png"):
        assert (run / "report_plots" / png).is_file()
        assert f"(report_plots/{png})" in md
    assert "(routing_extra.png)" in md
    assert "| moe |" in md
    # the line cut off by a crash is skipped and reported, not fatal
    assert "skipped 1 line(s)" in md


def test_report_of_sparse_run_notes_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) for s in range(5)))
    paths = build_report_from_run(tmp_path, fmt="md")
    md = paths[0].read_text()
    assert paths[0].name == "report.md" and not (tmp_path / "report.html").exists()
    assert "no results.json" in md and "no config.json" in md
    assert "no validation records" in md
    assert "Expert load" not in md


def test_results_keyed_by_model_and_dense_without_load(tmp_path: Path) -> None:
    # the layout moekit's own trainer writes: a dense model logs expert_load as []
    (tmp_path / "metrics.jsonl").write_text("\n".join(
        json.dumps({"step": s, "loss": 1.0, "expert_load": [], "model": "dense"})
        for s in range(3)))
    (tmp_path / "results.json").write_text(json.dumps(
        {"moe": {"val_loss": 1.0}, "dense": {"val_loss": 1.1}}))
    md = build_report_from_run(tmp_path, fmt="md")[0].read_text()
    assert "| model | val_loss |" in md and "| dense | 1.1 |" in md
    assert "malformed" not in md and "Expert load" not in md


def test_missing_or_empty_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report_from_run(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        build_report_from_run(tmp_path / "file.txt")
    with pytest.raises(RunFolderError, match="no metrics in"):
        build_report_from_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("not json\n")
    with pytest.raises(RunFolderError, match="metrics.jsonl"):
        build_report_from_run(tmp_path)


def test_write_report_output_and_escaping(tmp_path: Path) -> None:
    sec = Section(title="A <b> & c", text="x < y\n\nsecond", tables=[
        Table(rows=[{"a|b": 1.0, "c": [1, 2]}], caption="caps")], notes=["note 1"])
    out = tmp_path / "out"
    out.mkdir()
    paths = write_report(tmp_path, "T", [sec], output=out / "r.txt", fmt="both")
    assert [p.name for p in paths] == ["r.html", "r.md"]
    html = paths[0].read_text()
    assert "A &lt;b&gt; &amp; c" in html and "<p>x &lt; y</p>" in html
    assert "a\\|b" in paths[1].read_text()
    with pytest.raises(ValueError, match="fmt='pdf'"):
        write_report(tmp_path, "T", [sec], fmt="pdf")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="image .*gone.png"):
        write_report(tmp_path, "T", [Section(title="s", images=["gone.png"])])


def test_failed_report_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    run = fabricate_run(tmp_path / "run", crash_line=False)
    (html,) = build_report_from_run(run, fmt="html")
    before = html.read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):  # plots are written as usual; the HTML's last step fails
        if Path(dst).suffix == ".html":
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        build_report_from_run(run, fmt="html")
    monkeypatch.undo()
    assert html.read_bytes() == before
    assert not list(run.glob(".*.tmp"))


def test_preformatted_text_keeps_its_layout(tmp_path: Path) -> None:
    from moekit.viz import Section, write_report

    table = "parameter   coef\nexpert 0    1.5 <x>"
    html_path, md_path = write_report(tmp_path, "t", [Section(title="s", preformatted=table)])
    assert "<pre>parameter   coef\nexpert 0    1.5 &lt;x&gt;</pre>" in html_path.read_text()
    assert "```\nparameter   coef\nexpert 0    1.5 <x>\n```" in md_path.read_text()


def _capture_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """Record, for every training plot a report draws, its title, labels and line colours."""
    from moekit.viz import training

    seen: dict[str, dict] = {}
    real_save = training.save_figure

    def save(fig, path, **kwargs):
        ax = fig.axes[0]
        seen[Path(path).name] = {"title": ax.get_title(), "ylabel": ax.get_ylabel(),
                                 "lines": {ln.get_label(): ln.get_color() for ln in ax.lines}}
        return real_save(fig, path, **kwargs)

    monkeypatch.setattr(training, "save_figure", save)
    return seen


def _trainer_like_run(root: Path) -> Path:
    """What `moekit train` with a dense baseline writes: val records carry lr and accuracy, a
    results.json keyed by model whose entries repeat the model name, three config.json files."""
    train = {"steps": 4, "lr": 0.003, "batch_size": 8}
    for name in ("moe", "dense"):
        sub = root / name
        sub.mkdir(parents=True)
        lines = []
        for s in (1, 2, 4):
            lines.append({"step": s, "split": "train", "loss": 2.0 / s, "lr": 1e-3 * s,
                          "tokens_per_s": 100.0, "model": name})
        lines.append({"step": 4, "split": "val", "loss": 1.0, "lr": 4e-3, "accuracy": 0.5,
                      "tokens_per_s": None, "model": name})
        (sub / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
        model = {"d_model": 16, "moe": None if name == "dense" else {"num_experts": 4}}
        (sub / "config.json").write_text(json.dumps({"model_name": name, "train": train,
                                                     "model": model}))
    (root / "results.json").write_text(json.dumps(
        {"moe": {"model": "moe", "final_val_loss": 1.0}, "dense": {"model": "dense",
                                                                   "final_val_loss": 1.1}}))
    (root / "config.json").write_text(json.dumps({"train": train, "dense_baseline": True}))
    return root


def test_report_plots_read_well(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture_figures(monkeypatch)
    html = build_report_from_run(_trainer_like_run(tmp_path / "run"), fmt="html")[0].read_text()
    # the learning rate has no validation meaning: no validation line on its plot
    assert seen["lr.png"]["lines"] and not any("val" in k for k in seen["lr.png"]["lines"])
    assert seen["lr.png"]["title"] == "Learning-rate schedule"
    assert seen["loss.png"]["ylabel"] == "loss (cross-entropy, nats)"
    assert "_" not in seen["tokens_per_s.png"]["title"] + seen["tokens_per_s.png"]["ylabel"]
    assert set(seen["accuracy.png"]["lines"]) == {"moe val", "dense val"}
    # one colour per model, whatever the order the folders were found in (dense/ sorts first)
    assert seen["loss.png"]["lines"]["moe train"] == "C0"
    assert seen["loss.png"]["lines"]["dense train"] == "C1"
    # the configuration once: shared settings in one table, the differences side by side
    assert html.count("<td>train.lr</td>") == 1
    assert "Settings that differ between dense, moe" in html
    # the results table has one model column, not a name and a model column
    assert "<th>name</th>" not in html and html.count("<th>model</th>") >= 1


def test_one_colour_per_model_in_any_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moekit.viz import plot_training_curves

    seen = _capture_figures(monkeypatch)
    rec = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    plot_training_curves({"moe": rec, "dense": rec}, tmp_path / "a.png")
    plot_training_curves({"dense": rec, "moe": rec, "other": rec}, tmp_path / "b.png")
    assert seen["a.png"]["lines"]["moe train"] == seen["b.png"]["lines"]["moe train"]
    assert seen["a.png"]["lines"]["dense train"] == seen["b.png"]["lines"]["dense train"]
    assert len(set(seen["b.png"]["lines"].values())) == 3
