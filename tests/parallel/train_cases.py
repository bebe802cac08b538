"""Training runs for the distributed-training tests (imported by the spawned processes)."""

from __future__ import annotations

import os
from typing import Any

import torch

from moekit.models import TransformerLM, TransformerLMConfig
from moekit.train import TokenBatches, TrainConfig, seed_everything, train

VOCAB = 17


def token_ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.arange(3000) % VOCAB
    noise = torch.randint(0, VOCAB, (3000,), generator=g)
    return torch.where(torch.rand(3000, generator=g) < 0.8, base, noise)


def model_config() -> TransformerLMConfig:
    # sigmoid_bias with an aux loss too: the bias step, the global aux loss and the clipping
    # norm all have to agree with one process.
    return TransformerLMConfig.create(vocab_size=VOCAB, block_size=8, d_model=16, n_layers=2,
                                      n_heads=2, d_ff=16, num_experts=4, top_k=2,
                                      router="sigmoid_bias", aux_loss_weight=0.01)


def run(output: str, steps: int, *, resume: bool = False, distributed: Any = None) -> list[float]:
    ids = token_ids()
    seed_everything(0)
    model = TransformerLM(model_config())
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup_steps=2, eval_every=2,
                         eval_batches=2, checkpoint_every=2, log_every=1, seed=0, device="cpu",
                         grad_clip=0.05, output_dir=output)
    with open(os.devnull, "w") as quiet:
        result = train(model, TokenBatches(ids[:2500], block_size=8, batch_size=4, seed=0),
                       config, val_data=TokenBatches(ids[2500:], block_size=8, batch_size=4, seed=1),
                       resume=resume, model_name="moe", distributed=distributed, progress=quiet)
    return result.train_losses


def ranks(rank: int, world: int, jobs: list[tuple[str, int, bool]]) -> list[list[float]]:
    """Run each (output folder, steps, resume) job as one rank of a ``world``-rank run."""
    from moekit.train.distributed import DistributedTraining

    out = []
    for folder, steps, resume in jobs:
        out.append(run(folder, steps, resume=resume, distributed=DistributedTraining()))
    return out
