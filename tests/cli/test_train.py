"""`moekit train CONFIG`: config validation, end-to-end train -> Ctrl-C -> resume -> report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moekit.cli.main import main
from moekit.train.experiment import (
    estimate_memory,
    parse_experiment,
    run_experiment,
)

TINY_LM = """
[model]
kind = "lm"
router = "topk"
num_experts = 4
top_k = 2
d_model = 16
n_layers = 1
n_heads = 2
d_ff = 16
block_size = 16
dense_baseline = true

[data]
dataset = "kjv"
max_chars = 6000

[train]
steps = 6
batch_size = 4
lr = 3e-3
warmup_steps = 2
eval_every = 3
eval_batches = 2
checkpoint_every = 3
log_every = 2
device = "cpu"
"""

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_end_to_end_train_interrupt_resume_report(tmp_path, capsys, monkeypatch):
    config = write(tmp_path, TINY_LM)
    out = tmp_path / "run"
    straight = tmp_path / "straight"
    assert main(["train", str(config), "--output", str(straight)]) == 0

    # Ctrl-C after step 4 of the MoE model: a checkpoint is saved and the run resumes.
    import moekit.train.loop as loop

    real_train = loop.train

    def interrupted_train(*args, callbacks=(), **kwargs):
        def stop(info):
            if info.step == 4:
                raise KeyboardInterrupt
        return real_train(*args, callbacks=[*callbacks, stop], **kwargs)

    monkeypatch.setattr("moekit.train.experiment.train", interrupted_train)
    assert main(["train", str(config), "--output", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted after step 4/6" in err and "--resume" in err
    assert (out / "moe" / "checkpoints" / "step_000004").is_dir()
    monkeypatch.undo()

    assert main(["train", str(config), "--output", str(out), "--resume"]) == 0
    for name in ("moe", "dense"):
        a = json.loads((straight / name / "results.json").read_text())
        b = json.loads((out / name / "results.json").read_text())
        assert a["final_val_loss"] == b["final_val_loss"]
        lines = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert {x["model"] for x in lines} == {name}
        assert max(x["step"] for x in lines) == 6
        assert (out / name / "tokenizer.json").is_file()
    summary = json.loads((out / "results.json").read_text())
    assert summary["moe"]["parameters_active"] == summary["dense"]["parameters_active"]
    assert json.loads((out / "config.json").read_text())["dense_baseline"] is True

    report = pytest.importorskip("moekit.viz.report")
    built = report.build_report_from_run(out)
    assert built and all(Path(p).is_file() for p in built)
    assert "moe" in Path(built[0]).read_text() and "dense" in Path(built[0]).read_text()


def test_existing_run_needs_resume(tmp_path, capsys):
    config = write(tmp_path, TINY_LM.replace("steps = 6", "steps = 2"))
    assert main(["train", str(config), "--output", str(tmp_path / "r"), "--steps", "1"]) == 0
    err = error_of(capsys, ["train", str(config), "--output", str(tmp_path / "r")])
    assert "already holds a run" in err and "--resume" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TINY_LM.replace("[train]", "[trian]"),
         "unknown section [trian]"),
        (TINY_LM.replace("d_ff = 16", "d_ff = 16\nexperts = 3"),
         "unknown key 'experts' in [model] for kind = 'lm'; allowed keys: activation,"),
        (TINY_LM.replace('router = "topk"', 'router = "fastest"'),
         "[model] router = 'fastest' is invalid; expected one of 'topk', 'switch'"),
        (TINY_LM.replace("top_k = 2", "top_k = 9"),
         "[model] top_k=9 must be <= num_experts=4"),
        (TINY_LM.replace("steps = 6", 'steps = "many"'),
         "[train] steps = 'many' is invalid; expected int"),
        (TINY_LM.replace('device = "cpu"', 'device = "tpu"'),
         "[train] device = 'tpu' is invalid; expected one of 'auto', 'cpu', 'cuda'"),
        (TINY_LM.replace("lr = 3e-3", "lr = -1.0"), "[train] lr=-1.0 must be > 0"),
        (TINY_LM.replace("max_chars = 6000", "max_char = 6000"),
         "unknown key 'max_char' in [data] for dataset = 'kjv'; allowed keys: dataset, max_chars"),
        (TINY_LM.replace('dataset = "kjv"', 'dataset = "digits"'),
         "[data] dataset = 'digits' is invalid for kind = 'lm'; expected one of 'kjv', 'text'"),
        (TINY_LM.replace('kind = "lm"', 'kind = "video"'),
         "[model] kind = 'video' is invalid; expected one of 'lm', 'image', 'audio'"),
        (TINY_LM.replace('dataset = "kjv"', 'dataset = "text"\npath = "nowhere.txt"'),
         "[data] path = 'nowhere.txt' does not exist"),
        (TINY_LM.replace("[model]", "[model\n"), "is not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, text, expected):
    err = error_of(capsys, ["train", str(write(tmp_path, text)), "--output", str(tmp_path / "o")])
    assert expected in err, err
    assert "Traceback" not in err


def test_missing_file_and_bad_suffix(tmp_path, capsys):
    err = error_of(capsys, ["train", str(tmp_path / "nope.toml")])
    assert "does not exist" in err and "nope.toml" in err
    err = error_of(capsys, ["train", str(write(tmp_path, "x", "exp.ini"))])
    assert "use .toml, .yaml or .yml" in err


def test_yaml_config_with_null(tmp_path):
    spec = parse_experiment({"model": {"kind": "audio", "capacity_factor": None},
                             "data": {"dataset": "audio"}, "train": {"grad_clip": "none"}})
    assert spec.model["capacity_factor"] is None and spec.train.grad_clip is None


def test_out_of_memory_sized_config_is_refused(tmp_path, capsys):
    huge = TINY_LM.replace("d_model = 16", "d_model = 65536").replace("d_ff = 16", "d_ff = 262144")
    err = error_of(capsys, ["train", str(write(tmp_path, huge)), "--output", str(tmp_path / "o")])
    assert "this configuration needs about" in err and "lower [model] d_model" in err
    assert not (tmp_path / "o" / "moe" / "metrics.jsonl").exists()


def test_memory_check_uses_the_available_amount(tmp_path):
    spec = parse_experiment({"model": {"kind": "image", "architecture": "mlp", "d_model": 16,
                                       "d_ff": 16},
                             "data": {"dataset": "digits"},
                             "train": {"steps": 1, "output_dir": str(tmp_path / "m")}})
    derived = {"image_size": 8, "in_channels": 1, "num_classes": 10}
    from moekit.train.experiment import build_models

    estimate = estimate_memory(spec, derived, build_models(spec, derived)["moe"])
    assert estimate.parameters > 0
    with pytest.raises(MemoryError, match="is available on cpu; lower"):
        run_experiment(spec, available_memory=estimate.total_bytes // 2)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["lm_kjv.toml", "digits_vit_soft.yaml", "audio.toml"])
def test_example_configs_parse_and_build(name):
    from moekit.train.experiment import build_models, load_config_file, prepare_data

    spec = parse_experiment(load_config_file(EXAMPLES / name), source=name)
    data = prepare_data(spec)
    for factory in build_models(spec, data.derived).values():
        model = factory()
        x, _ = data.train.batch(0)
        with torch.no_grad():
            assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("router", ["soft", "expert_choice"])
def test_image_and_audio_runs(tmp_path, router):
    for kind, dataset in (("image", "digits"), ("audio", "audio")):
        raw = {"model": {"kind": kind, "router": router, "d_model": 16, "d_ff": 16, "n_heads": 2,
                         "n_layers": 1},
               "data": {"dataset": dataset},
               "train": {"steps": 2, "batch_size": 8, "eval_every": 0, "eval_batches": 1,
                         "device": "cpu", "output_dir": str(tmp_path / f"{kind}-{router}")}}
        if dataset == "audio":
            raw["data"]["n_per_class"] = 4
        result = run_experiment(parse_experiment(raw), progress=open("/dev/null", "w"))  # noqa: SIM115
        assert result["moe"].step == 2 and result["moe"].final_val_loss is not None
