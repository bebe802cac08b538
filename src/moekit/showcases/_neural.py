"""Training and scoring the neural showcases' models (speech, vision) with moekit's own loop.

Every model is trained by :func:`moekit.train.train` (AdamW, warm-up and cosine schedule, the
MoE layers' aux losses added) on :class:`~moekit.train.ArrayBatches`; its run folder (metrics,
config, the final checkpoint) is kept under the showcase's output folder. The weights are drawn
from ``seed`` before the model is built, so replicate ``r`` of two models differs only in the
model, never in the data order or the split.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from moekit.models import count_parameters

__all__ = ["TrainedModel", "accuracy", "torch_threads", "train_classifier"]


@dataclass(frozen=True, kw_only=True)
class TrainedModel:
    """A trained model, where its run went, and what it cost."""

    model: nn.Module
    run_dir: Path
    wall_s: float
    cpu_s: float
    parameters_total: int
    parameters_active: int


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (and BLAS threads), then restore them."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def train_classifier(build: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                     seed: int, steps: int, batch_size: int, lr: float, weight_decay: float,
                     warmup_steps: int, device: str, run_dir: Path,
                     name: str) -> TrainedModel:
    """Build a model with weights drawn from ``seed`` and train it on ``(x, y)``.

    ``run_dir`` must not hold a run yet (the loop refuses to overwrite one).
    """
    from moekit.train import ArrayBatches, TrainConfig, seed_everything, train

    seed_everything(seed)
    model = build()
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, min_lr_ratio=0.0, grad_clip=1.0,
                         eval_every=0, checkpoint_every=0, keep_checkpoints=1, seed=seed,
                         device="cuda" if device == "cuda" else "cpu", precision="auto",
                         log_every=max(1, steps // 4), output_dir=str(run_dir))
    batches = ArrayBatches(x, y, batch_size=batch_size, seed=seed)
    wall, cpu = time.perf_counter(), time.process_time()
    train(model, batches, config, model_name=name, progress=io.StringIO())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    total, active = count_parameters(model)
    return TrainedModel(model=model, run_dir=run_dir, wall_s=wall, cpu_s=cpu,
                        parameters_total=int(total), parameters_active=int(active))


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose largest logit is the label."""
    return float(np.mean(np.asarray(logits).argmax(axis=1) == np.asarray(y)))

