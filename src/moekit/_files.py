"""Atomic file writes: a crash or an error mid-write never leaves a half-written file behind.

Every file moekit writes for a user (models, checkpoints' metadata, reports, plots, predictions,
metrics summaries) goes through :func:`atomic_open`: the data goes to a temporary file in the
same folder, is flushed to disk, and then replaces the target in one ``os.replace``. If anything
raises before that, the temporary file is removed and the previous file (if any) is untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or a folder's) data to disk; best effort where the OS refuses folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (``mode`` "wb" or "w"); on success it replaces
    ``path`` in one step, on error it is removed and ``path`` stays as it was."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r} must be 'wb' or 'w'")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist; "
                                "create it first")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode == "w":
            fh: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            fh = os.fdopen(fd, "wb")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically; return the path."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; return the path."""
    return atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")
