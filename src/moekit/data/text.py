"""Bundled English text and character-level language-model data.

The text is the first three books of the King James Bible (Genesis, Exodus, Leviticus; about
495 KB, public domain), shipped gzipped inside the package; see ``files/KJV-SOURCE.md``. Nothing
is downloaded and no system package is needed at run time.

Shape legend: N tokens in a split, B batch size, T block (context) length.

Only :func:`lm_splits` and the batch functions need torch; it is imported inside them.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from moekit._files import atomic_write_json

if TYPE_CHECKING:
    import torch

__all__ = [
    "CharTokenizer",
    "LMSplits",
    "lm_splits",
    "load_kjv",
]

_KJV_RESOURCE = "kjv.txt.gz"


def load_kjv(max_chars: int | None = None) -> str:
    """Return the bundled King James Bible text (Genesis to Leviticus).

    Parameters
    ----------
    max_chars : int or None, default=None
        Keep only the first ``max_chars`` characters (a quick run on a smaller corpus).
        ``None`` returns the whole text, 494,563 characters.

    Returns
    -------
    text : str
        Plain ASCII English, one verse per line, chapters headed like ``Genesis 1``.

    Examples
    --------
    >>> from moekit.data.text import load_kjv
    >>> load_kjv(max_chars=58)
    'Genesis 1\\n\\nIn the beginning God created the heaven and the'
    """
    if max_chars is not None:
        if isinstance(max_chars, bool) or not isinstance(max_chars, int):
            raise TypeError(
                f"max_chars must be an int or None, got {type(max_chars).__name__} "
                f"{max_chars!r}; pass e.g. max_chars=100_000"
            )
        if max_chars < 1:
            raise ValueError(
                f"max_chars={max_chars} must be >= 1; pass None for the whole text"
            )
    data = resources.files("moekit.data").joinpath("files").joinpath(_KJV_RESOURCE).read_bytes()
    text = gzip.decompress(data).decode("utf-8")
    return text if max_chars is None else text[:max_chars]


class CharTokenizer:
    """Character-level tokenizer: each distinct character is one token id.

    Ids are assigned in sorted character order, so the same text always gives the same vocabulary.

    Parameters
    ----------
    vocab : sequence of str
        The distinct characters, each of length 1; id ``i`` is ``vocab[i]``.

    Examples
    --------
    >>> tok = CharTokenizer.from_text("hello world")
    >>> tok.vocab_size
    8
    >>> ids = tok.encode("hold")
    >>> ids.tolist()
    [3, 5, 4, 1]
    >>> tok.decode(ids)
    'hold'
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        chars = list(vocab)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(
                f"vocab must hold single characters, got {bad[:5]!r}; "
                "build it with CharTokenizer.from_text(text)"
            )
        if len(set(chars)) != len(chars):
            raise ValueError("vocab has repeated characters; each character must appear once")
        if not chars:
            raise ValueError("vocab is empty; build it from a non-empty text")
        self.vocab: tuple[str, ...] = tuple(chars)
        self._stoi = {c: i for i, c in enumerate(self.vocab)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from the distinct characters of ``text`` (sorted)."""
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty str to build a vocabulary from")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens."""
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """Map ``text`` to token ids.

        Returns
        -------
        ids : ndarray of shape (len(text),), dtype int64

        Raises
        ------
        ValueError
            If ``text`` holds a character outside the vocabulary.
        """
        try:
            return np.fromiter((self._stoi[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as err:
            unknown = sorted(set(text) - set(self._stoi))
            raise ValueError(
                f"text holds characters not in the vocabulary: {unknown[:10]!r}; build the "
                "tokenizer from a text that contains them (CharTokenizer.from_text)"
            ) from err

    def decode(self, ids: Iterable[int] | np.ndarray | torch.Tensor) -> str:
        """Map token ids (a list, a 1-D array or tensor) back to text."""
        if hasattr(ids, "detach"):
            ids = ids.detach().cpu().numpy()  # type: ignore[union-attr]
        flat = np.asarray(ids).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got min={flat.min()} "
                f"max={flat.max()}; were they made by another tokenizer?"
            )
        return "".join(self.vocab[int(i)] for i in flat)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: ``{"type": "char", "vocab": [...]}``."""
        return {"type": "char", "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        """Inverse of :meth:`to_dict`."""
        if data.get("type") != "char" or "vocab" not in data:
            raise ValueError(
                f"not a character tokenizer description: keys {sorted(data)!r}, "
                f"type={data.get('type')!r}; expected {{'type': 'char', 'vocab': [...]}}"
            )
        return cls(data["vocab"])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON (atomically: a failed write keeps any previous file)."""
        atomic_write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        """Read a tokenizer written by :meth:`save`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.vocab == other.vocab

    def __hash__(self) -> int:
        return hash(self.vocab)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


@dataclass(frozen=True)
class LMSplits:
    """Token ids of a text split for language-model training.

    Attributes
    ----------
    train : torch.Tensor of shape (N_train,), dtype int64
        The first ``1 - val_fraction`` of the text.
    val : torch.Tensor of shape (N_val,), dtype int64
        The rest; contiguous, so no validation window overlaps training text.
    tokenizer : CharTokenizer
    """

    train: torch.Tensor
    val: torch.Tensor
    tokenizer: CharTokenizer


def lm_splits(
    text: str | None = None,
    *,
    val_fraction: float = 0.1,
    tokenizer: CharTokenizer | None = None,
) -> LMSplits:
    """Tokenize a text and split it into contiguous train and validation id tensors.

    Parameters
    ----------
    text : str or None, default=None
        The corpus; ``None`` uses :func:`load_kjv`.
    val_fraction : float, default=0.1
        Fraction of the tokens, taken from the end, kept for validation; in (0, 1).
    tokenizer : CharTokenizer or None, default=None
        ``None`` builds one from ``text``.

    Returns
    -------
    LMSplits
        ``train`` (N_train,) and ``val`` (N_val,) int64 tensors and the tokenizer.

    Examples
    --------
    >>> splits = lm_splits(load_kjv(max_chars=10_000), val_fraction=0.1)
    >>> splits.train.shape, splits.val.shape
    (torch.Size([9000]), torch.Size([1000]))
    """
    import torch

    if text is None:
        text = load_kjv()
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must lie strictly between 0 and 1")
    tok = tokenizer if tokenizer is not None else CharTokenizer.from_text(text)
    ids = torch.from_numpy(tok.encode(text))
    n_val = int(round(len(ids) * val_fraction))
    if n_val < 2 or len(ids) - n_val < 2:
        raise ValueError(
            f"text of {len(ids)} characters is too short for val_fraction={val_fraction}: "
            "each split needs at least 2 tokens; pass a longer text"
        )
    return LMSplits(train=ids[: len(ids) - n_val], val=ids[len(ids) - n_val :], tokenizer=tok)
