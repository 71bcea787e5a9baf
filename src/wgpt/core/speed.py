"""SpeedMonitor, the callbacks group's training speed report: tokens/s, MFU and peak memory; and
the training clock it and the target share (training seconds, validation left out)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.callbacks import Callback

from wgpt.core.devices import compute_dtype, largest_matmul, peak_flops

log = logging.getLogger("wgpt")


class TrainingClock:
    """Training seconds: wall time since training (re)started, each validation's time left out,
    and the seconds of a resumed run's earlier parts (``before``, from its checkpoint) added."""

    def __init__(self):
        self.before = 0.0
        self._start: float | None = None  # moved on by each validation's length
        self._paused: float | None = None  # when the validation under way started

    @staticmethod
    def now(trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # kernels queued so far count as done by now
        return time.perf_counter()

    def start(self, now: float) -> None:
        self._start, self._paused = now, None

    def pause(self, now: float) -> None:
        if self._start is not None and self._paused is None:
            self._paused = now

    def resume(self, now: float) -> None:
        if self._paused is not None:
            self._start += now - self._paused
            self._paused = None

    def seconds(self, now: float) -> float:
        """Training seconds up to ``now``, or to the start of the validation under way."""
        if self._start is None:
            return self.before
        return self.before + (self._paused if self._paused is not None else now) - self._start


class SpeedMonitor(Callback):
    """Training speed: ``tokens_per_sec``, ``samples_per_sec`` (all devices together), ``mfu``
    (model FLOPs utilisation of one device) and ``flops_per_sec`` (one device), each averaged
    over the steps since the previous logging step, validation time left out.

    Also ``peak_memory_gib``, the most memory training has held so far: allocated GPU memory
    (``torch.cuda.max_memory_allocated``), or on a CPU the process's peak resident set.

    Logged with the metrics every ``trainer.log_every_n_steps`` and shown in train.log's step
    lines, after the module's ``train_loss`` and ``grad_norm`` (tokens/s and MFU in the progress
    bar too). MFU divides the model's FLOPs (the module's ``training_flops``, counted by
    Lightning's ``measure_flops``; else Lightning's ``flops_per_batch``) by the device's peak in
    the run's compute dtype: the datasheet figure for GPUs, a measured matmul rate for CPUs
    (``wgpt.core.devices.peak_flops``).

    Built on Lightning's ``Throughput`` rather than its ``ThroughputMonitor`` callback, which
    synchronizes the GPU after every micro-batch: this waits for the GPU once per logging step.
    """

    def __init__(self):
        self._throughput: Throughput | None = None  # rank 0's, once fitting
        self._counts = {"batches": 0, "samples": 0, "lengths": 0}  # since training started, to the last logging step
        self._shapes: Counter[torch.Size] = Counter()  # micro-batches' input shapes since the last logging step
        self._log_now = False  # after this micro-batch, the optimizer step of a logging step
        self.clock = TrainingClock()  # on every rank: rank 0's goes into checkpoints

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            datamodule = trainer.datamodule
            rows = (
                getattr(datamodule, "batch_size", 0) * getattr(datamodule, "seq_len", 0) or 1024
            )  # tokens per micro-batch
            matmul = largest_matmul(getattr(pl_module, "model", pl_module), rows)
            peak = peak_flops(trainer.strategy.root_device, compute_dtype(str(trainer.precision)), matmul)
            self._throughput = Throughput(available_flops=peak, world_size=trainer.world_size, window_size=2)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = self.clock.now(trainer)
        self.clock.start(now)
        if self._throughput is None:
            return
        self._throughput.reset()
        self._counts = dict.fromkeys(self._counts, 0)
        self._shapes.clear()
        self._log_now = False
        self._throughput.update(time=self.clock.seconds(now), **self._counts, flops=self._flops(pl_module))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        every = trainer.log_every_n_steps
        self._log_now = self._throughput is not None and bool(every) and (trainer.global_step + 1) % every == 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        # After every micro-batch: counted by shape (~1 us), everything else once per logging step.
        if self._throughput is None:  # not rank 0
            return
        shape, n = batch[0].shape, 1
        if len(shape) == 3:  # an optimizer step's n micro-batches of (B, T) (DatasetLightningWrapper.micro_batches)
            shape, n = shape[1:], shape[0]
        self._shapes[shape] += n
        if self._shapes[shape] == n and hasattr(pl_module, "training_flops"):
            # Counted now, at a shape's first micro-batch (cached after): counting it at the logging
            # step would put its cost (~0.2 s for gpt2-tiny) inside the speed measured there.
            pl_module.training_flops(shape)
        if not self._log_now:
            return
        self._log_now = False
        step = trainer.global_step
        for shape, n in self._shapes.items():  # (B, T)
            self._counts["batches"] += n
            self._counts["samples"] += n * shape[0]
            self._counts["lengths"] += n * shape.numel()
        now = self.clock.now(trainer)
        self._throughput.update(time=self.clock.seconds(now), **self._counts, flops=self._flops(pl_module))
        self._shapes.clear()
        speed = {**self.speed(trainer.world_size), "peak_memory_gib": peak_memory_gib(trainer.strategy.root_device)}
        for name, value in speed.items():  # the progress bar shows tokens/s and MFU from callback_metrics
            pl_module.log(name, value, rank_zero_only=True)
        # The module's, read from the device in one go (grad_norm: where the strategy's gradients give it).
        metrics = trainer.callback_metrics  # a property that collects them afresh each time
        names = [name for name in ("train_loss", "grad_norm") if name in metrics]
        module = dict(zip(names, torch.stack([metrics[name].float() for name in names]).tolist() if names else []))
        line = f"step {step} | epoch {trainer.current_epoch} | train_loss {module.get('train_loss', math.nan):.4f}"
        if "grad_norm" in module:
            line += f" | grad_norm {module['grad_norm']:.4g}"
        line += f" | lr {_lr(trainer):.2e}"
        line += f" | {speed['tokens_per_sec']:,.0f} tokens/s | {speed['samples_per_sec']:.1f} samples/s"
        if "mfu" in speed:
            line += f" | MFU {speed['mfu']:.1%}"
        line += f" | peak memory {speed['peak_memory_gib']:.2f} GiB"
        log.info(line)

    def _flops(self, pl_module: L.LightningModule) -> int | None:
        """Training FLOPs of the micro-batches since the last logging step; None: the module cannot count them."""
        if hasattr(pl_module, "training_flops"):
            return sum(n * pl_module.training_flops(shape) for shape, n in self._shapes.items())
        if hasattr(pl_module, "flops_per_batch"):  # Lightning's convention: the latest batch's
            return sum(self._shapes.values()) * (pl_module.flops_per_batch or 0)
        return None

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
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.clock.pause(self.clock.now(trainer))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Beside each validation's metrics in metrics.csv: the training seconds it came after, for
        # time to a target (python -m wgpt.compare). rank_zero_only with sync_dist: no collective,
        # and no warning from Lightning about an unsynced epoch-level value under DDP.
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            seconds = self.clock.seconds(time.perf_counter())
            pl_module.log("train_seconds", seconds, rank_zero_only=True, sync_dist=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.resume(self.clock.now(trainer))

    def state_dict(self) -> dict[str, float]:
        return {"train_seconds": self.clock.seconds(time.perf_counter())}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.clock.before = float(state_dict.get("train_seconds", 0.0))


def trained_amount(trainer: L.Trainer, pl_module: L.LightningModule, steps: int) -> tuple[int | None, int | None]:
    """Training tokens (all devices) and FLOPs of ``steps`` optimizer steps, each step counted
    full: batch size x sequence length x accumulation x devices micro-batch tokens, and the
    module's ``training_flops`` of such a micro-batch. None where the data or module cannot say."""
    data = trainer.datamodule
    shape = torch.Size([getattr(data, "batch_size", 0), getattr(data, "seq_len", 0)])  # (B, T)
    if not shape.numel():
        return None, None
    per_step = trainer.accumulate_grad_batches * (getattr(data, "micro_batches", 1) or 1)  # one of them is 1
    micro_batches = steps * per_step * trainer.world_size
    flops = micro_batches * pl_module.training_flops(shape) if hasattr(pl_module, "training_flops") else None
    return micro_batches * shape.numel(), flops


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
