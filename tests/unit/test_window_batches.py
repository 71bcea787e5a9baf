"""A batch of wgpt's loaders: one (batch, seq_len + 1) int32 tensor of token windows, read a batch
at a time (WindowBatches), split into int64 inputs and targets on the device by the module. The
same loaders with worker processes: tests/e2e/test_diskdataset_workers.py."""

import numpy as np
import pytest
import torch

from wgpt.data.datamodule import WindowBatches
from wgpt.data.diskdataset import DiskDataset

from helpers_fit import SEQ_LEN, datamodule, tiny_module, toy_bins, trainer


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return toy_bins(tmp_path_factory.mktemp("toy"))


def test_windows_hold_each_items_inputs_and_targets(toy_dir):
    dataset = DiskDataset("toy", "train", SEQ_LEN, data_dir=toy_dir)
    dataset.shuffle_indices(seed=3)
    indices = [5, 0, len(dataset) - 1, -2]
    windows = dataset.windows(indices)
    assert windows.dtype == np.int32 and windows.shape == (4, SEQ_LEN + 1)
    for row, idx in zip(windows, indices):
        inputs, targets = dataset[idx]
        np.testing.assert_array_equal(row[:-1], inputs.numpy())
        np.testing.assert_array_equal(row[1:], targets.numpy())
    with pytest.raises(IndexError, match="out of range"):
        dataset.windows([len(dataset)])


def test_a_batch_straddling_two_datasets_reads_each_in_order(toy_dir):
    first = DiskDataset("toy", "train", SEQ_LEN, data_dir=toy_dir)
    second = DiskDataset("toy", "validation", SEQ_LEN, data_dir=toy_dir)
    both = WindowBatches([first, second])
    n = len(first)
    assert len(both) == n + len(second)
    expected = np.concatenate([first.windows([n - 2, n - 1]), second.windows([0, 1]), first.windows([0])])
    np.testing.assert_array_equal(both.__getitems__([n - 2, n - 1, n, n + 1, 0]), expected)
    np.testing.assert_array_equal(both[n + 1], second.windows([1])[0])


def test_loaders_yield_int32_windows_that_the_datamodule_splits_into_int64_views(toy_dir):
    data = datamodule(toy_dir, batch_size=3)
    data.setup("fit")
    train = next(iter(data.train_dataloader()))
    validation = next(iter(data.val_dataloader()[0]))
    for windows in (train, validation):
        assert windows.dtype == torch.int32 and windows.shape == (3, SEQ_LEN + 1)
    # Validation reads in order: its first batch is the first three windows.
    np.testing.assert_array_equal(validation.numpy(), data.splits["toy"]["validation"].windows([0, 1, 2]))
    inputs, targets = data.on_after_batch_transfer(train, dataloader_idx=0)
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == targets.shape == (3, SEQ_LEN)
    assert torch.equal(inputs, train[:, :-1].long()) and torch.equal(targets, train[:, 1:].long())


def test_a_fit_hands_the_modules_steps_input_and_target_pairs_without_a_warning(toy_dir, recwarn):
    seen = []

    class Recorder(type(tiny_module())):
        def training_step(self, batch, batch_idx):
            seen.append(batch)
            return super().training_step(batch, batch_idx)

    module = Recorder(tiny_module().model, learning_rate=1e-2)
    trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=datamodule(toy_dir, batch_size=3))
    assert len(seen) == 2
    for inputs, targets in seen:
        assert inputs.dtype == targets.dtype == torch.int64 and torch.equal(inputs[:, 1:], targets[:, :-1])
    assert not [w for w in recwarn if "on_after_batch_transfer" in str(w.message)]
