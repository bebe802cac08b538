"""How a CSV file is spelled: its text encoding and its delimiter, found or checked up front.

:func:`open_text` opens a CSV file for reading with errors a user can act on: a missing file, a
folder, a binary file (a zip such as a moekit model, or one with NUL bytes), an unknown encoding
name, and bytes that the encoding cannot decode (the message names the line, the bytes, what they
read as in Latin-1, and the ``--encoding`` to pass). Without an explicit encoding a file is read
as UTF-8, or as UTF-16 when it starts with a UTF-16 byte-order mark (Excel's "Unicode text").

:func:`sniff_delimiter` picks the delimiter among ``,``, ``;``, tab and ``|`` from the first lines;
:func:`read_header_row` reads the header, says which delimiter to pass when the header is one
column holding another, and recognises pandas' unnamed index column.

Only the standard library.
"""

from __future__ import annotations

import codecs
import csv
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = [
    "DELIMITERS",
    "CSVTableError",
    "delimiter_flag",
    "open_text",
    "read_header_row",
    "read_sample",
    "resolve_delimiter",
    "sniff_delimiter",
]

# Candidates for sniffing, in order of preference on a tie.
DELIMITERS = (",", ";", "\t", "|")
_SNIFF_CHARS = 1 << 16
_SNIFF_LINES = 50
_PEEK_BYTES = 4096


class CSVTableError(ValueError):
    """A CSV file that cannot be read as a numeric table; the message says where and how to fix."""


def delimiter_flag(delimiter: str) -> str:
    """How to write ``delimiter`` on a command line: ``tab``, or the character quoted."""
    return "tab" if delimiter == "\t" else repr(delimiter)


def sniff_delimiter(sample: str) -> str:
    """The delimiter of a CSV text among ``,``, ``;``, tab and ``|``.

    The chosen delimiter splits the header into the most columns among those that split every
    one of the first 50 non-blank lines into as many fields (a consistent table); when none is
    consistent, the one giving the header the most columns; ``,`` when none splits the header.

    Parameters
    ----------
    sample : str
        The start of the file (a truncated last line is ignored).

    Returns
    -------
    str

    Examples
    --------
    >>> sniff_delimiter("age;bmi;y\\n50;22,5;1\\n")
    ';'
    >>> sniff_delimiter("a\\tb\\n1\\t2\\n")
    '\\t'
    """
    lines = sample.splitlines()
    if len(sample) >= _SNIFF_CHARS and lines:
        lines = lines[:-1]  # probably cut in the middle
    lines = [line for line in lines if line.strip()][:_SNIFF_LINES]
    if not lines:
        return ","
    best, best_key = ",", (False, 1)
    for candidate in DELIMITERS:
        rows = list(csv.reader(lines, delimiter=candidate))
        n_fields = len(rows[0])
        if n_fields < 2:
            continue
        key = (all(len(row) == n_fields for row in rows[1:]), n_fields)
        if key > best_key:
            best, best_key = candidate, key
    return best


def _resolve_encoding(path: str, encoding: str | None, head: bytes) -> str:
    if encoding is None:
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"  # the BOM says which byte order
        return "utf-8-sig"  # drops the byte-order mark that spreadsheet programs write
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise CSVTableError(
            f"unknown encoding {encoding!r} for {path!r}; give a codec name Python knows, "
            "e.g. utf-8, latin-1, cp1252, utf-16"
        ) from None
    return "utf-8-sig" if name == "utf-8" else encoding


def _check_text(path: str, encoding: str, head: bytes) -> None:
    if head.startswith(b"PK\x03\x04"):
        raise CSVTableError(
            f"{path!r} is a zip archive (a moekit model file?), not a CSV text file; "
            "`moekit predict` takes the model first, then the CSV"
        )
    if b"\x00" in head and not codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
        raise CSVTableError(
            f"{path!r} holds NUL bytes: it is a binary file, or text in UTF-16 without a "
            "byte-order mark (then pass --encoding utf-16-le, encoding='utf-16-le'); "
            "give a CSV text file"
        )


