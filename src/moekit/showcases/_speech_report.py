"""The speech showcase's report: the model comparison, what each gate learned, per language."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moekit.showcases._base import Evaluation

__all__ = ["short_name", "speech_sections"]


def short_name(name: str) -> str:
    """A column header for a model: e.g. ``"MoE clip"``, ``"dense frame"``."""
    kind = "dense" if name.startswith("dense") else "MoE"
    return f"{kind} {'clip' if 'per clip' in name else 'frame'}"


def speech_sections(evaluations: Sequence[Evaluation], routing: Mapping[str, Any],
                    languages: Sequence[str], output: Path) -> list[Any]:
    """The report's sections: the model comparison, what each gate learned, accuracy by
    language."""
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
        for lang in languages:
            by_lang_rows.append({"language": lang, **{
                short_name(m.name): round(m.details["accuracy_by_language"][lang], 3)
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
        best = max(range(len(reading["layers"])),
                   key=lambda i: reading["layers"][i]["information_language"])
        layer = reading["layers"][best]
        tables.append(Table(
            rows=top_experts_table(np.asarray(layer["by_language"]["counts"]),
                                   layer["by_language"]["rows"]),
            caption=f"layer {best} (the one whose expert choice tells most about the "
                    f"language): the experts that take most of each language's {unit} "
                    "(token-slots), held-out voices"))
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
                f"expert) / H(group)): {info}. Read from the routing alone (which experts "
                f"{'each clip' if unit == 'clips' else 'the frames of each clip'} went to, every "
                f"layer), a linear classifier fitted on the "
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
                          + "; ".join(f"{short_name(m.name)} = {m.name}" for m in scored))]))
    return sections
