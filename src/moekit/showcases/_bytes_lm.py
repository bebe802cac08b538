"""Byte-level language models for the showcases: build an MoE model and its dense twin, train
both on the same batches, and read each model's loss and routing on a text token by token.

Legend: N tokens (bytes) of a text, B windows, W window length, L MoE layers, K experts per
token, E experts.

Text is UTF-8 bytes, vocabulary 256: every script is modelled, and a Cyrillic letter costs the
two bytes it takes on disk. The dense twin (:func:`moekit.models.dense_twin_config`) has the
MoE model's *active* parameters per token: each MoE MLP of ``top_k`` experts of hidden size
``d_ff`` becomes one dense MLP of hidden size ``top_k * d_ff``.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from moekit._files import atomic_write_text
from moekit.layers import MoEConfig, MoELayer
from moekit.models import TransformerLM, TransformerLMConfig, dense_twin_config

__all__ = ["LMShape", "Routed", "Trained", "build_model", "char_count", "decode", "encode", "model_configs",
           "moe_layers", "route_text", "sample", "train_lm"]

VOCAB = 256


@dataclass(frozen=True, kw_only=True)
class LMShape:
    """The MoE language model of a showcase; its dense twin follows from it."""

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    num_experts: int
    top_k: int
    block_size: int
    router: str = "topk"
    aux_loss_weight: float = 0.01


def model_configs(shape: LMShape) -> tuple[TransformerLMConfig, TransformerLMConfig]:
    """The MoE model's config and its dense twin's (same active parameters per token).

    The one place that knows how :class:`moekit.models.TransformerLMConfig` spells an MoE.
    """
    moe = MoEConfig.create(d_model=shape.d_model, d_ff=shape.d_ff,
                           num_experts=shape.num_experts, top_k=shape.top_k,
                           router=shape.router,  # type: ignore[arg-type]
                           aux_loss_weight=shape.aux_loss_weight)
    config = TransformerLMConfig(vocab_size=VOCAB, block_size=shape.block_size,
                                 d_model=shape.d_model, n_layers=shape.n_layers,
                                 n_heads=shape.n_heads, moe=moe, d_ff=shape.d_ff)
    return config, dense_twin_config(config)


def build_model(config: TransformerLMConfig, seed: int) -> TransformerLM:
    """Fresh weights drawn from ``seed`` (the same seed gives the same model)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return TransformerLM(config)
    finally:
        torch.random.set_rng_state(state)


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as a ``(N,)`` uint8 tensor."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


def decode(ids: torch.Tensor | np.ndarray) -> str:
    """Bytes back to text; an incomplete or invalid sequence shows as U+FFFD."""
    arr = ids.tolist() if isinstance(ids, torch.Tensor) else np.asarray(ids).tolist()
    return bytes(int(v) for v in arr).decode("utf-8", errors="replace")


def char_count(ids: torch.Tensor | np.ndarray) -> int:
    """Characters in UTF-8 bytes: the bytes that are not continuation bytes (``10xxxxxx``)."""
    arr = np.asarray(ids.numpy() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
    return int(np.sum((arr & 0xC0) != 0x80))


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """The MoE layers of ``model`` in forward order (empty for a dense model)."""
    return [m for m in model.modules() if isinstance(m, MoELayer)]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type,
                                                              dtype=dtype)


@dataclass(frozen=True)
class Routed:
    """A text read by a model, token by token.

    Attributes
    ----------
    nll_N : ndarray of shape (N,), float64
        Negative log-likelihood (nats) of the *next* byte at each position; NaN at the last.
    indices_NLK : ndarray of shape (N, L, K), int16
        Expert of each token-slot in each MoE layer (-1: dropped); ``L = 0`` for a dense model.
    """

    nll_N: np.ndarray
    indices_NLK: np.ndarray

    @property
    def loss(self) -> float:
        """Mean nats per predicted byte."""
        return float(np.nanmean(self.nll_N)) if len(self.nll_N) > 1 else float("nan")


