"""`moekit train CONFIG`: config validation, end-to-end train -> Ctrl-C -> resume -> report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moekit.cli.main import main
from moekit.train.experiment import parse_experiment, run_experiment
from moekit.train.memory import estimate_memory

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
    from moekit.train.experiment_file import model_config

    estimate = estimate_memory(model_config(spec, derived), batch_size=spec.train.batch_size,
                               factory=build_models(spec, derived)["moe"])
    assert estimate.parameters > 0
    with pytest.raises(MemoryError, match="is available on cpu; lower"):
        run_experiment(spec, available_memory=estimate.total_bytes // 2)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["lm_kjv.toml", "digits_vit_soft.yaml", "audio.toml"])
def test_example_configs_parse_and_build(name):
    from moekit.train.experiment import build_models, load_config_file, load_data

    spec = parse_experiment(load_config_file(EXAMPLES / name), source=name)
    data = load_data(spec)
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


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    config = write(tmp_path, TINY_LM.replace("steps = 6", "steps = 2"))
    out = tmp_path / "done"
    assert main(["train", str(config), "--output", str(out)]) == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    capsys.readouterr()
    assert main(["train", str(config), "--output", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "moe: already finished at step 2 (of 2); nothing to do" in printed
    assert "dense: already finished" in printed
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


@pytest.mark.parametrize(("kind", "dataset", "router"),
                         [("image", "digits", "soft"), ("audio", "audio", "topk")])
def test_classifier_runs_report_accuracy_beside_a_dense_baseline(tmp_path, capsys, kind, dataset,
                                                                  router):
    text = f"""
[model]
kind = "{kind}"
router = "{router}"
d_model = 16
d_ff = 16
n_heads = 2
n_layers = 1
dense_baseline = true

[data]
dataset = "{dataset}"
{"n_per_class = 6" if dataset == "audio" else ""}

[train]
steps = 3
batch_size = 8
eval_every = 0
eval_batches = 2
device = "cpu"
"""
    out = tmp_path / kind
    assert main(["train", str(write(tmp_path, text)), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "moe: 3 steps" in printed and "dense: 3 steps" in printed
    assert printed.count("val accuracy") == 2
    summary = json.loads((out / "results.json").read_text())
    for name in ("moe", "dense"):
        assert 0.0 <= summary[name]["final_val_accuracy"] <= 1.0
    assert summary["dense"]["parameters_total"] < summary["moe"]["parameters_total"]
    dense_config = json.loads((out / "dense" / "config.json").read_text())
    assert dense_config["model"]["moe"] is None
    from moekit.viz.report import build_report_from_run

    html = build_report_from_run(out, fmt="html")[0].read_text()
    assert "best val accuracy" in html
    assert (out / "report_plots" / "accuracy.png").stat().st_size > 1000
    # which expert each class goes to: recorded by sparse MoE layers (Soft MoE has no routing)
    assert (out / "moe" / "routing.json").is_file() == (router != "soft")
    assert (out / "report_plots" / "routing_moe.png").is_file() == (router != "soft")
    assert not (out / "dense" / "routing.json").exists()


def test_lm_example_advertises_only_causal_routers():
    """The comment beside `router` in lm_kjv.toml lists routers; each must keep the LM causal."""
    import re

    from moekit.models import TransformerLM, TransformerLMConfig

    line = next(x for x in (EXAMPLES / "lm_kjv.toml").read_text().splitlines()
                if x.startswith("router"))
    advertised = re.findall(r"\b(topk|switch|noisy_topk|sigmoid_bias|expert_choice|soft)\b",
                            line.split("#", 1)[1])
    assert advertised and "topk" in advertised
    for router in advertised:
        torch.manual_seed(0)
        model = TransformerLM(TransformerLMConfig.create(
            vocab_size=30, block_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=16,
            num_experts=4, top_k=1 if router == "switch" else 2, router=router)).eval()
        a = torch.randint(0, 30, (4, 32))
        b = a.clone()
        b[:, 20:] = (a[:, 20:] + 3) % 30
        with torch.no_grad():
            assert torch.equal(model(a)[:, :20], model(b)[:, :20]), router


def test_example_configs_keep_their_meaning():
    """The flat keys of the example files build the nested configs they always meant."""
    from moekit.layers import MoEConfig, SoftMoEConfig
    from moekit.train.experiment_file import model_config

    def config_of(name: str, derived: dict):
        from moekit.train.experiment import load_config_file

        return model_config(parse_experiment(load_config_file(EXAMPLES / name)), derived)

    lm = config_of("lm_kjv.toml", {"vocab_size": 60})
    assert lm.moe == MoEConfig.create(d_model=48, d_ff=48, num_experts=4, top_k=2, router="topk",
                                      activation="swiglu", aux_loss_weight=0.01)
    assert (lm.d_model, lm.n_layers, lm.n_heads, lm.block_size, lm.moe_every) == (48, 2, 4, 32, 1)
    audio = config_of("audio.toml", {"n_features": 32, "max_frames": 40, "num_classes": 4})
    # the models' aux_loss_weight default (0.01) holds for sigmoid_bias too, as it always did
    assert audio.moe == MoEConfig.create(d_model=32, d_ff=64, num_experts=4, top_k=2,
                                         router="sigmoid_bias", activation="gelu",
                                         aux_loss_weight=0.01)
    digits = config_of("digits_vit_soft.yaml", {"image_size": 8, "in_channels": 1,
                                                "num_classes": 10})
    assert digits.moe == SoftMoEConfig(d_model=32, d_ff=64, num_experts=4, slots_per_expert=2,
                                       activation="gelu")
    assert (digits.architecture, digits.patch_size, digits.n_layers) == ("vit", 2, 2)


def test_a_run_folder_rebuilds_its_model(tmp_path):
    """config.json's model entry builds the model its checkpoint loads into."""
    from moekit.models import TransformerLM, TransformerLMConfig
    from moekit.train.checkpoint import latest_checkpoint, load_checkpoint

    config = write(tmp_path, TINY_LM.replace("steps = 6", "steps = 2"))
    out = tmp_path / "r"
    assert main(["train", str(config), "--output", str(out)]) == 0
    saved = json.loads((out / "moe" / "config.json").read_text())["model"]
    model = TransformerLM(TransformerLMConfig.from_dict(saved))
    load_checkpoint(latest_checkpoint(out / "moe" / "checkpoints"), model=model, restore_rng=False)
    dense = json.loads((out / "dense" / "config.json").read_text())["model"]
    assert TransformerLMConfig.from_dict(dense).moe is None
