"""Per-run reports: one self-contained HTML file (PNG images embedded) and the same as Markdown.

:func:`write_report` renders sections you assemble; :func:`build_report_from_run` reads what a
training run left in a folder, makes the plots and writes the report.

Run-folder contract
-------------------
What :func:`build_report_from_run` reads (``moekit train`` writes these files; their names and
formats are defined in :mod:`moekit.runs`); every piece is optional except that at least one
``metrics.jsonl`` must hold a record::

    RUN_DIR/
      metrics.jsonl      one JSON object per line (below), appended as training goes
      config.json        a JSON object, shown flattened (``optim.lr``) as a key/value table
      results.json       a JSON object (one row), a list of objects (one row each), or an
                         object of objects ({"moe": {...}, "dense": {...}}: one row each,
                         the key in a "name" column); nested objects become dotted columns
      routing.json       {"counts": [[...]], "model": ...}: token-slots of each class per
                         expert, drawn as a heatmap (class names from config.json's
                         data_info.class_names)
      *.png              plots the run made itself, embedded as they are
      NAME/              sub-runs (e.g. ``moe/`` and ``dense/``) with the same layout; any
                         sub-folder holding a metrics.jsonl is one
      report_plots/      written by the report: the plots it makes (never read as input)

A ``metrics.jsonl`` record::

    {"step": 120,                  # optimiser step (int); missing: the line's position is used
     "split": "train",             # "train" (default when absent) or "val"
     "loss": 2.31,                 # any numeric metrics; "loss" and "tokens_per_s" get plots
     "lr": 0.0006, "tokens_per_s": 5400.0,
     "val_loss": 2.4,              # a train record may carry val_<metric> instead of a val record
     "expert_load": [0.26, 0.24, 0.27, 0.23],   # optional: share or count per expert, train only
     "model": "moe"}               # optional: groups records into curves; default the run's
                                   # folder name

Curves are grouped by model, so a ``moe/`` and a ``dense/`` sub-run (or one file whose records
name two models) are drawn on one plot. Lines that are not JSON objects (e.g. a last line cut off
by a crash) are skipped and listed in the report's notes, as are missing optional files.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moekit._files import atomic_write_text
from moekit.viz import _render, _runs

__all__ = ["RunFolderError", "Section", "Table", "build_report_from_run", "write_report"]

ReportFormat = Literal["html", "md", "both"]


class RunFolderError(ValueError):
    """A run folder that exists but holds nothing a report can be made from."""


@dataclass(frozen=True, kw_only=True)
class Table:
    """A table of results.

    Attributes
    ----------
    rows : sequence of mapping
        One mapping per row, column name -> value; floats are shown to 4 significant digits.
    caption : str
    columns : sequence of str or None
        Column order; ``None`` takes the keys of the rows in first-seen order.
    """

    rows: Sequence[Mapping[str, Any]]
    caption: str = ""
    columns: Sequence[str] | None = None


@dataclass(frozen=True, kw_only=True)
class Section:
    """One section of a report.

    Attributes
    ----------
    title : str
    text : str
        Plain text; blank lines separate paragraphs (HTML special characters are escaped).
    tables : sequence of Table
    images : sequence of path-like
        PNG files; relative paths are taken relative to the report's ``run_dir``.
    notes : sequence of str
        Short remarks shown as a list (what was missing, what was skipped).
    preformatted : str
        Text shown as is, in a fixed-width block after the paragraphs (e.g. an estimator's
        ``summary()`` table).
    """

    title: str
    text: str = ""
    tables: Sequence[Table] = ()
    images: Sequence[str | os.PathLike[str]] = ()
    notes: Sequence[str] = ()
    preformatted: str = ""


def _output_paths(run_dir: Path, output: str | os.PathLike[str] | None,
                  fmt: ReportFormat) -> dict[str, Path]:
    if fmt not in ("html", "md", "both"):
        raise ValueError(f"fmt={fmt!r} must be 'html', 'md' or 'both'")
    if output is not None and fmt != "both":
        return {fmt: Path(output)}
    base = Path(output) if output is not None else run_dir / "report"
    kinds = ("html", "md") if fmt == "both" else (fmt,)
    return {kind: base.with_suffix(f".{kind}") for kind in kinds}


def write_report(
    run_dir: str | os.PathLike[str],
    title: str,
    sections: Sequence[Section],
    *,
    output: str | os.PathLike[str] | None = None,
    fmt: ReportFormat = "both",
) -> list[Path]:
    """Write a report as self-contained HTML and/or Markdown, atomically.

    Parameters
    ----------
    run_dir : path-like
        Folder the report describes; relative image paths are resolved against it.
    title : str
    sections : sequence of Section
    output : path-like or None, default=None
        Where to write. ``None``: ``run_dir/report.html`` and/or ``run_dir/report.md``. With
        ``fmt="both"`` the suffix of ``output`` is replaced by ``.html`` and ``.md``; with one
        format ``output`` is used as given. Its folder must exist.
    fmt : {"html", "md", "both"}, default="both"
        HTML embeds every PNG as a base64 data URI, so the one file can be mailed or archived;
        Markdown references the PNG files by relative path.

    Returns
    -------
    list of pathlib.Path
        The files written, HTML first.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> paths = write_report(d, "demo", [Section(title="Results", tables=[
    ...     Table(rows=[{"model": "moe", "val_loss": 1.52}, {"model": "dense", "val_loss": 1.61}])
    ... ])])
    >>> [p.name for p in paths]
    ['report.html', 'report.md']
    """
    root = Path(run_dir).absolute()  # relative image paths below are relative to this folder
    if not root.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} is not an existing folder")
    resolved: list[Section] = []
    images: dict[Path, bytes] = {}
    for sec in sections:
        if not isinstance(sec, Section):
            raise TypeError(f"sections must hold Section objects, got {type(sec).__name__}")
        paths = [p if p.is_absolute() else root / p for p in map(Path, sec.images)]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"image {p} of section {sec.title!r} does not exist")
            images[p] = p.read_bytes()
        resolved.append(Section(title=sec.title, text=sec.text, tables=sec.tables,
                                images=paths, notes=sec.notes, preformatted=sec.preformatted))
    from moekit import __version__

    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    subtitle = f"moekit {__version__} report of {root.resolve()}, written {stamp}"
    written: list[Path] = []
    for kind, path in _output_paths(root, output, fmt).items():
        if kind == "html":
            text = _render.render_html(title, subtitle, resolved, images)
        else:
            text = _render.render_markdown(title, subtitle, resolved, path.parent)
        written.append(atomic_write_text(path, text))
    return written


def _summary_rows(hist: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    from moekit.viz.training import split_records

    rows = []
    for model, records in hist.items():
        train, val = split_records(records, "loss")
        tps = [v for _, v in split_records(records, "tokens_per_s")[0]]
        steps = [s for s, _ in train + val]
        row: dict[str, Any] = {"model": model, "records": len(records),
                               "last step": int(max(steps)) if steps else None}
        row["final train loss"] = sorted(train)[-1][1] if train else None
        if val:
            best_step, best = min(val, key=lambda sv: sv[1])
            row["best val loss"] = best
            row["at step"] = int(best_step)
        accuracy = split_records(records, "accuracy")[1]
        if accuracy:
            row["final val accuracy"] = sorted(accuracy)[-1][1]
            row["best val accuracy"] = max(v for _, v in accuracy)
        row["median tokens/s"] = float(np.median(tps)) if tps else None
        loads = _load_matrix(records)[0]
        if loads is not None and loads[-1].sum() > 0:
            last = loads[-1] / loads[-1].sum()
            row["last max/mean load"] = float(last.max() * len(last))
        rows.append(row)
    return rows


def _load_matrix(records: list[dict[str, Any]]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(steps, E) expert loads of the train records that carry one, and their steps."""
    rows, steps = [], []
    for i, rec in enumerate(records):
        load = rec.get("expert_load")
        if rec.get("split", "train") == "train" and isinstance(load, list) and load:
            rows.append(load)
            steps.append(rec.get("step", i))
    if not rows or len({len(r) for r in rows}) != 1:
        return None, None
    try:
        return np.asarray(rows, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    except (TypeError, ValueError):
        return None, None


def _plot_sections(hist: dict[str, list[dict[str, Any]]], plots: Path,
                   notes: list[str]) -> list[Section]:
    from moekit.viz.training import plot_expert_load, plot_training_curves, split_records

    sections = []
    curves: list[str | os.PathLike[str]] = []
    # (metric, file, which records): accuracy is measured on validation data only, throughput
    # and the learning rate belong to training steps.
    for metric, fname, splits in (("loss", "loss.png", "both"),
                                  ("accuracy", "accuracy.png", "val"),
                                  ("tokens_per_s", "tokens_per_s.png", "train"),
                                  ("lr", "lr.png", "train")):
        pairs = [split_records(r, metric) for r in hist.values()]
        if any((t and splits != "val") or (v and splits != "train") for t, v in pairs):
            curves.append(plot_training_curves(hist, plots / fname, metric, splits=splits))
        elif metric == "loss":
            notes.append("no record holds a numeric 'loss': no loss curves")
    if curves:
        sections.append(Section(title="Training curves", images=curves, text=(
            "Solid lines: training; dashed with markers: validation. One colour per model, the "
            "same in every plot (MoE blue, dense orange).")))
    load_images: list[str | os.PathLike[str]] = []
    for model, records in hist.items():
        loads, steps = _load_matrix(records)
        if loads is None:
            if any(r.get("expert_load") for r in records):  # null or [] means no experts
                notes.append(f"{model}: expert_load lists are malformed or change length; "
                             "no load plot")
            continue
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model)
        load_images.append(plot_expert_load(loads, plots / f"expert_load_{safe}.png", steps=steps,
                                            title=f"Expert load of the {model} model"))
    if load_images:
        sections.append(Section(
            title="Expert load", images=load_images,
            text="Share of tokens routed to each expert; dashed lines mark perfect balance."))
    return sections


