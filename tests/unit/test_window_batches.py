"""A batch of wgpt's loaders: one (batch, seq_len + 1) int32 tensor of token windows, read a batch
at a time (WindowBatches), split into int64 inputs and targets on the device by the module. The
same loaders with worker processes: tests/e2e/test_diskdataset_workers.py."""

import numpy as np
import pytest
import torch

from wgpt.data.datamodule import WindowBatches
from wgpt.data.diskdataset import DiskDataset
from wgpt.lightning.steps import count_batches_as
from wgpt.util.errors import WgptError

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


def test_a_steps_micro_batches_come_as_one_batch_in_the_samplers_order(toy_dir):
    single, stepped = datamodule(toy_dir, batch_size=2), datamodule(toy_dir, batch_size=2, micro_batches=3)
    for data in (single, stepped):
        data.setup("fit")
    batches = [b.numpy() for b in single.train_dataloader()]
    steps = [s.numpy() for s in stepped.train_dataloader()]
    assert len(steps) == -(-len(batches) // 3) == len(stepped.train_dataloader())
    assert steps[0].shape == (3, 2, SEQ_LEN + 1)
    np.testing.assert_array_equal(np.concatenate([s.reshape(-1, SEQ_LEN + 1) for s in steps]), np.concatenate(batches))
    inputs, targets = stepped.on_after_batch_transfer(torch.from_numpy(steps[0]), dataloader_idx=0)
    assert inputs.shape == targets.shape == (3, 2, SEQ_LEN) and torch.equal(inputs[..., 1:], targets[..., :-1])


def test_a_step_position_is_saved_in_the_samplers_batches(toy_dir):
    data = datamodule(toy_dir, batch_size=2, micro_batches=3)
    data.setup("fit")
    sampler = data.train_dataloader().batch_sampler
    assert sampler.state_dict(2)["steps"] == 6  # two steps of three micro-batches
    assert sampler.state_dict(10**6)["steps"] == len(sampler.sampler)  # the epoch's last, shorter step
    resumed = datamodule(toy_dir, batch_size=2, micro_batches=3)
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    loader.batch_sampler.load_state_dict(sampler.state_dict(1))
    first = next(iter(loader.batch_sampler))
    assert first == [b for _, b in zip(range(6), iter(sampler.sampler))][3:]


def test_a_checkpoint_counting_micro_batches_is_read_in_steps():
    # Saved by Lightning's own accumulation of 4 after the 9th step's end: 34 micro-batches, the
    # epoch's last step (of 2) at batch 33, completed one behind processed (saved inside the batch's end).
    progress = {
        "total": {"ready": 34, "started": 34, "processed": 34, "completed": 33},
        "current": {"ready": 10, "started": 10, "processed": 10, "completed": 9},
    }
    checkpoint = {"global_step": 9, "loops": {"fit_loop": {"epoch_loop.batch_progress": progress}}}
    count_batches_as(checkpoint, 4)
    assert progress["total"] == {"ready": 9, "started": 9, "processed": 9, "completed": 8}
    assert progress["current"] == {"ready": 3, "started": 3, "processed": 3, "completed": 2}
    unchanged = {"micro_batches_per_batch": 4, "global_step": 9, "loops": {"fit_loop": {}}}
    count_batches_as(unchanged, 4)
    assert unchanged["loops"] == {"fit_loop": {}}


def test_a_position_within_a_step_is_refused_in_one_line(toy_dir):
    data = datamodule(toy_dir, batch_size=2, micro_batches=3)
    data.setup("fit")
    sampler = data.train_dataloader().batch_sampler
    with pytest.raises(WgptError, match=r"position \(4 batches into its epoch\) is not a whole number of steps of "):
        sampler.load_state_dict(sampler.sampler.state_dict(4))
    sampler.load_state_dict(sampler.sampler.state_dict(6))  # two steps of three: fine


def test_lightning_accumulating_step_batches_too_is_refused(toy_dir):
    module = tiny_module()
    run = trainer(max_steps=2, limit_val_batches=0, accumulate_grad_batches=2)
    with pytest.raises(WgptError, match="loads 3 micro-batches per step and Lightning accumulates 2 batches too"):
        run.fit(module, datamodule=datamodule(toy_dir, batch_size=2, micro_batches=3))
