"""Toy problems with known truth, for tests and for plotting what a gate learned.

Every generator returns the true region (expert) of each point, so a fitted gate can be compared
with the truth. The 2-D regression regions are angular sectors around the origin, exactly the
partition a linear softmax gate can represent: region r = argmax_r <u_r, x> with u_r a unit vector
at angle 2*pi*r/R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ClassificationProblem",
    "RegressionProblem",
    "make_blobs_classification",
    "make_piecewise_1d",
    "make_piecewise_regression",
    "sector_region",
]


@dataclass(frozen=True)
class RegressionProblem:
    """A regression problem whose inputs fall in known regions, each with its own linear law.

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_features), float64
    y : ndarray of shape (n_samples,), float64
    region : ndarray of shape (n_samples,), int64
        The true region (expert) of each sample.
    coef : ndarray of shape (n_regions, n_features + 1)
        Intercept then slopes of each region's linear law.
    noise : float
        Standard deviation of the Gaussian noise added to ``y``.
    """

    X: np.ndarray
    y: np.ndarray
    region: np.ndarray
    coef: np.ndarray
    noise: float


@dataclass(frozen=True)
class ClassificationProblem:
    """Gaussian blobs, one class per blob.

    Attributes
    ----------
    X : ndarray of shape (n_samples, 2), float64
    y : ndarray of shape (n_samples,), int64
    centers : ndarray of shape (n_classes, 2)
    """

    X: np.ndarray
    y: np.ndarray
    centers: np.ndarray


def _check_n(n_samples: int, minimum: int, name: str = "n_samples") -> None:
    if n_samples < minimum:
        raise ValueError(f"{name}={n_samples} must be >= {minimum}")


def sector_region(X: np.ndarray, n_regions: int) -> np.ndarray:
    """True region of 2-D points: the sector (of ``n_regions`` equal ones) holding each point.

    Parameters
    ----------
    X : ndarray of shape (n, 2)
    n_regions : int

    Returns
    -------
    ndarray of shape (n,), int64
    """
    angles = 2 * np.pi * np.arange(n_regions) / n_regions
    u = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (R, 2)
    return np.asarray(np.argmax(np.asarray(X) @ u.T, axis=1), dtype=np.int64)


def make_piecewise_regression(
    n_samples: int = 600,
    *,
    n_regions: int = 3,
    noise: float = 0.1,
    seed: int = 0,
) -> RegressionProblem:
    """2-D inputs in [-3, 3]^2 split into ``n_regions`` angular sectors, each a different plane.

    Parameters
    ----------
    n_samples : int, default=600
    n_regions : int, default=3
        Number of sectors (true experts), >= 2.
    noise : float, default=0.1
    seed : int, default=0

    Returns
    -------
    RegressionProblem
        ``X`` (n_samples, 2), ``y`` (n_samples,), ``region`` (n_samples,), ``coef``
        (n_regions, 3).

    Examples
    --------
    >>> p = make_piecewise_regression(100, n_regions=3, seed=0)
    >>> p.X.shape, p.coef.shape, sorted(set(p.region.tolist()))
    ((100, 2), (3, 3), [0, 1, 2])
    """
    _check_n(n_samples, 1)
    _check_n(n_regions, 2, "n_regions")
    if noise < 0:
        raise ValueError(f"noise={noise} must be >= 0")
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3.0, 3.0, size=(n_samples, 2))
    region = sector_region(X, n_regions)
    coef = rng.uniform(-2.0, 2.0, size=(n_regions, 3))
    coef[:, 0] = np.linspace(-2.0, 2.0, n_regions)  # distinct intercepts keep regions separable
    y = coef[region, 0] + np.einsum("nd,nd->n", X, coef[region, 1:])
    y = y + noise * rng.standard_normal(n_samples)
    return RegressionProblem(X=X, y=y, region=region, coef=coef, noise=float(noise))


def make_piecewise_1d(
    n_samples: int = 300,
    *,
    noise: float = 0.3,
    seed: int = 0,
) -> RegressionProblem:
    """1-D inputs in [-3, 3] with two regimes: one line left of 0, another right of 0.

    A two-expert statistical MoE with a logistic gate recovers this exactly.

    Returns
    -------
    RegressionProblem
        ``X`` (n_samples, 1), ``y`` (n_samples,), ``region`` (n_samples,) in {0, 1},
        ``coef`` (2, 2) = [[1, -1.5], [-1, 2]] (intercept, slope).

    Examples
    --------
    >>> p = make_piecewise_1d(50, seed=0)
    >>> p.X.shape, p.coef.tolist()
    ((50, 1), [[1.0, -1.5], [-1.0, 2.0]])
    """
    _check_n(n_samples, 1)
    if noise < 0:
        raise ValueError(f"noise={noise} must be >= 0")
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3.0, 3.0, size=(n_samples, 1))
    region = (X[:, 0] > 0).astype(np.int64)
    coef = np.array([[1.0, -1.5], [-1.0, 2.0]])
    y = coef[region, 0] + coef[region, 1] * X[:, 0] + noise * rng.standard_normal(n_samples)
    return RegressionProblem(X=X, y=y, region=region, coef=coef, noise=float(noise))


def make_blobs_classification(
    n_samples: int = 600,
    *,
    n_classes: int = 4,
    cluster_std: float = 0.6,
    seed: int = 0,
) -> ClassificationProblem:
    """Gaussian blobs in 2-D, centres evenly spaced on a circle of radius 2.5.

    Parameters
    ----------
    n_samples : int, default=600
        Split as evenly as possible between classes.
    n_classes : int, default=4
    cluster_std : float, default=0.6
    seed : int, default=0

    Examples
    --------
    >>> p = make_blobs_classification(100, n_classes=4, seed=0)
    >>> p.X.shape, p.centers.shape, int(p.y.max())
    ((100, 2), (4, 2), 3)
    """
    _check_n(n_classes, 2, "n_classes")
    _check_n(n_samples, n_classes)
    if cluster_std <= 0:
        raise ValueError(f"cluster_std={cluster_std} must be > 0")
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(n_classes) / n_classes + np.pi / 4
    centers = 2.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.arange(n_samples, dtype=np.int64) % n_classes
    y = y[rng.permutation(n_samples)]
    X = centers[y] + cluster_std * rng.standard_normal((n_samples, 2))
    return ClassificationProblem(X=X, y=y, centers=centers)
