"""Experiment files: what ``moekit train CONFIG`` reads, checked before anything is loaded.

A file has three sections (all keys optional except ``model.kind`` and ``data.dataset``)::

    [model]                 # kind = "lm" | "image" | "audio"; the other keys are the flat keywords
    kind = "lm"             # of TransformerLMConfig.create / ImageClassifierConfig.create /
    router = "topk"         # AudioClassifierConfig.create, except those the data fixes
    num_experts = 4         # (vocab_size, image_size, in_channels, num_classes, n_features,
    dense_baseline = true   # max_frames); dense_baseline: also train the dense twin

    [data]                  # dataset = "kjv" | "text" | "digits" | "audio", plus its options
    dataset = "kjv"         # (moekit.train.datasets.DATASETS)
    max_chars = 200000

    [train]                 # the fields of TrainConfig
    steps = 300

The flat ``[model]`` keys become the nested model config (the MoE part is a
:class:`moekit.layers.MoEConfig`, or a :class:`moekit.layers.SoftMoEConfig` for ``router =
"soft"``) in :func:`model_config`. Optional values (``capacity_factor``, ``grad_clip``,
``max_chars``) take ``"none"`` in TOML (which has no null) or ``null`` in YAML. Every error names
the section, the key, the value and what is allowed; :class:`ExperimentError` carries the message.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from moekit.models import AudioClassifierConfig, ImageClassifierConfig, TransformerLMConfig
from moekit.train.config import TrainConfig
from moekit.train.datasets import DATASETS, KIND_DATASETS

ModelKind = Literal["lm", "image", "audio"]
SECTIONS = ("model", "data", "train")
MODEL_CONFIGS: dict[str, Any] = {
    "lm": TransformerLMConfig, "image": ImageClassifierConfig, "audio": AudioClassifierConfig,
}
# Fields the data decides; a config file may not set them.
_DERIVED = {
    "lm": ("vocab_size",),
    "image": ("image_size", "in_channels", "num_classes"),
    "audio": ("n_features", "max_frames", "num_classes"),
}
_MODEL_EXTRA = ("kind", "dense_baseline")


class ExperimentError(ValueError):
    """A mistake in an experiment file; the message names section, key, value and fix."""


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """A validated experiment file (data not loaded yet).

    ``model`` holds the flat ``[model]`` keys as written (without ``kind`` and
    ``dense_baseline``); :func:`model_config` turns them into the model's config.
    """

    kind: ModelKind
    model: dict[str, Any]
    dense_baseline: bool
    dataset: str
    data: dict[str, Any]
    train: TrainConfig
    source: str = "<dict>"


# --- reading -----------------------------------------------------------------------------------

def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``.toml``, ``.yaml`` or ``.yml`` file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"config file {str(path)!r} does not exist; pass the path of a .toml "
                              "or .yaml file (examples in examples/configs/)")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ExperimentError(f"config file {str(path)!r} has suffix {suffix!r}; use .toml, "
                              ".yaml or .yml")
    text = path.read_text(encoding="utf-8")
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ExperimentError(f"{path} is not valid TOML: {err}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ExperimentError("reading YAML needs pyyaml: pip install 'moekit[torch]' (or "
                                  "pip install pyyaml), or write the file as TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ExperimentError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{path} must hold a mapping with sections {list(SECTIONS)}, "
                              f"got {type(data).__name__}")
    return data


# --- checking values against type hints ---------------------------------------------------------

def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return '"none"'
    return getattr(hint, "__name__", str(hint))


def _flatten_literals(hint: Any) -> Any:
    """``Literal["a"] | Literal["b"]`` -> ``Literal["a", "b"]`` (one list of choices in errors)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args and all(
            typing.get_origin(a) is Literal for a in args):
        return Literal[tuple(v for a in args for v in typing.get_args(a))]  # type: ignore[misc]
    return hint


def coerce(section: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type ``hint``; ``"none"`` becomes None where allowed."""
    hint = _flatten_literals(hint)
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
                return coerce(section, key, value, arg)
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


def model_schema(kind: str) -> dict[str, Any]:
    """The ``[model]`` keys of ``kind`` and their types: the keywords of its config's ``create``."""
    create = MODEL_CONFIGS[kind].create
    hints = typing.get_type_hints(create)
    return {name: hints[name] for name in inspect.signature(create).parameters
            if name not in _DERIVED[kind]}


# --- the whole file ----------------------------------------------------------------------------

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
    if kind not in MODEL_CONFIGS:
        raise ExperimentError(f"[model] kind = {kind!r} is invalid; expected one of "
                              f"{', '.join(map(repr, MODEL_CONFIGS))}")
    schema = model_schema(kind)
    _check_keys("model", model_raw, [*schema, *_MODEL_EXTRA], f" for kind = {kind!r}")
    dense_baseline = coerce("model", "dense_baseline", model_raw.pop("dense_baseline", False), bool)
    model = {key: coerce("model", key, value, schema[key]) for key, value in model_raw.items()}

    dataset = data_raw.pop("dataset", None)
    if dataset not in KIND_DATASETS[kind]:
        raise ExperimentError(f"[data] dataset = {dataset!r} is invalid for kind = {kind!r}; "
                              f"expected one of {', '.join(map(repr, KIND_DATASETS[kind]))}")
    options = DATASETS[dataset]
    _check_keys("data", data_raw, ["dataset", *options], f" for dataset = {dataset!r}")
    data = {key: default for key, (_, default) in options.items()}
    data.update({key: coerce("data", key, value, options[key][0])
                 for key, value in data_raw.items()})
    if dataset == "text" and not data["path"]:
        raise ExperimentError("[data] dataset = 'text' needs path = \"corpus.txt\" (a UTF-8 file)")

    train_hints = typing.get_type_hints(TrainConfig)
    _check_keys("train", train_raw, [f.name for f in dataclasses.fields(TrainConfig)])
    train_values = {key: coerce("train", key, value, train_hints[key])
                    for key, value in train_raw.items()}
    train_values.setdefault("output_dir", str(Path("runs") / Path(source).stem))
    try:
        train_config = TrainConfig(**train_values)
    except (TypeError, ValueError) as err:
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
    """The (nested) model config of ``spec``, completed with the data-dependent fields ``derived``."""
    try:
        return MODEL_CONFIGS[spec.kind].create(**spec.model, **derived)
    except (TypeError, ValueError) as err:
        raise ExperimentError(f"[model] {err}") from None


def block_size(spec: ExperimentSpec) -> int | None:
    """The context length of a language model spec (None for other kinds)."""
    if spec.kind != "lm":
        return None
    default = inspect.signature(TransformerLMConfig.create).parameters["block_size"].default
    return int(spec.model.get("block_size", default))