def build_report_from_run(
    run_dir: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    fmt: ReportFormat = "both",
    title: str | None = None,
) -> list[Path]:
    """Read a run folder (see the module docstring for its contract), plot it, write a report.

    Parameters
    ----------
    run_dir : path-like
        The folder a training run wrote.
    output : path-like or None
        As in :func:`write_report`; default ``run_dir/report.html`` and ``report.md``.
    fmt : {"html", "md", "both"}, default="both"
    title : str or None
        Default ``"moekit run: <folder name>"``.

    Returns
    -------
    list of pathlib.Path
        The report files written. The plots go to ``run_dir/report_plots/``.

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        If ``run_dir`` does not exist or is a file.
    RunFolderError
        If no ``metrics.jsonl`` in the folder or its sub-folders holds a record.

    Examples
    --------
    >>> import json, os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "metrics.jsonl"), "w") as fh:
    ...     for s in range(5):
    ...         print(json.dumps({"step": s, "loss": 2.0 - 0.1 * s}), file=fh)
    >>> [p.name for p in build_report_from_run(d, fmt="html")]
    ['report.html']
    """
    root = Path(run_dir).absolute()
    if not root.exists():
        raise FileNotFoundError(
            f"run folder {str(root)!r} does not exist; pass the folder a training run wrote "
            "(it holds metrics.jsonl)")
    if not root.is_dir():
        raise NotADirectoryError(f"run folder {str(root)!r} is a file; pass its folder")
    runs = _runs.discover_runs(root)
    hist = _runs.histories(runs)
    if not hist:
        raise RunFolderError(
            f"no metrics in {str(root)!r}: expected a {_runs.METRICS_FILE} (one JSON object per "
            "line, e.g. {\"step\": 1, \"loss\": 2.3}) in the folder or in its sub-folders")
    notes = [n for run in runs for n in run.notes]
    plots = root / _runs.PLOTS_DIR
    plots.mkdir(exist_ok=True)

    summary = Table(rows=_summary_rows(hist), caption="Training summary per model")
    tables = [summary]
    # the top folder's results.json usually summarises its sub-runs; show theirs only without it
    shown = runs[:1] if runs[0].results else runs
    for run in shown:
        if run.results:
            tables.append(Table(rows=run.results, caption=f"Results ({run.name})"))
    if not any(run.results for run in runs):
        notes.append(f"no {_runs.RESULTS_FILE}: no results table")
    sections = [Section(title="Summary", tables=tables, text=(
        f"{len(hist)} model(s): {', '.join(hist)}. 'last max/mean load' is the busiest "
        "expert's share times the number of experts at the last step (1 = balanced)."))]
    sections += _plot_sections(hist, plots, notes)
    sections += _routing_sections(runs, plots, notes)
    pngs: list[str | os.PathLike[str]] = [p for run in runs for p in run.pngs]
    if pngs:
        sections.append(Section(title="Figures from the run", images=pngs))
    configs = _config_tables(runs)
    if configs:
        sections.append(Section(title="Configuration", tables=configs))
    else:
        notes.append(f"no {_runs.CONFIG_FILE}: configuration not shown")
    if not any(_has_val(r) for r in hist.values()):
        notes.append("no validation records (split 'val' or val_loss): no validation curve")
    if notes:
        sections.append(Section(title="Notes", notes=notes))
    return write_report(root, title or f"moekit run: {root.resolve().name}", sections,
                        output=output, fmt=fmt)


