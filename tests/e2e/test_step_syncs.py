"""The runner's own work per micro-batch, counted rather than timed: nothing turns a device tensor
into a Python number once per micro-batch (on a GPU, each such read waits for every queued
kernel), only at logging steps and validations; and the Python calls Lightning's loop and wgpt
make per micro-batch stay under a stated bound."""

import sys
from collections import Counter

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from wgpt.core.callbacks import SpeedMonitor, build_callbacks
from wgpt.core.diagnostics import LayerDiagnostics
from wgpt.core.guard import SkipGuard
from wgpt.core.profiler import NoProfiler
from wgpt.core.progress import ProgressBar

from conftest import ROOT
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


def step_trainer(run_dir, steps: int, callbacks: list) -> L.Trainer:
    """A CPU fit of ``steps`` optimizer steps, logging every 6 steps, with clipping, without
    validation; profiled as train.py profiles (not at all). As in train.py, a step's micro-batches
    come as one batch (the datamodule's ``micro_batches``) and Lightning does not accumulate."""
    return L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        log_every_n_steps=6,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_model_summary=False,
        use_distributed_sampler=False,
        gradient_clip_val=1.0,
        logger=CSVLogger(run_dir),
        callbacks=callbacks,
        profiler=NoProfiler(),
    )


def scalar_reads(
    tmp_path, data_dir, accumulate: int, diagnose_every: int | None = None, guard: bool = True, fused=None
) -> int:
    steps = 12
    run_dir = tmp_path / f"{accumulate}-{diagnose_every}-{guard}-{fused}"
    callbacks = [SpeedMonitor(), ProgressBar(), *([SkipGuard()] if guard else [])]
    if diagnose_every is not None:
        callbacks.append(LayerDiagnostics(run_dir, every_n_steps=diagnose_every))
    trainer = step_trainer(run_dir, steps, callbacks)
    reads = ScalarReads()
    with reads:
        trainer.fit(tiny_module(fused=fused), datamodule=datamodule(data_dir, batch_size=2, micro_batches=accumulate))
    assert trainer.global_step == steps
    assert {"train_loss", "tokens_per_sec", "mfu"} <= set(trainer.logged_metrics)
    return reads.calls["reads"]


def test_scalar_reads_happen_per_logging_step_not_per_micro_batch(tmp_path, toy_dir):
    one, four = scalar_reads(tmp_path, toy_dir, accumulate=1), scalar_reads(tmp_path, toy_dir, accumulate=4)
    assert one == four  # 12 or 48 micro-batches: the same reads, those of the 2 logging steps
    assert four < 24  # fewer than one per two of the 48 micro-batches


def test_the_guard_reads_only_on_logging_steps_on_the_device_route_and_once_a_step_on_the_host_route(tmp_path, toy_dir):
    # Fused AdamW (the default on CPU and CUDA) skips inside its kernel: the guard adds a read at
    # each of the 2 logging steps (skipped_steps, read with that step's other values, so nothing
    # new waits) and one at the end (the last steps' verdicts). A foreach AdamW needs the verdict
    # on the host: one read more per optimizer step (12 steps).
    on_logging_steps = 2 + 1
    without = scalar_reads(tmp_path, toy_dir, accumulate=1, guard=False)
    assert scalar_reads(tmp_path, toy_dir, accumulate=1) - without == on_logging_steps
    host = scalar_reads(tmp_path, toy_dir, accumulate=1, fused=False)
    assert host - scalar_reads(tmp_path, toy_dir, accumulate=1, guard=False, fused=False) == on_logging_steps + 12


def test_layer_diagnostics_read_nothing_on_the_steps_they_skip(tmp_path, toy_dir):
    plain = scalar_reads(tmp_path, toy_dir, accumulate=1)
    assert scalar_reads(tmp_path, toy_dir, accumulate=1, diagnose_every=1000) == plain  # no diagnosed step
    # Steps 6 and 12 diagnosed: their values come to the host in one read each (or none: tolist()).
    assert scalar_reads(tmp_path, toy_dir, accumulate=1, diagnose_every=6) <= plain + 2
    rows = (tmp_path / "1-6-True-None" / "diagnostics.csv").read_text().split()[1:]
    assert len({row.split(",")[0] for row in rows}) == 2


def default_callbacks(run_dir) -> list:
    """A run's callbacks as conf/callbacks/default.yaml makes them (each hook Lightning calls goes
    to every callback: their number counts)."""
    group = OmegaConf.load(ROOT / "conf" / "callbacks" / "default.yaml")
    for name in ("recent", "best"):
        group[name].dirpath = str(run_dir / "checkpoints")
    group.best.start_datetime = "2026-01-01_00-00-00"
    # Their integer checks counted, not a diagnosed step's work (4 x log_every_n_steps: step 24).
    group.diagnostics.dirpath, group.diagnostics.every_n_steps = str(run_dir), 1000
    return build_callbacks(group)


def python_calls(tmp_path, data_dir, steps: int, accumulate: int) -> Counter:
    """Python function calls made during a fit, by whose code makes them: Lightning's, wgpt's."""
    calls = Counter()
    owner = {"/lightning/": "lightning", "/wgpt/": "wgpt"}

    def count(frame, event, arg):
        if event == "call":
            name = frame.f_code.co_filename
            calls[next((who for part, who in owner.items() if part in name), "other")] += 1

    run_dir = tmp_path / f"{steps}-{accumulate}"
    trainer = step_trainer(run_dir, steps, default_callbacks(run_dir))
    module, data = tiny_module(), datamodule(data_dir, batch_size=2, micro_batches=accumulate)
    sys.setprofile(count)
    try:
        trainer.fit(module, datamodule=data)
    finally:
        sys.setprofile(None)
    assert trainer.global_step == steps
    return calls


# Python calls per micro-batch at accumulation 4 in Lightning's and wgpt's code (the loop, its
# hooks, wgpt's module and the default callbacks; the model's own forward and backward are
# torch's). Measured with lightning 2.6.6, 2026-12-02: Lightning 269, wgpt 42, with a step's four
# micro-batches loaded as one batch (Lightning's loop runs once per step; the backward of each
# micro-batch but the last, with its hooks, goes through Lightning's strategy from the module).
# Before that, when Lightning's own accumulation ran its loop per micro-batch: Lightning 556 (687
# before wgpt's NoProfiler), wgpt 64. At ~0.5-1 us a call on a CPU, each hundred is ~0.1 ms of
# host time per micro-batch, which a GPU step of a small model waits for (bench/host_cost.py
# measures it). 2026-12-03, with callbacks.guard and callbacks.diagnostics added to the group:
# Lightning 310, wgpt 52 (Lightning calls every callback's hooks, each through the profiler, ~20
# calls a step per callback whether it acts or not). Lower a bound when a change lowers the count.
CALLS_PER_MICRO_BATCH = {"lightning": 320, "wgpt": 56}


def test_python_calls_per_micro_batch_stay_under_their_bound(tmp_path, toy_dir):
    # Two fits of 12 and 24 steps: the difference is 48 micro-batches' worth, start-up excluded.
    short, long = (python_calls(tmp_path, toy_dir, steps, accumulate=4) for steps in (12, 24))
    per_micro_batch = {who: (long[who] - short[who]) / 48 for who in CALLS_PER_MICRO_BATCH}
    for who, bound in CALLS_PER_MICRO_BATCH.items():
        assert 0 < per_micro_batch[who] <= bound, f"{per_micro_batch}: {who}'s calls per micro-batch over {bound}"