@torch.no_grad()
def route_text(model: TransformerLM, ids_N: torch.Tensor, *, batch_size: int = 32,
               device: torch.device | str = "cpu",
               autocast_dtype: torch.dtype | None = None) -> Routed:
    """Read ``ids_N`` in consecutive windows of ``block_size``: next-byte loss and routing.

    Position ``p`` is read with the ``p mod block_size`` bytes before it in its window as
    context and predicts byte ``p + 1`` (the same split as a validation pass over
    non-overlapping windows). Eval mode: no router noise, no balancing update.
    """
    if ids_N.dim() != 1:
        raise ValueError(f"ids must be a 1-D tensor of byte ids, got shape {tuple(ids_N.shape)}")
    device = torch.device(device)
    w = model.config.block_size
    n = int(ids_N.numel())
    layers = moe_layers(model)
    k = layers[0].top_k if layers else 0
    nll_N = np.full(n, np.nan)
    indices_NLK = np.full((n, len(layers), k), -1, dtype=np.int16)
    ids = ids_N.long()
    starts = list(range(0, max(n - 1, 0), w))
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(starts), batch_size):
            chunk = starts[first:first + batch_size]
            lengths = [min(w, n - 1 - s) for s in chunk]
            for width in sorted(set(lengths)):  # windows of equal length batch together
                group = [s for s, ln in zip(chunk, lengths) if ln == width]
                pos_BW = torch.tensor(group)[:, None] + torch.arange(width)
                x_BW, y_BW = ids[pos_BW].to(device), ids[pos_BW + 1].to(device)
                with _autocast(device, autocast_dtype):
                    logits = model(x_BW)
                nll = nn.functional.cross_entropy(logits.float().flatten(0, 1), y_BW.flatten(),
                                                  reduction="none")
                flat = pos_BW.flatten().numpy()
                nll_N[flat] = nll.double().cpu().numpy()
                for j, layer in enumerate(layers):
                    assert layer.stats is not None  # set by the forward just run
                    indices_NLK[flat, j, :] = layer.stats.indices.cpu().numpy()
    finally:
        model.train(was_training)
    return Routed(nll_N=nll_N, indices_NLK=indices_NLK)


@torch.no_grad()
def sample(model: TransformerLM, prompt: torch.Tensor, *, new_bytes: int, temperature: float,
           seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``new_bytes`` bytes sampled after ``prompt`` (a 1-D byte tensor), reproducible by seed."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(prompt.long()[None].to(device), new_bytes, temperature=temperature,
                             generator=generator)
    finally:
        model.train(was_training)
    return out[0, prompt.numel():].cpu()


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="moekit-showcase-") as tmp:
        yield Path(tmp)


@dataclass(frozen=True)
class Trained:
    """A model after :func:`train_lm`, its step losses and its training times."""

    model: TransformerLM
    train_losses: list[float]
    wall_s: float
    cpu_s: float


def train_lm(model: TransformerLM, tokens: torch.Tensor, *, steps: int, batch_size: int,
             lr: float, warmup_steps: int, seed: int, device: str, name: str,
             log_to: Path | None = None, progress: IO[str] | None = None) -> Trained:
    """Train with :func:`moekit.train.train` on random windows of ``tokens`` drawn from ``seed``.

    Two models trained with the same ``seed``, ``steps`` and ``batch_size`` see exactly the
    same batches (:class:`moekit.train.TokenBatches` derives batch ``i`` from ``(seed, i)``).
    Checkpoints go to a scratch folder that is removed; the metrics (``metrics.jsonl``) are
    copied to ``log_to`` when given.
    """
    from moekit.train import TokenBatches, TrainConfig, train

    batches = TokenBatches(tokens, block_size=model.config.block_size, batch_size=batch_size,
                           seed=seed)
    wall, cpu = time.perf_counter(), time.process_time()
    with _scratch() as tmp:
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr,
                             warmup_steps=warmup_steps, eval_every=0, checkpoint_every=0,
                             keep_checkpoints=1, seed=seed, device=device,  # type: ignore[arg-type]
                             log_every=max(1, steps // 20), output_dir=str(tmp / "run"))
        result = train(model, batches, config, model_name=name,
                       progress=progress if progress is not None else io.StringIO())
        if log_to is not None:
            log_to.mkdir(parents=True, exist_ok=True)
            atomic_write_text(log_to / "metrics.jsonl",
                              (tmp / "run" / "metrics.jsonl").read_text(encoding="utf-8"))
    return Trained(model=model, train_losses=result.train_losses,
                   wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu)
