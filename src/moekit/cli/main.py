"""Entry point of the ``moekit`` command.

Each subcommand lives in its own module of :mod:`moekit.cli` and exposes ``HELP`` (one line),
``add_arguments(parser)`` (cheap: no torch import) and ``run(args) -> int``, and optionally
``NEEDS`` (the optional packages it imports, checked before it starts: a missing one is a
one-line error with the pip command, see :mod:`moekit._deps`). Modules are imported only when
their subcommand runs, so ``moekit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from moekit import __version__
from moekit._deps import OPTIONAL, MissingDependencyError, install_hint, require
from moekit.cli.errors import CLIError

# name -> module under moekit.cli; order is the order shown by --help.
SUBCOMMANDS: dict[str, str] = {
    "demo": "demo",
    "train": "train",
    "fit": "fit",
    "predict": "predict",
    "report": "report",
    "showcase": "showcase",
    "info": "info",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moekit",
        description="Mixtures of Experts: statistical MoE fitted by EM and sparse MoE layers.",
    )
    parser.add_argument("--version", action="version", version=f"moekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"moekit.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        require(*getattr(args._module, "NEEDS", ()), feature="this command")
        return int(args._module.run(args) or 0)
    except (CLIError, MissingDependencyError) as err:
        print(f"moekit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] not in OPTIONAL:
            raise
        print(f"moekit {args.command}: error: this needs {err.name.split('.')[0]}, which is not "
              f"installed: {install_hint([err.name.split('.')[0]])}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nmoekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
