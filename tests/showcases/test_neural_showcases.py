"""The speech and vision showcases' --quick paths, end to end on the real data, through the CLI.

They check what the showcases promise and that a wrong pipeline would break: every model is
scored on the same replicates, each MoE and its dense twin spend the same active compute, the
models learn far beyond chance, the real recordings are tested where installed (and the apt-get
line is given where not), and the routing record adds up to the clips and images it routed.
Not the exact numbers: --quick is far too small to say anything about the claim.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from moekit.cli.main import main
from moekit.data._sources import source_available
from moekit.data.speech import RECORDED_DIGITS


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    out = tmp_path_factory.mktemp("speech")
    assert main(["showcase", "speech", "--quick", "--output", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    out = tmp_path_factory.mktemp("vision")
    assert main(["showcase", "vision", "--quick", "--output", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def _models(evaluation):
    return {m["name"]: m for m in evaluation["models"]}


def _twins(models):
    """(MoE, dense twin) pairs: the twin is the baseline listed right after its MoE."""
    names = list(models)
    return [(models[a], models[b]) for a, b in zip(names, names[1:])
            if models[a]["kind"] == "moe" and b.startswith("dense twin")]


def test_speech_quick_scores_every_model_on_unheard_voices(speech):
    out, record = speech
    ev = record["evaluations"][0]
    assert ev["metric"] == {"name": "accuracy", "direction": "higher",
                            "description": "digit accuracy on voices held out of training"}
    assert len(ev["replicates"]) == 2 and "voices per accent held out" in ev["replicates"][0]
    models = _models(ev)
    kinds = [m["kind"] for m in models.values()]
    assert kinds.count("moe") == 2 and kinds.count("oracle") == 1
    pairs = _twins(models)
    assert len(pairs) == 2
    for moe, dense in pairs:
        assert moe["parameters_active"] == dense["parameters_active"]  # equal active compute
        assert moe["parameters_total"] > dense["parameters_total"]
    for m in models.values():
        assert len(m["per_seed"]) == 2
    clip_moe, clip_dense = pairs[0]
    assert "per clip" in clip_moe["name"]
    assert min(clip_moe["mean"], clip_dense["mean"]) > 0.6  # 10 digits: chance is 0.1
    for m in (clip_moe, clip_dense):
        by_lang = m["details"]["accuracy_by_language"]
        assert set(by_lang) == {"en", "de", "fr", "es", "it", "ru"}
        assert len(m["details"]["train_cpu_s"]) == 2
    oracle = next(m for m in models.values() if m["kind"] == "oracle")
    assert oracle["mean"] > 0.9
    assert ev["verdict"]["best_baseline"] != oracle["name"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8 and "keys on" in html
    assert (out / "runs" / "clip-moe" / "replicate-1" / "metrics.jsonl").is_file()


def test_speech_quick_tests_real_recordings_where_installed(speech):
    _, record = speech
    installed = [lang for lang, key in RECORDED_DIGITS.items() if source_available(key)]
    missing = [lang for lang in RECORDED_DIGITS if lang not in installed]
    for lang in missing:
        assert any(f"apt-get install -y asterisk-core-sounds-{lang}-wav" in n
                   for n in record["notes"]), lang
    if not installed:
        assert len(record["evaluations"]) == 1
        return
    real = record["evaluations"][1]
    assert real["dataset"].startswith("real recordings") and ", ".join(installed) in real["dataset"]
    assert f"{10 * len(installed)} clips" in real["dataset"]
    held = _models(record["evaluations"][0])
    for name, m in _models(real).items():
        assert name in held and len(m["per_seed"]) == 2
        assert all(0.0 <= v <= 1.0 for v in m["per_seed"])
        # one speaker, 10 clips per language: every score is a multiple of 1/(10 * languages)
        n = 10 * len(installed)
        assert all(abs(v * n - round(v * n)) < 1e-9 for v in m["per_seed"])


def test_speech_routing_record_adds_up(speech):
    _, record = speech
    routing = record["routing"]
    assert set(routing["models"]) == {m["name"] for m in record["evaluations"][0]["models"]
                                      if m["kind"] == "moe"}
    config = record["config"]
    n_valid = len(config["accents"]) * config["valid_voices_per_accent"] * 10
    for name, reading in routing["models"].items():
        arch = next(a for a in config["models"] if (a["arch"] == "clip") == ("per clip" in name))
        slots = n_valid * (1 if arch["arch"] == "clip" else config["n_frames"]) * arch["top_k"]
        assert len(reading["layers"]) == arch["n_layers"]
        for layer in reading["layers"]:
            for key, n_rows in (("by_language", 6), ("by_accent", 7), ("by_digit", 10)):
                counts = np.asarray(layer[key]["counts"])
                assert counts.shape == (n_rows, arch["num_experts"])
                assert counts.sum() == slots  # dropless: every slot of every clip, once
            by_lang = np.asarray(layer["by_language"]["counts"])
            by_acc = np.asarray(layer["by_accent"]["counts"])
            # en-US and en-GB together are English; the other accents are their own language
            np.testing.assert_array_equal(by_acc[0] + by_acc[1], by_lang[0])
            np.testing.assert_array_equal(by_acc[2:], by_lang[1:])
            for key in ("information_language", "information_accent", "information_digit"):
                assert 0.0 <= layer[key] <= 1.0
        for key in ("language_from_routing", "accent_from_routing", "digit_from_routing"):
            assert 0.0 <= reading[key]["chance"] <= 1.0
            assert 0.0 <= reading[key]["accuracy"] <= 1.0
    assert 0.0 < routing["language_from_features"] <= 1.0


def test_split_by_voice_holds_out_whole_voices_of_every_accent():
    from moekit.showcases.speech import split_by_voice

    accent = np.repeat(np.arange(3), 40)  # 3 accents x 4 voices x 10 clips
    voice = np.repeat(np.arange(12), 10)
    held = split_by_voice(accent, voice, valid_per_accent=1, seed=5)
    for a in range(3):
        assert len(np.unique(voice[held & (accent == a)])) == 1
    assert not set(voice[held]) & set(voice[~held])
    np.testing.assert_array_equal(held, split_by_voice(accent, voice, valid_per_accent=1,
                                                       seed=5))
    others = [split_by_voice(accent, voice, valid_per_accent=1, seed=s) for s in range(6)]
    assert len({tuple(h) for h in others}) > 1
    with pytest.raises(ValueError, match="leaves none to train on"):
        split_by_voice(accent, voice, valid_per_accent=4, seed=0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_default_and_gpu_settings_build_twins_of_equal_active_compute(device):
    """The configurations not run by the tests still build, and their twins are equal."""
    from moekit.models import count_parameters
    from moekit.showcases import speech as sp
    from moekit.showcases import vision as vi

    for a in sp._settings(False, None, device).archs:
        n_features, n_frames = (512, 1) if a.arch == "clip" else (32, 16)
        moe, dense = (sp.build_audio_model(a, dense=d, n_features=n_features, n_frames=n_frames)
                      for d in (False, True))
        assert count_parameters(moe).active == count_parameters(dense).active
    for a in vi._settings(False, None, device).archs:
        moe, dense = (vi.build_image_model(a, dense=d, num_classes=30) for d in (False, True))
        if a.arch == "mlp":
            assert count_parameters(moe).active == count_parameters(dense).active
        else:  # Soft MoE: as many slots as patches, each through one expert as wide as the MLP
            assert a.num_experts * a.slots_per_expert == (28 // a.patch_size) ** 2
            assert moe.blocks[0].mlp.experts.d_ff == dense.blocks[0].mlp.w_down.shape[0]


def test_vision_quick_scores_mlp_moe_and_soft_moe_vit_against_their_twins(vision):
    out, record = vision
    (ev,) = record["evaluations"]
    models = _models(ev)
    pairs = _twins(models)
    assert len(pairs) == 2
    (mlp, mlp_dense), (vit, vit_dense) = pairs
    assert "MLP" in mlp["name"] and "Soft MoE" in vit["name"]
    assert mlp["parameters_active"] == mlp_dense["parameters_active"]
    n_sources = 3 - sum("left out" in n for n in record["notes"])
    chance = 1 / (10 * n_sources)
    for m in models.values():
        assert len(m["per_seed"]) == 2 and len(m["other"]) == n_sources
        for per_source in m["other"].values():
            assert all(0.0 <= v <= 1.0 for v in per_source["per_seed"])
    assert min(mlp["mean"], mlp_dense["mean"]) > 4 * chance
    assert min(vit["mean"], vit_dense["mean"]) > chance
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5


def test_vision_routing_record_adds_up(vision):
    _, record = vision
    routing = record["routing"]
    (ev,) = record["evaluations"]
    n_test = int(ev["dataset"].split(" training and ")[1].split()[0])
    mlp_name, vit_name = (n for n in routing["models"])
    for layer in routing["models"][mlp_name]["layers"]:
        by_source = np.asarray(layer["by_source"]["counts"])
        by_class = np.asarray(layer["by_class"]["counts"])
        assert by_source.sum() == by_class.sum() == n_test * 2  # top-2, one token per image
        # a source's row is the sum of its 10 classes' rows
        np.testing.assert_allclose(by_class.reshape(-1, 10, by_class.shape[1]).sum(axis=1),
                                   by_source)
    for layer in routing["models"][vit_name]["layers"]:
        by_source = np.asarray(layer["by_source"]["counts"])
        assert by_source.sum() == pytest.approx(n_test)  # each image's shares sum to 1
        assert layer["unit"].startswith("combine weight")
    for reading in routing["models"].values():
        for key in ("source_from_routing", "class_from_routing"):
            assert 0.0 <= reading[key]["accuracy"] <= 1.0