def _routing_sections(runs: list[_runs.RunData], plots: Path, notes: list[str]) -> list[Section]:
    """A heatmap of which expert each class goes to, for runs that recorded it (routing.json)."""
    from moekit.viz.routing import plot_routing_heatmap

    images: list[str | os.PathLike[str]] = []
    for run in runs:
        if run.routing is None:
            continue
        try:
            counts = np.asarray(run.routing["counts"], dtype=np.float64)
        except (TypeError, ValueError):
            notes.append(f"{run.name}: routing counts are not a table of numbers; no routing plot")
            continue
        if counts.ndim != 2 or counts.size == 0:
            notes.append(f"{run.name}: routing counts are not a (classes, experts) table")
            continue
        names = (run.config or {}).get("data_info.class_names")
        if not (isinstance(names, list) and len(names) == counts.shape[0]):
            names = [f"class {i}" for i in range(counts.shape[0])]
        seen = counts.sum(axis=1) > 0
        model = str(run.routing.get("model", run.name))
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model)
        images.append(plot_routing_heatmap(
            counts[seen], [str(n) for n, s in zip(names, seen) if s], plots / f"routing_{safe}.png",
            title=f"Which expert each class goes to ({model}, first MoE layer, validation data)"))
    if not images:
        return []
    return [Section(title="Routing", images=images, text=(
        "Share of each class's token-slots (patches or frames of its examples) that the first "
        "MoE layer sent to each expert, at the final evaluation."))]


