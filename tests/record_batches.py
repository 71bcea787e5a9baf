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


class KillWhen(L.Callback):
    """SIGKILLs this process (and its group, loader workers included, when it leads one, as a
    preemption kills a job) at the first ``moment`` at or after optimizer step ``step``, both read
    from ``$WGPT_TEST_KILL`` ("<step>:<moment>"; unset: never): "step" (before training the next
    one), "validation" (in the middle of one) or "save" (while a checkpoint is being made, before its
    file is written). From the environment, so that the killed launches and the one that finishes
    have the same overrides, as a restarted job has: resume=auto continues only such a run."""

    def __init__(self):
        kill = os.environ.get("WGPT_TEST_KILL")
        step, self.moment = kill.split(":") if kill else ("0", None)
        self.step = int(step)

    def _kill(self, trainer, moment: str) -> None:
        if moment == self.moment and trainer.global_step >= self.step:
            if os.getsid(0) == os.getpid():
                os.killpg(os.getpgrp(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._kill(trainer, "step")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._kill(trainer, "validation")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._kill(trainer, "save")
