"""Read what a training run leaves in a folder (the names and formats are in :mod:`moekit.runs`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moekit.runs import CONFIG_FILE, METRICS_FILE, RESULTS_FILE, ROUTING_FILE, read_metrics

PLOTS_DIR = "report_plots"


@dataclass
class RunData:
    """Everything found in one run folder (the top folder or one sub-run)."""

    name: str
    folder: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    results: list[dict[str, Any]] | None = None
    pngs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    routing: dict[str, Any] | None = None


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        notes.append(f"{path}: not valid JSON ({err}); skipped")
        return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _results_rows(data: Any, path: Path, notes: list[str]) -> list[dict[str, Any]] | None:
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        # {"moe": {...}, "dense": {...}}: one row per entry, its key in the "model" column (an
        # inner "model" field, which repeats the key in moekit's own runs, is not shown twice)
        return [{"model": k, **{f: x for f, x in flatten(v).items() if f != "model"}}
                for k, v in data.items()]
    if isinstance(data, dict):
        return [flatten(data)]
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return [flatten(r) for r in data]
    if data is not None:
        notes.append(f"{path}: expected a JSON object or a list of objects, got "
                     f"{type(data).__name__}; skipped")
    return None


def read_run(folder: Path, name: str) -> RunData:
    run = RunData(name=name, folder=folder)
    metrics = folder / METRICS_FILE
    if metrics.is_file():
        run.records = read_metrics(metrics, run.notes)
    config = folder / CONFIG_FILE
    if config.is_file():
        data = _read_json(config, run.notes)
        if isinstance(data, dict):
            run.config = flatten(data)
        elif data is not None:
            run.notes.append(f"{config}: expected a JSON object, got {type(data).__name__}")
    results = folder / RESULTS_FILE
    if results.is_file():
        run.results = _results_rows(_read_json(results, run.notes), results, run.notes)
    routing = folder / ROUTING_FILE
    if routing.is_file():
        data = _read_json(routing, run.notes)
        if isinstance(data, dict) and isinstance(data.get("counts"), list):
            run.routing = data
        elif data is not None:
            run.notes.append(f"{routing}: expected an object with a 'counts' table; skipped")
    run.pngs = sorted(p for p in folder.glob("*.png") if p.is_file())
    return run


def discover_runs(run_dir: Path) -> list[RunData]:
    """The top folder (if it holds any of the files) and each sub-folder holding metrics.jsonl."""
    runs = [read_run(run_dir, run_dir.resolve().name or "run")]
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name != PLOTS_DIR):
        if (sub / METRICS_FILE).is_file():
            runs.append(read_run(sub, sub.name))
    return runs


def histories(runs: list[RunData]) -> dict[str, list[dict[str, Any]]]:
    """Metric records grouped by model: a record's ``model`` key, else its run's name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for rec in run.records:
            model = rec.get("model")
            out.setdefault(str(model) if model is not None else run.name, []).append(rec)
    return out
