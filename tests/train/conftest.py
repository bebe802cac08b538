"""Tiny models and data shared by the training tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from moekit.models import TransformerLM, TransformerLMConfig
from moekit.train import TokenBatches, TrainConfig, seed_everything

VOCAB = 17


@pytest.fixture(scope="session")
def token_ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # A learnable stream: a noisy ramp, so the loss actually falls in a few steps.
    base = torch.arange(3000) % VOCAB
    noise = torch.randint(0, VOCAB, (3000,), generator=g)
    keep = torch.rand(3000, generator=g) < 0.8
    return torch.where(keep, base, noise)


def tiny_lm(router: str = "noisy_topk", seed: int = 0) -> TransformerLM:
    seed_everything(seed)
    return TransformerLM(TransformerLMConfig.create(
        vocab_size=VOCAB, block_size=8, d_model=16, n_layers=1, n_heads=2, d_ff=16,
        num_experts=4, top_k=1 if router == "switch" else 2, router=router,
    ))


@pytest.fixture
def make_run(tmp_path, token_ids) -> Callable[..., dict]:
    """Build (model, train data, val data, config) for a run in ``tmp_path / name``."""

    def make(name: str = "run", *, router: str = "noisy_topk", seed: int = 0, **overrides) -> dict:
        fields = dict(steps=8, batch_size=4, lr=1e-2, warmup_steps=2, eval_every=4, eval_batches=2,
                      checkpoint_every=4, log_every=2, seed=seed, device="cpu",
                      output_dir=str(tmp_path / name))
        fields.update(overrides)
        return {
            "model": tiny_lm(router, seed),
            "train_data": TokenBatches(token_ids[:2500], block_size=8, batch_size=4, seed=seed),
            "val_data": TokenBatches(token_ids[2500:], block_size=8, batch_size=4, seed=seed + 1),
            "config": TrainConfig(**fields),
        }

    return make


@pytest.fixture
def lm() -> Callable[..., TransformerLM]:
    """``lm(router="noisy_topk", seed=0)``: a fresh tiny language model."""
    return tiny_lm
