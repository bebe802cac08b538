"""The report's document model: sections holding text, tables, images and notes.

Both the renderer (``_render``) and the report builder (``report``) import these; neither
imports the other's internals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Section", "Table"]


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
