"""Atomic writes: an error mid-write leaves the previous file intact and no temporary behind."""

from __future__ import annotations

import json

import pytest

from moekit._files import atomic_open, atomic_write_json, atomic_write_text


def test_error_mid_write_keeps_previous_file(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"loss": 1.0})
    with pytest.raises(RuntimeError, match="crash"), atomic_open(target, "w") as fh:
        fh.write('{"loss": ')
        raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"loss": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_text_and_binary_modes(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    with atomic_open(tmp_path / "b.bin") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_missing_folder_and_bad_mode(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        atomic_write_text(tmp_path / "nope" / "a.txt", "x")
    with pytest.raises(ValueError, match="mode='a' must be 'wb' or 'w'"), \
            atomic_open(tmp_path / "a.txt", "a"):
        pass
