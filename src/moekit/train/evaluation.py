"""Evaluation of a run's model: task loss, top-1 accuracy, expert load and routing by class."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moekit.layers import MoELayer
from moekit.layers.stats import load_balance
from moekit.train.batches import BatchSource
from moekit.train.device import autocast_context
from moekit.train.metrics import class_routing_counts, expert_load


def task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``(..., C)`` logits against ``(...)`` integer targets, in fp32."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    expert_load: list[float]
    routing_by_class: list[list[float]] | None = None  # (classes, E), classifiers only


@torch.no_grad()
def evaluate_model(model: nn.Module, data: BatchSource, *, batches: int, device: torch.device,
              autocast_dtype: torch.dtype | None = None) -> EvalResult:
    was_training = model.training
    model.eval()
    losses, loads = [], []
    correct, total = 0, 0
    first_moe = next((m for m in model.modules() if isinstance(m, MoELayer)), None)
    by_class: torch.Tensor | None = None
    try:
        for i in range(batches):
            x, y = (t.to(device) for t in data.batch(i))
            with autocast_context(device, autocast_dtype):
                logits = model(x)
            losses.append(task_loss(logits, y).item())
            correct += int((logits.argmax(dim=-1) == y).sum())
            total += y.numel()
            load = expert_load(model)
            if load is not None:
                loads.append(load)
            if first_moe is not None and first_moe.stats is not None and y.dim() == 1:
                counts = class_routing_counts(first_moe.stats.indices, y, logits.shape[-1],
                                              first_moe.num_experts)
                if counts is not None:
                    by_class = counts if by_class is None else by_class + counts
    finally:
        model.train(was_training)
    mean_load = torch.stack(loads).mean(0).tolist() if loads else []
    return EvalResult(loss=sum(losses) / len(losses), accuracy=correct / max(total, 1),
                       expert_load=mean_load,
                       routing_by_class=by_class.tolist() if by_class is not None else None)


def evaluate(model: nn.Module, data: BatchSource, *, batches: int, device: torch.device,
             autocast_dtype: torch.dtype | None = None) -> tuple[float, list[float]]:
    """Mean task loss over ``data.batch(0 .. batches-1)`` in eval mode, and the mean expert load.

    The model is put in eval mode (no router noise, no balancing-bias update, no dropout) and
    returned to the mode it was in. (The training loop also records the top-1 accuracy.)
    """
    result = evaluate_model(model, data, batches=batches, device=device, autocast_dtype=autocast_dtype)
    return result.loss, result.expert_load


def load_balance_of(load: list[float] | torch.Tensor | None) -> float | None:
    """max/mean of a mean expert load (None for models without MoE layers)."""
    if load is None or len(load) == 0:
        return None
    return load_balance(torch.as_tensor(load, dtype=torch.float32))
