"""Checkpoints: round trip, atomic writes, a crash while saving keeps the previous one."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch

import moekit.train.checkpoint as checkpoint_module
from moekit.train import TrainConfig, build_optimizer, build_scheduler, train
from moekit.train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _trained(make_run, name="c", **overrides):
    parts = make_run(name, **overrides)
    train(parts["model"], parts["train_data"], parts["config"], val_data=parts["val_data"],
          progress=io.StringIO())
    return parts


def test_round_trip_restores_model_optimizer_scheduler(make_run, tmp_path, lm):
    parts = _trained(make_run, steps=4, checkpoint_every=4)
    path = latest_checkpoint(tmp_path / "c" / "checkpoints")
    assert path is not None and path.name == "step_000004"
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "optimizer.safetensors",
                                                "state.json"}
    model = lm(seed=1)
    config = TrainConfig(steps=4, lr=1e-2, warmup_steps=2)
    opt = build_optimizer(model, config)
    sched = build_scheduler(opt, config)
    state = load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    assert state.step == 4 and state.config["train"]["steps"] == 4
    for (k, a), (_, b) in zip(parts["model"].state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    # Tied weights stay tied after loading.
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    assert sched.last_epoch == 4
    assert all(len(s) == 3 for s in opt.state_dict()["state"].values())  # step, exp_avg, exp_avg_sq


def test_rng_state_round_trip():
    state = capture_rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    json.dumps(state)  # plain JSON
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_crash_while_saving_keeps_previous_checkpoint(make_run, tmp_path, monkeypatch, lm):
    parts = _trained(make_run, steps=4, checkpoint_every=4)
    root = tmp_path / "c" / "checkpoints"
    before = {p.name: p.read_bytes() for p in (root / "step_000004").iterdir()}

    def explode(path, tensors):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint_module, "_save_tensors", explode)
    with torch.no_grad():
        for p in parts["model"].parameters():
            p.add_(1.0)
    opt = build_optimizer(parts["model"], parts["config"])
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(root, step=8, model=parts["model"], optimizer=opt)
    monkeypatch.undo()

    assert (root / "latest").read_text().strip() == "step_000004"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000004"]  # no temp left
    assert {p.name: p.read_bytes() for p in (root / "step_000004").iterdir()} == before
    fresh = lm(seed=5)
    assert load_checkpoint(root, model=fresh).step == 4


def test_crash_during_training_save_then_resume(make_run, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = checkpoint_module._write_json

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 4 of checkpoint_every=2)
            raise RuntimeError("power cut (simulated)")
        real(path, data)

    monkeypatch.setattr(checkpoint_module, "_write_json", flaky)
    parts = make_run("crash", steps=6, checkpoint_every=2)
    with pytest.raises(RuntimeError, match="power cut"):
        train(parts["model"], parts["train_data"], parts["config"], val_data=parts["val_data"],
              progress=io.StringIO())
    monkeypatch.undo()
    root = tmp_path / "crash" / "checkpoints"
    assert latest_checkpoint(root).name == "step_000002"
    again = make_run("crash", steps=6, checkpoint_every=2)
    result = train(again["model"], again["train_data"], again["config"], val_data=again["val_data"],
                   progress=io.StringIO(), resume=True)
    straight = _trained(make_run, "straight", steps=6, checkpoint_every=2)
    assert result.step == 6
    for (k, a), (_, b) in zip(straight["model"].state_dict().items(),
                              again["model"].state_dict().items()):
        assert torch.equal(a, b), k


def test_mismatched_model_is_refused(make_run, tmp_path, lm):
    _trained(make_run, steps=2, checkpoint_every=2)
    other = lm("switch")
    with pytest.raises(ValueError, match="does not match the model"):
        load_checkpoint(tmp_path / "c" / "checkpoints", model=other)


def test_missing_checkpoint_is_a_clear_error(tmp_path, lm):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path, model=lm())
