"""Nothing turns a device tensor into a Python number once per micro-batch (on a GPU, each such
read waits for every queued kernel): only at logging steps and validations."""

from collections import Counter

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils._python_dispatch import TorchDispatchMode

from wgpt.core.callbacks import SpeedMonitor
from wgpt.core.progress import ProgressBar

from helpers_fit import datamodule, tiny_module, toy_bins


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """helpers_fit's toy bins, made once for this module."""
    return toy_bins(tmp_path_factory.mktemp("toy"))


class ScalarReads(TorchDispatchMode):
    """Counts reads of a tensor's value into Python (``.item()``, ``float(t)``, ``bool(t)``...)."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.calls["reads"] += 1
        return func(*args, **(kwargs or {}))


def scalar_reads(tmp_path, data_dir, accumulate: int) -> int:
    steps, every = 12, 6
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        log_every_n_steps=every,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        gradient_clip_val=1.0,
        logger=CSVLogger(tmp_path / str(accumulate)),
        callbacks=[SpeedMonitor(), ProgressBar()],
    )
    reads = ScalarReads()
    with reads:
        trainer.fit(tiny_module(), datamodule=datamodule(data_dir, batch_size=2))
    assert trainer.global_step == steps
    assert {"train_loss", "tokens_per_sec", "mfu"} <= set(trainer.logged_metrics)
    return reads.calls["reads"]


def test_scalar_reads_happen_per_logging_step_not_per_micro_batch(tmp_path, toy_dir):
    one, four = scalar_reads(tmp_path, toy_dir, accumulate=1), scalar_reads(tmp_path, toy_dir, accumulate=4)
    assert one == four  # 12 or 48 micro-batches: the same reads, those of the 2 logging steps
    assert four < 24  # fewer than one per two of the 48 micro-batches
