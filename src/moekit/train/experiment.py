"""Experiments described by a TOML or YAML file: what ``moekit train CONFIG`` runs.

A file has three sections (all keys optional except ``model.kind`` and ``data.dataset``)::

    [model]                 # kind = "lm" | "image" | "audio"; the other keys are the fields of
    kind = "lm"             # TransformerLMConfig / ImageClassifierConfig / AudioClassifierConfig,
    router = "topk"         # except those the data fixes (vocab_size, image_size, in_channels,
    num_experts = 4         # num_classes, n_features, max_frames)
    dense_baseline = true   # lm only: also train the dense twin (same active parameters)

    [data]                  # dataset = "kjv" | "text" | "digits" | "audio", plus its options
    dataset = "kjv"
    max_chars = 200000

    [train]                 # the fields of TrainConfig
    steps = 300

Optional values (``capacity_factor``, ``grad_clip``, ``max_chars``) take ``"none"`` in TOML (which
has no null) or ``null`` in YAML. Every error names the section, the key, the value and what is
allowed; :class:`ExperimentError` carries the message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import torch
from torch import nn

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from moekit._files import atomic_write_json
from moekit.models import (
    AudioClassifier,
    AudioClassifierConfig,
    ImageClassifier,
    ImageClassifierConfig,
    TransformerLM,
    TransformerLMConfig,
    dense_twin_config,
)
from moekit.train.batches import ArrayBatches, BatchSource, TokenBatches
from moekit.train.checkpoint import latest_checkpoint
from moekit.train.config import TrainConfig
from moekit.train.distributed import DistributedTraining
from moekit.train.loop import TrainResult, resolve_device, seed_everything, train
from moekit.train.memory import MemoryEstimate, check_fits

ModelKind = Literal["lm", "image", "audio"]
SECTIONS = ("model", "data", "train")
_MODEL_CONFIGS: dict[str, type] = {
    "lm": TransformerLMConfig, "image": ImageClassifierConfig, "audio": AudioClassifierConfig,
}
# Fields the data decides; a config file may not set them.
_DERIVED = {
    "lm": ("vocab_size",),
    "image": ("image_size", "in_channels", "num_classes"),
    "audio": ("n_features", "max_frames", "num_classes"),
}
_MODEL_EXTRA = {"kind": str, "dense_baseline": bool}
# dataset -> allowed option -> (type, default)
_DATASETS: dict[str, dict[str, tuple[Any, Any]]] = {
    "kjv": {"max_chars": (int | None, None), "val_fraction": (float, 0.1)},
    "text": {"path": (str, None), "max_chars": (int | None, None), "val_fraction": (float, 0.1)},
    "digits": {"test_fraction": (float, 0.2)},
    "audio": {"n_per_class": (int, 60), "n_mels": (int, 32), "noise_level": (float, 0.1),
              "val_fraction": (float, 0.2)},
}
_KIND_DATASETS = {"lm": ("kjv", "text"), "image": ("digits",), "audio": ("audio",)}


class ExperimentError(ValueError):
    """A mistake in an experiment file; the message names section, key, value and fix."""


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """A validated experiment file (data not loaded yet)."""

    kind: ModelKind
    model: dict[str, Any]
    dense_baseline: bool
    dataset: str
    data: dict[str, Any]
    train: TrainConfig
    source: str = "<dict>"


# --- reading and validating ------------------------------------------------------------------

def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``.toml``, ``.yaml`` or ``.yml`` file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"config file {str(path)!r} does not exist; pass the path of a .toml "
                              "or .yaml file (examples in examples/configs/)")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ExperimentError(f"config file {str(path)!r} has suffix {suffix!r}; use .toml, "
                                  ".yaml or .yml")
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"{path} is not valid TOML: {err}") from None
    except ImportError:
        raise ExperimentError("reading YAML needs pyyaml (pip install pyyaml)") from None
    except Exception as err:  # yaml.YAMLError, without importing yaml at module level
        if type(err).__module__.startswith("yaml"):
            raise ExperimentError(f"{path} is not valid YAML: {err}") from None
        raise
    if not isinstance(data, dict):
        raise ExperimentError(f"{path} must hold a mapping with sections {list(SECTIONS)}, "
                              f"got {type(data).__name__}")
    return data


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return '"none"'
    return getattr(hint, "__name__", str(hint))


def _coerce(section: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type ``hint``; ``"none"`` becomes None where allowed."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str)
                                                     and value.lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(section, key, value, arg)
            except ExperimentError:
                continue
    elif origin is Literal:
        if value in args:
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ExperimentError(f"[{section}] {key} = {value!r} is invalid; expected {_describe(hint)}")


def _check_keys(section: str, given: dict[str, Any], allowed: list[str], context: str = "") -> None:
    for key in given:
        if key not in allowed:
            raise ExperimentError(f"unknown key {key!r} in [{section}]{context}; allowed keys: "
                                  f"{', '.join(sorted(allowed))}")


def parse_experiment(raw: dict[str, Any], *, source: str = "<dict>") -> ExperimentSpec:
    """Validate the sections of an experiment file (see the module docstring)."""
    for section in raw:
        if section not in SECTIONS:
            raise ExperimentError(f"unknown section [{section}] in {source}; allowed sections: "
                                  f"{', '.join(SECTIONS)}")
    for section in SECTIONS:
        if not isinstance(raw.get(section, {}), dict):
            raise ExperimentError(f"[{section}] must be a table of key = value pairs")
    model_raw: dict[str, Any] = dict(raw.get("model", {}))
    data_raw: dict[str, Any] = dict(raw.get("data", {}))
    train_raw: dict[str, Any] = dict(raw.get("train", {}))

    kind = model_raw.pop("kind", None)
    if kind not in _MODEL_CONFIGS:
        raise ExperimentError(f"[model] kind = {kind!r} is invalid; expected one of "
                              f"{', '.join(map(repr, _MODEL_CONFIGS))}")
    config_cls = _MODEL_CONFIGS[kind]
    hints = typing.get_type_hints(config_cls)
    model_fields = [f.name for f in dataclasses.fields(config_cls) if f.name not in _DERIVED[kind]]
    _check_keys("model", model_raw, [*model_fields, *_MODEL_EXTRA], f" for kind = {kind!r}")
    dense_baseline = _coerce("model", "dense_baseline", model_raw.pop("dense_baseline", False), bool)
    if dense_baseline and kind != "lm":
        raise ExperimentError(f"[model] dense_baseline = true is only available for kind = 'lm', "
                              f"got kind = {kind!r}; remove dense_baseline")
    model = {key: _coerce("model", key, value, hints[key]) for key, value in model_raw.items()}

    dataset = data_raw.pop("dataset", None)
    if dataset not in _KIND_DATASETS[kind]:
        raise ExperimentError(f"[data] dataset = {dataset!r} is invalid for kind = {kind!r}; "
                              f"expected one of {', '.join(map(repr, _KIND_DATASETS[kind]))}")
    options = _DATASETS[dataset]
    _check_keys("data", data_raw, ["dataset", *options], f" for dataset = {dataset!r}")
    data = {key: default for key, (_, default) in options.items()}
    data.update({key: _coerce("data", key, value, options[key][0])
                 for key, value in data_raw.items()})
    if dataset == "text" and not data["path"]:
        raise ExperimentError("[data] dataset = 'text' needs path = \"corpus.txt\" (a UTF-8 file)")

    train_hints = typing.get_type_hints(TrainConfig)
    _check_keys("train", train_raw, [f.name for f in dataclasses.fields(TrainConfig)])
    train_values = {key: _coerce("train", key, value, train_hints[key])
                    for key, value in train_raw.items()}
    train_values.setdefault("output_dir", str(Path("runs") / Path(source).stem))
    try:
        train_config = TrainConfig(**train_values)
    except ValueError as err:
        raise ExperimentError(f"[train] {err}") from None
    spec = ExperimentSpec(kind=kind, model=model, dense_baseline=dense_baseline, dataset=dataset,
                          data=data, train=train_config, source=source)
    # Check the model options now (with stand-ins for what the data decides), so a typo fails
    # before the data is loaded.
    model_config(spec, _placeholder_derived(kind, model))
    return spec


def _placeholder_derived(kind: str, model: dict[str, Any]) -> dict[str, int]:
    if kind == "lm":
        return {"vocab_size": 2}
    if kind == "image":
        patch = model.get("patch_size", 2)
        size = patch * 4 if isinstance(patch, int) and patch > 0 else 8
        return {"image_size": size, "in_channels": 1, "num_classes": 2}
    return {"n_features": 1, "max_frames": 1, "num_classes": 2}


def model_config(spec: ExperimentSpec, derived: dict[str, int]) -> Any:
    """The model config of ``spec`` completed with the data-dependent fields ``derived``."""
    try:
        return _MODEL_CONFIGS[spec.kind](**spec.model, **derived)
    except ValueError as err:
        raise ExperimentError(f"[model] {err}") from None


# --- data --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedData:
    """Batch sources and what the model needs to know about the data."""

    train: BatchSource
    val: BatchSource
    derived: dict[str, int]
    items_shape: tuple[int, ...]  # shape of one example (tokens for an LM)
    info: dict[str, Any]
    tokenizer: Any = None


def prepare_data(spec: ExperimentSpec) -> PreparedData:
    """Load the dataset of ``spec`` and wrap it in deterministic batch sources."""
    t, d, seed = spec.train, spec.data, spec.train.seed
    if spec.dataset in ("kjv", "text"):
        from moekit.data.text import lm_splits, load_kjv

        if spec.dataset == "kjv":
            text = load_kjv(max_chars=d["max_chars"])
        else:
            path = Path(d["path"])
            if not path.is_file():
                raise ExperimentError(f"[data] path = {d['path']!r} does not exist; give the path "
                                      "of a UTF-8 text file (relative to the current folder)")
            text = path.read_text(encoding="utf-8")
            if d["max_chars"] is not None:
                text = text[: d["max_chars"]]
        try:
            splits = lm_splits(text, val_fraction=d["val_fraction"])
        except ValueError as err:
            raise ExperimentError(f"[data] {err}") from None
        block = spec.model.get("block_size", TransformerLMConfig.block_size)
        for name, ids in (("training", splits.train), ("validation", splits.val)):
            if len(ids) < block + 2:
                raise ExperimentError(f"[data] the {name} text has {len(ids)} characters, too few for "
                                      f"block_size={block}; use more text (max_chars) or a smaller "
                                      "[model] block_size")
        return PreparedData(
            train=TokenBatches(splits.train, block_size=block, batch_size=t.batch_size, seed=seed),
            val=TokenBatches(splits.val, block_size=block, batch_size=t.batch_size, seed=seed + 1),
            derived={"vocab_size": splits.tokenizer.vocab_size}, items_shape=(block,),
            info={"train_tokens": len(splits.train), "val_tokens": len(splits.val)},
            tokenizer=splits.tokenizer,
        )
    if spec.dataset == "digits":
        from moekit.data.vision import load_digits_split

        split = load_digits_split(test_fraction=d["test_fraction"], seed=seed)
        x_train, x_val = torch.from_numpy(split.x_train), torch.from_numpy(split.x_test)
        y_train, y_val = torch.from_numpy(split.y_train), torch.from_numpy(split.y_test)
        _, channels, size, _ = x_train.shape
        return PreparedData(
            train=ArrayBatches(x_train, y_train, batch_size=t.batch_size, seed=seed),
            val=ArrayBatches(x_val, y_val, batch_size=t.batch_size, seed=seed, shuffle=False),
            derived={"image_size": size, "in_channels": channels,
                     "num_classes": len(split.class_names)},
            items_shape=(channels, size, size),
            info={"train_images": len(x_train), "val_images": len(x_val),
                  "class_names": list(split.class_names)},
        )
    from moekit.data.audio import make_audio_dataset

    ds = make_audio_dataset(d["n_per_class"], n_mels=d["n_mels"], noise_level=d["noise_level"],
                            seed=seed)
    features, labels = torch.from_numpy(ds.features), torch.from_numpy(ds.labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(len(labels) * d["val_fraction"])))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) == 0:
        raise ExperimentError(f"[data] val_fraction = {d['val_fraction']} leaves no training clips; "
                              "lower it or raise n_per_class")
    _, frames, n_mels = features.shape
    return PreparedData(
        train=ArrayBatches(features[train_idx], labels[train_idx], batch_size=t.batch_size, seed=seed),
        val=ArrayBatches(features[val_idx], labels[val_idx], batch_size=t.batch_size, seed=seed,
                         shuffle=False),
        derived={"n_features": n_mels, "max_frames": frames, "num_classes": len(ds.class_names)},
        items_shape=(frames, n_mels),
        info={"train_clips": len(train_idx), "val_clips": n_val, "class_names": list(ds.class_names)},
    )


# --- models and memory -------------------------------------------------------------------------

def build_models(spec: ExperimentSpec, derived: dict[str, int]) -> dict[str, Callable[[], nn.Module]]:
    """Name -> factory of the models to train (``moe``, and ``dense`` with ``dense_baseline``)."""
    config = model_config(spec, derived)
    if spec.kind == "lm":
        factories: dict[str, Callable[[], nn.Module]] = {"moe": lambda: TransformerLM(config)}
        if spec.dense_baseline:
            dense = dense_twin_config(config)
            factories["dense"] = lambda: TransformerLM(dense)
        return factories
    if spec.kind == "image":
        return {"moe": lambda: ImageClassifier(config)}
    return {"moe": lambda: AudioClassifier(config)}


def estimate_memory(spec: ExperimentSpec, derived: dict[str, int],
                    factory: Callable[[], nn.Module]) -> MemoryEstimate:
    """Parameters (counted on the meta device, nothing allocated) and activations of one run."""
    with torch.device("meta"):
        model = factory()
    n_params = sum(p.numel() for p in model.parameters())
    config = model_config(spec, derived)
    batch = spec.train.batch_size
    if spec.kind == "lm":
        tokens, n_out = config.block_size, config.vocab_size
    elif spec.kind == "image":
        tokens = (config.image_size // config.patch_size) ** 2 if config.architecture == "vit" else 1
        n_out = config.num_classes
    else:
        tokens, n_out = config.max_frames, config.num_classes
    hidden = config.d_ff * max(config.top_k, 1) * 4  # gate, up, activation, product per slot
    per_token_layer = 16 * config.d_model + hidden
    attention = getattr(config, "n_heads", 1) * tokens * 2  # scores + probabilities per query
    activations = batch * tokens * config.n_layers * (per_token_layer + attention)
    activations += batch * tokens * n_out * 3 if spec.kind == "lm" else batch * n_out * 3
    return MemoryEstimate(parameters=n_params, activation_bytes=4 * activations)


# --- running -----------------------------------------------------------------------------------

def run_experiment(spec: ExperimentSpec, *, resume: bool = False, progress: IO[str] | None = None,
                   resume_hint: str | None = None,
                   available_memory: int | None = None,
                   distributed: DistributedTraining | None = None) -> dict[str, TrainResult]:
    """Load the data, check memory, build and train the model(s) of ``spec``.

    With ``dense_baseline`` the run folder holds ``moe/`` and ``dense/`` (one run each) plus a
    ``results.json`` comparing them; otherwise the run folder is the ``moe`` run itself. With
    ``distributed`` this process is one rank of a run (:mod:`moekit.train.distributed`).
    """
    main = distributed is None or distributed.is_main
    out = Path(spec.train.output_dir)
    device = resolve_device(spec.train.device)
    data = prepare_data(spec)
    factories = build_models(spec, data.derived)
    for name, factory in factories.items():
        check_fits(estimate_memory(spec, data.derived, factory), device, available=available_memory,
                   hint=f"lower [model] d_model, d_ff, num_experts or n_layers, or [train] "
                        f"batch_size (the {name} model)")
    stream = progress if progress is not None else sys.stderr
    results: dict[str, TrainResult] = {}
    for name, factory in factories.items():
        run_dir = out / name if spec.dense_baseline else out
        train_config = dataclasses.replace(spec.train, output_dir=str(run_dir))
        resume_this = resume and latest_checkpoint(run_dir / "checkpoints") is not None
        if resume and not resume_this:
            # Nothing of this model was checkpointed: its metrics (if any) are from lost steps.
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        seed_everything(spec.train.seed)
        model = factory()
        built_config = getattr(model, "config", None)
        run_config = {"kind": spec.kind, "model": dataclasses.asdict(built_config)
                      if dataclasses.is_dataclass(built_config) and not isinstance(built_config, type)
                      else spec.model,
                      "dataset": spec.dataset, "data": spec.data, "data_info": data.info,
                      "source": spec.source}
        if data.tokenizer is not None and main:
            run_dir.mkdir(parents=True, exist_ok=True)
            data.tokenizer.save(run_dir / "tokenizer.json")
        results[name] = train(model, data.train, train_config, val_data=data.val,
                              resume=resume_this, model_name=name, run_config=run_config,
                              progress=stream, resume_hint=resume_hint, distributed=distributed)
        if spec.kind == "lm" and data.tokenizer is not None:
            _print_sample(model, data.tokenizer, stream, name)
    if spec.dense_baseline and main:
        summary = {name: json.loads((out / name / "results.json").read_text(encoding="utf-8"))
                   for name in results}
        atomic_write_json(out / "results.json", summary)
        atomic_write_json(out / "config.json", {
            "kind": spec.kind, "model": spec.model, "dense_baseline": True,
            "dataset": spec.dataset, "data": spec.data, "train": dataclasses.asdict(spec.train),
            "source": spec.source})
    return results


def _print_sample(model: nn.Module, tokenizer: Any, stream: IO[str], name: str) -> None:
    if not isinstance(model, TransformerLM):
        return
    model.eval()
    device = next(model.parameters()).device
    start = "In the beginning"
    if all(ch in tokenizer.vocab for ch in start):
        prompt = torch.from_numpy(tokenizer.encode(start))[None].to(device)
    else:
        prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    ids = model.generate(prompt, max_new_tokens=80, generator=torch.Generator(device).manual_seed(0))
    text = tokenizer.decode(ids[0].tolist()).replace("\n", " ")
    stream.write(f"[{name}] sample: {text}\n")
    stream.flush()

