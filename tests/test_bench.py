"""Smoke test of the layer benchmark at a tiny size: the JSON has every row and sane ratios.

No timed assertions: the machine is shared, only the shape of the record and the arithmetic of
the ratios are checked.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from moekit.bench import SHAPES, BenchConfig, balanced_routing_  # noqa: E402
from moekit.cli import bench as cli_bench  # noqa: E402
from moekit.cli.main import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_ROWS = {"dense SwiGLU (hidden K*F)", "moekit loop", "moekit grouped_mm", "hf eager",
                 "hf grouped_mm", "hf batched_mm"}


def _check_record(record: dict, shapes: list[str]) -> None:
    assert [s["name"] for s in record["shapes"]] == shapes
    assert record["environment"]["torch"] == torch.__version__
    assert record["environment"]["transformers"]
    assert record["device"] == "cpu" and record["dtype"] == "float32"
    for shape in record["shapes"]:
        assert {r["name"] for r in shape["rows"]} == EXPECTED_ROWS
        assert shape["best_hf"] in EXPECTED_ROWS
        for row in shape["rows"]:
            assert row["skipped"] is None, row
            for key in ("fwd_ms", "fwd_bwd_ms", "ratio_vs_dense_fwd", "ratio_vs_dense_fwd_bwd",
                        "ratio_vs_best_hf_fwd_bwd"):
                value = row[key]
                assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, row)
            if row["kind"] != "dense":  # same weights, same routing: same outputs
                assert row["max_abs_diff_vs_hf_eager"] < 1e-4, row
        dense = next(r for r in shape["rows"] if r["kind"] == "dense")
        assert dense["ratio_vs_dense_fwd_bwd"] == pytest.approx(1.0)
        best = next(r for r in shape["rows"] if r["name"] == shape["best_hf"])
        assert best["ratio_vs_best_hf_fwd_bwd"] == pytest.approx(1.0)


@pytest.mark.slow
def test_script_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_layer.py"), "--quick",
                           "--device", "cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mixtral-like" in proc.stdout and "dense/x f+b" in proc.stdout
    record = json.loads(out.read_text())
    _check_record(record, list(SHAPES))
    for shape in record["shapes"]:
        for row in shape["rows"]:  # measured in the child process, so positive and finite
            assert row["peak_mib"] is None or math.isfinite(row["peak_mib"])


def test_cli_quick_balanced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--device", "cpu", "--balanced", "--no-memory",
                 "--shapes", "olmoe", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    _check_record(record, ["olmoe"])
    assert record["routing"].startswith("balanced")
    assert "olmoe-like" in capsys.readouterr().out


def test_balanced_routing_is_round_robin() -> None:
    T, D, E, K = 12, 8, 6, 2
    x_TD, w_ED = torch.randn(T, D), torch.randn(E, D)
    balanced_routing_(x_TD, w_ED, K)
    chosen_TK = (x_TD @ w_ED.t()).topk(K, dim=-1).indices.sort(dim=-1).values
    expected_TK = ((torch.arange(T)[:, None] * K + torch.arange(K)) % E).sort(dim=-1).values
    assert torch.equal(chosen_TK, expected_TK)
    assert torch.equal(torch.bincount(chosen_TK.reshape(-1), minlength=E), torch.full((E,), 4))


def test_balanced_needs_room_for_the_pattern() -> None:
    with pytest.raises(ValueError, match="d_model >= num_experts"):
        balanced_routing_(torch.randn(4, 4), torch.randn(8, 4), 2)


def test_bad_flags_are_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--shapes", "gpt4", "--device", "cpu"]) == 2
    assert "mixtral" in capsys.readouterr().err
    with pytest.raises(ValueError, match="tokens=0 must be >= 1"):
        BenchConfig(tokens=0)


def test_cli_shape_names_match_the_core() -> None:
    assert tuple(SHAPES) == cli_bench.SHAPE_NAMES
