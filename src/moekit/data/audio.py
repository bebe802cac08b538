"""Synthetic audio-like data with known labels: short clips turned into log-mel features.

Five kinds of clip, each with random parameters and background noise:

- ``tone``: a steady sine at a random pitch;
- ``chirp_up`` / ``chirp_down``: a sine whose pitch sweeps up / down;
- ``harmonic``: a fundamental with decaying overtones (a sung or bowed note);
- ``noise_burst``: band-limited noise with a sharp attack and exponential decay.

Features are a log-mel spectrogram computed with NumPy alone (Hann window, magnitude-squared
STFT, triangular mel filters, ``log(x + 1e-6)``). Shape legend: S samples per clip, F frames,
M mel bands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AUDIO_CLASSES", "AudioDataset", "log_mel_spectrogram", "make_audio_clips",
           "make_audio_dataset", "mel_filterbank"]

AUDIO_CLASSES: tuple[str, ...] = ("tone", "chirp_up", "chirp_down", "harmonic", "noise_burst")


@dataclass(frozen=True)
class AudioDataset:
    """Log-mel features of synthetic clips.

    Attributes
    ----------
    features : ndarray of shape (n_clips, F, M), float32
    labels : ndarray of shape (n_clips,), int64, index into ``class_names``
    class_names : tuple of str
    sample_rate : int
    """

    features: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    sample_rate: int


def _clip(kind: str, t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    dur = t[-1] + 1.0 / sr
    if kind == "tone":
        f = rng.uniform(300, 2500)
        return np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    if kind in ("chirp_up", "chirp_down"):
        lo, hi = rng.uniform(200, 800), rng.uniform(1800, 3500)
        f0, f1 = (lo, hi) if kind == "chirp_up" else (hi, lo)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur))
        return np.sin(phase)
    if kind == "harmonic":
        f = rng.uniform(150, 500)
        n_harm = int(rng.integers(3, 7))
        wave = sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, n_harm + 1))
        return np.asarray(wave) / 1.5
    if kind == "noise_burst":
        noise = rng.standard_normal(t.shape)
        # crude low-pass by a moving average, so the burst has a coloured spectrum
        width = int(rng.integers(2, 6))
        noise = np.convolve(noise, np.ones(width) / width, mode="same")
        onset = rng.uniform(0.0, 0.3) * dur
        env = np.where(t >= onset, np.exp(-(t - onset) / (0.2 * dur)), 0.0)
        return 2.0 * noise * env
    raise ValueError(f"unknown clip kind {kind!r}; choose from {AUDIO_CLASSES}")


def make_audio_clips(
    n_per_class: int = 50,
    *,
    sample_rate: int = 8000,
    duration: float = 0.25,
    noise_level: float = 0.1,
    classes: tuple[str, ...] = AUDIO_CLASSES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate labelled synthetic clips.

    Parameters
    ----------
    n_per_class : int, default=50
    sample_rate : int, default=8000
    duration : float, default=0.25
        Seconds per clip; S = round(duration * sample_rate).
    noise_level : float, default=0.1
        Standard deviation of white background noise added to every clip (signals peak near 1).
    classes : tuple of str, default=AUDIO_CLASSES
    seed : int, default=0

    Returns
    -------
    waves : ndarray of shape (n_per_class * len(classes), S), float32
    labels : ndarray of shape (n_per_class * len(classes),), int64, shuffled

    Examples
    --------
    >>> waves, labels = make_audio_clips(4, seed=0)
    >>> waves.shape, labels.shape
    ((20, 2000), (20,))
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class} must be >= 1")
    unknown = [c for c in classes if c not in AUDIO_CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes={classes!r} must be a non-empty subset of {AUDIO_CLASSES}")
    n_samples = int(round(duration * sample_rate))
    if n_samples < 64:
        raise ValueError(
            f"duration={duration} at sample_rate={sample_rate} gives {n_samples} samples; "
            "need at least 64, lengthen the clip"
        )
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / sample_rate
    waves = np.empty((n_per_class * len(classes), n_samples), dtype=np.float32)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), n_per_class)
    for i, lab in enumerate(labels):
        wave = _clip(classes[lab], t, sample_rate, rng) * rng.uniform(0.5, 1.0)
        waves[i] = wave + noise_level * rng.standard_normal(n_samples)
    order = rng.permutation(len(labels))
    return waves[order], labels[order]


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """Triangular mel filters (HTK mel scale), shape (n_mels, n_fft // 2 + 1)."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    n_bins = n_fft // 2 + 1
    freqs = np.linspace(0.0, sample_rate / 2, n_bins)
    mel_pts = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate / 2)),
                          n_mels + 2)
    hz_pts = mel_to_hz(mel_pts)
    fb = np.zeros((n_mels, n_bins))
    for m in range(n_mels):
        lo, mid, hi = hz_pts[m], hz_pts[m + 1], hz_pts[m + 2]
        up = (freqs - lo) / max(mid - lo, 1e-9)
        down = (hi - freqs) / max(hi - mid, 1e-9)
        fb[m] = np.clip(np.minimum(up, down), 0.0, None)
    return fb


def log_mel_spectrogram(
    waves: np.ndarray,
    *,
    sample_rate: int = 8000,
    n_fft: int = 256,
    hop_length: int = 128,
    n_mels: int = 32,
) -> np.ndarray:
    """Log-mel spectrogram of one clip (S,) or a batch (n, S).

    Returns
    -------
    ndarray of shape (F, M) or (n, F, M), float32
        F = 1 + (S - n_fft) // hop_length frames, M = ``n_mels``.

    Examples
    --------
    >>> log_mel_spectrogram(np.zeros(2000), n_fft=256, hop_length=128, n_mels=32).shape
    (14, 32)
    """
    x = np.asarray(waves, dtype=np.float64)
    single = x.ndim == 1
    if single:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"waves must have shape (S,) or (n, S), got {x.shape}")
    if x.shape[1] < n_fft:
        raise ValueError(f"clips of {x.shape[1]} samples are shorter than n_fft={n_fft}; "
                         "lower n_fft or lengthen the clips")
    n_frames = 1 + (x.shape[1] - n_fft) // hop_length
    idx = np.arange(n_fft)[None, :] + hop_length * np.arange(n_frames)[:, None]  # (F, n_fft)
    frames = x[:, idx] * np.hanning(n_fft)  # (n, F, n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (n, F, n_fft//2+1)
    mel = power @ mel_filterbank(n_mels, n_fft, sample_rate).T  # (n, F, M)
    out = np.log(mel + 1e-6).astype(np.float32)
    return out[0] if single else out


def make_audio_dataset(
    n_per_class: int = 50,
    *,
    sample_rate: int = 8000,
    duration: float = 0.25,
    n_mels: int = 32,
    noise_level: float = 0.1,
    seed: int = 0,
) -> AudioDataset:
    """Synthetic clips of the five :data:`AUDIO_CLASSES`, as log-mel features.

    With the defaults each clip is 2,000 samples, giving features of shape (14, 32).

    Examples
    --------
    >>> ds = make_audio_dataset(3, seed=0)
    >>> ds.features.shape, ds.class_names[ds.labels[0]] in ds.class_names
    ((15, 14, 32), True)
    """
    waves, labels = make_audio_clips(n_per_class, sample_rate=sample_rate, duration=duration,
                                     noise_level=noise_level, seed=seed)
    feats = log_mel_spectrogram(waves, sample_rate=sample_rate, n_mels=n_mels)
    return AudioDataset(features=feats, labels=labels, class_names=AUDIO_CLASSES,
                        sample_rate=sample_rate)
