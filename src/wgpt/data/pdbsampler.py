"""PDBSampler: the Proportional Distributed Batch Sampler.

Yields batches of indices into ``ConcatDataset(datasets)``. Every batch comes from one dataset,
chosen at random in proportion to the datasets' sizes (or to explicit mixture weights), and
every rank gets disjoint samples and the same number of batches (an unequal count would hang
DDP). The order is a pure function of (seed, epoch), so a run can resume at any step.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler

from wgpt.util.errors import WgptError


class PDBSampler(Sampler[list[int]]):
    """Batch sampler over several datasets for one rank of a ``world_size``-process run.

    An epoch has, per rank, ``sum(len(d) // (batch_size * world_size))`` batches: each dataset's
    samples shuffled and dealt round-robin to the ranks, remainders dropped so all ranks match.
    Each step draws its dataset, the same one on every rank, so that every dataset is used up
    exactly at the epoch's end (proportional to size). With ``weights``, each step draws its
    dataset with those probabilities instead, cycling a dataset reshuffled when it runs out.
    With ``proportional_sampling=False`` it is a plain distributed batch sampler over the
    concatenation (batches may then mix datasets).

    ``set_epoch`` picks the epoch; ``state_dict``/``load_state_dict`` carry (seed, epoch, steps
    done), the same on every rank, so a resumed run draws the batches an uninterrupted one would.
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
        weights: Sequence[float] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.sizes = [len(d) for d in datasets]
        self.offsets = np.cumsum([0, *self.sizes[:-1]]).tolist()
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.shuffle, self.proportional_sampling, self.seed = shuffle, proportional_sampling, seed
        self.step = batch_size * world_size  # samples one step consumes across all ranks
        if weights is not None and not proportional_sampling:
            raise ValueError("weights mix datasets batch by batch: they need proportional_sampling=True")
        if weights is not None:
            if len(weights) != len(self.sizes) or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"weights {list(weights)} must be one non-negative number per dataset, not all 0")
            self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        else:
            self.weights = None
        counts = [size // self.step for size in self.sizes] if proportional_sampling else [sum(self.sizes) // self.step]
        self.batches_per_dataset = counts
        if sum(counts) == 0 or (
            self.weights is not None and any(c == 0 for c, w in zip(counts, self.weights) if w > 0)
        ):
            raise ValueError(
                f"datasets of {self.sizes} windows hold too few for batches of {batch_size} on {world_size} rank(s): "
                "lower data.batch_size or add data"
            )
        self.epoch = 0
        self.resume_step = 0  # steps of `epoch` already done: the next iterator skips them

    def __len__(self) -> int:
        return sum(self.batches_per_dataset)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.resume_step = epoch, 0

    def state_dict(self, steps: int) -> dict[str, int]:
        """The position after ``steps`` batches of the current epoch (the same on every rank)."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "steps": steps,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = (state.get("batch_size", self.batch_size), state.get("world_size", self.world_size))
        if saved != (self.batch_size, self.world_size):
            raise WgptError(
                f"the checkpoint's data position is for data.batch_size={saved[0]} on {saved[1]} device(s), "
                f"this run has {self.batch_size} on {self.world_size}: resume with that batch size and device count "
                "(trainer.devices x trainer.num_nodes)"
            )
        self.seed, self.epoch, self.resume_step = state["seed"], state["epoch"], state["steps"]
        if self.resume_step >= len(self):  # saved on an epoch's last batch: resume at the next epoch
            self.epoch, self.resume_step = self.epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        start, self.resume_step = self.resume_step, 0
        batches = self._epoch_batches()
        for _ in range(start):
            next(batches)
        yield from batches

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *stream])

    def _order(self, n: int, *stream: int) -> np.ndarray:
        """0..n-1, shuffled: int32 while it fits (half the memory of int64 for big corpora)."""
        indices = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        if self.shuffle:
            self._rng(*stream).shuffle(indices)
        return indices

    def _rank_batches(self, indices: np.ndarray, offset: int = 0) -> Iterator[list[int]]:
        """This rank's share of ``indices`` as full batches (rank r takes every world_size-th),
        made into Python lists one batch at a time."""
        used = indices[: len(indices) // self.step * self.step]
        for batch in used[self.rank :: self.world_size].reshape(-1, self.batch_size):
            yield (batch.astype(np.int64) + offset).tolist()

    def _epoch_batches(self) -> Iterator[list[int]]:
        if not self.proportional_sampling:
            yield from self._rank_batches(self._order(sum(self.sizes), 0))
            return
        # The dataset of each step: the same sequence on every rank (it depends on seed and epoch only).
        if self.weights is None:
            sources = np.repeat(np.arange(len(self.sizes)), self.batches_per_dataset)
            if self.shuffle:
                self._rng(len(self.sizes)).shuffle(sources)
        else:
            sources = self._rng(len(self.sizes)).choice(len(self.sizes), size=len(self), p=self.weights)
        streams = [self._dataset_batches(d) for d in range(len(self.sizes))]
        for source in sources.tolist():
            yield next(streams[source])

    def _dataset_batches(self, d: int) -> Iterator[list[int]]:
        """Dataset ``d``'s batches for this rank, reshuffled each time they run out (weights only)."""
        cycle = 0
        while True:
            yield from self._rank_batches(self._order(self.sizes[d], d, cycle), self.offsets[d])
            cycle += 1


class StepBatches:
    """A batch sampler's batches ``k`` at a time: the micro-batches of one optimizer step, loaded,
    handed over by a worker and moved to the device as one batch (``DatasetLightningWrapper``'s
    ``micro_batches``), so that Lightning's loop and its hooks run once per step, not once per
    micro-batch. Yields lists of ``k`` batches (fewer at an epoch's end); the data order is the
    wrapped sampler's. Positions in checkpoints stay in the wrapped sampler's batches."""

    def __init__(self, sampler: PDBSampler, k: int):
        self.sampler, self.k = sampler, k

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.k)

    def __iter__(self) -> Iterator[list[list[int]]]:
        step = []
        for batch in self.sampler:
            step.append(batch)
            if len(step) == self.k:
                yield step
                step = []
        if step:
            yield step

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self, steps: int) -> dict[str, int]:
        """The wrapped sampler's position after ``steps`` of these batches."""
        return self.sampler.state_dict(min(steps * self.k, len(self.sampler)))

    def load_state_dict(self, state: dict[str, int]) -> None:
        position = state.get("steps", 0)
        if position % self.k and position < len(self.sampler):
            # Lightning counts batches of steps: a position within a step could not be saved again.
            raise WgptError(
                f"the checkpoint's data position ({position} batches into its epoch) is not a whole number of "
                f"steps of trainer.accumulate_grad_batches={self.k}: resume with the accumulation it was saved with"
            )
        self.sampler.load_state_dict(state)
