"""The layer benchmark (benchmarks/bench_layer.py, outside the package): smoke runs at a tiny size
in a subprocess, and its helpers.

No timed assertions: the machine is shared; only the record's structure, the arithmetic of the
ratios, the skipped rows and the contention guard's bookkeeping are checked.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_layer.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
bench_layer = importlib.import_module("bench_layer")
common = importlib.import_module("_common")

DENSE = {"dense (x @ w)", "dense (oneDNN)"}
MOEKIT = {"moekit grouped_mm", "moekit cpu"}
HF = {"hf eager", "hf grouped_mm", "hf batched_mm"}


def _run(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> dict:
    out = tmp_path / "bench.json"
    run_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    run_env.update(env or {})
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu",
                           "--max-tries", "3", "--json", str(out), *flags],
                          capture_output=True, text=True, timeout=900, check=False, env=run_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dense/x" in proc.stdout
    return json.loads(out.read_text())


def _ratio_ok(r: dict | None) -> bool:
    return r is not None and all(math.isfinite(r[k]) and r[k] > 0 for k in ("median", "min", "max")) \
        and r["min"] <= r["median"] <= r["max"]


@pytest.mark.slow
def test_script_quick_every_row_and_decode(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    record = _run(tmp_path, "--shapes", "mixtral,qwen3")  # olmoe: the next test
    assert [s["name"] for s in record["shapes"]] == ["mixtral", "qwen3"]
    assert record["environment"]["env"]["GOMP_SPINCOUNT"] == "10000"  # the timing child's env
    assert record["read_bandwidth_gbs"] > 0
    for shape in record["shapes"]:
        rows = {r["name"]: r for r in shape["rows"]}
        assert set(rows) == DENSE | MOEKIT | HF | {"moekit triton"}
        assert "a test tool, not a speed" in rows["moekit triton"]["skipped"]  # off CUDA
        t = shape["timing_fwd_bwd"]
        assert t["rounds_kept"] == 2 and 2 <= t["rounds_tried"] <= 3
        assert t["contended"] == (len(shape["notes"]) > 0 and "busy" in shape["notes"][-1])
        for name, row in rows.items():
            if row["skipped"]:
                assert name in ("dense (oneDNN)", "moekit triton"), row  # oneDNN: where unusable
                continue
            assert len(row["fwd_bwd_ms"]) == 2 and all(v > 0 for v in row["fwd_bwd_ms"])
            assert _ratio_ok(row["ratio_vs_dense_mkl"]) and _ratio_ok(row["ratio_vs_best_hf"])
            assert row["peak_mib"] is None or math.isfinite(row["peak_mib"])
            if row["kind"] != "dense":  # same weights, same routing: same outputs
                assert row["max_abs_diff_vs_ref"] < 1e-4, row
        assert rows["dense (x @ w)"]["ratio_vs_dense_mkl"]["median"] == pytest.approx(1.0)
        assert rows[shape["best_hf"]]["ratio_vs_best_hf"]["median"] == pytest.approx(1.0)
        decode = shape["decode"]
        assert {d["tokens"] for d in decode} == {1, 8}
        assert {d["name"] for d in decode} == MOEKIT | HF
        for d in decode:
            assert 1 <= d["experts_hit"] <= shape["num_experts"] and d["bandwidth_fraction"] > 0


@pytest.mark.slow
def test_rows_that_cannot_run_are_listed_with_the_reason(tmp_path: Path) -> None:
    """Without transformers (hidden by a sitecustomize), its rows are skipped, the rest runs."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['transformers'] = None\n")
    record = _run(tmp_path, "--shapes", "olmoe", "--no-memory", "--no-decode", "--balanced",
                  env={"PYTHONPATH": os.pathsep.join([str(shim), str(ROOT / "src")])})
    assert record["environment"]["transformers"] is None
    assert record["routing"].startswith("balanced")
    (shape,) = record["shapes"]
    rows = {r["name"]: r for r in shape["rows"]}
    for name in HF:
        assert "transformers is not installed" in rows[name]["skipped"]
    for name in MOEKIT:
        assert rows[name]["skipped"] is None and rows[name]["max_abs_diff_vs_ref"] < 1e-4
    assert shape["best_hf"] is None and shape["reference"] == "moekit grouped_mm"


