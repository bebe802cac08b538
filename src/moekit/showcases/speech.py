"""The speech showcase: spoken digits in 32 languages and 42 accents, experts by language.

Data: every digit 0-9 spoken by eSpeak NG (:func:`moekit.data.speech.synthesize_digits`, in
this process) in the 17 accents of :data:`moekit.data.speech.ACCENTS` (en-US, en-GB, Scottish,
Caribbean English, Belgian and Swiss French, Latin-American Spanish, ...) and 25 more languages
(:data:`EXTRA_LANGUAGES`: Dutch to Mandarin), in 16 voice variants, 2 speaking rates and 2
pitches each: 26,880 clips as fixed-size log-mel features (:func:`~moekit.data.speech.digit_features`,
16 frames x 32 bands). Each digit class is 32 different words, so one small model must learn
them all while an expert per language learns ten: the oracle that is told the language (one
linear model per language) scores 0.997 on unheard voices where a pooled linear model scores
0.78. Replicate ``r`` holds out 4 of the 16 voices of every accent (drawn with seed ``r``) for
validation, and draws the models' weights and batches from seed ``r``.

Models, scored by digit accuracy on the held-out voices (higher is better):

- ``MoE MLP per clip``: :class:`moekit.models.AudioClassifier` fed the whole clip as one token
  (512 features), one block whose MLP is an MoE layer of 32 experts of width 32, top-2: the
  router picks experts per clip;
- its dense twin: the same block with one MLP of width 64, so each clip passes through the same
  number of weights (equal active compute; the MoE holds more in total);
- ``MoE transformer per frame`` and its dense twin: the same comparison in a 2-block transformer
  over the 16 frames (d_model 32; 16 experts of width 16, top-2, against one MLP of width 32),
  the router picking experts per frame;
- a pooled logistic regression (baseline), and one logistic regression per language told the
  language (``oracle``, not a baseline: it is given what the gate must find).

A second evaluation scores the same trained models on real human recordings of the digits from
Debian's asterisk-core-sounds packages (one speaker per language, en/es/fr/it/ru, 10 clips each)
where they are installed; the notes give the ``apt-get install`` line of the missing ones.

The ``routing`` record (replicate 0's MoE models, held-out voices): per model and layer,
``by_language``, ``by_accent`` and ``by_digit`` (token-slots of each language's, accent's or
digit's clips per expert: ``rows`` and ``counts``), ``information_language`` / ``_accent`` /
``_digit`` (I(group; expert) / H(group) from those counts: 1 when each expert serves one group),
``language_from_routing`` / ``accent_from_routing`` / ``digit_from_routing`` (accuracy of a
logistic regression that reads the group from the routing alone: fitted on the training voices'
routing profiles, scored on the held-out voices'; with chance beside it), and
``language_from_features`` (a linear reader of the language from the raw features, for scale).
The gate is free to key on anything: the readings say whether it found the language, the accent
or the word spoken.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moekit.data.speech import ACCENTS, VARIANTS, Accent
from moekit.showcases._base import Evaluation, Metric, ModelResult, ShowcaseResult

ACCURACY = Metric(name="accuracy", direction="higher",
                  description="digit accuracy on voices held out of training")
REAL_ACCURACY = Metric(name="accuracy", direction="higher",
                       description="digit accuracy on real human recordings")

#: Languages added to :data:`moekit.data.speech.ACCENTS` for the showcase: (eSpeak code, name).
EXTRA_LANGUAGES: tuple[tuple[str, str], ...] = (
    ("nl", "Dutch"), ("sv", "Swedish"), ("da", "Danish"), ("nb", "Norwegian"),
    ("fi", "Finnish"), ("hu", "Hungarian"), ("pl", "Polish"), ("cs", "Czech"),
    ("bg", "Bulgarian"), ("uk", "Ukrainian"), ("el", "Greek"), ("ro", "Romanian"),
    ("ca", "Catalan"), ("tr", "Turkish"), ("id", "Indonesian"), ("vi", "Vietnamese"),
    ("hi", "Hindi"), ("ar", "Arabic"), ("fa", "Persian"), ("cmn", "Mandarin"),
    ("ja", "Japanese"), ("ko", "Korean"), ("sw", "Swahili"), ("ta", "Tamil"), ("th", "Thai"),
)

#: The showcase's accents: the loader's 17 and one per extra language.
SHOWCASE_ACCENTS: tuple[Accent, ...] = ACCENTS + tuple(
    Accent(name=code, language=code, espeak=code) for code, _ in EXTRA_LANGUAGES)

#: The accents of ``--quick``: the five languages with real recordings, plus German.
QUICK_ACCENTS: tuple[Accent, ...] = tuple(
    a for a in ACCENTS if a.name in ("en-US", "en-GB", "de", "fr-FR", "es-ES", "it", "ru"))

Arch = Literal["clip", "frame"]


@dataclass(frozen=True, kw_only=True)
class _ArchSettings:
    """One MoE model and its dense twin: the shape and the training of both."""

    arch: Arch
    d_model: int
    n_layers: int
    n_heads: int
    num_experts: int
    top_k: int
    d_ff: int  # width of one expert; the dense twin is top_k * d_ff wide
    steps: int
    lr: float


@dataclass(frozen=True, kw_only=True)
class _Settings:
    accents: tuple[Accent, ...]
    variants: tuple[str, ...]
    rates: tuple[int, ...]
    pitches: tuple[int, ...]
    valid_variants: int
    replicates: int
    archs: tuple[_ArchSettings, ...]
    batch_size: int = 128
    weight_decay: float = 0.05
    warmup_steps: int = 100
    n_frames: int = 16
    n_mels: int = 32
    linear: bool = True


def _settings(quick: bool, seeds: int | None, device: str) -> _Settings:
    if quick:
        small = (_ArchSettings(arch="clip", d_model=32, n_layers=1, n_heads=2, num_experts=4,
                               top_k=2, d_ff=16, steps=150, lr=3e-3),
                 _ArchSettings(arch="frame", d_model=16, n_layers=1, n_heads=2, num_experts=4,
                               top_k=2, d_ff=16, steps=60, lr=3e-3))
        return _Settings(accents=QUICK_ACCENTS, variants=("", "m1", "f2", "m3"), rates=(175,),
                         pitches=(50,), valid_variants=1, replicates=seeds or 2, archs=small,
                         warmup_steps=10)
    scale = 4 if device == "cuda" else 1  # a GPU affords experts 4x wider and 4x the steps
    archs = (_ArchSettings(arch="clip", d_model=64 * scale, n_layers=1, n_heads=2,
                           num_experts=32, top_k=2, d_ff=32 * scale, steps=2000 * scale, lr=3e-3),
             _ArchSettings(arch="frame", d_model=32 * scale, n_layers=2, n_heads=2,
                           num_experts=16, top_k=2, d_ff=16 * scale, steps=3000 * scale,
                           lr=3e-3))
    return _Settings(accents=SHOWCASE_ACCENTS, variants=VARIANTS, rates=(140, 200),
                     pitches=(40, 60), valid_variants=4, replicates=seeds or 3, archs=archs)


# --- the models (one function, so a change of moekit.models' configs touches one place) ---------

def build_audio_model(a: _ArchSettings, *, dense: bool, n_features: int, n_frames: int,
                      num_classes: int = 10) -> Any:
    """The MoE audio model of ``a``, or its dense twin at equal active compute.

    The twin (:func:`moekit.models.dense_twin_config`) replaces each MoE layer's ``top_k``
    active experts of width ``d_ff`` by one dense MLP of width ``top_k * d_ff``, so a token
    passes through the same number of weights in both.
    """
    from moekit.layers import MoEConfig
    from moekit.models import AudioClassifier, AudioClassifierConfig, dense_twin_config

    config = AudioClassifierConfig(
        n_features=n_features, max_frames=n_frames, num_classes=num_classes, d_model=a.d_model,
        n_layers=a.n_layers, n_heads=a.n_heads, moe=MoEConfig.create(
            d_model=a.d_model, d_ff=a.d_ff, num_experts=a.num_experts, top_k=a.top_k,
            router="topk", activation="gelu", aux_loss_weight=0.01))
    if dense:
        config = dense_twin_config(config)
    return AudioClassifier(config)


def _inputs(features: np.ndarray, arch: Arch) -> np.ndarray:
    """(n, F, M) features as the model sees them: frames, or the whole clip as one token."""
    return features if arch == "frame" else features.reshape(len(features), 1, -1)


def _model_name(a: _ArchSettings, dense: bool) -> str:
    where = "per clip" if a.arch == "clip" else f"per frame ({a.n_layers} blocks)"
    if dense:
        return f"dense twin {where}: MLP {a.top_k * a.d_ff}"
    return f"MoE {where}: {a.num_experts} experts x {a.d_ff}, top-{a.top_k}"


# --- data -------------------------------------------------------------------------------------------

def split_by_voice(accent: np.ndarray, voice: np.ndarray, *, valid_per_accent: int,
                   seed: int) -> np.ndarray:
    """Boolean mask of the held-out clips: ``valid_per_accent`` voices of every accent.

    Parameters
    ----------
    accent, voice : ndarray of shape (n,), int
        Each clip's accent and voice (a voice belongs to one accent).
    """
    rng = np.random.default_rng(seed)
    held = np.zeros(int(voice.max()) + 1, dtype=bool)
    for a in np.unique(accent):
        voices = np.unique(voice[accent == a])
        if len(voices) <= valid_per_accent:
            raise ValueError(f"accent {a} has {len(voices)} voices; holding out "
                             f"{valid_per_accent} leaves none to train on")
        held[rng.choice(voices, size=valid_per_accent, replace=False)] = True
    return held[voice]


def _real_recordings(languages: tuple[str, ...]) -> tuple[Any, list[str]]:
    """The installed real recordings of the showcase's languages, and notes on the missing."""
    from moekit.data._sources import data_source, source_available
    from moekit.data.speech import RECORDED_DIGITS, load_recorded_digits

    present, notes = [], []
    for lang, key in RECORDED_DIGITS.items():
        if lang not in languages:
            continue
        if source_available(key):
            present.append(lang)
        else:
            notes.append(f"real recordings of {lang!r} are not installed, so they are not "
                         f"tested; install them with: {data_source(key).install}")
    return (load_recorded_digits(present) if present else None), notes


