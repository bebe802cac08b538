"""The datasets ``moekit train`` knows: their options, and loading them into batch sources.

To add a dataset: a loader in :mod:`moekit.data` (data from an installed package or shipped small
in the repository, never downloaded), a row in :data:`DATASETS` (its options, with types and
defaults), the model kinds it feeds in :data:`KIND_DATASETS`, and a branch in
:func:`prepare_data`. The experiment file checks the options against the table before anything
is loaded.

:func:`prepare_data` takes plain arguments (not an experiment spec), so this module depends on
nothing of the experiment file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moekit.train.batches import ArrayBatches, BatchSource, TokenBatches

#: dataset -> option -> (type, default): what ``[data]`` may hold besides ``dataset``.
DATASETS: dict[str, dict[str, tuple[Any, Any]]] = {
    "kjv": {"max_chars": (int | None, None), "val_fraction": (float, 0.1)},
    "text": {"path": (str, None), "max_chars": (int | None, None), "val_fraction": (float, 0.1)},
    "digits": {"test_fraction": (float, 0.2)},
    "audio": {"n_per_class": (int, 60), "n_mels": (int, 32), "noise_level": (float, 0.1),
              "val_fraction": (float, 0.2)},
}
#: model kind -> the datasets it can train on.
KIND_DATASETS: dict[str, tuple[str, ...]] = {"lm": ("kjv", "text"), "image": ("digits",),
                                              "audio": ("audio",)}


class DatasetError(ValueError):
    """A ``[data]`` option the data cannot satisfy (the message names it and the fix)."""


@dataclass(frozen=True)
class PreparedData:
    """Batch sources and what the model needs to know about the data.

    Attributes
    ----------
    train, val : BatchSource
    derived : dict
        The model fields the data decides (``vocab_size``; ``image_size``, ``in_channels``,
        ``num_classes``; ``n_features``, ``max_frames``, ``num_classes``).
    items_shape : tuple of int
        Shape of one example (``(block_size,)`` tokens for a language model).
    info : dict
        Sizes of the splits and class names, for the run's ``config.json``.
    tokenizer : CharTokenizer or None
        Language models: the character tokenizer.
    """

    train: BatchSource
    val: BatchSource
    derived: dict[str, int]
    items_shape: tuple[int, ...]
    info: dict[str, Any]
    tokenizer: Any = None


def prepare_data(dataset: str, options: dict[str, Any], *, batch_size: int, seed: int,
                 block_size: int | None = None) -> PreparedData:
    """Load ``dataset`` with ``options`` (as in :data:`DATASETS`) into deterministic batch sources.

    ``block_size`` is the context length of a language model (text datasets only). Raises
    :class:`DatasetError` when the data cannot satisfy the options.
    """
    if dataset not in DATASETS:
        raise DatasetError(f"[data] dataset = {dataset!r} is unknown; expected one of "
                           f"{', '.join(map(repr, DATASETS))}")
    d = {key: default for key, (_, default) in DATASETS[dataset].items()}
    d.update(options)
    if dataset in ("kjv", "text"):
        if block_size is None:
            raise DatasetError(f"dataset = {dataset!r} feeds a language model: pass its block_size")
        return _text(dataset, d, batch_size=batch_size, seed=seed, block=block_size)
    if dataset == "digits":
        return _digits(d, batch_size=batch_size, seed=seed)
    return _audio(d, batch_size=batch_size, seed=seed)


def _text(dataset: str, d: dict[str, Any], *, batch_size: int, seed: int,
          block: int) -> PreparedData:
    from moekit.data.text import lm_splits, load_kjv

    if dataset == "kjv":
        text = load_kjv(max_chars=d["max_chars"])
    else:
        if not d.get("path"):
            raise DatasetError("[data] dataset = 'text' needs path = \"corpus.txt\" (a UTF-8 file)")
        path = Path(d["path"])
        if not path.is_file():
            raise DatasetError(f"[data] path = {d['path']!r} does not exist; give the path of a "
                               "UTF-8 text file (relative to the current folder)")
        text = path.read_text(encoding="utf-8")
        if d["max_chars"] is not None:
            text = text[: d["max_chars"]]
    try:
        splits = lm_splits(text, val_fraction=d["val_fraction"])
    except ValueError as err:
        raise DatasetError(f"[data] {err}") from None
    for name, ids in (("training", splits.train), ("validation", splits.val)):
        if len(ids) < block + 2:
            raise DatasetError(f"[data] the {name} text has {len(ids)} characters, too few for "
                               f"block_size={block}; use more text (max_chars) or a smaller "
                               "[model] block_size")
    return PreparedData(
        train=TokenBatches(splits.train, block_size=block, batch_size=batch_size, seed=seed),
        val=TokenBatches(splits.val, block_size=block, batch_size=batch_size, seed=seed + 1),
        derived={"vocab_size": splits.tokenizer.vocab_size}, items_shape=(block,),
        info={"train_tokens": len(splits.train), "val_tokens": len(splits.val)},
        tokenizer=splits.tokenizer,
    )


def _digits(d: dict[str, Any], *, batch_size: int, seed: int) -> PreparedData:
    from moekit.data.vision import load_digits_split

    split = load_digits_split(test_fraction=d["test_fraction"], seed=seed)
    x_train, x_val = torch.from_numpy(split.x_train), torch.from_numpy(split.x_test)
    y_train, y_val = torch.from_numpy(split.y_train), torch.from_numpy(split.y_test)
    _, channels, size, _ = x_train.shape
    return PreparedData(
        train=ArrayBatches(x_train, y_train, batch_size=batch_size, seed=seed),
        val=ArrayBatches(x_val, y_val, batch_size=batch_size, seed=seed, shuffle=False),
        derived={"image_size": size, "in_channels": channels, "num_classes": len(split.class_names)},
        items_shape=(channels, size, size),
        info={"train_images": len(x_train), "val_images": len(x_val),
              "class_names": list(split.class_names)},
    )


def _audio(d: dict[str, Any], *, batch_size: int, seed: int) -> PreparedData:
    from moekit.data.audio import make_audio_dataset

    ds = make_audio_dataset(d["n_per_class"], n_mels=d["n_mels"], noise_level=d["noise_level"],
                            seed=seed)
    features, labels = torch.from_numpy(ds.features), torch.from_numpy(ds.labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(len(labels) * d["val_fraction"])))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) == 0:
        raise DatasetError(f"[data] val_fraction = {d['val_fraction']} leaves no training clips; "
                           "lower it or raise n_per_class")
    _, frames, n_mels = features.shape
    return PreparedData(
        train=ArrayBatches(features[train_idx], labels[train_idx], batch_size=batch_size, seed=seed),
        val=ArrayBatches(features[val_idx], labels[val_idx], batch_size=batch_size, seed=seed,
                         shuffle=False),
        derived={"n_features": n_mels, "max_frames": frames, "num_classes": len(ds.class_names)},
        items_shape=(frames, n_mels),
        info={"train_clips": len(train_idx), "val_clips": n_val, "class_names": list(ds.class_names)},
    )
