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
  (512 features), one block whose MLP is an MoE layer of 8 experts of width 32, top-2: the
  router picks experts per clip;
- its dense twin: the same block with one MLP of width 64, so each clip passes through the same
  number of weights (equal active compute; the MoE holds more in total);
- ``MoE transformer per frame`` and its dense twin: the same comparison in a 2-block transformer
  over the 16 frames, the router picking experts per frame;
- a pooled logistic regression (baseline), and one logistic regression per language told the
  language (``oracle``, not a baseline: it is given what the gate must find).

A second evaluation scores the same trained models on real human recordings of the digits from
Debian's asterisk-core-sounds packages (one speaker per language, en/es/fr/it/ru, 10 clips each)
where they are installed; the notes give the ``apt-get install`` line of the missing ones.

The ``routing`` record (replicate 0's MoE models, held-out voices): per model and layer,
``by_language`` and ``by_accent`` (token-slots of each language's/accent's clips per expert, and
each row's shares), ``information`` (I(language; expert) / H(language) from those counts),
``language_from_routing`` / ``accent_from_routing`` (accuracy of a logistic regression that
reads the language or accent from the routing alone: fitted on the training voices' routing
profiles, scored on the held-out voices'; with chance beside it), and
``language_from_features`` (the same reader on the raw features, for scale).
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
    what = "MLP per clip" if a.arch == "clip" else f"transformer per frame ({a.n_layers} blocks)"
    if dense:
        return f"dense twin: {what}, MLP width {a.top_k * a.d_ff}"
    return f"MoE {what}, {a.num_experts} experts of width {a.d_ff}, top-{a.top_k}"


def _short(name: str) -> str:
    """A column header for a model: e.g. ``"MoE clip"``, ``"dense frame"``."""
    kind = "dense" if name.startswith("dense") else "MoE"
    return f"{kind} {'clip' if 'per clip' in name else 'frame'}"


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


# --- the linear references --------------------------------------------------------------------------

def _linear_scores(x_tr: np.ndarray, y_tr: np.ndarray, lang_tr: np.ndarray, x_va: np.ndarray,
                   y_va: np.ndarray, lang_va: np.ndarray, x_real: np.ndarray | None,
                   lang_real: np.ndarray | None) -> dict[str, Any]:
    """Pooled logistic regression, and one per language told the language (the oracle)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    ztr, zva = scaler.transform(x_tr), scaler.transform(x_va)
    zre = scaler.transform(x_real) if x_real is not None else None

    def fit(rows: np.ndarray) -> Any:
        return LogisticRegression(C=0.1, max_iter=300).fit(ztr[rows], y_tr[rows])

    pooled = fit(np.ones(len(y_tr), dtype=bool))
    out: dict[str, Any] = {"pooled_valid": pooled.predict(zva),
                           "pooled_real": pooled.predict(zre) if zre is not None else None}
    oracle_va = np.empty(len(y_va), dtype=np.int64)
    oracle_re = np.empty(len(zre), dtype=np.int64) if zre is not None else None
    for lang in np.unique(lang_tr):
        model = fit(lang_tr == lang)
        rows = lang_va == lang
        if rows.any():
            oracle_va[rows] = model.predict(zva[rows])
        if zre is not None and oracle_re is not None and lang_real is not None:
            rows_re = lang_real == lang
            if rows_re.any():
                oracle_re[rows_re] = model.predict(zre[rows_re])
    out["oracle_valid"], out["oracle_real"] = oracle_va, oracle_re
    return out


def _language_id_from_features(x_tr: np.ndarray, lang_tr: np.ndarray, x_va: np.ndarray,
                               lang_va: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(C=0.1, max_iter=300).fit(scaler.transform(x_tr), lang_tr)
    return float(clf.score(scaler.transform(x_va), lang_va))


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
            linear: dict[str, list[float]] = {k: [] for k in ("pooled", "oracle", "pooled_real",
                                                              "oracle_real")}
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
                    lin = _linear_scores(
                        flat[tr], clips.digit[tr], clips.language[tr], flat[va],
                        clips.digit[va], clips.language[va],
                        real_feats.reshape(len(real_feats), -1) if real_feats is not None
                        else None, real_lang)
                    linear["pooled"].append(float(np.mean(lin["pooled_valid"]
                                                          == clips.digit[va])))
                    linear["oracle"].append(float(np.mean(lin["oracle_valid"]
                                                          == clips.digit[va])))
                    if real is not None:
                        linear["pooled_real"].append(float(np.mean(lin["pooled_real"]
                                                                   == real.digit)))
                        linear["oracle_real"].append(float(np.mean(lin["oracle_real"]
                                                                   == real.digit)))
                    if r == 0:
                        flat_tr, flat_va = flat[tr], flat[va]
                        routing["language_from_features"] = _language_id_from_features(
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
                models.append(ModelResult(name=name, kind=kind, values=tuple(linear[key]),
                                          parameters_total=params,
                                          parameters_active=(n_feat + 1) * 10))
                if real is not None:
                    real_models.append(ModelResult(
                        name=name, kind=kind, values=tuple(linear[key + "_real"]),
                        parameters_total=params, parameters_active=(n_feat + 1) * 10))
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
        sections = _sections(evaluations, routing, clips, output)
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


def _sections(evaluations: list[Evaluation], routing: dict[str, Any], clips: Any,
              output: Path) -> list[Any]:
    from moekit.showcases._plots import plot_model_comparison
    from moekit.showcases._routing import top_experts_table
    from moekit.viz import Section, Table, plot_routing_heatmap

    plots = output / "plots"
    plots.mkdir(exist_ok=True)
    images = [plot_model_comparison(ev, plots / f"models_{i}.png")
              for i, ev in enumerate(evaluations)]
    sections = [Section(title="Model comparison", images=images, text=(
        "Each MoE model is set beside its dense twin: the same network with each MoE layer's "
        "active experts merged into one MLP as wide as they are together, so every clip passes "
        "through the same number of weights. Dots are replicates (a different set of held-out "
        "voices and model seed each). The oracle is told each clip's language and fits one "
        "linear model per language: it shows how much a perfect language gate could earn."))]
    by_lang_rows: list[dict[str, Any]] = []
    scored = [m for m in evaluations[0].models if m.details.get("accuracy_by_language")]
    if scored:
        for lang in clips.languages:
            by_lang_rows.append({"language": lang, **{
                _short(m.name): round(m.details["accuracy_by_language"][lang], 3)
                for m in scored}})
    lid = routing.get("language_from_features")
    for name, reading in routing["models"].items():
        images, tables = [], []
        tag = "clip" if "per clip" in name else "frame"
        unit = "clips" if tag == "clip" else "frames"
        for li, layer in enumerate(reading["layers"]):
            counts = np.asarray(layer["by_language"]["counts"])
            images.append(plot_routing_heatmap(
                counts, layer["by_language"]["rows"], plots / f"routing_{tag}_language_{li}.png",
                title=f"{name}\nlayer {li}: share of each language's {unit} per expert"))
            acc_counts = np.asarray(layer["by_accent"]["counts"])
            images.append(plot_routing_heatmap(
                acc_counts, layer["by_accent"]["rows"], plots / f"routing_{tag}_accent_{li}.png",
                title=f"layer {li}: share of each accent's {unit} per expert"))
            images.append(plot_routing_heatmap(
                np.asarray(layer["by_digit"]["counts"]), layer["by_digit"]["rows"],
                plots / f"routing_{tag}_digit_{li}.png",
                title=f"layer {li}: share of each digit's {unit} per expert (all languages)"))
            tables.append(Table(rows=top_experts_table(counts, layer["by_language"]["rows"]),
                                caption=f"layer {li}: the experts that take most of each "
                                        f"language's {unit} (token-slots), held-out voices"))
        lang, acc = reading["language_from_routing"], reading["accent_from_routing"]
        dig = reading["digit_from_routing"]
        info = "; ".join(f"layer {i}: language {lay['information_language']:.2f}, accent "
                         f"{lay['information_accent']:.2f}, digit {lay['information_digit']:.2f}"
                         for i, lay in enumerate(reading["layers"]))
        lang_gain = lang["accuracy"] - lang["chance"]
        dig_gain = dig["accuracy"] - dig["chance"]
        keyed = ("the language more than the word spoken" if lang_gain > dig_gain else
                 "the word spoken (the sound of the digit) more than its language")
        text = (f"Routing of {name} on the held-out voices of replicate 0. Share of the "
                f"uncertainty about each grouping that the expert choice removes (I(group; "
                f"expert) / H(group)): {info}. Read from the routing alone (which experts each "
                f"clip's {unit} went to, every layer), a linear classifier fitted on the "
                f"training voices names the language of {100 * lang['accuracy']:.1f}% of the "
                f"held-out clips (chance {100 * lang['chance']:.1f}%, {int(lang['n_groups'])} "
                f"languages), the accent of {100 * acc['accuracy']:.1f}% (chance "
                f"{100 * acc['chance']:.1f}%) and the digit of {100 * dig['accuracy']:.1f}% "
                f"(chance {100 * dig['chance']:.1f}%): this gate keys on {keyed}.")
        if lid is not None:
            text += (f" For scale, the same reader on the 512 raw features names the language of "
                     f"{100 * lid:.1f}%.")
        sections.append(Section(title=f"What the gate learned: {name}", text=text,
                                images=images, tables=tables))
    if by_lang_rows:
        sections.append(Section(title="Accuracy by language", text=(
            "Held-out voices, mean over the replicates."),
            tables=[Table(rows=by_lang_rows, caption="digit accuracy per language; "
                          + "; ".join(f"{_short(m.name)} = {m.name}" for m in scored))]))
    return sections


SHOWCASE = SpeechShowcase()
