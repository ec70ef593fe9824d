"""The training data order: an endless seeded shuffle whose every position is a pure function of the seed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What the training sampler hands a dataset: which item, and a seed for its random choices."""

    index: int
    seed: int


class ResumableSampler(Sampler[SampleKey]):
    """An endless, seeded shuffle; position `p` of the global stream is a pure function of the seed.

    Process `rank` of `world` takes positions rank, rank + world, ...; resuming at `start` (a global
    position) continues the same stream, so a resumed run sees exactly the samples it would have.
    """

    def __init__(self, num_items: int, *, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if num_items < 1:
            raise ValueError("the training set is empty")
        self.num_items, self.seed, self.rank, self.world, self.start = num_items, seed, rank, world, start

    def _order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[SampleKey]:
        position = self.start + (self.rank - self.start) % self.world
        epoch, order = -1, None
        while True:
            if position // self.num_items != epoch:
                epoch = position // self.num_items
                order = self._order(epoch)
            index = int(order[position % self.num_items])
            yield SampleKey(index, (self.seed * 2_654_435_761 + position) % (2**63 - 1))
            position += self.world

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62
