"""Lightning callbacks and plugins for wgpt runs: checkpoint rules and the end-of-run validation."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from wgpt.sweep import write_run_summary

log = logging.getLogger("wgpt")


class RecentCheckpoint(ModelCheckpoint):
    """``recent.ckpt``: the latest state, overwritten every ``every_n_train_steps`` and at the end."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 500, filename: str = "recent"):
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            every_n_train_steps=every_n_train_steps,
            save_top_k=1,
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Saved again even at a step already saved: the final validation may have updated
        # the best metrics stored in the checkpoint.
        self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))


class BestCheckpoint(ModelCheckpoint):
    """``best-<start datetime>.ckpt``: the state with the lowest validation loss, saved after each validation."""

    def __init__(self, dirpath: str | Path, start_datetime: str, monitor: str = "val_loss"):
        super().__init__(
            dirpath=dirpath,
            filename=f"best-{start_datetime}",
            monitor=monitor,
            mode="min",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )


class ValidateAtEnd(Callback):
    """Validate after the last training step too, so every run ends with a measured (and saved) state.

    Lightning validates every ``val_check_interval`` batches but not when ``max_steps`` or
    ``max_epochs`` ends training between two checks. Flagging ``should_stop`` on the last step
    makes Lightning's own loop run that validation before stopping.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        last_step = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        last_batch = (
            trainer.max_epochs is not None
            and trainer.max_epochs >= 0  # -1: no epoch limit
            and trainer.current_epoch >= trainer.max_epochs - 1
            and batch_idx + 1 >= trainer.num_training_batches
        )
        if last_step or last_batch:
            trainer.should_stop = True


class RunSummary(Callback):
    """Writes how the run ended to ``summary.json`` in its dir: status (completed, interrupted,
    failed, with the error), steps, final and best validation loss. Sweep tables read it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def _write(self, trainer: L.Trainer, pl_module, **fields) -> None:
        best = pl_module.best
        write_run_summary(
            self.run_dir, global_step=trainer.global_step, final_val_loss=pl_module.last_val_loss,
            best_val_loss=best["val_loss"], best_step=best["step"], **fields,
        )  # fmt: skip

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._write(trainer, pl_module, status="completed")

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            if trainer.is_global_zero:
                self._write(trainer, pl_module, status="interrupted")
            return
        error = (str(exception).strip().splitlines() or [type(exception).__name__])[-1]
        if trainer.is_global_zero:
            self._write(trainer, pl_module, status="failed", error=error)
        else:  # into the run's log: rank 0 may only see its peer vanish
            log.error("Training failed: %s", error)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it into place: a kill mid-save
    never leaves a torn ``recent.ckpt``, the previous one stays readable."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
