"""The training loop: determinism, resume, Ctrl-C, metrics, schedule, evaluation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from moekit.train import (
    ArrayBatches,
    StepEnd,
    TrainConfig,
    build_optimizer,
    evaluate,
    lr_factor,
    resolve_precision,
    train,
)
from moekit.train.checkpoint import latest_checkpoint


def run(parts: dict, **kwargs):
    return train(parts["model"], parts["train_data"], parts["config"], val_data=parts["val_data"],
                 progress=io.StringIO(), **kwargs)


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stop_at(step: int):
    def callback(info: StepEnd) -> None:
        if info.step == step:
            raise KeyboardInterrupt
    return callback


def test_same_seed_gives_identical_losses(make_run):
    a = run(make_run("a", seed=3))
    b = run(make_run("b", seed=3))
    c = run(make_run("c", seed=4))
    assert a.train_losses == b.train_losses
    assert a.final_val_loss == b.final_val_loss
    assert a.train_losses != c.train_losses
    assert a.train_losses[-1] < a.train_losses[0]  # it learns


@pytest.mark.parametrize("router", ["noisy_topk", "sigmoid_bias"])
def test_interrupt_then_resume_equals_uninterrupted(make_run, router, capsys):
    straight_parts = make_run("straight", router=router)
    straight = run(straight_parts)

    parts = make_run("split", router=router, checkpoint_every=0)
    with pytest.raises(KeyboardInterrupt):
        run(parts, callbacks=[stop_at(5)], resume_hint="moekit train X --resume")
    err = capsys.readouterr().err
    assert "interrupted after step 5/8" in err and "resume with: moekit train X --resume" in err
    assert latest_checkpoint(parts["config"].output_dir + "/checkpoints").name == "step_000005"

    resumed_parts = make_run("split", router=router, checkpoint_every=0, seed=0)
    # A fresh model with *different* weights: the checkpoint must overwrite all of them.
    with torch.no_grad():
        for p in resumed_parts["model"].parameters():
            p.add_(1.0)
    resumed = run(resumed_parts, resume=True)
    assert resumed.step == 8 and len(resumed.train_losses) == 3
    assert resumed.train_losses == straight.train_losses[5:]
    assert resumed.final_val_loss == straight.final_val_loss
    sd_a, sd_b = straight_parts["model"].state_dict(), resumed_parts["model"].state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_b[key]), key

    # Metrics of the resumed run: each (split, step) once, same numbers as the straight run.
    straight_lines = read_metrics(Path(straight_parts["config"].output_dir) / "metrics.jsonl")
    split_lines = read_metrics(Path(parts["config"].output_dir) / "metrics.jsonl")
    keys = [(r["split"], r["step"]) for r in split_lines]
    assert len(keys) == len(set(keys))
    val = lambda lines: [(r["step"], r["loss"]) for r in lines if r["split"] == "val"]  # noqa: E731
    assert val(split_lines) == val(straight_lines)


def test_resume_from_periodic_checkpoint(make_run, tmp_path):
    parts = make_run("periodic", steps=8, checkpoint_every=4, keep_checkpoints=5)
    full = run(parts)
    ckpts = tmp_path / "periodic" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == [
        "latest", "step_000004", "step_000008"]
    # Pretend the run died after step 4: point latest back and resume.
    (ckpts / "latest").write_text("step_000004\n")
    again = make_run("periodic", steps=8, checkpoint_every=4, keep_checkpoints=5)
    resumed = run(again, resume=True)
    assert resumed.train_losses == full.train_losses[4:]


def test_interrupt_mid_run_can_finish_later_with_keep_limit(make_run, tmp_path):
    parts = make_run("keep", steps=8, checkpoint_every=2, keep_checkpoints=2)
    run(parts)
    names = sorted(p.name for p in (tmp_path / "keep" / "checkpoints").iterdir())
    assert names == ["latest", "step_000006", "step_000008"]


def test_existing_run_without_resume_is_refused(make_run):
    run(make_run("twice"))
    with pytest.raises(FileExistsError, match="resume"):
        run(make_run("twice"))


def test_resume_without_checkpoint_is_an_error(make_run):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run(make_run("empty"), resume=True)


def test_metrics_lines_have_the_report_shape(make_run, tmp_path):
    run(make_run("m"), model_name="moe")
    lines = read_metrics(tmp_path / "m" / "metrics.jsonl")
    assert {r["split"] for r in lines} == {"train", "val"}
    for r in lines:
        assert {"step", "split", "loss", "lr", "tokens_per_s", "expert_load", "model"} <= r.keys()
        assert r["model"] == "moe"
        assert len(r["expert_load"]) == 4 and abs(sum(r["expert_load"]) - 1) < 1e-5
    assert [r["step"] for r in lines if r["split"] == "val"] == [4, 8]
    results = json.loads((tmp_path / "m" / "results.json").read_text())
    assert results["steps"] == 8 and results["parameters_active"] < results["parameters_total"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["train"]["steps"] == 8


def test_progress_prints_plain_lines_when_not_a_tty(make_run):
    parts = make_run("p")
    stream = io.StringIO()
    train(parts["model"], parts["train_data"], parts["config"], val_data=parts["val_data"],
          progress=stream)
    text = stream.getvalue()
    assert "\r" not in text
    assert "step 2/8" in text and "step 8/8" in text and "tok/s" in text and "load max/mean" in text
    assert "val loss" in text


def test_evaluate_leaves_balancing_bias_untouched(make_run):
    parts = make_run("e", router="sigmoid_bias")
    model = parts["model"]
    biases = [b.clone() for name, b in model.named_buffers() if name.endswith("expert_bias")]
    assert biases
    evaluate(model, parts["val_data"], batches=2, device=torch.device("cpu"))
    after = [b for name, b in model.named_buffers() if name.endswith("expert_bias")]
    assert all(torch.equal(a, b) for a, b in zip(biases, after))
    assert model.training


def test_lr_schedule_warms_up_then_decays_to_min():
    config = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, config) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert lr_factor(100, config) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_biases_embeddings():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 4))
    opt = build_optimizer(model, TrainConfig(weight_decay=0.5))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[2].weight)}


def test_array_batches_cover_each_epoch_once():
    x = torch.arange(10).float()[:, None]
    source = ArrayBatches(x, torch.arange(10), batch_size=4, seed=0)
    seen = torch.cat([source.batch(i)[1] for i in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(source.batch(3)[0], ArrayBatches(x, torch.arange(10), batch_size=4,
                                                        seed=0).batch(3)[0])


def test_fp16_on_cpu_is_refused_with_a_fix():
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) is None


def test_bad_train_config_names_the_field():
    with pytest.raises(ValueError, match="steps=0 must be an integer >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="precision='fp8'"):
        TrainConfig(precision="fp8")  # type: ignore[arg-type]
