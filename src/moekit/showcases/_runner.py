"""Find a showcase by name, run it, and write its results.json and report atomically."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from moekit._files import atomic_write_json
from moekit.showcases._base import (
    Evaluation,
    ModelResult,
    Showcase,
    ShowcaseNotImplementedError,
    ShowcaseResult,
)

__all__ = ["RESULTS_SCHEMA", "SHOWCASES", "ShowcaseRun", "get_showcase", "result_to_json",
           "run_showcase"]

RESULTS_SCHEMA = "moekit.showcase.results/1"
DEVICES = ("cpu", "cuda")

#: Showcase name -> module defining ``SHOWCASE``; the order ``moekit showcase list`` shows.
SHOWCASES: Mapping[str, str] = MappingProxyType({
    "language": "moekit.showcases.language",
    "speech": "moekit.showcases.speech",
    "vision": "moekit.showcases.vision",
    "health": "moekit.showcases.health",
    "finance": "moekit.showcases.finance",
})


def get_showcase(name: str) -> Showcase:
    """The showcase registered as ``name`` (its module is imported now).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    if name not in SHOWCASES:
        raise ValueError(f"unknown showcase {name!r}; choose one of {', '.join(SHOWCASES)}")
    module = importlib.import_module(SHOWCASES[name])
    showcase = module.SHOWCASE
    if not isinstance(showcase, Showcase) or showcase.name != name:
        raise TypeError(f"{SHOWCASES[name]}.SHOWCASE must implement moekit.showcases.Showcase "
                        f"with name {name!r}")
    return showcase


def is_implemented(showcase: Showcase) -> bool:
    """False for the placeholders whose ``run`` raises ShowcaseNotImplementedError."""
    return bool(getattr(showcase, "implemented", True))


def _model_json(m: ModelResult) -> dict[str, Any]:
    from moekit.showcases._base import spread

    return {
        "name": m.name, "kind": m.kind, "mean": m.mean, "spread": m.spread,
        "per_seed": list(m.values),
        "other": {k: {"mean": sum(v) / len(v), "spread": spread(v), "per_seed": list(v)}
                  for k, v in m.other.items()},
        "parameters_total": m.parameters_total, "parameters_active": m.parameters_active,
        "train_time_s": m.train_time_s, "details": dict(m.details),
    }


def _evaluation_json(ev: Evaluation) -> dict[str, Any]:
    return {
        "dataset": ev.dataset,
        "metric": {"name": ev.metric.name, "direction": ev.metric.direction,
                   "description": ev.metric.description},
        "other_metrics": {k: {"name": v.name, "direction": v.direction,
                              "description": v.description} for k, v in ev.other_metrics.items()},
        "spread": "sample standard deviation over the replicates (ddof=1)",
        "replicates": list(ev.replicates),
        "models": [_model_json(m) for m in ev.models],
        "verdict": ev.verdict(),
    }


def result_to_json(result: ShowcaseResult, *, description: str, quick: bool, seeds: int | None,
                   device: str, elapsed_s: float, report: str) -> dict[str, Any]:
    """The results.json record of a run (schema :data:`RESULTS_SCHEMA`)."""
    from moekit import __version__

    return {
        "schema": RESULTS_SCHEMA,
        "showcase": result.showcase,
        "description": description,
        "moekit": __version__,
        "written": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "processor": platform.processor()
                    or platform.machine()},
        "quick": quick, "seeds": seeds, "device": device, "elapsed_s": elapsed_s,
        "config": dict(result.config),
        "evaluations": [_evaluation_json(ev) for ev in result.evaluations],
        "routing": dict(result.routing),
        "notes": list(result.notes),
        "report": report,
    }


