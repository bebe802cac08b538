"""Bundled text, character tokenizer and LM batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moekit.data.text import (
    CharTokenizer,
    iter_lm_batches,
    lm_splits,
    load_kjv,
    sample_lm_batch,
)


@pytest.fixture(scope="module")
def kjv() -> str:
    return load_kjv()


def test_bundled_text_is_the_documented_extract(kjv: str) -> None:
    assert len(kjv) == 494_563
    assert kjv.startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth.")
    assert kjv.rstrip().endswith("for the children of Israel in mount Sinai.")
    assert kjv.isascii()
    assert load_kjv(max_chars=100) == kjv[:100]


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-5, ValueError), (1.5, TypeError)])
def test_load_kjv_rejects_bad_max_chars(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="max_chars"):
        load_kjv(max_chars=bad)  # type: ignore[arg-type]


def test_tokenizer_round_trip(kjv: str) -> None:
    tok = CharTokenizer.from_text(kjv)
    ids = tok.encode(kjv[:5000])
    assert ids.dtype == np.int64 and ids.shape == (5000,)
    assert tok.decode(ids) == kjv[:5000]
    assert tok.decode(torch.from_numpy(ids)) == kjv[:5000]
    assert tok.decode(ids.tolist()) == kjv[:5000]
    assert list(tok.vocab) == sorted(set(kjv))


def test_tokenizer_save_load(tmp_path, kjv: str) -> None:
    tok = CharTokenizer.from_text(kjv)
    path = tmp_path / "tok.json"
    tok.save(path)
    assert json.loads(path.read_text())["type"] == "char"
    again = CharTokenizer.load(path)
    assert again == tok
    assert again.decode(again.encode("And God said")) == "And God said"


def test_tokenizer_errors_name_the_problem() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"not in the vocabulary: \['z'\]"):
        tok.encode("abz")
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 3\)"):
        tok.decode([0, 7])
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab", "c"])
    with pytest.raises(ValueError, match="not a character tokenizer"):
        CharTokenizer.from_dict({"type": "bpe"})


def test_lm_splits_are_contiguous_and_complete() -> None:
    text = load_kjv(max_chars=20_000)
    s = lm_splits(text, val_fraction=0.1)
    assert s.train.dtype == torch.int64
    assert (len(s.train), len(s.val)) == (18_000, 2_000)
    assert s.tokenizer.decode(torch.cat([s.train, s.val])) == text
    with pytest.raises(ValueError, match="val_fraction"):
        lm_splits(text, val_fraction=1.0)


def test_batches_are_shifted_windows_and_deterministic() -> None:
    ids = torch.arange(1000)
    a = list(iter_lm_batches(ids, batch_size=4, block_size=16, seed=3, num_batches=5))
    b = list(iter_lm_batches(ids, batch_size=4, block_size=16, seed=3, num_batches=5))
    c = list(iter_lm_batches(ids, batch_size=4, block_size=16, seed=4, num_batches=5))
    assert len(a) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == ya.shape == (4, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(ya, xa + 1)  # ids are arange, so the target is the next id
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_batch_errors() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="block_size=20 needs at least 21 tokens"):
        sample_lm_batch(torch.arange(10), batch_size=2, block_size=20, generator=g)
    with pytest.raises(ValueError, match="batch_size=0"):
        sample_lm_batch(torch.arange(10), batch_size=0, block_size=2, generator=g)
