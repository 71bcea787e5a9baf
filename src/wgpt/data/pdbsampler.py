"""PDBSampler: the Proportional Distributed Batch Sampler.

Yields batches of indices into ``ConcatDataset(datasets)``. Every batch comes from one
dataset, each dataset contributing batches in proportion to its size, and every rank gets
disjoint samples and the same number of batches (an unequal count would hang DDP).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler


class PDBSampler(Sampler[list[int]]):
    """Batch sampler over several datasets for one rank of a ``world_size``-process run.

    With ``proportional_sampling=False`` it is a plain distributed batch sampler over the
    concatenation (batches may then mix datasets). Order depends only on ``seed`` and the
    epoch set by ``set_epoch`` (ModelLightningWrapper calls it at every epoch start).
    Remainders that would leave ranks with unequal counts are dropped each epoch.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        batch_size: int,
        world_size: int,
        rank: int,
        shuffle: bool = True,
        proportional_sampling: bool = True,
        seed: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.sizes = [len(d) for d in datasets]
        self.offsets = np.cumsum([0, *self.sizes[:-1]])
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.shuffle, self.proportional_sampling, self.seed = shuffle, proportional_sampling, seed
        self.epoch = 0
        step = batch_size * world_size  # samples one optimizer step consumes across all ranks
        if proportional_sampling:
            self.batches_per_dataset = [size // step for size in self.sizes]
        else:
            self.batches_per_dataset = [sum(self.sizes) // step]
        if sum(self.batches_per_dataset) == 0:
            raise ValueError(
                f"datasets of sizes {self.sizes} hold no full batch of {batch_size} x {world_size} ranks: "
                "lower data.batch_size or add data"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.batches_per_dataset)

    def _rank_batches(self, indices: np.ndarray, num_batches: int) -> np.ndarray:
        """This rank's ``(num_batches, batch_size)`` share: rank r takes every world_size-th sample."""
        used = indices[: num_batches * self.batch_size * self.world_size]
        return used[self.rank :: self.world_size].reshape(num_batches, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = (lambda n: rng.permutation(n)) if self.shuffle else np.arange
        if not self.proportional_sampling:
            yield from self._rank_batches(order(sum(self.sizes)), len(self)).tolist()
            return
        per_dataset = [
            self._rank_batches(order(size) + offset, count)
            for size, offset, count in zip(self.sizes, self.offsets, self.batches_per_dataset)
        ]
        # Which dataset each step draws from: the same sequence on every rank (same seed).
        sources = np.repeat(np.arange(len(self.sizes)), self.batches_per_dataset)
        if self.shuffle:
            rng.shuffle(sources)
        cursor = [0] * len(self.sizes)
        for source in sources.tolist():
            yield per_dataset[source][cursor[source]].tolist()
            cursor[source] += 1
