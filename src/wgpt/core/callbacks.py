"""The ``callbacks`` config group: checkpoint rules, the end-of-run validation, the run summary,
the training speed report, and the FSDP stop vote (the group's progress bar is in
``wgpt.core.progress``)."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from wgpt.core.devices import compute_dtype, largest_matmul, peak_flops
from wgpt.core.summary import write_run_summary
from wgpt.interop.checkpoint import write_weights_beside


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
    is left out: Lightning refuses a progress bar callback together with that flag. A ``sharded``
    (FSDP) run adds ShardedStop, its way to stop on a signal."""
    callbacks = [instantiate(c) for c in callbacks_cfg.values()]
    callbacks = [c for c in callbacks if enable_progress_bar or not isinstance(c, ProgressBar)]
    return callbacks + [ShardedStop()] if sharded else callbacks


class RecentCheckpoint(ModelCheckpoint):
    """``recent.ckpt``: the latest state, overwritten every ``every_n_train_steps``, at the end,
    and when Ctrl-C stops training."""

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

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # A save at this step came before this validation; if the validation set a new best,
        # rewrite it so that a run resumed from it knows that best.
        saved_now = self._last_global_step_saved == trainer.global_step
        if not trainer.sanity_checking and saved_now and pl_module.best["step"] == trainer.global_step:
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
            trainer.strategy.checkpoint_io.save_checkpoint(state, path)
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


class SpeedMonitor(Callback):
    """Training speed: ``tokens_per_sec``, ``samples_per_sec`` (all devices together), ``mfu``
    (model FLOPs utilisation of one device) and ``flops_per_sec`` (one device), each averaged
    over the steps since the previous logging step, validation time left out.

    Also ``peak_memory_gib``, the most memory training has held so far: allocated GPU memory
    (``torch.cuda.max_memory_allocated``), or on a CPU the process's peak resident set.

    Logged with the metrics every ``trainer.log_every_n_steps`` and shown in train.log's step
    lines (tokens/s and MFU in the progress bar too). MFU divides the model's FLOPs (the module's
    ``flops_per_batch``, counted by Lightning's ``measure_flops``) by the device's peak in the
    run's compute dtype: the datasheet figure for GPUs, a measured matmul rate for CPUs
    (``wgpt.core.devices.peak_flops``).

    Built on Lightning's ``Throughput`` rather than its ``ThroughputMonitor`` callback, which
    synchronizes the GPU after every micro-batch: this waits for the GPU once per logging step.
    """

    def __init__(self):
        self._throughput: Throughput | None = None  # rank 0's, once fitting
        self._counts = {"batches": 0, "samples": 0, "lengths": 0}  # since training started
        self._flops: int | None = 0  # since the last logging step; None: the module cannot count them
        self._start = 0.0  # when training started, moved on by each validation's duration
        self._validation_start: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            datamodule = trainer.datamodule
            rows = (
                getattr(datamodule, "batch_size", 0) * getattr(datamodule, "seq_len", 0) or 1024
            )  # tokens per micro-batch
            matmul = largest_matmul(getattr(pl_module, "model", pl_module), rows)
            peak = peak_flops(trainer.strategy.root_device, compute_dtype(str(trainer.precision)), matmul)
            self._throughput = Throughput(available_flops=peak, world_size=trainer.world_size, window_size=2)

    @staticmethod
    def _now(trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # kernels queued so far count as done by now
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._throughput is None:
            return
        self._throughput.reset()
        self._counts = dict.fromkeys(self._counts, 0)
        self._flops = 0 if hasattr(pl_module, "flops_per_batch") else None
        self._start = self._now(trainer)
        self._throughput.update(time=0.0, **self._counts, flops=self._flops)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self._throughput is None:
            return
        self._counts["batches"] += 1
        self._counts["samples"] += batch[0].size(0)
        self._counts["lengths"] += batch[0].numel()
        if self._flops is not None:
            self._flops += pl_module.flops_per_batch or 0
        every, step = trainer.log_every_n_steps, trainer.global_step
        if not every or step % every or trainer.fit_loop._should_accumulate():
            return
        self._throughput.update(time=self._now(trainer) - self._start, **self._counts, flops=self._flops)
        self._flops = 0 if self._flops is not None else None
        speed = {**self.speed(trainer.world_size), "peak_memory_gib": peak_memory_gib(trainer.strategy.root_device)}
        for name, value in speed.items():  # the progress bar shows tokens/s and MFU from callback_metrics
            pl_module.log(name, value, rank_zero_only=True)
        loss = trainer.callback_metrics.get("train_loss", torch.tensor(float("nan")))
        line = f"step {step} | epoch {trainer.current_epoch} | train_loss {loss:.4f} | lr {_lr(trainer):.2e}"
        line += f" | {speed['tokens_per_sec']:,.0f} tokens/s | {speed['samples_per_sec']:.1f} samples/s"
        if "mfu" in speed:
            line += f" | MFU {speed['mfu']:.1%}"
        line += f" | peak memory {speed['peak_memory_gib']:.2f} GiB"
        log.info(line)

    def speed(self, world_size: int) -> dict[str, float]:
        """Averages between the last two logging steps."""
        metrics = self._throughput.compute()
        every = "" if world_size > 1 else "device/"  # Lightning adds all-device totals only above 1
        names = {
            f"{every}items_per_sec": "tokens_per_sec",
            f"{every}samples_per_sec": "samples_per_sec",
            "device/mfu": "mfu",
            "device/flops_per_sec": "flops_per_sec",
        }
        return {name: float(metrics[key]) for key, name in names.items() if key in metrics}

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._throughput is not None and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._validation_start = self._now(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_start is not None:
            self._start += self._now(trainer) - self._validation_start
            self._validation_start = None


def peak_memory_gib(device: torch.device) -> float:
    """The most memory this process has held: allocated on a CUDA device, resident on the host."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource  # Unix only
    except ImportError:
        return math.nan
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 2**30


def _lr(trainer: L.Trainer) -> float:
    return trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