# --- routing ----------------------------------------------------------------------------------------

def routing_reading(train_routing: Any, valid_routing: Any, *, language_tr: np.ndarray,
                    language_va: np.ndarray, accent_tr: np.ndarray, accent_va: np.ndarray,
                    digit_tr: np.ndarray, digit_va: np.ndarray, languages: tuple[str, ...],
                    accents: tuple[str, ...]) -> dict[str, Any]:
    """What the routers of one MoE model learned (see the module docstring for the fields)."""
    from moekit.showcases._routing import (
        expert_group_information,
        group_counts,
        group_readability,
        routing_profile,
    )

    layers = []
    profiles_tr, profiles_va = [], []
    for idx_tr, idx_va, E in zip(train_routing.sparse, valid_routing.sparse,
                                 train_routing.num_experts):
        by_lang = group_counts(idx_va, language_va, n_groups=len(languages), n_experts=E)
        by_acc = group_counts(idx_va, accent_va, n_groups=len(accents), n_experts=E)
        by_digit = group_counts(idx_va, digit_va, n_groups=10, n_experts=E)
        layers.append({
            "experts": E,
            "by_language": {"rows": list(languages), "counts": by_lang.tolist()},
            "by_accent": {"rows": list(accents), "counts": by_acc.tolist()},
            "by_digit": {"rows": [str(d) for d in range(10)], "counts": by_digit.tolist()},
            "information_language": expert_group_information(by_lang),
            "information_accent": expert_group_information(by_acc),
            "information_digit": expert_group_information(by_digit),
        })
        profiles_tr.append(routing_profile(idx_tr, n_experts=E))
        profiles_va.append(routing_profile(idx_va, n_experts=E))
    ptr, pva = np.concatenate(profiles_tr, axis=1), np.concatenate(profiles_va, axis=1)
    return {"layers": layers,
            "language_from_routing": group_readability(ptr, language_tr, pva, language_va),
            "accent_from_routing": group_readability(ptr, accent_tr, pva, accent_va),
            "digit_from_routing": group_readability(ptr, digit_tr, pva, digit_va)}


