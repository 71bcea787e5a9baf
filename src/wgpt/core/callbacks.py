"""The ``callbacks`` config group: checkpoint rules, the end-of-run validation, the run summary,
the training speed report (``wgpt.core.speed``), and the FSDP stop vote (the group's progress bar
is in ``wgpt.core.progress``)."""

from __future__ import annotations

import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from wgpt.core.record import finish_run_record
from wgpt.core.speed import SpeedMonitor, peak_memory_gib, trained_amount  # noqa: F401  (conf names SpeedMonitor here)
from wgpt.core.summary import write_run_summary
from wgpt.core.target import TargetReached
from wgpt.interop.checkpoint import SafeCheckpointIO, write_weights_beside


class ShardedStop(Callback):
    """Ctrl-C and SIGTERM under FSDP: every rank stops after the same optimizer step and saves
    ``recent.ckpt``.

    A sharded checkpoint is gathered from every rank, so no rank can save alone (rank 0 does under
    DDP). Lightning's own SIGTERM handling raises on a rank that got the signal at the end of its
    batch, unsynchronized, which under FSDP leaves the other ranks waiting in a collective forever.
    So here the signals only raise a flag, and after each optimizer step the ranks agree on it
    (one all-reduce of one number, any rank's signal stopping all; acted on one step later, so
    that the host never waits for the GPU): Ctrl-C, which only rank 0
    handles (wgpt.core.train), and SIGTERM, which a scheduler sends to every rank. A second Ctrl-C
    stops at once, unsaved.
    """

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._vote: tuple[torch.Tensor, Any] | None = None  # the latest step's (result, its copy's event)

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def request(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            if not self.requested:
                what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                log.info(
                    "%s: every rank stops after the next optimizer step and saves recent.ckpt%s",
                    what,
                    " (Ctrl-C again: stop now, unsaved)" if signum == signal.SIGINT else "",
                )
            self.requested = True

        signals = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
        self._previous = {s: signal.signal(s, request) for s in signals}  # over Lightning's SIGTERM handler

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.fit_loop._should_accumulate():  # only between optimizer steps
            return
        # The ranks vote after each step and act on the previous step's result, which a GPU has
        # long delivered by now: reading this step's would make the host wait for the step to
        # finish, and stop it from queueing the next one meanwhile.
        if self._vote is not None:
            result, copied = self._vote
            if copied is not None:
                copied.synchronize()
            if result.item():
                raise SIGTERMException()  # on every rank at this step: Lightning's stop, then on_exception
        # A fill on the device: torch.tensor([...], device=...) would copy from the host and wait for the step.
        vote = torch.full((1,), float(self.requested), device=trainer.strategy.root_device)
        torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX)
        if vote.device.type == "cuda":
            result = torch.empty(1, pin_memory=True).copy_(vote, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            self._vote = result, copied
        else:
            self._vote = vote, None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._vote = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.global_step == 0:
            return

        recent = next((c for c in trainer.callbacks if isinstance(c, RecentCheckpoint)), None)
        if recent is not None:
            path = recent.format_checkpoint_name(recent._monitor_candidates(trainer))
            trainer.save_checkpoint(path)  # collective: every rank is here, after the same step
            if trainer.is_global_zero:
                log.info("Stopped at step %d: saved %s", trainer.global_step, path)


log = logging.getLogger("wgpt")

# How a run is stopped from outside: Ctrl-C, or SIGTERM (a scheduler's preemption or time limit),
# which Lightning turns into SIGTERMException at the next step, on every rank at once.
STOPPED = (KeyboardInterrupt, SIGTERMException)


def build_callbacks(
    callbacks_cfg: DictConfig, enable_progress_bar: bool = True, sharded: bool = False
) -> list[Callback]:
    """Instantiate the callbacks group. With ``trainer.enable_progress_bar=false`` its progress bar
    is left out: Lightning refuses a progress bar callback together with that flag. A callback
    switched off by its config (``active`` false: the target without a value) is left out too, as
    Lightning calls every callback's hooks after every micro-batch. A ``sharded`` (FSDP) run adds
    ShardedStop, its way to stop on a signal. A callback set to null (``callbacks.diagnostics=null``)
    is left out."""
    callbacks = [instantiate(c) for c in callbacks_cfg.values() if c is not None]
    callbacks = [c for c in callbacks if enable_progress_bar or not isinstance(c, ProgressBar)]
    callbacks = [c for c in callbacks if getattr(c, "active", True)]
    return callbacks + [ShardedStop()] if sharded else callbacks


class RecentCheckpoint(ModelCheckpoint):
    """``recent.ckpt``: the latest state, overwritten every ``every_n_train_steps``, at the end,
    and when Ctrl-C stops training. A step that validates saves after its validation, so the
    checkpoint holds it (its metrics logged, its best) and a run continued from it neither loses
    nor repeats it: Lightning skips, on resuming, a validation whose step was saved before it."""

    def __init__(
        self, dirpath: str | Path, every_n_train_steps: int = 500, filename: str = "recent", keep_previous: bool = True
    ):
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            every_n_train_steps=every_n_train_steps,
            save_top_k=1,
            enable_version_counter=False,
        )
        self._after_validation = -1  # the step whose save waits for its validation
        self.keep_previous = keep_previous

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        io = trainer.strategy.checkpoint_io
        if self.keep_previous and isinstance(io, SafeCheckpointIO):  # it keeps the file a write replaces
            io.keep_previous.add((Path(self.dirpath) / f"{self.filename}{self.FILE_EXTENSION}").resolve())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Lightning asks after every micro-batch, and ModelCheckpoint's own checks cost ~10 us of host
        # time each: only steps on the period (every_n_train_steps) can save.
        every = self._every_n_train_steps
        if every >= 1 and trainer.global_step % every == 0 and not trainer.fit_loop._should_accumulate():
            loop = trainer.fit_loop.epoch_loop  # the check Lightning makes right after this hook
            if loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
                self._after_validation = trainer.global_step
                return
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Saved again even at a step already saved: the final validation may have updated
        # the best metrics stored in the checkpoint.
        self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking and self._after_validation == trainer.global_step:
            self._after_validation = -1
            self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, STOPPED) or trainer.global_step == 0:
            return
        # Rank 0 writes alone, without the collective save: a Ctrl-C may have reached only it
        # (the other ranks ignore Ctrl-C and wait for it, see wgpt.core.train).
        # Sharded strategies (FSDP, DeepSpeed) need every rank to gather the state, so they keep
        # their last periodic save.
        if type(trainer.strategy) in (SingleDeviceStrategy, DDPStrategy) and trainer.is_global_zero:
            path = self.format_checkpoint_name(self._monitor_candidates(trainer))
            state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            if trainer.strategy.checkpoint_io.save_checkpoint(state, path) is not False:
                log.info("Interrupted at step %d: saved %s", trainer.global_step, path)