def test_balanced_routing_is_round_robin() -> None:
    T, D, E, K = 12, 8, 6, 2
    x_TD, w_ED = torch.randn(T, D), torch.randn(E, D)
    bench_layer.balanced_routing_(x_TD, w_ED, K)
    chosen_TK = (x_TD @ w_ED.t()).topk(K, dim=-1).indices.sort(dim=-1).values
    expected_TK = ((torch.arange(T)[:, None] * K + torch.arange(K)) % E).sort(dim=-1).values
    assert torch.equal(chosen_TK, expected_TK)
    assert torch.equal(torch.bincount(chosen_TK.reshape(-1), minlength=E), torch.full((E,), 4))


def test_bad_config_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="d_model >= num_experts"):
        bench_layer.balanced_routing_(torch.randn(4, 4), torch.randn(8, 4), 2)
    with pytest.raises(ValueError, match="tokens=0 must be >= 1"):
        bench_layer.BenchConfig(tokens=0)
    with pytest.raises(ValueError, match=r"shapes=\['gpt4'\] must be a non-empty subset"):
        bench_layer.BenchConfig(shapes=("gpt4",))
    with pytest.raises(ValueError, match="max_tries=2 must be >= rounds=5"):
        bench_layer.BenchConfig(max_tries=2)
    cfg = bench_layer.BenchConfig(shapes=("qwen3",), decode_tokens=(1,))
    assert bench_layer.BenchConfig.from_json(json.dumps(bench_layer.asdict(cfg))) == cfg


def test_dense_on_onednn_matches_dense_on_torch_mm() -> None:
    from moekit.kernels.cpu_gemm import _onednn_unusable

    if _onednn_unusable():
        pytest.skip(_onednn_unusable())
    dense_cls, onednn_cls = bench_layer._dense_modules()
    a = dense_cls(24, 40)
    b = onednn_cls(24, 40)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 7, 24, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(yb, ya, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(ya)
    for u, v in zip(torch.autograd.grad(ya, [x, *a.parameters()], g),
                    torch.autograd.grad(yb, [x, *b.parameters()], g)):
        torch.testing.assert_close(v, u, atol=1e-5, rtol=1e-4)


def test_guard_discards_contended_rounds_and_gives_up_at_the_cap() -> None:
    calls = {"a": 0, "b": 0}

    def bump(name: str):  # type: ignore[no-untyped-def]
        def fn() -> None:
            calls[name] += 1
        return fn

    fns = {"a": bump("a"), "b": bump("b")}
    relaxed = common.interleave(fns, torch.device("cpu"), rounds=3, max_tries=5, max_other=1.0)
    assert relaxed.tries == 3 and not relaxed.contended and relaxed.notes == []
    assert len(relaxed.wall_ms["a"]) == 3 and calls == {"a": 4, "b": 4}  # 1 warm-up + 3 rounds
    strict = common.interleave(fns, torch.device("cpu"), rounds=3, max_tries=4, max_other=-1.0)
    if common.busy_seconds() is None:
        pytest.skip("no /proc/stat: the guard is off")
    assert strict.tries == 4 and strict.contended and "0 of 4 rounds passed" in strict.notes[0]
    assert len(strict.wall_ms["b"]) == 3  # the least contended rounds are still reported


def test_ratio_stats_are_per_round() -> None:
    r = common.ratio_stats([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])
    assert r == {"median": 3.0, "min": 2.0, "max": 4.0}
    assert common.ratio_stats([], [1.0]) is None
