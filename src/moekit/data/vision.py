"""Small images with no network: scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ImageSplit", "load_digits_split"]


@dataclass(frozen=True)
class ImageSplit:
    """Images split into train and test sets.

    Attributes
    ----------
    x_train : ndarray of shape (n_train, 1, 8, 8), float32 in [0, 1]
    y_train : ndarray of shape (n_train,), int64 in [0, 10)
    x_test : ndarray of shape (n_test, 1, 8, 8), float32 in [0, 1]
    y_test : ndarray of shape (n_test,), int64
    class_names : tuple of str, ``('0', ..., '9')``
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


def load_digits_split(*, test_fraction: float = 0.2, seed: int = 0) -> ImageSplit:
    """Load the 1,797 8x8 digit images (UCI, bundled with scikit-learn), split per class.

    Parameters
    ----------
    test_fraction : float, default=0.2
        Fraction of each class held out for testing; in (0, 1).
    seed : int, default=0
        Seed of the shuffle; the same seed gives the same split.

    Returns
    -------
    ImageSplit
        Images as (n, 1, 8, 8) float32 (channel first, pixel values divided by 16) and
        int64 labels.

    Examples
    --------
    >>> from moekit.data.vision import load_digits_split
    >>> split = load_digits_split(seed=0)
    >>> split.x_train.shape[1:], split.x_train.shape[0] + split.x_test.shape[0]
    ((1, 8, 8), 1797)
    """
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must lie strictly between 0 and 1")
    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    train_idx: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, int(round(len(idx) * test_fraction)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = rng.permutation(np.concatenate(test_idx))
    return ImageSplit(
        x_train=images[tr], y_train=labels[tr], x_test=images[te], y_test=labels[te],
        class_names=tuple(str(n) for n in bunch.target_names),
    )