class BestCheckpoint(Callback):
    """``best-<start datetime>.ckpt``: the state with the lowest validation loss, rewritten after
    each validation that beats the best so far. "Best so far" is the module's ``best`` metrics,
    which a resumed run inherits from its checkpoint, so a resumed run only overwrites its best
    with a better one."""

    def __init__(self, dirpath: str | Path, start_datetime: str):
        self.path = Path(dirpath) / f"best-{start_datetime}.ckpt"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or pl_module.best["step"] != trainer.global_step:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state; on every rank: rank 0 writes

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Weights only, beside it (best-<start>.safetensors), for use elsewhere: wgpt.load_run,
        # eval.py, generate.py. Read from the file rank 0 wrote, as FSDP shards the live parameters.
        if trainer.is_global_zero and self.path.is_file():
            log.info("Best weights: %s", write_weights_beside(self.path))


class ValidateAtEnd(Callback):
    """Validate after the last training step too, so every run ends with a measured (and saved) state.

    Lightning validates every ``val_check_interval`` batches but not when ``max_steps`` or
    ``max_epochs`` ends training between two checks. Flagging ``should_stop`` on the last step
    makes Lightning's own loop run that validation before stopping.
    """

    def __init__(self):
        self._last_batch_idx = -1  # of this epoch, if it is the last epoch

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Also here: a run resumed in the middle of an epoch gets no on_train_epoch_start for it.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last_epoch = (
            trainer.max_epochs is not None
            and trainer.max_epochs >= 0  # -1: no epoch limit
            and trainer.current_epoch >= trainer.max_epochs - 1
        )
        self._last_batch_idx = trainer.num_training_batches - 1 if last_epoch else -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # After every micro-batch: what can be is worked out once an epoch.
        if batch_idx >= self._last_batch_idx >= 0 or 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class RunSummary(Callback):
    """Writes how the run ended to ``summary.json`` in its dir: status (completed; diverged: it
    trained its budget, but its last validation loss is not a number; interrupted; failed, with the
    error), steps, final and best validation loss and bits per byte (the best: those of the
    validation with the lowest loss), and the overrides it ran with. Sweep tables read it, and a
    resumed sweep keeps a job that finished.

    The overrides go into every checkpoint too: a resumed sweep continues a job's checkpoint only
    for the job that made it.
    """

    def __init__(self, run_dir: str | Path, resumed_from: str | None = None, overrides: list[str] | None = None):
        self.run_dir, self.resumed_from, self.overrides = Path(run_dir), resumed_from, overrides

    def _write(self, trainer: L.Trainer, pl_module, **fields) -> None:
        best = pl_module.best
        target = next((c for c in trainer.callbacks if isinstance(c, TargetReached)), None)
        if target is not None:
            fields["target"] = target.record()
        write_run_summary(
            self.run_dir,
            global_step=trainer.global_step,
            final_val_loss=pl_module.last_val_loss,
            final_val_bpb=getattr(pl_module, "last_val_bpb", math.nan),
            best_val_loss=best["val_loss"],
            best_val_bpb=best.get("val_bpb", math.nan),
            best_step=best["step"],
            resumed_from=self.resumed_from,
            **({"overrides": self.overrides} if self.overrides is not None else {}),
            **fields,
        )
        # After summary.json, which sweeps need: record.json's totals (wgpt.core.record).
        try:
            tokens, flops = trained_amount(trainer, pl_module, trainer.global_step)
            totals = {"global_step": trainer.global_step, "train_tokens": tokens, "train_flops": flops}
            finish_run_record(self.run_dir, status=fields.get("status"), **totals)
        except Exception as e:  # noqa: BLE001 (a record is worth less than the run's end)
            log.warning("Could not finish %s/record.json: %s", self.run_dir, e)

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        last = pl_module.last_val_loss
        if "val_loss" in trainer.callback_metrics and not math.isfinite(last):  # validated, to nan or inf
            best = pl_module.best
            before = f" (best {best['val_loss']:.4f} at step {best['step']})" if best["step"] >= 0 else ""
            error = f"diverged: the last validation loss is {last}{before}: lower optim.lr"
            self._write(trainer, pl_module, status="diverged", error=error)
        else:
            self._write(trainer, pl_module, status="completed")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.overrides is not None:
            checkpoint["overrides"] = list(self.overrides)
        # The latest validation too: a run resumed from its last checkpoint (killed before it wrote
        # summary.json) validates no more, and still has a final loss to report.
        checkpoint["last_validation"] = {
            "val_loss": float(pl_module.last_val_loss),
            "val_bpb": float(getattr(pl_module, "last_val_bpb", math.nan)),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        last = checkpoint.get("last_validation")
        if last is not None:
            pl_module.last_val_loss, pl_module.last_val_bpb = last["val_loss"], last["val_bpb"]

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, STOPPED):
            if trainer.is_global_zero:
                self._write(trainer, pl_module, status="interrupted")
            return
        error = (str(exception).strip().splitlines() or [type(exception).__name__])[-1]
        if trainer.is_global_zero:
            self._write(trainer, pl_module, status="failed", error=error)
        else:  # into the run's log: rank 0 may only see its peer vanish
            log.error("Training failed: %s", error)