def _summary_section(result: ShowcaseResult) -> Any:
    from moekit.viz import Section, Table

    tables = []
    texts = []
    for ev in result.evaluations:
        rows = []
        for m in ev.models:
            row: dict[str, Any] = {"model": m.name, "kind": m.kind,
                                   f"{ev.metric.name} (mean)": m.mean, "spread (sd)": m.spread}
            for key in ev.other_metrics:
                if key in m.other:
                    vals = m.other[key]
                    row[f"{key} (mean)"] = sum(vals) / len(vals)
            row["parameters"] = m.parameters_total
            row["fit time s"] = m.train_time_s
            rows.append(row)
        better = "higher" if ev.metric.direction == "higher" else "lower"
        tables.append(Table(rows=rows, caption=(
            f"{ev.dataset}: {ev.metric.description} ({better} is better), "
            f"{len(ev.replicates)} replicates")))
        texts.append(f"{ev.dataset}: {ev.verdict()['text']}.")
    return Section(title="Results", text="\n\n".join(texts), tables=tables,
                   notes=list(result.notes))


@dataclass(frozen=True, kw_only=True)
class ShowcaseRun:
    """Where a run wrote its files, and what it returned."""

    result: ShowcaseResult
    results_json: Path
    report: Path
    elapsed_s: float


def run_showcase(name: str | Showcase, *, quick: bool = False, seeds: int | None = None,
                 device: str = "cpu", output: str | os.PathLike[str]) -> ShowcaseRun:
    """Run the showcase ``name`` and write ``output/report.html`` (and .md) and ``results.json``.

    The report is written first and results.json last, each atomically, so a results.json
    on disk always belongs to a finished run.

    Parameters
    ----------
    name : str or Showcase
        A key of :data:`SHOWCASES`, or a showcase object with options of its own (e.g.
        ``LanguageShowcase(eval_texts={...})``).
    quick : bool, default=False
        Tiny sizes for a smoke run (under a minute on 2 CPU cores).
    seeds : int or None
        Replicates (seeds or splits); ``None`` takes the showcase's default.
    device : {"cpu", "cuda"}, default="cpu"
    output : path-like
        Folder to write into (created if needed).

    Raises
    ------
    ShowcaseNotImplementedError
        For a registered showcase not written yet.
    SourceNotFoundError
        When its data are not installed (the message gives the command that installs them).
    """
    if device not in DEVICES:
        raise ValueError(f"device={device!r} must be one of {DEVICES}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"seeds={seeds!r} must be a positive int (or None for the default)")
    if isinstance(name, str):
        showcase = get_showcase(name)
    elif isinstance(name, Showcase):
        showcase, name = name, name.name
    else:
        raise TypeError(f"name must be a showcase name or a Showcase object, got "
                        f"{type(name).__name__}")
    if not is_implemented(showcase):
        raise not_implemented(name)  # before anything is written
    out = Path(output).absolute()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = showcase.run(quick=quick, seeds=seeds, device=device, output=out)
    if not isinstance(result, ShowcaseResult) or result.showcase != name:
        raise TypeError(f"showcase {name!r} returned {type(result).__name__}, not its "
                        "ShowcaseResult")
    elapsed = time.perf_counter() - started

    from moekit.viz import Section, write_report

    intro = Section(title=f"The {name} showcase", text=(
        f"{showcase.description}\n\nRan in {elapsed:.0f} s ({'--quick' if quick else 'default'}"
        f" settings, device {device}). Repeat with `moekit showcase {name}"
        f"{' --quick' if quick else ''}{f' --seeds {seeds}' if seeds else ''}`."))
    paths = write_report(out, f"moekit showcase: {name}",
                         [intro, _summary_section(result), *result.sections], fmt="both")
    record = result_to_json(result, description=showcase.description, quick=quick,
                            seeds=seeds, device=device, elapsed_s=elapsed, report=paths[0].name)
    results_json = atomic_write_json(out / "results.json", record)
    return ShowcaseRun(result=result, results_json=results_json, report=paths[0],
                       elapsed_s=elapsed)


def not_implemented(name: str) -> ShowcaseNotImplementedError:
    """The error a placeholder showcase raises."""
    ready = [n for n in SHOWCASES if n != name and is_implemented(get_showcase(n))]
    return ShowcaseNotImplementedError(
        f"the {name} showcase is not implemented yet: its module {SHOWCASES[name]} is a "
        "placeholder that implements the protocol of moekit.showcases but has no model or data "
        "pipeline, so it writes no result rather than a made-up one. Ready now: "
        f"{', '.join(ready) or 'none'} (`moekit showcase list`).")
