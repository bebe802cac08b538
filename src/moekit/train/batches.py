"""Batches derived from ``(seed, index)`` alone, so a resumed run sees exactly the same data.

A batch source needs no iterator state: ``source.batch(i)`` always returns the same batch, so a
checkpoint only has to remember the step. Training uses ``batch(step)``; evaluation uses
``batch(0) ... batch(eval_batches - 1)`` of the validation source, the same batches every time.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class BatchSource(Protocol):
    """Anything with ``batch(index) -> (inputs, targets)``, deterministic in ``index``."""

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch number ``index``: always the same tensors for the same index."""
        ...


def _generator(seed: int, index: int) -> torch.Generator:
    # SeedSequence mixes (seed, index) into well-spread 64-bit seeds: neighbouring steps and
    # neighbouring seeds give unrelated streams.
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class TokenBatches:
    """Random windows of a token stream for next-token prediction.

    ``batch(i)`` returns inputs ``(batch_size, block_size)`` and targets shifted by one, from
    windows whose starts are drawn from a generator seeded by ``(seed, i)``.
    """

    def __init__(self, tokens: torch.Tensor, *, block_size: int, batch_size: int, seed: int) -> None:
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        for name, value in (("block_size", block_size), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if len(tokens) < block_size + 2:
            raise ValueError(f"{len(tokens)} tokens are too few for block_size={block_size}; "
                             "use more text or a smaller block_size")
        self.tokens = tokens.long()
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``(batch_size, block_size)``, int64."""
        g = _generator(self.seed, index)
        starts = torch.randint(0, len(self.tokens) - self.block_size - 1, (self.batch_size,),
                               generator=g)
        offsets = torch.arange(self.block_size)
        x = self.tokens[starts[:, None] + offsets]
        y = self.tokens[starts[:, None] + offsets + 1]
        return x, y


class ArrayBatches:
    """Mini-batches of ``(inputs, targets)`` arrays, reshuffled every epoch.

    Example ``j`` of batch ``i`` is position ``p = i * batch_size + j`` of an endless sequence of
    epochs; epoch ``p // n`` is a permutation seeded by ``(seed, epoch)`` (or the identity when
    ``shuffle=False``). Every example is seen once per epoch.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, *, batch_size: int, seed: int,
                 shuffle: bool = True) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
        if len(inputs) == 0:
            raise ValueError("inputs are empty; pass at least one example")
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            n = len(self.inputs)
            perm = torch.randperm(n, generator=_generator(self.seed, epoch)) if self.shuffle \
                else torch.arange(n)
            self._perm_cache[epoch] = perm
        return self._perm_cache[epoch]

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(batch_size, ...)`` and targets ``(batch_size, ...)``."""
        n = len(self.inputs)
        positions = index * self.batch_size + torch.arange(self.batch_size)
        rows = torch.empty(self.batch_size, dtype=torch.long)
        for epoch in torch.unique(positions // n).tolist():
            mask = positions // n == epoch
            rows[mask] = self._permutation(int(epoch))[positions[mask] % n]
        return self.inputs[rows], self.targets[rows]
