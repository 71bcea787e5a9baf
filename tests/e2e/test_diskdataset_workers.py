"""DiskDataset in a DataLoader's worker processes: it pickles without its memmap and reads the same
windows. The rest of DiskDataset: tests/unit/test_diskdataset.py."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wgpt.data.datamodule import WindowBatches, WindowLoader
from wgpt.data.diskdataset import DiskDataset
from wgpt.tokenizers.r50k import Tokenizer

from helpers_diskdataset import toy_bins


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture
def toy(tmp_path, tok):
    """A 'toy' dataset with all three splits, and its expected token stream."""
    return toy_bins(tmp_path, tok)


def test_pickles_without_the_memmap_for_worker_processes(toy):
    data_dir, expected = toy
    ds = DiskDataset("toy", "train", 8, data_dir=data_dir)
    ds[0]  # opens the file
    assert ds._fd is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._fd is None
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    xs = torch.cat([x for x, _ in loader])
    assert xs.shape == (len(ds), 8)
    np.testing.assert_array_equal(xs[3].numpy(), expected[12:20])


def test_worker_batches_arrive_as_int32_windows_in_the_samplers_order(toy):
    data_dir, _ = toy
    dataset = DiskDataset("toy", "train", 8, data_dir=data_dir)
    batches = [[3, 1, 4], [1, 5, 9], [2, 6, 5], [3, 5, 8]]
    loader = WindowLoader(WindowBatches([dataset]), batch_sampler=batches, num_workers=2)
    received = list(loader)
    assert all(w.dtype == torch.int32 and w.shape == (3, 9) for w in received)
    for windows, indices in zip(received, batches, strict=True):
        np.testing.assert_array_equal(windows.numpy(), dataset.windows(indices))
