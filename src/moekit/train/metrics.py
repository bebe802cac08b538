"""Metrics as JSON lines, expert-load summaries, and the progress display.

Every line of ``metrics.jsonl`` (its name and readers: :mod:`moekit.runs`) is one JSON object::

    {"step": 120, "split": "train" | "val", "loss": 2.31, "lr": 0.00093,
     "tokens_per_s": 10450.0, "expert_load": [0.26, 0.24, ...], "model": "moe",
     "aux_loss": 0.0101, "balance": 1.08, "time_s": 12.3}

``loss`` is the task loss (cross-entropy, without aux losses, so an MoE model and its dense twin
compare directly); ``expert_load`` is the fraction of token-slots each expert received, averaged
over the MoE layers (and, for train lines, over the steps since the previous line); ``balance`` is
max/mean of that load (1 = perfectly balanced). Models without MoE layers write ``[]`` and null.
Validation lines also hold ``accuracy``, the top-1 accuracy (of the next token for an LM); for a
classifier ``tokens_per_s`` counts examples.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from moekit.layers import MoELayer


def expert_load(model: nn.Module) -> torch.Tensor | None:
    """Mean over the MoE layers of ``moe.stats.load`` from the last forward, shape ``(E,)``.

    Layers with a different number of experts than the first are left out. None when the model
    has no MoE layer or none has run yet.
    """
    loads: list[torch.Tensor] = []
    for module in model.modules():
        stats = getattr(module, "stats", None) if isinstance(module, MoELayer) else None
        if stats is not None:
            load = stats.load.detach().float()
            if not loads or load.shape == loads[0].shape:
                loads.append(load)
    if not loads:
        return None
    return torch.stack(loads).mean(dim=0)


def class_routing_counts(indices_TK: torch.Tensor, labels_B: torch.Tensor, num_classes: int,
                         num_experts: int) -> torch.Tensor | None:
    """(classes, E) token-slots of each class sent to each expert in one batch of a classifier.

    Each of the T = B * N tokens (patches, frames) has the label of its example; dropped slots
    (index -1) are not counted. None when T is not a multiple of the batch.
    """
    T, B = indices_TK.shape[0], labels_B.shape[0]
    if B == 0 or T % B:
        return None
    kinds_T = labels_B.to(indices_TK.device).long().repeat_interleave(T // B)
    kinds_TK = kinds_T[:, None].expand_as(indices_TK)
    kept = indices_TK >= 0
    counts = torch.zeros(num_classes, num_experts, dtype=torch.float64, device=indices_TK.device)
    one = torch.ones((), dtype=torch.float64, device=indices_TK.device)
    counts.index_put_((kinds_TK[kept], indices_TK[kept]), one, accumulate=True)
    return counts.cpu()


class MetricsWriter:
    """Append JSON lines to a file, flushed after every line so a crash loses nothing written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        """Write one record as a line and flush it."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def truncate_metrics(path: str | os.PathLike[str], max_step: int) -> None:
    """Drop the lines of ``path`` with ``step > max_step`` (before resuming from ``max_step``)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


class Progress:
    """One status line: rewritten in place on a terminal, printed every ``log_every`` steps otherwise."""

    def __init__(self, total_steps: int, *, log_every: int, stream: IO[str] | None = None,
                 prefix: str = "") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.log_every, self.prefix = total_steps, log_every, prefix
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._open_line = False

    def step(self, step: int, *, loss: float, lr: float, tokens_per_s: float,
             balance: float | None, unit: str = "tok/s") -> None:
        """Show the state after ``step`` steps (``tokens_per_s`` items per second, in ``unit``)."""
        width = len(str(self.total))
        text = (f"{self.prefix}step {step:>{width}}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  "
                f"{tokens_per_s:,.0f} {unit}")
        if balance is not None:
            text += f"  load max/mean {balance:.2f}"
        if self.tty:
            self.stream.write("\r" + text.ljust(100))
            self.stream.flush()
            self._open_line = True
        elif step % self.log_every == 0 or step == self.total:
            self.stream.write(text + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """Print a full line (evaluation results, notices) without breaking the status line."""
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(self.prefix + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the status line."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
