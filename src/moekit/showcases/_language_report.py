"""The language showcase's record: evaluations, the routing summary, the report's sections."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moekit.showcases._base import Evaluation, ModelResult, ShowcaseResult, spread
from moekit.viz import Section, Table

if TYPE_CHECKING:
    from moekit.data.multilingual import ParallelCorpus
    from moekit.showcases.language import LanguageSettings, _Scores

__all__ = ["build_result"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _pm(values: list[float]) -> str:
    return f"{_mean(values):.4f} ± {spread(values):.4f}"


def _per_seed_mean(per_lang: dict[str, list[float]], langs: tuple[str, ...]) -> tuple[float,
                                                                                       ...]:
    n = len(per_lang[langs[0]])
    return tuple(_mean([per_lang[lang][r] for lang in langs]) for r in range(n))


def _evaluations(s: LanguageSettings, sc: _Scores, corpus: ParallelCorpus,
                 tokens: int) -> tuple[Evaluation, ...]:
    from moekit.showcases.language import BPC, LANGUAGE_NAMES, LOSS

    langs = s.languages
    replicates = tuple(f"seed {r}" for r in range(s.seeds))
    kinds = {"moe": "moe", "dense": "baseline"}

    def models(values: dict[str, tuple[float, ...]],
               bpc: dict[str, tuple[float, ...]]) -> tuple[ModelResult, ...]:
        return tuple(ModelResult(
            name=sc.names[k], kind=kinds[k], values=values[k],  # type: ignore[arg-type]
            other={"bits_per_char": bpc[k]},
            parameters_total=sc.params[k][0], parameters_active=sc.params[k][1],
            train_time_s=_mean(sc.wall_s[k]),
            details={"training_cpu_s_per_seed": sc.cpu_s[k],
                     "final_train_loss_per_seed": sc.final_train_loss[k],
                     "training_tokens": tokens}) for k in sc.names)

    evs = [Evaluation(
        dataset=(f"parallel Bible, {len(langs)} languages ({', '.join(langs)}): first "
                 f"{corpus.n_valid_verses} New Testament verses, mean over the languages"),
        metric=LOSS, replicates=replicates, other_metrics={"bits_per_char": BPC},
        models=models({k: _per_seed_mean(sc.loss[k], langs) for k in sc.names},
                      {k: _per_seed_mean(sc.bpc[k], langs) for k in sc.names}))]
    for lang in langs:
        evs.append(Evaluation(
            dataset=f"{lang} ({LANGUAGE_NAMES.get(lang, lang)}, {corpus.translations[lang]})",
            metric=LOSS, replicates=replicates, other_metrics={"bits_per_char": BPC},
            models=models({k: tuple(sc.loss[k][lang]) for k in sc.names},
                          {k: tuple(sc.bpc[k][lang]) for k in sc.names})))
    return tuple(evs)


def _readout_summary(readouts: list[dict[str, Any]], key: str) -> dict[str, Any]:
    acc = [r[key]["accuracy"] for r in readouts]
    first = readouts[0][key]
    return {"accuracy_per_seed": acc, "accuracy_mean": _mean(acc), "accuracy_spread": spread(acc),
            "chance": first["chance"], "n_fit": first["n_train"], "n_test": first["n_test"],
            "confusion_seed0": first["confusion"]}


def _routing(s: LanguageSettings, sc: _Scores) -> dict[str, Any]:
    from moekit.showcases._routing_groups import expert_shares

    langs = s.languages
    assert sc.counts_GLE is not None  # set by seed 0's MoE
    shares = expert_shares(sc.counts_GLE)
    mi = np.asarray(sc.mi_bits)
    return {
        "model": f"{sc.names['moe']}, seed 0",
        "n_layers": s.shape.n_layers, "num_experts": s.shape.num_experts,
        "top_k": s.shape.top_k, "languages": list(langs),
        "share_by_language": {lang: shares[g].tolist() for g, lang in enumerate(langs)},
        "tokens_by_language": {lang: int(sc.counts_GLE[g, 0].sum() // s.shape.top_k)
                               for g, lang in enumerate(langs)},
        "mutual_information_bits": {
            "per_seed": sc.mi_bits, "mean_per_layer": mi.mean(axis=0).tolist(),
            "max_possible": math.log2(len(langs)),
            "what": "I(language; expert) of the validation token-slots, per layer"},
        "language_from_routing": {
            "how": ("multinomial logistic regression on which experts a token reached in each "
                    "layer (multi-hot, L*E features); per verse: the verse's mean vector. "
                    f"Fitted on the first {s.routing_verses} Old Testament verses per "
                    "language, scored on the validation verses; chance = always the most "
                    "frequent language"),
            "per_token": _readout_summary(sc.readouts, "per_token"),
            "per_verse": _readout_summary(sc.readouts, "per_verse"),
            "per_layer_seed0": sc.readouts[0].get("per_layer", []),
            "untrained_control": {
                "what": "the same read-out on the routing of the seed-0 MoE before training",
                "per_token": sc.control["per_token"]["accuracy"],
                "per_verse": sc.control["per_verse"]["accuracy"],
                "chance_per_token": sc.control["per_token"]["chance"],
                "chance_per_verse": sc.control["per_verse"]["chance"]},
            "byte_control": {
                "what": ("the same read-out given each token's byte instead of its routing "
                         "(per verse: the verse's byte histogram); no model"),
                "per_token": sc.byte_control["per_token"]["accuracy"],
                "per_verse": sc.byte_control["per_verse"]["accuracy"]},
        },
        "eval_texts": sc.user,
    }


def _loss_section(s: LanguageSettings, sc: _Scores, plots: Path) -> Section:
    from moekit.showcases._routing_plots import plot_scores_by_group

    rows = []
    for lang in s.languages:
        moe, dense = sc.loss["moe"][lang], sc.loss["dense"][lang]
        diff = [a - b for a, b in zip(moe, dense)]
        rows.append({"language": lang, "MoE (nats/byte)": _pm(moe),
                     "dense (nats/byte)": _pm(dense), "MoE - dense (paired)": _pm(diff),
                     "MoE ahead on": f"{sum(d < 0 for d in diff)}/{len(diff)} seeds",
                     "MoE bits/char": _mean(sc.bpc["moe"][lang]),
                     "dense bits/char": _mean(sc.bpc["dense"][lang])})
    image = plot_scores_by_group(
        {sc.names[k]: sc.loss[k] for k in sc.names}, list(s.languages),
        plots / "loss_by_language.png", ylabel="validation nats per byte (lower is better)",
        title=f"validation loss per language: mean ± sd over {s.seeds} seeds (dots: seeds)")
    return Section(
        title="Validation loss per language",
        text=("Both models read the same unseen New Testament verses in every language; the "
              "difference is paired by seed (same batches, same evaluation text). Russian "
              "costs fewer nats per byte because each Cyrillic letter takes two bytes; bits "
              "per character compare the languages on one scale."),
        tables=[Table(rows=rows, caption="validation loss, mean ± sd over seeds")],
        images=[image])


def _routing_section(s: LanguageSettings, sc: _Scores, routing: dict[str, Any],
                     plots: Path) -> Section:
    from moekit.showcases._routing_groups import expert_shares
    from moekit.showcases._routing_plots import plot_routing_by_group, plot_routing_lift

    assert sc.counts_GLE is not None
    names = list(s.languages)
    counts = [sc.counts_GLE[g] for g in range(len(names))]
    for label, rec in sc.user.items():
        names.append(f"yours: {label}")
        counts.append(np.asarray(rec["counts"]))
    shares = expert_shares(np.stack(counts))
    n_tok = [int(c[0].sum() // s.shape.top_k) for c in counts]
    image = plot_routing_by_group(
        shares, names, plots / "routing_by_language.png", n_tokens=n_tok,
        separator_after=len(s.languages) if sc.user else None,
        title=(f"share of each language's validation tokens per expert and layer "
               f"({sc.names['moe']}, seed 0)"))
    lift = plot_routing_lift(
        shares, names, plots / "routing_lift_by_language.png",
        reference_rows=len(s.languages),
        title=("which experts each language prefers (red) or avoids (blue), compared with the "
               f"average of the {len(s.languages)} languages (seed 0)"))
    lfr = routing["language_from_routing"]
    mi = routing["mutual_information_bits"]["mean_per_layer"]
    rows = [
        {"read-out": "per token", "trained MoE (mean ± sd)":
            f"{lfr['per_token']['accuracy_mean']:.3f} ± {lfr['per_token']['accuracy_spread']:.3f}",
         "untrained MoE (control)": lfr["untrained_control"]["per_token"],
         "the byte alone (control)": lfr["byte_control"]["per_token"],
         "chance": lfr["per_token"]["chance"], "test rows": lfr["per_token"]["n_test"]},
        {"read-out": "per verse", "trained MoE (mean ± sd)":
            f"{lfr['per_verse']['accuracy_mean']:.3f} ± {lfr['per_verse']['accuracy_spread']:.3f}",
         "untrained MoE (control)": lfr["untrained_control"]["per_verse"],
         "the byte alone (control)": lfr["byte_control"]["per_verse"],
         "chance": lfr["per_verse"]["chance"], "test rows": lfr["per_verse"]["n_test"]},
    ]
    layer_rows = [{"layer": i + 1, "I(language; expert) bits": mi[i],
                   "per-token accuracy from this layer alone": acc}
                  for i, acc in enumerate(lfr["per_layer_seed0"])]
    return Section(
        title="Routing by language",
        text=(f"Each panel is one MoE layer; a row is a language (the same verses in each), a "
              f"column an expert. First heatmap: the share of the language's token-slots the "
              f"expert took; second: the same share relative to the average language's "
              f"(log2; red = the language uses the expert more, blue = less). Mutual "
              f"information between language and expert, averaged over seeds, is "
              f"{', '.join(f'{v:.2f}' for v in mi)} bits in layers 1..{len(mi)} (at most "
              f"{math.log2(len(s.languages)):.2f}).\n\n{_readout_sentence(lfr)}\n\n"
              f"How: {lfr['how']}."),
        tables=[Table(rows=rows, caption="accuracy of reading the language from the routing "
                                         "on held-out text"),
                Table(rows=layer_rows, caption="per layer (seed 0)")],
        images=[image, lift])


def _readout_sentence(lfr: dict[str, Any]) -> str:
    """The read-out in words: trained routing against the two controls and chance."""
    tok, verse = lfr["per_token"], lfr["per_verse"]
    byte, untrained = lfr["byte_control"], lfr["untrained_control"]
    beats = (tok["accuracy_mean"] - tok["accuracy_spread"] > max(byte["per_token"],
                                                                  untrained["per_token"]))
    return (f"From the routing alone, the language of a single held-out token is read right "
            f"{100 * tok['accuracy_mean']:.0f}% of the time (chance {100 * tok['chance']:.0f}%; "
            f"the byte itself gives {100 * byte['per_token']:.0f}%, the untrained router's "
            f"routing {100 * untrained['per_token']:.0f}%), and of a verse "
            f"{100 * verse['accuracy_mean']:.0f}% (chance {100 * verse['chance']:.0f}%; "
            f"its bytes {100 * byte['per_verse']:.0f}%, untrained routing "
            f"{100 * untrained['per_verse']:.0f}%). "
            + ("The trained router encodes more of the language than the byte it routes: it "
               "reads context." if beats else
               "The trained router does NOT encode more of the language per token than the "
               "byte itself or the untrained router."))


def _user_section(sc: _Scores) -> Section:
    rows = []
    for label, rec in sc.user.items():
        top = sorted(rec["tokens_read_as"].items(), key=lambda kv: -kv[1])[:3]
        row: dict[str, Any] = {"text": label, "bytes": rec["bytes"], "read as": rec["read_as"],
                               "tokens read as": ", ".join(f"{g} {100 * v:.0f}%"
                                                           for g, v in top)}
        for name, value in rec.get("loss_nats_per_byte", {}).items():
            row[f"{name} nats/byte"] = value
        rows.append(row)
    return Section(title="Your texts", text=(
        "Each text was routed through the seed-0 MoE; its rows are added under the languages "
        "in the heatmap above. 'read as': the per-verse read-out applied to the whole text's "
        "mean routing vector; 'tokens read as': the per-token read-out's verdicts."),
        tables=[Table(rows=rows, caption="where your texts go")])


def _sample_section(sc: _Scores) -> Section:
    rows = [{"language": r["language"], "prompt": r["prompt"],
             sc.names["moe"]: r["moe"], sc.names["dense"]: r["dense"]} for r in sc.samples]
    return Section(title="Generated samples", text=(
        "Each seed-0 model continues the opening of the same New Testament verse in each "
        "language (temperature sampling, the same random stream for both models)."),
        tables=[Table(rows=rows, caption="continuations (invalid UTF-8 shown as \ufffd)")])


def build_result(*, settings: LanguageSettings, scores: _Scores, corpus: ParallelCorpus,
                 output: Path, quick: bool, elapsed_s: float,
                 train_bytes: int) -> ShowcaseResult:
    """The :class:`ShowcaseResult` of a finished run; writes the plots under ``output/plots``."""
    s, sc = settings, scores
    plots = output / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    tokens = s.steps * s.batch_size * s.shape.block_size
    routing = _routing(s, sc)
    sections = [_loss_section(s, sc, plots), _routing_section(s, sc, routing, plots)]
    if sc.user:
        sections.append(_user_section(sc))
    sections.append(_sample_section(sc))
    config = {**dataclasses.asdict(s), "training_tokens_per_model": tokens,
              "training_text_bytes": train_bytes, "source": corpus.source,
              "n_valid_verses": corpus.n_valid_verses, "elapsed_s": elapsed_s,
              "training_cpu_s_total": sum(sum(v) for v in sc.cpu_s.values())}
    notes = [f"Both models trained on the same {tokens:,} tokens (bytes) per seed "
             f"({s.steps} steps of {s.batch_size} x {s.shape.block_size}) drawn from "
             f"{train_bytes:,} bytes of Old Testament text."]
    if quick:
        notes.append("--quick: a tiny model trained for a few steps on a slice of the data, a "
                     "smoke test of the pipeline; its numbers say nothing about MoE vs dense.")
    return ShowcaseResult(showcase="language",
                          evaluations=_evaluations(s, sc, corpus, tokens),
                          routing=routing, sections=tuple(sections), config=config,
                          notes=tuple(notes))
