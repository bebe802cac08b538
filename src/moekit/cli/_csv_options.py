"""The CSV dialect flags that `moekit fit` and `moekit predict` share: --delimiter, --decimal,
--encoding (read by :func:`moekit.data.csv_table.read_table`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_csv_arguments", "csv_options", "delimiter_arg"]


def delimiter_arg(text: str) -> str:
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|",
             "space": " "}
    value = named.get(text.lower(), text)
    if len(value) != 1 or value in "\"\r\n":
        raise argparse.ArgumentTypeError(
            f"expected one character (e.g. ';'), or tab, got {text!r}"
        )
    return value


def add_csv_arguments(parser: argparse.ArgumentParser) -> None:
    """--delimiter, --decimal and --encoding (shared by `moekit fit` and `moekit predict`)."""
    parser.add_argument("--delimiter", type=delimiter_arg, default=None, metavar="CHAR",
                        help="field separator: a character such as ';' or '|', or 'tab' "
                             "(default: detected among comma, semicolon, tab and |)")
    parser.add_argument("--decimal", choices=(".", ","), default=".", metavar="MARK",
                        help="decimal mark of the numbers, '.' or ',' (for files that write 1,5; "
                             "the delimiter is then usually ';'); default: '.'")
    parser.add_argument("--encoding", default=None, metavar="NAME",
                        help="text encoding of the file, e.g. latin-1 or cp1252 (default: "
                             "UTF-8, or UTF-16 when the file starts with its byte-order mark)")


def csv_options(args: argparse.Namespace) -> dict[str, Any]:
    """read_table keywords for the flags of :func:`add_csv_arguments`."""
    return {"delimiter": args.delimiter, "decimal": args.decimal, "encoding": args.encoding}
