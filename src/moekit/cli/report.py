"""Write the report of a training run: plots and a table of results in one HTML or Markdown file.

Reads the run folder's metrics.jsonl (and those of sub-runs such as moe/ and dense/), config.json,
results.json and any PNG files; see moekit.viz.report for the folder's contract.

Example:
    moekit report moekit-runs/demo-1 --format both
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moekit.cli.errors import CLIError

HELP = "write an HTML/Markdown report (plots, results table) of a training run folder"
NEEDS = ("matplotlib",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="folder a training run wrote (holds metrics.jsonl, or sub-folders "
                             "that do)")
    parser.add_argument("--output", "-o", metavar="FILE", default=None,
                        help="file to write (default: RUN_DIR/report.html and/or report.md); "
                             "with --format both its suffix becomes .html and .md")
    parser.add_argument("--format", dest="fmt", choices=("html", "md", "both"), default="html",
                        help="html: one self-contained file with the images embedded; md: "
                             "Markdown referencing the PNG files; both (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from moekit.viz.report import RunFolderError, build_report_from_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise CLIError(f"run folder {str(run_dir)!r} {what}; pass the folder a training run "
                       "wrote (it holds metrics.jsonl)")
    if args.output is not None and not Path(args.output).parent.is_dir():
        raise CLIError(f"--output {args.output!r}: folder {str(Path(args.output).parent)!r} "
                       "does not exist; create it or choose another path")
    try:
        paths = build_report_from_run(run_dir, output=args.output, fmt=args.fmt)
    except RunFolderError as err:
        raise CLIError(str(err)) from err
    for path in paths:
        print(path)
    return 0
