"""Tokenizer, token bins on disk, the batch sampler and the Lightning datamodule."""

from wgpt.data.datamodule import DatasetLightningWrapper
from wgpt.data.diskdataset import DiskDataset, generate_bin
from wgpt.data.pdbsampler import PDBSampler
from wgpt.data.splits import get_splits
from wgpt.data.tokenizer import Tokenizer

__all__ = ["DatasetLightningWrapper", "DiskDataset", "PDBSampler", "Tokenizer", "generate_bin", "get_splits"]
