"""Training: the loop, checkpoints, batches, metrics and progress.

>>> from moekit.train import TrainConfig, TokenBatches, train   # doctest: +SKIP
>>> result = train(model, TokenBatches(ids, block_size=64, batch_size=16, seed=0),
...                TrainConfig(steps=200, output_dir="runs/lm"))              # doctest: +SKIP
"""

from moekit._deps import require

require("torch", "safetensors", feature="moekit.train")

from moekit.train.batches import ArrayBatches, BatchSource, TokenBatches
from moekit.train.checkpoint import (
    CheckpointState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from moekit.train.config import TrainConfig
from moekit.train.device import resolve_device, resolve_precision, seed_everything
from moekit.train.evaluation import evaluate
from moekit.train.loop import StepEnd, TrainResult, train
from moekit.train.optim import build_optimizer, build_scheduler, lr_factor

__all__ = [
    "ArrayBatches",
    "BatchSource",
    "CheckpointState",
    "StepEnd",
    "TokenBatches",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_factor",
    "resolve_device",
    "resolve_precision",
    "save_checkpoint",
    "seed_everything",
    "train",
]
