"""DatasetLightningWrapper: prepared token bins -> train/validation/test DataLoaders."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable, Mapping

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from wgpt.data.diskdataset import DiskDataset, bin_path, check_bin, generate_bin
from wgpt.data.pdbsampler import PDBSampler
from wgpt.data.splits import SPLITS, get_splits
from wgpt.data.tokenizer import Tokenizer, tokenizer_fingerprint
from wgpt.errors import WgptError

log = logging.getLogger(__name__)


class DatasetLightningWrapper(L.LightningDataModule):
    """Serves one or several prepared datasets (``get_splits`` of each) to Lightning.

    Args:
        datasets: ``{name: load}``. ``load()`` returns a ``datasets.DatasetDict`` with the
            train/validation/test splits; ``prepare_data`` tokenizes it into bins on first use
            (once per node). ``load=None`` marks a dataset that must already be prepared.
        seq_len: tokens per training window.
        batch_size: windows per batch on each device.
        sampler: a partial ``PDBSampler`` (from config) completed here with the train splits,
            the batch size and this process's rank and world size.

    The seed's ``DatasetLightningWrapper(splits, ...)`` took ready-made splits; under Hydra it
    takes the dataset recipes and builds the splits in ``setup``, after ``prepare_data``. The
    seed's per-epoch reshuffle lives in the sampler's ``set_epoch``.
    """

    def __init__(
        self,
        datasets: Mapping[str, Callable | None],
        seq_len: int,
        batch_size: int = 32,
        num_workers: int = 4,
        stride_ratio: float = 0.5,
        data_dir: str | Path | None = None,
        sampler: Callable[..., PDBSampler] | None = None,
    ):
        super().__init__()
        if not datasets:
            raise WgptError("data.datasets is empty: name at least one dataset")
        self.datasets = dict(datasets)
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.stride_ratio, self.data_dir = stride_ratio, data_dir
        self.sampler = sampler or PDBSampler
        self.splits: dict[str, dict[str, DiskDataset]] = {}

    def is_prepared(self, name: str) -> bool:
        """Every split has a finished, intact bin made by this tokenizer."""
        try:
            for split in SPLITS:
                check_bin(bin_path(name, split, self.data_dir), tokenizer_fingerprint())
        except WgptError:
            return False
        return True

    def prepare_data(self) -> None:
        tokenizer = None
        for name, load in self.datasets.items():
            if self.is_prepared(name):
                continue
            if load is None:
                raise WgptError(
                    f"dataset '{name}' is not prepared under {Path(bin_path(name, 'train', self.data_dir)).parent}: "
                    "prepare it first"
                )
            log.info("Preparing dataset '%s' (first use) under %s", name, bin_path(name, "train", self.data_dir).parent)
            tokenizer = tokenizer or Tokenizer()
            splits = load()
            for split in SPLITS:
                info = generate_bin(name, split, splits[split], tokenizer, self.data_dir, source=_describe(load))
                log.info("  %s/%s: %d documents, %d tokens", name, split, info.num_documents, info.num_tokens)

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = {
                name: get_splits(name, self.seq_len, self.stride_ratio, self.data_dir) for name in self.datasets
            }

    @property
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        train = [splits["train"] for splits in self.splits.values()]
        world_size, rank = self._world
        sampler = self.sampler(datasets=train, batch_size=self.batch_size, world_size=world_size, rank=rank)
        return self._loader(ConcatDataset(train), batch_sampler=sampler)

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        world_size, rank = self._world
        loaders = []
        for splits in self.splits.values():
            dataset = splits[split]
            # Sharded in order under DDP; Lightning's own sampler injection is off (our batch sampler).
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=False) if world_size > 1 else None
            loaders.append(self._loader(dataset, batch_size=self.batch_size, sampler=sampler))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("validation")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")


def _describe(load: Callable) -> str:
    if isinstance(load, functools.partial):
        args = ", ".join(f"{k}={v!r}" for k, v in load.keywords.items())
        return f"{load.func.__module__}.{load.func.__qualname__}({args})"
    return f"{getattr(load, '__module__', '')}.{getattr(load, '__qualname__', repr(load))}"
