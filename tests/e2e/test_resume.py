"""Exact mid-epoch resume of the data order through Lightning checkpoints (in-process fits, the
data read by loader worker processes)."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from wgpt.data.datamodule import DatasetLightningWrapper
from wgpt.data.diskdataset import DiskDataset

from helpers_fit import SEQ_LEN, tiny_module, toy_bins
from record_batches import RecordBatches


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """helpers_fit's toy bins, made once for this module."""
    return toy_bins(tmp_path_factory.mktemp("toy"))


class StopAt(L.Callback):
    """Ends training after `step` steps, as an interruption would: the run's budget stays the same."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def fit(data_dir, out, max_steps, ckpt_path=None, ckpt_every=None, stop_at=None, micro=1, lightning_accumulates=False):
    """``micro``: an optimizer step's 8 windows as that many micro-batches, loaded as one batch, or
    (``lightning_accumulates``, as before wgpt loaded them so) as that many of Lightning's batches."""
    dm = DatasetLightningWrapper(
        {"toy": None},
        seq_len=SEQ_LEN,
        batch_size=8 // micro,
        num_workers=2,
        data_dir=data_dir,
        micro_batches=1 if lightning_accumulates else micro,
    )
    callbacks = [RecordBatches(out / "batches")]
    if ckpt_every:  # keeps every step-k checkpoint, as saved during training
        callbacks.append(ModelCheckpoint(out / "ckpt", "step-{step}", every_n_train_steps=ckpt_every, save_top_k=-1))
    if stop_at:
        callbacks.append(StopAt(stop_at))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=callbacks,
        enable_checkpointing=bool(ckpt_every),
        accumulate_grad_batches=micro if lightning_accumulates else 1,
    )
    trainer.fit(tiny_module(), datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def batches(out):
    return [json.loads(line) for line in open(out / "batches" / "rank0.jsonl")]


@pytest.mark.parametrize("micro", [1, 2], ids=["one batch a step", "two micro-batches a step"])
@pytest.mark.parametrize("stop_at", ["mid-epoch", "epoch boundary"])
def test_resumed_run_draws_the_batches_of_an_uninterrupted_one(toy_dir, tmp_path, stop_at, micro):
    batches_of = len(DiskDataset("toy", "train", SEQ_LEN, data_dir=toy_dir)) // (8 // micro)  # the sampler's, one rank
    per_epoch = -(-batches_of // micro)  # optimizer steps
    k = per_epoch // 2 if stop_at == "mid-epoch" else per_epoch
    n = per_epoch + k + 3  # ends inside a later epoch either way

    fit(toy_dir, tmp_path / "full", n, micro=micro)
    fit(toy_dir, tmp_path / "first", n, ckpt_every=k, stop_at=k, micro=micro)
    state = torch.load(tmp_path / "first" / "ckpt" / f"step-step={k}.ckpt", weights_only=True)["loops"]["fit_loop"]
    (position,) = state["state_dict"]["combined_loader"]
    # Positions count the sampler's batches, whatever a step holds.
    steps = min(k * micro, batches_of)
    assert position == {
        "seed": 0,
        "epoch": 0,
        "steps": steps,
        "batch_size": 8 // micro,
        "world_size": 1,
        "trainer_epoch": 0,
    }
    resumed_from = tmp_path / "first" / "ckpt" / f"step-step={k}.ckpt"
    fit(toy_dir, tmp_path / "resumed", n, ckpt_path=resumed_from, micro=micro)

    full, first, resumed = batches(tmp_path / "full"), batches(tmp_path / "first"), batches(tmp_path / "resumed")
    assert [b["step"] for b in resumed] == list(range(k, n))
    assert first + resumed == full
    assert resumed[0]["epoch"] == (0 if stop_at == "mid-epoch" else 1) and resumed[-1]["epoch"] >= 1


def test_a_checkpoint_of_lightnings_own_accumulation_resumes_with_a_step_a_batch(toy_dir, tmp_path):
    batches_of = len(DiskDataset("toy", "train", SEQ_LEN, data_dir=toy_dir)) // 4
    k = -(-batches_of // 2) // 2  # mid-epoch, in optimizer steps of 2 micro-batches of 4
    n = k + 4
    fit(toy_dir, tmp_path / "full", n, micro=2)
    fit(toy_dir, tmp_path / "first", n, ckpt_every=k, stop_at=k, micro=2, lightning_accumulates=True)
    fit(toy_dir, tmp_path / "resumed", n, ckpt_path=tmp_path / "first" / "ckpt" / f"step-step={k}.ckpt", micro=2)

    def windows(out):  # the first 8 tokens of each window, in the order trained
        found = []
        for batch in batches(out):
            for row in batch["windows"]:  # a window's first 8 tokens, or a micro-batch's windows whole
                found += [w[:8] for w in row] if isinstance(row[0], list) else [row]
        return found

    resumed = batches(tmp_path / "resumed")
    assert [b["step"] for b in resumed] == list(range(k, n))  # Lightning resumed at the step, not 2k
    assert windows(tmp_path / "first") + windows(tmp_path / "resumed") == windows(tmp_path / "full")


def test_resuming_from_the_end_of_training_checkpoint_continues_the_data(toy_dir, tmp_path):
    """`recent` rewritten when training stops early (Ctrl-C, a stop callback): Lightning counts
    that epoch as done, but the data must still go on exactly where it stopped."""
    from wgpt.core.callbacks import RecentCheckpoint

    per_epoch = len(DiskDataset("toy", "train", SEQ_LEN, data_dir=toy_dir)) // 8
    k, n = per_epoch // 2, 2 * per_epoch + 3
    fit(toy_dir, tmp_path / "full", n)
    dm = DatasetLightningWrapper({"toy": None}, seq_len=SEQ_LEN, batch_size=8, num_workers=0, data_dir=toy_dir)
    first = L.Trainer(
        accelerator="cpu",
        max_steps=n,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[RecordBatches(tmp_path / "first" / "batches"), RecentCheckpoint(tmp_path / "ckpt", 1000), StopAt(k)],
    )
    first.fit(tiny_module(), datamodule=dm)
    fit(toy_dir, tmp_path / "resumed", n, ckpt_path=tmp_path / "ckpt" / "recent.ckpt")
    windows = lambda runs: [b["windows"] for b in runs]  # noqa: E731
    full, resumed = batches(tmp_path / "full"), batches(tmp_path / "resumed")
    assert windows(batches(tmp_path / "first")) + windows(resumed) == windows(full)[: k + len(resumed)]
    assert len(resumed) >= per_epoch  # it went on past the data's epoch boundary
