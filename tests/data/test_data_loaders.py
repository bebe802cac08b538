"""Tabular, image, audio and synthetic loaders: shapes, determinism, known truth."""

from __future__ import annotations

import numpy as np
import pytest

from moekit.data.audio import (
    AUDIO_CLASSES,
    log_mel_spectrogram,
    make_audio_clips,
    make_audio_dataset,
)
from moekit.data.synthetic import (
    make_blobs_classification,
    make_piecewise_1d,
    make_piecewise_regression,
    sector_region,
)
from moekit.data.tabular import load_health_table
from moekit.data.vision import load_digits_split


def test_health_table() -> None:
    raw = load_health_table()
    assert raw.X.shape == (442, 10) and raw.y.shape == (442,)
    assert raw.feature_names == ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
    assert len(raw.feature_descriptions) == 10
    assert raw.X[:, 0].min() >= 19 and raw.X[:, 0].max() <= 79  # ages in years
    scaled = load_health_table(scaled=True)
    np.testing.assert_allclose((scaled.X**2).sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(raw.y, scaled.y)


def test_digits_split_deterministic_and_disjoint() -> None:
    a, b = load_digits_split(seed=1), load_digits_split(seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.x_train.dtype == np.float32
    assert len(a.y_train) + len(a.y_test) == 1797
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    assert set(a.y_test.tolist()) == set(range(10))  # stratified: every class held out
    c = load_digits_split(seed=2)
    assert not np.array_equal(a.y_train, c.y_train)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split(test_fraction=0.0)


def test_audio_clips_and_features() -> None:
    waves, labels = make_audio_clips(3, seed=0)
    waves2, labels2 = make_audio_clips(3, seed=0)
    np.testing.assert_array_equal(waves, waves2)
    np.testing.assert_array_equal(labels, labels2)
    assert waves.shape == (15, 2000) and np.bincount(labels).tolist() == [3] * 5
    ds = make_audio_dataset(3, seed=0)
    assert ds.features.shape == (15, 14, 32) and ds.features.dtype == np.float32
    assert ds.class_names == AUDIO_CLASSES
    assert np.isfinite(ds.features).all()
    with pytest.raises(ValueError, match="classes="):
        make_audio_clips(2, classes=("tone", "whistle"))


def test_log_mel_follows_pitch() -> None:
    # a pure tone's strongest mel band moves up with its frequency
    t = np.arange(2000) / 8000
    low = log_mel_spectrogram(np.sin(2 * np.pi * 300 * t)).mean(axis=0).argmax()
    high = log_mel_spectrogram(np.sin(2 * np.pi * 3000 * t)).mean(axis=0).argmax()
    assert low < high


def test_chirps_sweep_in_opposite_directions() -> None:
    waves, labels = make_audio_clips(2, classes=("chirp_up", "chirp_down"), noise_level=0.0,
                                     seed=0)
    feats = log_mel_spectrogram(waves)  # (n, F, M)
    peak = feats.argmax(axis=2)  # (n, F)
    slope = peak[:, -1] - peak[:, 0]
    assert (slope[labels == 0] > 0).all() and (slope[labels == 1] < 0).all()


def test_piecewise_regression_has_known_truth() -> None:
    p = make_piecewise_regression(500, n_regions=4, noise=0.0, seed=0)
    q = make_piecewise_regression(500, n_regions=4, noise=0.0, seed=0)
    np.testing.assert_array_equal(p.X, q.X)
    assert p.X.shape == (500, 2) and p.coef.shape == (4, 3)
    np.testing.assert_array_equal(p.region, sector_region(p.X, 4))
    pred = p.coef[p.region, 0] + (p.X * p.coef[p.region, 1:]).sum(axis=1)
    np.testing.assert_allclose(p.y, pred)


def test_piecewise_1d_and_blobs() -> None:
    p = make_piecewise_1d(200, noise=0.0, seed=0)
    assert p.X.shape == (200, 1)
    np.testing.assert_array_equal(p.region, (p.X[:, 0] > 0).astype(int))
    b = make_blobs_classification(203, n_classes=3, seed=5)
    assert b.X.shape == (203, 2) and np.bincount(b.y).tolist() == [68, 68, 67]
    nearest = np.argmin(((b.X[:, None] - b.centers[None]) ** 2).sum(-1), axis=1)
    assert (nearest == b.y).mean() > 0.95
