"""Bundled text, character tokenizer and LM batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moekit.data.text import (
    CharTokenizer,
    lm_splits,
    load_kjv,
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


def test_token_batches_are_shifted_windows_and_deterministic() -> None:
    from moekit.train.batches import TokenBatches

    ids = torch.arange(1000)
    a = TokenBatches(ids, batch_size=4, block_size=16, seed=3)
    b = TokenBatches(ids, batch_size=4, block_size=16, seed=3)
    c = TokenBatches(ids, batch_size=4, block_size=16, seed=4)
    for i in range(5):
        (xa, ya), (xb, yb) = a.batch(i), b.batch(i)
        assert xa.shape == ya.shape == (4, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(ya, xa + 1)  # ids are arange, so the target is the next id
    assert not all(torch.equal(a.batch(i)[0], c.batch(i)[0]) for i in range(5))


def test_token_batch_errors() -> None:
    from moekit.train.batches import TokenBatches

    with pytest.raises(ValueError, match="10 tokens are too few for block_size=20"):
        TokenBatches(torch.arange(10), batch_size=2, block_size=20, seed=0)
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        TokenBatches(torch.arange(10), batch_size=0, block_size=2, seed=0)
