"""The train/validation/test DiskDatasets of one prepared dataset."""

from __future__ import annotations

from pathlib import Path

from wgpt.data.diskdataset import DiskDataset
from wgpt.tokenizers.base import TokenizerBase

SPLITS = ("train", "validation", "test")


def get_splits(
    dataset_name: str,
    seq_len: int,
    stride_ratio: float = 0.5,
    data_dir: str | Path | None = None,
    tokenizer: TokenizerBase | None = None,
) -> dict[str, DiskDataset]:
    """``{"train": DiskDataset, "validation": DiskDataset, "test": DiskDataset}`` for ``dataset_name``
    (its bins made by ``tokenizer``; None: the default r50k)."""
    return {split: DiskDataset(dataset_name, split, seq_len, stride_ratio, data_dir, tokenizer) for split in SPLITS}
