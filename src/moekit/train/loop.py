"""The training loop: defaults -> setup -> (resume) -> loop -> final checkpoint and results.

One function, :func:`train`, trains any model that maps inputs to logits with cross-entropy
targets (a language model's ``(B, N, V)`` logits and ``(B, N)`` targets, or a classifier's
``(B, C)`` and ``(B,)``). The loss is the task loss plus ``moekit.layers.total_aux_loss(model)``;
routers with an aux-loss-free bias (``sigmoid_bias``) count their load in the training forwards
and move their bias in ``moekit.layers.update_router_biases(model)``, called once after each
optimizer step; evaluation runs under ``model.eval()`` and ``torch.no_grad()`` so it counts nothing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import torch
from torch import nn

from moekit import runs
from moekit._files import atomic_write_json
from moekit.layers import total_aux_loss, update_router_biases
from moekit.models.params import count_parameters
from moekit.train.batches import BatchSource
from moekit.train.checkpoint import (
    CheckpointState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from moekit.train.config import TrainConfig
from moekit.train.device import (
    autocast_context,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from moekit.train.distributed import DistributedTraining
from moekit.train.evaluation import EvalResult, evaluate_model, load_balance_of, task_loss
from moekit.train.metrics import (
    MetricsWriter,
    Progress,
    expert_load,
    truncate_metrics,
)
from moekit.train.optim import build_optimizer, build_scheduler


@dataclass(frozen=True)
class StepEnd:
    """What a callback sees after each optimiser step."""

    step: int
    """Steps completed (1 after the first step)."""
    loss: float
    """Task loss of this step."""
    model: nn.Module
    optimizer: torch.optim.Optimizer


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`.

    Attributes
    ----------
    model_name : str
    step : int
        Steps completed in total (including those before a resume).
    train_losses : list of float
        Task loss of every step run by this call.
    final_val_loss : float or None
        Validation loss at the end (None without validation data).
    output_dir : Path
    checkpoint : Path or None
        The last checkpoint written.
    elapsed_s : float
        Wall time of the whole run, summed over resumed segments.
    final_val_accuracy : float or None
        Top-1 accuracy on the validation batches at the end (of the next token for a language
        model; None without validation data).
    already_done : bool
        The run had finished before this call (resume of a finished run): nothing was trained
        or written; the numbers are those of its ``results.json``.
    model : nn.Module or None
        The trained model (the one passed in).
    """

    model_name: str
    step: int
    train_losses: list[float]
    final_val_loss: float | None
    output_dir: Path
    checkpoint: Path | None
    elapsed_s: float
    final_val_accuracy: float | None = None
    already_done: bool = False
    model: nn.Module | None = field(default=None, repr=False, compare=False)


