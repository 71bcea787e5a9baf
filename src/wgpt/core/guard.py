"""The ``callbacks.guard`` callback: skips optimizer steps whose gradient norm is not finite (or
spikes), names them in train.log with their batches, and stops a run that keeps failing.

The verdict and the skip are made on the device (``wgpt.lightning.guard``). The count of skipped
steps is logged as ``skipped_steps`` at the steps Lightning writes; Lightning reads it back with
the other logged values, and only when it has grown are the steps' verdicts read and reported:
a run without skips reads nothing more than it would without the guard.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from wgpt.lightning.grad_norm import measures_grad_norm
from wgpt.lightning.guard import WARMUP, StepGuard, skip_route
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")

UNLOGGED_READ_EVERY = 50  # with trainer.log_every_n_steps=0, the verdicts are read every this many steps

# Test hook: "<step>:<factor>,..." multiplies the gradients of those steps (1-based) by the factor
# (nan, inf, 1e4) before the guard judges them, on every rank: a bad batch, made to order.
INJECT_ENV = "WGPT_TEST_GUARD"


def parse_steps(items) -> frozenset[int]:
    """``skip_steps``: step numbers and ``a-b`` ranges (both ends in)."""
    steps: set[int] = set()
    for item in items or ():
        text = str(item).strip()
        first, dash, last = text.partition("-")
        try:
            a, b = int(first), int(last) if dash else int(first)
        except ValueError:
            a, b = 0, -1
        if not 1 <= a <= b:
            raise WgptError(
                f"callbacks.guard.skip_steps has {text!r}: give optimizer steps (from 1) and ranges a-b, "
                "e.g. callbacks.guard.skip_steps=[1200-1260]"
            )
        steps.update(range(a, b + 1))
    return frozenset(steps)


class SkipGuard(Callback):
    """Skips a step whose pre-clip gradient norm is non-finite, or with ``z`` set, more than ``z``
    running standard deviations above its running mean (a loss spike): its batch is consumed, the
    step counter and schedule go on, weights and optimizer state stay. Each skip is logged with
    its step, norm and batch (dataset and window ids). ``max_skips`` skips in a row stop the run
    with one line giving the command that continues past them (``skip_steps``: steps skipped
    whatever their norm). Spikes are judged once ``warmup`` good steps are counted. ``active:
    false`` turns it off."""

    def __init__(
        self, z: float | None = None, max_skips: int = 8, skip_steps=(), warmup: int = WARMUP, active: bool = True
    ):
        if z is not None and not z > 0:
            raise WgptError(f"callbacks.guard.z={z}: give a positive number of standard deviations (e.g. 6), or null")
        if max_skips < 1:
            raise WgptError(f"callbacks.guard.max_skips={max_skips}: give 1 or more")
        self.z, self.max_skips, self.warmup, self.active = z, max_skips, warmup, active
        self.skip_steps = parse_steps(skip_steps)
        self._given_ranges = [str(item).strip() for item in skip_steps or ()]
        self.total = 0  # skipped steps so far, reported
        self.streak: list[int] = []  # the steps of the latest run of skips
        self._guard: StepGuard | None = None
        self._loaded: dict[str, Any] = {}
        self._positions: dict[int, tuple[int, int]] = {}  # step -> (epoch, batch index), of pending steps
        self._last_step = -1  # the latest step seen ending
        self._read_after: int | None = None  # the logged step whose skipped_steps is to be read
        self._inject: dict[int, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not measures_grad_norm(trainer.strategy):
            log.warning(
                "callbacks.guard is off: %s keeps no global gradient norm to judge steps by",
                type(trainer.strategy).__name__,
            )
            return
        self._guard = StepGuard(self.z, self.skip_steps, self.warmup)
        if "statistics" in self._loaded:
            self._guard.load_state_dict(self._loaded["statistics"])
        pl_module.guard = self._guard
        spec = os.environ.get(INJECT_ENV, "")
        self._inject = {int(s): float(f) for s, _, f in (p.partition(":") for p in spec.split(",") if p)}
        if self._inject:  # an instance attribute, looked up by Lightning: no hook call per step otherwise
            self.on_before_optimizer_step = self._inject_into

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._guard is not None and trainer.optimizers:
            route = skip_route(trainer.optimizers[0], trainer.precision_plugin)
            log.debug("callbacks.guard skips steps on the %s", route)
        # A checkpoint saved between a run of max_skips and its report: stop as the run would have.
        if self._guard is not None and sum(s not in self.skip_steps for s in self.streak) >= self.max_skips:
            self.stop(self.streak)

    def _inject_into(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        factor = self._inject.get(trainer.global_step + 1)
        if factor is not None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch._foreach_mul_(grads, factor)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Every batch: attribute reads only, no calls (tests/e2e/test_step_syncs.py counts them).
        guard = self._guard
        if guard is None or not guard.pending or guard.pending[-1][0] == self._last_step:
            return  # no guard, or no optimizer step ended with this batch (accumulating)
        step = self._last_step = guard.pending[-1][0]
        self._positions[step] = (trainer.fit_loop.epoch_progress.current.completed, batch_idx)
        every = trainer.log_every_n_steps
        if every and (step % every == 0 or step == trainer.max_steps):
            # Read back by Lightning with the other logged values, at this step's end.
            skipped = torch.stack([bad for _, bad, _ in guard.pending]).sum() + self.total
            pl_module.log("skipped_steps", skipped.float())
            self._read_after = step
        elif not every and step % UNLOGGED_READ_EVERY == 0:  # nothing logged: read the verdicts now and then
            self._read_after = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._read_after is None:
            return
        self._read_after = None
        logged = trainer.logged_metrics.get("skipped_steps")
        if logged is not None and int(logged) == self.total:  # no skips since the last report
            if self._guard.take_pending():
                self.streak = []  # those steps were all good
            self._positions.clear()
            return
        stuck = self.report(trainer)
        if stuck is not None:
            self.stop(stuck)

    def report(self, trainer: L.Trainer) -> list[int] | None:
        """Read the pending verdicts (a host sync) and log each skipped step with its batch. Returns
        the first run of ``max_skips`` skips in a row among them (forced ones aside), if any."""
        pending = self._guard.take_pending() if self._guard is not None else []
        positions, self._positions = self._positions, {}
        stuck = None
        if not pending:
            return stuck
        verdicts = torch.stack([torch.stack([bad.float(), norm.float()]) for _, bad, norm in pending]).tolist()
        for (step, _, _), (bad, norm) in zip(pending, verdicts):
            epoch, batch_idx = positions.get(step, (None, None))
            if not bad:
                self.streak = []
                continue
            self.total += 1
            self.streak.append(step)
            why = "forced by callbacks.guard.skip_steps" if step in self.skip_steps else f"grad_norm {norm:.4g}"
            log.warning("step %d skipped (%s) | batch %s", step, why, self._batch_text(trainer, epoch, batch_idx))
            if stuck is None and sum(s not in self.skip_steps for s in self.streak) >= self.max_skips:
                stuck = list(self.streak)
        return stuck

    def stop(self, streak: list[int]) -> None:
        first, last = streak[0], streak[-1]
        judged = sum(s not in self.skip_steps for s in streak)
        ranges = [*self._given_ranges, f"{first}-{last}"]
        raise WgptError(
            f"steps {first}-{last}: {judged} steps in a row skipped for a non-finite or spiking gradient norm "
            f"(callbacks.guard.max_skips={self.max_skips}), stopped; the weights did not move over them: continue "
            f"past them with the same command and resume=auto callbacks.guard.skip_steps=[{','.join(ranges)}] (from "
            "checkpoints/recent.ckpt; recent-previous.ckpt holds the state before it; a wider range or a lower lr "
            "if it recurs)"
        )

    def _batch_text(self, trainer: L.Trainer, epoch: int | None, batch_idx: int | None) -> str:
        datamodule = getattr(trainer, "datamodule", None)
        if epoch is None:
            return "unknown"
        if not hasattr(datamodule, "step_windows"):
            return f"{batch_idx} of epoch {epoch}"
        k = getattr(datamodule, "micro_batches", 1) or 1
        a = trainer.accumulate_grad_batches
        first, count = (batch_idx * k, k) if k > 1 else (batch_idx - a + 1, a)
        windows = datamodule.step_windows(epoch, first, count)
        rank = f"rank {trainer.global_rank} " if trainer.world_size > 1 else ""
        return f"({rank}epoch {epoch}) " + "; ".join(f"{name} windows {ids}" for name, ids in windows.items())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, WgptError):
            return
        try:  # the skips of the last steps, where the device still answers (not after a CUDA error)
            self.report(trainer)
        except Exception as e:  # the run's own exception is the one to show
            log.debug("callbacks.guard could not report its last verdicts: %s", e)

    def state_dict(self) -> dict[str, Any]:
        pending = self._guard.pending if self._guard is not None else []
        if pending:  # a save between logged steps: count what is pending, unreported (reported at the next log)
            verdicts = torch.stack([bad for _, bad, _ in pending]).tolist()
            total, streak = self.total, list(self.streak)
            for (step, _, _), bad in zip(pending, verdicts):
                streak = [*streak, step] if bad else []
                total += bad
        else:
            total, streak = self.total, self.streak
        statistics = self._guard.state_dict() if self._guard is not None else self._loaded.get("statistics")
        return {"total": total, "streak": streak, "statistics": statistics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)
        self.total, self.streak = int(state_dict.get("total", 0)), list(state_dict.get("streak", []))
        if self._guard is not None and state_dict.get("statistics"):
            self._guard.load_state_dict(state_dict["statistics"])