# --- the showcase -----------------------------------------------------------------------------------

def _log(text: str) -> None:
    print(f"[speech] {text}", file=sys.stderr, flush=True)


class SpeechShowcase:
    name = "speech"
    description = ("An MoE audio classifier on digits spoken in 32 languages and 42 accents "
                   "(eSpeak NG), beside its dense twin at equal active compute, validated on "
                   "unheard voices and tested on real human recordings: do experts specialise "
                   "by language or accent?")
    sources = ("espeakng-loader", "asterisk-sounds-en", "asterisk-sounds-es",
               "asterisk-sounds-fr", "asterisk-sounds-it", "asterisk-sounds-ru")
    implemented = True

    def run(self, *, quick: bool, seeds: int | None, device: str,
            output: Path) -> ShowcaseResult:
        import time

        import torch

        from moekit.data.speech import digit_features, synthesize_digits
        from moekit.showcases._neural import accuracy, torch_threads, train_classifier
        from moekit.showcases._routing import record_routing
        from moekit.showcases._speech_linear import language_id_from_features, linear_scores
        from moekit.showcases._speech_report import speech_sections

        s = _settings(quick, seeds, device)
        notes: list[str] = []
        with torch_threads(1 if device == "cpu" else 4):
            started = time.process_time()
            clips = synthesize_digits(s.accents, variants=s.variants, rates=s.rates,
                                      pitches=s.pitches)
            feats = digit_features(clips, n_frames=s.n_frames, n_mels=s.n_mels)
            real, real_notes = _real_recordings(clips.languages)
            notes += real_notes
            for note in real_notes:
                _log(note)
            real_feats = (digit_features(real, n_frames=s.n_frames, n_mels=s.n_mels)
                          if real is not None else None)
            real_lang = (np.array([clips.languages.index(real.languages[i])
                                   for i in real.language]) if real is not None else None)
            data_cpu_s = time.process_time() - started
            _log(f"{len(clips)} clips synthesised and featurised in {data_cpu_s:.0f} s of CPU")

            names = [_model_name(a, dense) for a in s.archs for dense in (False, True)]
            valid_acc: dict[str, list[float]] = {n: [] for n in names}
            real_acc: dict[str, list[float]] = {n: [] for n in names}
            by_lang_acc: dict[str, list[list[float]]] = {n: [] for n in names}
            cost: dict[str, dict[str, Any]] = {n: {"wall": [], "cpu": []} for n in names}
            linear: dict[str, list[float]] = {k: [] for k in (
                "pooled", "oracle", "pooled_real", "oracle_real", "pooled_s", "oracle_s")}
            routing: dict[str, Any] = {"replicate": 0, "split": "held-out voices of "
                                       "replicate 0", "models": {}}
            n_lang = len(clips.languages)
            for r in range(s.replicates):
                held = split_by_voice(clips.accent, clips.voice,
                                      valid_per_accent=s.valid_variants, seed=r)
                tr, va = np.flatnonzero(~held), np.flatnonzero(held)
                for a in s.archs:
                    x_all = torch.from_numpy(_inputs(feats, a.arch))
                    for dense in (False, True):
                        name = _model_name(a, dense)
                        trained = train_classifier(
                            partial(build_audio_model, a, dense=dense,
                                    n_features=int(x_all.shape[-1]),
                                    n_frames=int(x_all.shape[1])),
                            x_all[tr], torch.from_numpy(clips.digit[tr]), seed=r,
                            steps=a.steps, batch_size=s.batch_size, lr=a.lr,
                            weight_decay=s.weight_decay, warmup_steps=s.warmup_steps,
                            device=device, run_dir=output / "runs" / f"{a.arch}-"
                            f"{'dense' if dense else 'moe'}" / f"replicate-{r}", name=name)
                        cost[name]["wall"].append(trained.wall_s)
                        cost[name]["cpu"].append(trained.cpu_s)
                        cost[name]["params"] = (trained.parameters_total,
                                                trained.parameters_active)
                        seen = record_routing(trained.model, x_all[va], device=device)
                        valid_acc[name].append(accuracy(seen.logits, clips.digit[va]))
                        pred = seen.logits.argmax(axis=1)
                        by_lang_acc[name].append([
                            float(np.mean(pred[clips.language[va] == g]
                                          == clips.digit[va][clips.language[va] == g]))
                            for g in range(n_lang)])
                        if real_feats is not None and real is not None:
                            x_real = torch.from_numpy(_inputs(real_feats, a.arch))
                            seen_real = record_routing(trained.model, x_real, device=device)
                            real_acc[name].append(accuracy(seen_real.logits, real.digit))
                        _log(f"replicate {r}: {name}: held-out voices {valid_acc[name][-1]:.4f}"
                             f"{f', real {real_acc[name][-1]:.2f}' if real_acc[name] else ''}"
                             f" ({trained.cpu_s:.0f} s CPU)")
                        if r == 0 and not dense:
                            seen_tr = record_routing(trained.model, x_all[tr], device=device)
                            routing["models"][name] = routing_reading(
                                seen_tr, seen, language_tr=clips.language[tr],
                                language_va=clips.language[va], accent_tr=clips.accent[tr],
                                accent_va=clips.accent[va], digit_tr=clips.digit[tr],
                                digit_va=clips.digit[va], languages=clips.languages,
                                accents=clips.accents)
                if s.linear:
                    flat = feats.reshape(len(feats), -1)
                    lin = linear_scores(
                        flat[tr], clips.digit[tr], clips.language[tr], flat[va],
                        clips.digit[va], clips.language[va],
                        real_feats.reshape(len(real_feats), -1) if real_feats is not None
                        else None, real_lang)
                    linear["pooled"].append(float(np.mean(lin["pooled_valid"]
                                                          == clips.digit[va])))
                    linear["oracle"].append(float(np.mean(lin["oracle_valid"]
                                                          == clips.digit[va])))
                    linear["pooled_s"].append(lin["pooled_s"])
                    linear["oracle_s"].append(lin["oracle_s"])
                    if real is not None:
                        linear["pooled_real"].append(float(np.mean(lin["pooled_real"]
                                                                   == real.digit)))
                        linear["oracle_real"].append(float(np.mean(lin["oracle_real"]
                                                                   == real.digit)))
                    if r == 0:
                        flat_tr, flat_va = flat[tr], flat[va]
                        routing["language_from_features"] = language_id_from_features(
                            flat_tr, clips.language[tr], flat_va, clips.language[va])

        models, real_models = [], []
        for a in s.archs:
            for dense in (False, True):
                name = _model_name(a, dense)
                total, active = cost[name]["params"]
                details = {"train_cpu_s": cost[name]["cpu"],
                           "accuracy_by_language": dict(zip(
                               clips.languages, np.mean(by_lang_acc[name], axis=0).tolist())),
                           "steps": a.steps, "batch_size": s.batch_size}
                common = dict(name=name, kind="baseline" if dense else "moe",
                              parameters_total=total, parameters_active=active,
                              train_time_s=float(np.mean(cost[name]["wall"])), details=details)
                models.append(ModelResult(values=tuple(valid_acc[name]), **common))
                if real_acc[name]:
                    real_models.append(ModelResult(values=tuple(real_acc[name]), **common))
        if s.linear:
            n_feat = feats.shape[1] * feats.shape[2]
            kind: Literal["baseline", "oracle"]
            for key, name, kind, n_models in (
                    ("pooled", "logistic regression, pooled", "baseline", 1),
                    ("oracle", "one logistic regression per language (told the language)",
                     "oracle", n_lang)):
                params = n_models * (n_feat + 1) * 10
                fit_s = float(np.mean(linear[key + "_s"]))
                models.append(ModelResult(name=name, kind=kind, values=tuple(linear[key]),
                                          parameters_total=params, train_time_s=fit_s,
                                          parameters_active=(n_feat + 1) * 10))
                if real is not None:
                    real_models.append(ModelResult(
                        name=name, kind=kind, values=tuple(linear[key + "_real"]),
                        parameters_total=params, parameters_active=(n_feat + 1) * 10,
                        train_time_s=fit_s))
        replicates = tuple(f"replicate {r}: {s.valid_variants} voices per accent held out "
                           f"(seed {r}), model seed {r}" for r in range(s.replicates))
        evaluations = [Evaluation(
            dataset=f"spoken digits, eSpeak NG: {len(clips.languages)} languages, "
                    f"{len(clips.accents)} accents, {len(clips)} clips",
            metric=ACCURACY, replicates=replicates, models=tuple(models))]
        if real is not None and real_models:
            evaluations.append(Evaluation(
                dataset=f"real recordings (Debian asterisk-core-sounds: "
                        f"{', '.join(real.languages)}; {len(real)} clips, one speaker each)",
                metric=REAL_ACCURACY, replicates=replicates, models=tuple(real_models)))
        if quick:
            notes.append("--quick: 7 accents, 4 voices each, tiny models; the numbers say "
                         "nothing about the claim")
        sections = speech_sections(evaluations, routing, clips.languages, output)
        config = {"accents": [a.name for a in s.accents], "variants": list(s.variants),
                  "rates": list(s.rates), "pitches": list(s.pitches),
                  "valid_voices_per_accent": s.valid_variants, "replicates": s.replicates,
                  "n_frames": s.n_frames, "n_mels": s.n_mels, "batch_size": s.batch_size,
                  "weight_decay": s.weight_decay, "warmup_steps": s.warmup_steps,
                  "models": [a.__dict__ for a in s.archs], "torch_threads":
                  1 if device == "cpu" else 4, "data_cpu_s": data_cpu_s}
        return ShowcaseResult(showcase=self.name, evaluations=tuple(evaluations),
                              routing=routing, sections=tuple(sections), config=config,
                              notes=tuple(notes))


SHOWCASE = SpeechShowcase()
