"""`moekit train` with expert parallelism + DDP equals one process; checkpoints move between
one process, 2 ranks and 4 ranks both ways; the `--nproc` command finishes and its checkpoint
loads in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_cases import model_config

from moekit.models import TransformerLM, TransformerLMConfig
from moekit.train import load_checkpoint
from moekit.train.checkpoint import read_checkpoint

pytestmark = pytest.mark.distributed
# fp32 training with AdamW: agreement to rounding (summation order differs across ranks)
TOL = dict(rtol=2e-4, atol=2e-5)


def _params(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / f"step_{step:06d}").model


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOL, msg=key)


@pytest.fixture(scope="module")
def runs(train_dirs, two_rank_run, four_rank_run) -> dict[str, Path]:
    return train_dirs


def test_two_ranks_train_like_one_process(runs):
    _assert_same(_params(runs["two"], 4), _params(runs["one"], 4))
    _assert_same(_params(runs["two"], 2), _params(runs["one"], 2))
    lines = [[json.loads(x) for x in (runs[n] / "metrics.jsonl").read_text().splitlines()]
             for n in ("one", "two")]
    for a, b in zip(*lines):
        assert (a["step"], a["split"]) == (b["step"], b["split"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_a_two_rank_checkpoint_loads_in_one_process(runs):
    model = TransformerLM(model_config())
    state = load_checkpoint(runs["two"] / "checkpoints", model=model)
    assert state.step == 4 and state.extra["world_size"] == 2
    one = _params(runs["one"], 4)
    for key, value in model.state_dict().items():
        if key in one:
            torch.testing.assert_close(value, one[key], **TOL, msg=key)


def test_checkpoints_resume_at_other_rank_counts(runs):
    reference = _params(runs["one_to_6"], 6)
    _assert_same(_params(runs["one_to_two"], 6), reference)   # 1 -> 2 ranks
    _assert_same(_params(runs["two_to_four"], 6), reference)  # 2 -> 4 ranks


TINY = """
[model]
kind = "lm"
router = "topk"
num_experts = 4
top_k = 2
d_model = 16
n_layers = 1
n_heads = 2
d_ff = 16
block_size = 8

[data]
dataset = "kjv"
max_chars = 4000

[train]
steps = 3
batch_size = 4
eval_every = 0
eval_batches = 1
checkpoint_every = 0
log_every = 1
warmup_steps = 1
"""


def _moekit(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "moekit", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_moekit_train_nproc_2_finishes_and_loads_in_one_process(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "run"
    done = _moekit("train", str(config), "--nproc", "2", "--output", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on 2 processes" in done.stdout
    state = json.loads((out / "checkpoints" / "step_000003" / "state.json").read_text())
    model = TransformerLM(TransformerLMConfig.from_dict(state["config"]["model"]))
    loaded = load_checkpoint(out / "checkpoints", model=model)
    assert loaded.step == 3
    results = json.loads((out / "results.json").read_text())
    total = sum(p.numel() for p in model.parameters())
    assert results["parameters_total"] == total  # every rank's experts counted, as in one process


def test_moekit_train_nproc_errors_before_spawning(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    bad = _moekit("train", str(config), "--nproc", "3", "--output", str(tmp_path / "x"),
                  timeout=60)
    assert bad.returncode != 0
    assert "batch_size = 4 is not divisible by the 3 processes" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_fsdp2_for_the_replicated_parameters_trains_like_one_process(tmp_path):
    from moekit.train.distributed import fsdp2_unavailable

    if (reason := fsdp2_unavailable()) is not None:
        pytest.skip(reason)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    base = ("train", str(config), "--device", "cpu", "--output")
    for args in [(str(one),), (str(fsdp), "--nproc", "2", "--data-parallel", "fsdp")]:
        done = _moekit(*base, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    _assert_same(_params(fsdp, 3), _params(one, 3))
    # resume under FSDP2: the gathered checkpoint (Adam moments too) is re-sharded on load
    for args in [(str(one),), (str(fsdp), "--nproc", "2", "--data-parallel", "fsdp")]:
        done = _moekit(*base, *args, "--resume", "--steps", "5")
        assert done.returncode == 0, done.stdout + done.stderr
    _assert_same(_params(fsdp, 5), _params(one, 5))
    optimizer = read_checkpoint(fsdp / "checkpoints" / "step_000005").optimizer
    reference = read_checkpoint(one / "checkpoints" / "step_000005").optimizer
    for index, entry in reference["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(optimizer["state"][index][key], value, **TOL)


def test_data_parallel_fsdp_needs_several_processes(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    bad = _moekit("train", str(config), "--data-parallel", "fsdp", "--output",
                  str(tmp_path / "x"), timeout=60)
    assert bad.returncode != 0 and "--data-parallel fsdp needs several processes" in bad.stderr
    assert not (tmp_path / "x").exists()
