"""Quality of every registered showcase: one dated table of each model's held-out metric.

Runs each showcase of ``moekit.showcases.SHOWCASES`` (a placeholder gets a row saying it is not
implemented yet, never a number), then writes ``benchmarks/results/quality-YYYY-MM-DD.md`` and
``.json``: per showcase and data set, every model's metric (mean +- sd over the replicates),
parameters, fit time, and the verdict (does the best MoE beat the best baseline by more than the
spread?), with the machine, the versions and each showcase's wall and CPU time. The showcases'
own folders (results.json, report.html) go under ``--runs``.

    python benchmarks/quality.py                       # defaults: ~10 minutes on 2 idle cores
    python benchmarks/quality.py --quick               # the smoke settings (about a minute)
    python benchmarks/quality.py --only health finance --seeds 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moekit.showcases import SHOWCASES, get_showcase, is_implemented, run_showcase

HERE = Path(__file__).resolve().parent


def machine() -> dict[str, Any]:
    import numpy
    import scipy
    import sklearn

    from moekit import __version__

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "moekit": __version__,
        "numpy": numpy.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
    }
    for name in ("torch", "statsmodels", "arch"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
            check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info


def rows_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for ev in record["evaluations"]:
        for m in ev["models"]:
            rows.append({"showcase": record["showcase"], "dataset": ev["dataset"],
                         "metric": ev["metric"]["name"], "direction": ev["metric"]["direction"],
                         "model": m["name"], "kind": m["kind"], "mean": m["mean"],
                         "spread": m["spread"], "replicates": len(m["per_seed"]),
                         "parameters": m["parameters_total"], "fit_s": m["train_time_s"]})
    return rows


def markdown(report: dict[str, Any]) -> str:
    mach = report["machine"]
    lines = [f"# moekit showcase quality, {report['date']}", "",
             f"`{report['command']}` on {mach['platform']} ({mach['processor']}, "
             f"{mach['cpu_count']} CPUs), Python {mach['python']}, moekit {mach['moekit']} "
             f"(commit {mach['git_commit']}), numpy {mach['numpy']}, scikit-learn "
             f"{mach['scikit-learn']}, statsmodels {mach['statsmodels']}, arch {mach['arch']}, "
             f"torch {mach['torch']}.", ""]
    for sc in report["showcases"]:
        lines.append(f"## {sc['name']}")
        lines.append("")
        if sc["status"] != "ok":
            lines += [f"{sc['status']}: {sc['message']}", ""]
            continue
        lines.append(f"Wall time {sc['wall_s']:.0f} s, CPU time {sc['cpu_s']:.0f} s "
                     f"({'--quick' if report['quick'] else 'default settings'}).")
        lines.append("")
        for ev in sc["record"]["evaluations"]:
            better = "higher" if ev["metric"]["direction"] == "higher" else "lower"
            lines += [f"**{ev['dataset']}**: {ev['metric']['description']}, {better} is better, "
                      f"mean +- sd over {len(ev['replicates'])} replicates.", "",
                      "| model | kind | metric | RMSE | parameters | fit s |",
                      "|---|---|---:|---:|---:|---:|"]
            for m in ev["models"]:
                rmse = m["other"].get("rmse", {}).get("mean")
                lines.append(f"| {m['name']} | {m['kind']} | {m['mean']:.4f} +- "
                             f"{m['spread']:.4f} | {'' if rmse is None else f'{rmse:.4f}'} | "
                             f"{m['parameters_total']} | {m['train_time_s']:.2f} |")
            lines += ["", f"Verdict: {ev['verdict']['text']}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the showcases' smoke settings")
    parser.add_argument("--seeds", type=int, default=None, help="replicates (default: each "
                                                                "showcase's own)")
    parser.add_argument("--only", nargs="+", choices=list(SHOWCASES), default=None,
                        help="run only these showcases")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--output", default=str(HERE / "results"),
                        help="folder for the dated table (default: benchmarks/results)")
    parser.add_argument("--runs", default=None,
                        help="folder for each showcase's own run (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs or tempfile.mkdtemp(prefix="moekit-quality-"))
    report: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "quick": args.quick, "seeds": args.seeds,
        "device": args.device, "command": " ".join(["python benchmarks/quality.py",
                                                    *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(), "showcases": [], "rows": []}
    for name in args.only or list(SHOWCASES):
        showcase = get_showcase(name)
        if not is_implemented(showcase):
            report["showcases"].append({"name": name, "status": "not implemented yet",
                                        "message": showcase.description})
            print(f"{name}: not implemented yet", flush=True)
            continue
        print(f"{name}: running ...", flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        done = run_showcase(name, quick=args.quick, seeds=args.seeds, device=args.device,
                            output=runs / name)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        record = json.loads(done.results_json.read_text())
        report["showcases"].append({"name": name, "status": "ok", "wall_s": wall, "cpu_s": cpu,
                                    "run": str(runs / name), "record": record})
        report["rows"] += rows_of(record)
        for ev in record["evaluations"]:
            print(f"  {ev['dataset']}: {ev['verdict']['text']}", flush=True)
        print(f"  {wall:.0f} s wall, {cpu:.0f} s CPU; report {done.report}", flush=True)
    stem = out / f"quality-{report['date']}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