def _decode_error(path: str, encoding: str) -> CSVTableError:
    """Find the first line that ``encoding`` cannot decode and say what to do about it."""
    line_no, bad, context = 0, b"", ""
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):  # noqa: B007 (line_no is used after the loop)
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as err:
                bad = raw[err.start:err.end]
                text = raw.decode("latin-1")  # one character per byte: offsets carry over
                context = text[max(0, err.start - 12):err.end + 12].strip()
                break
    shown = " ".join(f"0x{b:02x}" for b in bad)
    where = f"line {line_no} holds byte(s) {shown}" if bad else "the file ends mid-character"
    if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig"):
        seen = f" (in Latin-1 that part reads {context!r})" if context else ""
        return CSVTableError(
            f"{path!r} is not UTF-8 text: {where} that UTF-8 cannot decode{seen}. It was "
            "probably saved as Latin-1 or Windows-1252 (e.g. by Excel): pass --encoding latin-1 "
            "(encoding='latin-1'), or --encoding cp1252 for files from Windows, or re-save it "
            "as UTF-8"
        )
    return CSVTableError(
        f"{path!r} cannot be decoded as {encoding!r}: {where}; pass the file's encoding with "
        f"--encoding NAME (encoding=NAME), e.g. utf-8, latin-1, cp1252"
    )


@contextmanager
def open_text(path: str | os.PathLike[str], encoding: str | None = None) -> Iterator[TextIO]:
    """Open a CSV file as text, turning every reading failure into a :class:`CSVTableError`.

    Parameters
    ----------
    path : str or path-like
    encoding : str, optional
        A codec name. Default: UTF-8 (a UTF-8 byte-order mark is dropped), or UTF-16 when the
        file starts with a UTF-16 byte-order mark.

    Yields
    ------
    file object
        Opened with ``newline=""``, as :mod:`csv` wants. Undecodable bytes met while reading
        it raise :class:`CSVTableError` naming the line; so do :mod:`csv`'s own errors.
    """
    spath = os.fspath(path)
    if not os.path.exists(spath):
        raise CSVTableError(f"file {spath!r} does not exist; check the path")
    if os.path.isdir(spath):
        raise CSVTableError(f"{spath!r} is a directory; give the path of a CSV file")
    with open(spath, "rb") as raw:
        head = raw.read(_PEEK_BYTES)
    resolved = _resolve_encoding(spath, encoding, head)
    _check_text(spath, resolved, head)
    with open(spath, newline="", encoding=resolved) as f:
        try:
            yield f
        except UnicodeDecodeError:
            raise _decode_error(spath, resolved) from None
        except csv.Error as err:
            raise CSVTableError(f"{spath!r} is not a CSV file that can be read: {err}") from None


def read_sample(f: TextIO) -> str:
    """The first characters of an open file, for :func:`sniff_delimiter`; rewinds it."""
    sample = f.read(_SNIFF_CHARS)
    f.seek(0)
    return sample


def read_header_row(reader: Any, path: str, delimiter: str) -> tuple[list[str], bool]:
    """The header's names, and whether its first column is an unnamed (pandas) index."""
    for row in reader:
        if row and any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            break
    else:
        raise CSVTableError(
            f"{path!r} is empty; expected a header line of column names followed by data rows"
        )
    if len(header) == 1:
        others = [c for c in DELIMITERS if c != delimiter and c in header[0]]
        if others:
            flag = delimiter_flag(others[0])
            raise CSVTableError(
                f"{path!r}: the header {header[0]!r} is a single column that holds "
                f"{others[0]!r}, so the file looks {flag}-separated, not "
                f"{delimiter_flag(delimiter)}-separated; pass --delimiter {flag} "
                f"(delimiter={others[0]!r}), or leave the delimiter out to detect it"
            )
    index_column = len(header) > 1 and header[0] == "" and all(header[1:])
    blank = [i + 1 for i, name in enumerate(header) if not name and not (index_column and i == 0)]
    if blank:
        raise CSVTableError(
            f"{path!r} line {reader.line_num}: the header has an empty column name at "
            f"position(s) {blank}; the first line must name every column"
        )
    dupes = sorted(name for name, count in Counter(header).items() if count > 1)
    if dupes:
        raise CSVTableError(
            f"{path!r}: the header names column(s) {dupes} more than once; rename them"
        )
    return header, index_column


def resolve_delimiter(f: TextIO, delimiter: str | None) -> str:
    """``delimiter`` checked, or sniffed from the start of ``f`` (rewound) when None."""
    if delimiter is None:
        return sniff_delimiter(read_sample(f))
    if len(delimiter) != 1 or delimiter in "\"\r\n":
        raise CSVTableError(
            f"delimiter={delimiter!r} must be one character other than a quote or a line break, "
            "e.g. ',', ';' or '\\t' (--delimiter tab)"
        )
    return delimiter
