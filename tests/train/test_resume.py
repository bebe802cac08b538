"""Resuming: a finished run is left alone, time adds up over segments, curves have no seams;
validation accuracy is recorded and right."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import torch

from moekit.train import StepEnd, train
from moekit.train.checkpoint import latest_checkpoint


def run(parts: dict, **kwargs):
    return train(parts["model"], parts["train_data"], parts["config"], val_data=parts["val_data"],
                 progress=kwargs.pop("progress", io.StringIO()), **kwargs)


def records(folder: str) -> list[dict]:
    return [json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def snapshot(folder: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def stop_at(step: int, pause_s: float = 0.0):
    def callback(info: StepEnd) -> None:
        time.sleep(pause_s)
        if info.step == step:
            raise KeyboardInterrupt
    return callback


def test_resuming_a_finished_run_changes_nothing(make_run):
    parts = make_run("done")
    first = run(parts)
    folder = parts["config"].output_dir
    before = snapshot(folder)
    stream = io.StringIO()
    again = run(make_run("done"), resume=True, progress=stream)
    assert snapshot(folder) == before  # results.json, metrics, config and checkpoints untouched
    assert "already finished: step 8 of 8 is done" in stream.getvalue()
    assert again.already_done and again.step == 8 and again.train_losses == []
    assert again.final_val_loss == first.final_val_loss
    assert again.elapsed_s == pytest.approx(first.elapsed_s)
    # the model it returns holds the trained weights, not the fresh ones it was given
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_elapsed_time_adds_up_over_resumed_segments(make_run):
    parts = make_run("timed", checkpoint_every=0)
    with pytest.raises(KeyboardInterrupt):
        run(parts, callbacks=[stop_at(4, pause_s=0.3)])  # the first segment takes >= 1.2 s
    again = make_run("timed", checkpoint_every=0)
    t0 = time.perf_counter()
    resumed = run(again, resume=True)
    second_segment = time.perf_counter() - t0
    results = json.loads((Path(parts["config"].output_dir) / "results.json").read_text())
    assert results["elapsed_s"] == pytest.approx(resumed.elapsed_s)
    assert resumed.elapsed_s > second_segment + 1.0  # the first segment's 1.2 s are counted
    times = [r["time_s"] for r in records(parts["config"].output_dir)]
    assert times == sorted(times)  # the clock continues where the first segment stopped


def test_resumed_curves_have_the_points_of_an_uninterrupted_run(make_run):
    straight = make_run("straight")
    run(straight)
    parts = make_run("split", checkpoint_every=0)
    with pytest.raises(KeyboardInterrupt):
        run(parts, callbacks=[stop_at(4)])
    run(make_run("split", checkpoint_every=0), resume=True)

    def train_points(folder: str) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in records(folder) if r["split"] == "train"]

    a, b = train_points(straight["config"].output_dir), train_points(parts["config"].output_dir)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 4, 6, 8]
    assert [loss for _, loss in a] == pytest.approx([loss for _, loss in b])


def test_validation_accuracy_is_recorded_and_right(make_run):
    parts = make_run("acc")
    result = run(parts)
    val = [r for r in records(parts["config"].output_dir) if r["split"] == "val"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in val)
    results = json.loads((Path(parts["config"].output_dir) / "results.json").read_text())
    assert results["final_val_accuracy"] == val[-1]["accuracy"] == result.final_val_accuracy
    model = result.model.eval()
    correct = total = 0
    with torch.no_grad():
        for i in range(parts["config"].eval_batches):
            x, y = parts["val_data"].batch(i)
            correct += int((model(x).argmax(-1) == y).sum())
            total += y.numel()
    assert result.final_val_accuracy == correct / total


def test_final_checkpoint_without_results_is_completed(make_run):
    parts = make_run("crashed")
    first = run(parts)
    results = Path(parts["config"].output_dir) / "results.json"
    results.unlink()  # as if the process died between the last checkpoint and results.json
    again = run(make_run("crashed"), resume=True)
    assert not again.already_done
    assert json.loads(results.read_text())["final_val_loss"] == first.final_val_loss
    assert latest_checkpoint(Path(parts["config"].output_dir) / "checkpoints").name == "step_000008"


def test_classifier_runs_record_which_expert_each_class_goes_to(tmp_path):
    from moekit.layers import MoELayer
    from moekit.models import ImageClassifier, ImageClassifierConfig
    from moekit.train import ArrayBatches, TrainConfig

    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    model = ImageClassifier(ImageClassifierConfig.create(
        num_classes=3, d_model=16, d_ff=16, n_heads=2, n_layers=1, num_experts=4, top_k=2))
    val = ArrayBatches(images[30:], labels[30:], batch_size=4, seed=0, shuffle=False)
    config = TrainConfig(steps=2, batch_size=4, eval_every=0, eval_batches=2, device="cpu",
                         output_dir=str(tmp_path / "img"))
    result = train(model, ArrayBatches(images[:30], labels[:30], batch_size=4, seed=0), config,
                   val_data=val, progress=io.StringIO())
    recorded = json.loads((tmp_path / "img" / "routing.json").read_text())
    counts = torch.tensor(recorded["counts"])
    # recount by hand: every patch of an example carries its label, K slots per patch
    layer = next(m for m in result.model.modules() if isinstance(m, MoELayer))
    expected = torch.zeros(3, 4, dtype=torch.float64)
    result.model.eval()
    with torch.no_grad():
        for i in range(2):
            x, y = val.batch(i)
            result.model(x)
            per_example = layer.stats.indices.view(len(y), -1)
            for b in range(len(y)):
                for e in per_example[b].tolist():
                    expected[y[b], e] += 1
    assert torch.equal(counts, expected)
    assert counts.sum() == 2 * 4 * 16 * 2  # batches x examples x patches x top_k, dropless
