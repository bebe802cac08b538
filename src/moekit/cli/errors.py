"""The one exception type a subcommand raises for a mistake the user can fix, and small helpers
for the mistakes every command meets (a missing folder, a closed pipe, a count that is not a
positive integer)."""

from __future__ import annotations

import argparse
import os
import sys


class CLIError(Exception):
    """A user-facing error: printed as ``moekit: error: <message>`` with exit status 2, no traceback."""


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts: an int >= 1, else argparse's own usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def check_output_path(path: str, example: str) -> None:
    """Refuse, before any work is done, an output path that cannot be written.

    ``example`` is a file name to suggest when ``path`` is a folder (e.g. ``"model.moekit"``).
    """
    if os.path.isdir(path):
        raise CLIError(f"{path!r} is a directory; give a file name such as {example}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"cannot write {path!r}: folder {folder!r} does not exist; create it first")


def write_error(path: str, err: OSError) -> CLIError:
    """One message for a failed write, without repeating what ``err`` already says."""
    text = str(err)
    if text.startswith("cannot write"):  # moekit._files.atomic_open's own message
        return CLIError(text)
    return CLIError(f"cannot write {path!r}: {err.strerror or text}")


def silence_stdout() -> None:
    """After a ``BrokenPipeError`` on standard output (``moekit ... | head``): point it at the
    null device, so that Python's flush at exit does not raise a second time.

    This is the recipe of Python's documentation (the note on SIGPIPE in :mod:`signal`).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass
