"""The progress bar: epoch, optimizer step of the run's total, the batches this epoch will
really run, loss, last validation, tokens/s and MFU; log lines print above it."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBarTheme
from rich.console import Console

log = logging.getLogger("wgpt")


def batches_this_epoch(trainer: L.Trainer, done: int = 0) -> int | float:
    """Training batches the current epoch will run in all, ``done`` of them already: the epoch's
    length, or fewer where ``max_steps`` ends training first (a step is ``accumulate_grad_batches``
    batches; accumulation restarts with each epoch). ``inf`` for an endless loader without max_steps."""
    epoch = trainer.num_training_batches
    if trainer.max_steps is None or trainer.max_steps < 0:
        return epoch
    accumulate = trainer.accumulate_grad_batches
    steps_left = max(0, trainer.max_steps - trainer.global_step)  # counting a step in progress
    return min(epoch, done + steps_left * accumulate - done % accumulate)


# (logged metric, label in the bar, format)
SHOWN_METRICS = [
    ("train_loss", "loss", "{:.4f}"),
    ("val_loss", "val_loss", "{:.4f}"),
    ("val_bpb", "val_bpb", "{:.4f}"),
    ("tokens_per_sec", "tokens/s", "{:,.0f}"),
    ("mfu", "MFU", "{:.1%}"),
]


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, showing the epoch, ``step N/max`` (optimizer steps), the
    batches this epoch will actually run with their ETA, the loss, tokens/s and MFU.

    Lightning sizes the bar by the epoch's batches even when ``max_steps`` ends training long
    before the epoch ends (2,624 batches where 450 will run): here the total is what will run.
    Where the output is not a terminal (a pipe, CI) the bar turns itself off, and train.log's step
    lines, printed there too, show the progress. Log lines printed while the bar is live appear
    above it instead of through it. ``trainer.enable_progress_bar=false`` leaves it out (see
    ``wgpt.core.callbacks.build_callbacks``).
    """

    def __init__(self, refresh_rate: int = 4, leave: bool = False, console_kwargs: dict[str, Any] | None = None):
        theme = RichProgressBarTheme(metrics_text_delimiter=" | ")
        super().__init__(refresh_rate=refresh_rate, leave=leave, theme=theme, console_kwargs=dict(console_kwargs or {}))
        self._total_steps: int | None = None  # optimizer steps of the whole run, when known
        self._rerouted: dict[logging.StreamHandler, Any] = {}  # handler -> the stream it wrote to

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # off on ranks other than 0
        console = Console(**self._console_kwargs)
        if self.is_enabled and not (console.is_terminal or console.is_jupyter):
            self.disable()  # a live display redrawn into a log file or CI output is only noise
            log.info("Progress bar off: the output is not a terminal (train.log's step lines show progress)")

    @property
    def total_train_batches(self) -> int | float:
        """Read at each epoch's start: none of its batches done yet, unless resumed inside it."""
        epoch_loop = self.trainer.fit_loop.epoch_loop
        done = epoch_loop.batch_progress.current.ready if epoch_loop.restarting else 0
        return batches_this_epoch(self.trainer, done)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._total_steps = None  # the loader may change between epochs
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self.is_enabled and self.progress is not None:
            total = batches_this_epoch(trainer, done=batch_idx + 1)
            description = self._get_train_description(trainer.current_epoch)
            if self.train_progress_bar_id is None:  # resumed where Lightning calls no epoch start
                self.train_progress_bar_id = self._add_task(total, description)
            self.progress.update(self.train_progress_bar_id, total=total, description=description)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _update_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Reading the logged metrics turns each into a Python number: on a GPU, a wait for it.
        # During training, read them at logging steps only (as SpeedMonitor does), so that the GPU
        # stays ahead of Python in between.
        every = max(1, trainer.log_every_n_steps)
        if trainer.training and self._metric_component is not None and trainer.global_step % every:
            return
        super()._update_metrics(trainer, pl_module)

    def _get_train_description(self, current_epoch: int) -> str:
        """``Epoch 0/9 | step 120/450``: epochs counted from 0 as in train.log (the last one that
        will run after the slash), optimizer steps done of the run's total."""
        trainer = self.trainer
        if self._total_steps is None:
            estimate = trainer.estimated_stepping_batches  # max_steps or the epochs' steps, whichever ends first
            self._total_steps = int(estimate) if 0 < estimate < math.inf else 0
        epoch, steps = f"Epoch {current_epoch}", f"step {trainer.global_step}"
        if self._total_steps:
            steps += f"/{self._total_steps}"
            if trainer.num_training_batches < math.inf:
                per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
                # A run resumed from a checkpoint written after an earlier fit ended counts one epoch more.
                epoch += f"/{max(current_epoch, math.ceil(self._total_steps / per_epoch) - 1)}"
        return f"{epoch} | {steps}"

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The loss, the latest validation's loss and bits per byte, tokens/s and MFU, named and
        rounded for reading (``loss: 5.2345``, ``val_bpb: 2.1234``, ``tokens/s: 1,403``, ``MFU: 3.1%``),
        then any metric logged with ``prog_bar=True``.

        wgpt logs its own without ``prog_bar``: Lightning turns progress-bar metrics into Python
        numbers after every batch, a GPU sync per micro-batch. They are read here, from
        ``callback_metrics``, only when the bar refreshes its metrics (see ``_update_metrics``)."""
        shown = {}
        metrics = trainer.callback_metrics
        for name, label, form in SHOWN_METRICS:
            if name in metrics:
                shown[label] = form.format(float(metrics[name]))
        for name, value in super().get_metrics(trainer, pl_module).items():
            if name != "v_num":  # the logger's version: every run has its own dir instead
                shown.setdefault(name, value)
        return shown

    def _init_progress(self, trainer: L.Trainer) -> None:
        starting = self.is_enabled and (self.progress is None or self._progress_stopped)
        super()._init_progress(trainer)
        if starting and self.progress is not None:
            self._log_lines_above_bar(self.progress.console)

    def _stop_progress(self) -> None:
        super()._stop_progress()
        for handler, stream in self._rerouted.items():
            handler.setStream(stream)
        self._rerouted = {}

    def _log_lines_above_bar(self, console: Console) -> None:
        """Send the terminal's logging handlers (Hydra's console handler) through the bar's console.

        Rich redirects ``print`` while the bar is live, but a logging handler holds the stream it
        was given at start, and its lines would land in the middle of the bar's line."""
        named = (lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))
        for logger in (logging.getLogger(), *named):
            for handler in logger.handlers:
                if type(handler) is not logging.StreamHandler or handler in self._rerouted:
                    continue  # file handlers (train.log) keep writing to their files
                stream = handler.stream
                if stream is console.file or getattr(stream, "isatty", lambda: False)():
                    self._rerouted[handler] = handler.setStream(_LinesAbove(console))


class _LinesAbove:
    """A text stream that prints each whole line through ``console`` (above a live display), as it
    is: no markup or highlighting, log lines are full of [brackets]."""

    def __init__(self, console: Console):
        self.console, self._partial = console, ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass
