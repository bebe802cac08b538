"""The configuration of a training run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DeviceName = Literal["auto", "cpu", "cuda"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train: optimiser, schedule, evaluation, checkpoints, device and output.

    Parameters
    ----------
    steps : int
        Optimiser steps in total (a resumed run stops at the same step).
    batch_size : int
        Examples (sequences, images, clips) per step.
    lr : float
        Peak learning rate of AdamW, reached after ``warmup_steps``.
    weight_decay : float
        AdamW decay of matrices; norms, biases and embeddings are never decayed.
    warmup_steps : int
        Linear warm-up from ``lr / warmup_steps`` to ``lr``.
    min_lr_ratio : float
        The cosine decay ends at ``min_lr_ratio * lr`` at the last step; in [0, 1].
    grad_clip : float or None
        Clip the global gradient norm to this value; None disables clipping.
    eval_every : int
        Evaluate on the validation data every this many steps (and at the end); 0 = only at the end.
    eval_batches : int
        Validation batches per evaluation (always the same batches, so curves are comparable).
    checkpoint_every : int
        Save a checkpoint every this many steps (and at the end); 0 = only at the end.
    keep_checkpoints : int
        How many of the most recent checkpoints to keep on disk (>= 1).
    seed : int
        Seeds the initial RNG state and the data order: the same seed gives the same losses on CPU.
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` picks CUDA when available.
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``"auto"``: bf16 autocast on a CUDA device that supports it (fp16 with loss scaling
        otherwise), fp32 on CPU. ``"fp16"`` needs CUDA.
    log_every : int
        Write a train metrics line (and a progress line when not on a terminal) every this many steps.
    output_dir : str
        Folder of the run: ``metrics.jsonl``, ``config.json``, ``results.json``, ``checkpoints/``.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    device: DeviceName = "auto"
    precision: PrecisionName = "auto"
    log_every: int = 10
    output_dir: str = "runs/train"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batches", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be > 0; a typical AdamW value is 1e-3")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip!r} must be > 0, or None to disable clipping")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r} is not one of 'auto', 'cpu', 'cuda'")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision={self.precision!r} is not one of 'auto', 'fp32', 'bf16', 'fp16'")
        if not self.output_dir:
            raise ValueError("output_dir='' is empty; name a folder for the run")