class _InterruptFlag:
    """Turn the first Ctrl-C into a flag checked between steps, so a checkpoint is consistent.

    A second Ctrl-C raises at once (without saving). Only installed in the main thread.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(
    model: nn.Module,
    train_data: BatchSource,
    config: TrainConfig,
    *,
    val_data: BatchSource | None = None,
    resume: bool = False,
    model_name: str = "model",
    run_config: dict[str, Any] | None = None,
    callbacks: Sequence[Callable[[StepEnd], None]] = (),
    progress: IO[str] | None = None,
    resume_hint: str | None = None,
    distributed: DistributedTraining | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.steps`` steps, writing metrics and checkpoints.

    Parameters
    ----------
    model : nn.Module
        Maps ``inputs`` to logits; moved to the configured device.
    train_data, val_data : BatchSource
        ``batch(i) -> (inputs, targets)``; step ``s`` trains on ``train_data.batch(s)``.
    config : TrainConfig
    resume : bool
        Continue from the latest checkpoint in ``config.output_dir`` (error if there is none).
        The result is identical to an uninterrupted run on CPU. A run that already reached
        ``config.steps`` is left as it is (the result has ``already_done=True``).
    model_name : str
        Written in every metrics line (``"moe"``, ``"dense"``...).
    run_config : dict, optional
        JSON-serialisable description of the model and data, stored in ``config.json`` and in
        checkpoints.
    callbacks : sequence of callables
        Called with a :class:`StepEnd` after every step. Raising ``KeyboardInterrupt`` from one
        behaves like Ctrl-C.
    progress : text stream, optional
        Where the progress line goes (default ``sys.stderr``).
    resume_hint : str, optional
        The command that resumes this run, printed after Ctrl-C.
    distributed : DistributedTraining, optional
        Train as one rank of a process group (:mod:`moekit.train.distributed`): each rank takes
        its share of every batch, experts are sharded, only rank 0 writes files.

    Returns
    -------
    TrainResult

    Raises
    ------
    KeyboardInterrupt
        After Ctrl-C: a checkpoint of the last completed step has been saved first.
    FileExistsError
        ``output_dir`` already holds a run and ``resume`` is False.
    """
    started = time.perf_counter()
    out = Path(config.output_dir)
    ckpt_root = out / runs.CHECKPOINTS_DIR
    metrics_path = out / runs.METRICS_FILE
    results_path = out / runs.RESULTS_FILE
    device = resolve_device(config.device)
    autocast_dtype = resolve_precision(config.precision, device)

    if not resume and (list_checkpoints(ckpt_root) or metrics_path.exists()):
        raise FileExistsError(f"{out} already holds a run (metrics.jsonl or checkpoints/); resume it "
                              "(resume=True, `moekit train --resume`) or pick another output folder")
    seed_everything(config.seed)
    model.to(device)
    net, main, par = model, True, distributed  # net: what runs forward (DDP under distributed)
    save_fn: Callable[..., Path] = save_checkpoint
    load_fn: Callable[..., CheckpointState] = load_checkpoint
    clip_fn: Callable[..., torch.Tensor] = torch.nn.utils.clip_grad_norm_
    if par is not None:
        net, main = par.prepare(model, config.seed), par.is_main
        save_fn, load_fn, clip_fn = par.save_checkpoint, par.load_checkpoint, par.clip_grad_norm_
        train_data = par.shard(train_data)
        val_data = par.shard(val_data) if val_data is not None else None
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    saved_config = {"model_name": model_name, "train": dataclasses.asdict(config),
                    **(run_config or {})}

    def evaluate_run(forward: nn.Module, data: BatchSource) -> EvalResult:
        ev = evaluate_model(forward, data, batches=config.eval_batches, device=device,
                       autocast_dtype=autocast_dtype)
        if par is None:
            return ev
        return dataclasses.replace(ev, loss=par.mean(ev.loss), accuracy=par.mean(ev.accuracy))

    start_step = 0
    last_checkpoint: Path | None = None
    before = 0.0  # seconds spent by earlier segments of a resumed run
    last_eval: EvalResult | None = None
    display = Progress(config.steps, log_every=config.log_every, stream=progress,
                       prefix=f"[{model_name}] " if model_name != "model" else "")
    val_loss: float | None = None
    val_accuracy: float | None = None
    if resume:
        found = latest_checkpoint(ckpt_root)
        if found is None:
            raise FileNotFoundError(f"nothing to resume: no checkpoint in {ckpt_root}; start the run "
                                    "without resume (drop --resume)")
        state = load_fn(found, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        start_step, last_checkpoint = state.step, found
        before = float(state.extra.get("elapsed_s", 0.0))
        if start_step >= config.steps:
            if results_path.is_file():
                display.message(f"already finished: step {start_step} of {config.steps} is done; "
                                f"nothing to resume, {out} is left as it is")
                return _finished_result(results_path, model_name, start_step, out, found, model)
            # The final checkpoint was written but results.json was not: write it below.
            final = None if val_data is None else evaluate_run(net, val_data)
            val_loss = final.loss if final else None
            val_accuracy = final.accuracy if final else None
            last_eval = final
        if main:
            truncate_metrics(metrics_path, start_step)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / runs.CONFIG_FILE, saved_config)

    writer = MetricsWriter(metrics_path if main else os.devnull)
    if resume:
        display.message(f"resumed from {last_checkpoint} at step {start_step}")

    def run_time() -> float:
        return before + time.perf_counter() - started

    def checkpoint(step: int) -> Path:
        return save_fn(ckpt_root, step=step, model=model, optimizer=optimizer,
                       scheduler=scheduler, scaler=scaler, config=saved_config,
                       extra={"model_name": model_name, "elapsed_s": run_time()},
                       keep=config.keep_checkpoints)

    def run_eval(step: int) -> EvalResult | None:
        if val_data is None:
            return None
        ev = evaluate_run(net, val_data)
        writer.write({"step": step, "split": "val", "loss": ev.loss, "accuracy": ev.accuracy,
                      "lr": scheduler.get_last_lr()[0], "tokens_per_s": None,
                      "expert_load": ev.expert_load, "model": model_name,
                      "balance": load_balance_of(ev.expert_load), "time_s": run_time()})
        display.message(f"step {step}: val loss {ev.loss:.4f}, accuracy {ev.accuracy:.1%}")
        return ev

    losses: list[float] = []
    step = start_step  # steps completed
    saved_step = start_step if resume else -1
    in_step = False
    window_loss, window_aux, window_items, window_steps = 0.0, 0.0, 0, 0
    window_load: torch.Tensor | None = None
    window_start = time.perf_counter()
    model.train()
    try:
        with _InterruptFlag() as interrupt:
            while step < config.steps:
                in_step = True
                x, y = (t.to(device, non_blocking=True) for t in train_data.batch(step))
                with autocast_context(device, autocast_dtype):
                    logits = net(x)
                loss = task_loss(logits, y)
                aux = total_aux_loss(model)
                scaler.scale(loss + aux).backward()
                if config.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    clip_fn(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                update_router_biases(model)  # aux-loss-free balancing: once per optimizer step
                lr = float(scheduler.get_last_lr()[0])
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                in_step = False

                loss_value = loss.item() if par is None else par.mean(loss.item())
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss became {loss_value} at step {step}; lower lr "
                                             f"(now {config.lr}) or enable grad_clip")
                losses.append(loss_value)
                load = expert_load(model)
                window_loss += loss_value
                window_aux += float(aux.detach())
                window_items += y.numel() * (1 if par is None else par.world_size)
                window_steps += 1
                if load is not None:
                    window_load = load if window_load is None else window_load + load
                # Step 1 is logged for a prompt first line; a resumed run logs where the
                # uninterrupted one would, so its curves have no extra point.
                if step % config.log_every == 0 or step == config.steps or step == 1:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    mean_load = (window_load / window_steps).tolist() if window_load is not None else []
                    mean_loss, rate = window_loss / window_steps, window_items / elapsed
                    writer.write({"step": step, "split": "train", "loss": mean_loss, "lr": lr,
                                  "tokens_per_s": rate, "expert_load": mean_load,
                                  "model": model_name, "aux_loss": window_aux / window_steps,
                                  "balance": load_balance_of(mean_load), "time_s": run_time()})
                    display.step(step, loss=mean_loss, lr=lr, tokens_per_s=rate,
                                 balance=load_balance_of(mean_load),
                                 unit="tok/s" if y.dim() > 1 else "examples/s")
                    window_loss, window_aux, window_items, window_steps = 0.0, 0.0, 0, 0
                    window_load, window_start = None, time.perf_counter()
                if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
                    ev = run_eval(step)
                    val_loss = ev.loss if ev else None
                    val_accuracy = ev.accuracy if ev else None
                    last_eval = ev
                if (config.checkpoint_every and step % config.checkpoint_every == 0) \
                        or step == config.steps:
                    last_checkpoint, saved_step = checkpoint(step), step
                for callback in callbacks:
                    callback(StepEnd(step=step, loss=loss_value, model=model, optimizer=optimizer))
                if interrupt.requested if par is None else par.any(interrupt.requested):
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        display.close()
        if in_step:
            where = f"the last checkpoint ({last_checkpoint})" if last_checkpoint else "no checkpoint"
            print(f"\ninterrupted in the middle of step {step + 1}; {where} is kept",
                  file=sys.stderr)
        elif step > 0:
            if saved_step != step:
                last_checkpoint = checkpoint(step)
            print(f"\ninterrupted after step {step}/{config.steps}; checkpoint saved to "
                  f"{last_checkpoint}", file=sys.stderr)
        if last_checkpoint is not None:
            print(f"resume with: {resume_hint or 'train(..., resume=True) with the same config'}",
                  file=sys.stderr)
        raise
    finally:
        writer.close()
        display.close()

    elapsed = run_time()
    total, active = count_parameters(model) if par is None else par.count_parameters(model)
    tail = losses[-max(1, config.log_every):]
    results = {"model": model_name, "steps": step,
               "final_train_loss": sum(tail) / len(tail) if tail else _last_train_loss(metrics_path),
               "final_val_loss": val_loss, "final_val_accuracy": val_accuracy,
               "parameters_total": total, "parameters_active": active,
               "elapsed_s": elapsed, "device": device.type,
               "precision": str(autocast_dtype).removeprefix("torch.") if autocast_dtype else "fp32"}
    if main:
        atomic_write_json(results_path, results)
    if main and last_eval is not None and last_eval.routing_by_class is not None:
        atomic_write_json(out / runs.ROUTING_FILE, {
            "model": model_name, "step": step, "layer": "first MoE layer",
            "what": "token-slots of each class (validation data) sent to each expert",
            "counts": last_eval.routing_by_class})
    return TrainResult(model_name=model_name, step=step, train_losses=losses,
                       final_val_loss=val_loss, output_dir=out, checkpoint=last_checkpoint,
                       elapsed_s=elapsed, final_val_accuracy=val_accuracy, model=model)


def _last_train_loss(metrics_path: Path) -> float | None:
    records = runs.read_metrics(metrics_path) if metrics_path.is_file() else []
    losses = [r["loss"] for r in records if r.get("split") == "train" and r.get("loss") is not None]
    return float(losses[-1]) if losses else None


def _finished_result(results_path: Path, model_name: str, step: int, out: Path,
                     checkpoint: Path, model: nn.Module) -> TrainResult:
    """What :func:`train` returns for a run that had already finished: its recorded results."""
    recorded = runs.read_json(results_path)

    def number(key: str) -> float | None:
        value = recorded.get(key) if isinstance(recorded, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    return TrainResult(model_name=model_name, step=step, train_losses=[],
                       final_val_loss=number("final_val_loss"), output_dir=out,
                       checkpoint=checkpoint, elapsed_s=number("elapsed_s") or 0.0,
                       final_val_accuracy=number("final_val_accuracy"), already_done=True,
                       model=model)