def _config_tables(runs: list[_runs.RunData]) -> list[Table]:
    """The configuration, once: with sub-runs (``moe/``, ``dense/``) the settings they share,
    then one column per model for those that differ; the top folder's own summary of the same
    settings is then left out."""
    subs = [run for run in runs[1:] if run.config]
    if not subs:
        return [Table(rows=[{"key": k, "value": v} for k, v in run.config.items()],
                      caption=f"Configuration ({run.name})") for run in runs[:1] if run.config]
    if len(subs) == 1:
        return [Table(rows=[{"key": k, "value": v} for k, v in (subs[0].config or {}).items()],
                      caption=f"Configuration ({subs[0].name})")]
    keys = list(dict.fromkeys(k for run in subs for k in (run.config or {})))
    missing = object()
    shared, differ = [], []
    for key in keys:
        values = [(run.config or {}).get(key, missing) for run in subs]
        if all(v == values[0] for v in values) and values[0] is not missing:
            shared.append({"key": key, "value": values[0]})
        else:
            differ.append({"key": key, **{run.name: (None if v is missing else v)
                                          for run, v in zip(subs, values)}})
    names = ", ".join(run.name for run in subs)
    tables = []
    if differ:
        tables.append(Table(rows=differ, caption=f"Settings that differ between {names}"))
    if shared:
        tables.append(Table(rows=shared, caption=f"Settings shared by {names}"))
    return tables


def _has_val(records: list[dict[str, Any]]) -> bool:
    """Whether any record is a validation record or carries ``val_loss``."""
    return any(r.get("split") == "val" or "val_loss" in r for r in records)
