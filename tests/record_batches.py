"""A callback for tests: appends what each rank trains on, and with which settings, to <path>/rank<r>.jsonl."""

import json
import os
import signal
from pathlib import Path

import lightning as L


class RecordBatches(L.Callback):
    def __init__(self, path: str, fail_on_rank_1_at_lr: float | None = None):
        self.path = Path(path)
        self.fail_at_lr = fail_on_rank_1_at_lr  # makes rank 1 of the job with this learning rate crash

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.path.mkdir(parents=True, exist_ok=True)
        lr = trainer.optimizers[0].param_groups[0]["initial_lr"]  # the schedule's peak: optim.lr
        if trainer.global_rank == 1 and lr == self.fail_at_lr:
            raise RuntimeError("rank 1 fails on purpose")
        # A window's first 8 tokens identify it: windows start at distinct offsets of real text.
        windows = [row[:8].tolist() for row in batch[0]]
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "windows": windows,
            "lr": lr,
            "seed": os.environ.get("PL_GLOBAL_SEED"),
            "world_size": trainer.world_size,
        }
        with open(self.path / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


class KillAt(L.Callback):
    """SIGKILLs this process once training reaches ``step``: a crash, not an exception."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillWhen(L.Callback):
    """SIGKILLs this process's group (its loader workers too, as a preemption does) at the first
    ``moment`` at or after optimizer step ``step``: "step" (before training it), "validation" (in
    the middle of one) or "save" (while a checkpoint is being made, before its file is written)."""

    def __init__(self, step: int, moment: str):
        self.step, self.moment = step, moment

    def _kill(self, trainer, moment: str) -> None:
        if moment == self.moment and trainer.global_step >= self.step:
            os.killpg(os.getpgrp(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._kill(trainer, "step")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._kill(trainer, "validation")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._kill(trainer, "save")
