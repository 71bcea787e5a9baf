"""TargetReached, the callbacks group's time to a target: when a validation metric first reaches a
value, in steps, tokens, training seconds and FLOPs; optionally the end of the run there."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from wgpt.core.speed import TrainingClock, trained_amount

log = logging.getLogger("wgpt")

MODES = ("min", "max")


class TargetReached(Callback):
    """The first validation whose ``metric`` is at or below ``value`` (``mode: max``: at or above)
    records when it came: the optimizer step, the training tokens (all devices), the training
    seconds (validation time left out, earlier parts of a resumed run included) and the training
    FLOPs (the module's ``training_flops`` of a micro-batch, times micro-batches). They go to
    train.log and, as ``target``, to summary.json (RunSummary reads ``record()``). ``stop``: the
    run ends at that validation, as completed (speedrun style). ``value`` None: off (build_callbacks
    leaves it out, so it costs nothing per step).

    Tokens count every optimizer step as full: batch size x sequence length x accumulation x devices.
    """

    def __init__(self, metric: str = "val_loss", value: float | None = None, mode: str = "min", stop: bool = False):
        self.metric, self.value, self.mode, self.stop = metric, value, mode, stop
        self.active = value is not None
        self.reached: dict[str, Any] | None = None
        self.clock = TrainingClock()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.start(self.clock.now(trainer))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.clock.pause(self.clock.now(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        now = self.clock.now(trainer)
        seconds = self.clock.seconds(now)  # up to this validation's start
        self.clock.resume(now)
        measured = trainer.callback_metrics.get(self.metric)
        if self.reached is not None or measured is None:
            return
        measured = float(measured)
        if not (measured <= self.value if self.mode == "min" else measured >= self.value):
            return
        step = trainer.global_step
        tokens, flops = trained_amount(trainer, pl_module, step)
        self.reached = {
            "step": step,
            "tokens": tokens,
            "train_seconds": round(seconds, 3),
            "flops": flops,
            self.metric: measured,
        }
        if trainer.is_global_zero:
            log.info(
                "Target %s %s %g reached at step %d (%s tokens, %.1f s of training, %s FLOPs)%s",
                self.metric,
                "<=" if self.mode == "min" else ">=",
                self.value,
                step,
                f"{self.reached['tokens']:,}" if self.reached["tokens"] is not None else "?",
                self.reached["train_seconds"],
                f"{self.reached['flops']:.3e}" if self.reached["flops"] is not None else "?",
                ": stopping (callbacks.target.stop=true)" if self.stop else "",
            )
        if self.stop:
            trainer.should_stop = True

    def record(self) -> dict[str, Any]:
        """What summary.json keeps: the target and when it was reached (None: not reached)."""
        return {"metric": self.metric, "value": self.value, "mode": self.mode, "reached": self.reached}

    def state_dict(self) -> dict[str, Any]:
        target = [self.metric, self.value, self.mode]
        return {"target": target, "reached": self.reached, "train_seconds": self.clock.seconds(time.perf_counter())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.clock.before = float(state_dict.get("train_seconds", 0.0))
        if state_dict.get("target") == [self.metric, self.value, self.mode]:  # not another target's
            self.reached = state_dict.get("reached")
