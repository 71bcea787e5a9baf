"""Skipping a bad optimizer step without a host sync where the optimizer allows it.

``StepGuard.check`` runs in ``ModelLightningWrapper.on_before_optimizer_step``, after the step's
global gradient norm is measured and before clipping and the optimizer's update. A step is bad
when that norm is not finite (a NaN or inf anywhere in the loss gives one), or, with ``z`` set,
more than ``z`` standard deviations above its running mean. The norm is the value every rank
agrees on: under DDP it is measured on all-reduced gradients, under FSDP reduced over the shards.

A bad step is skipped: weights and optimizer state (Adam's step count included) stay as they
were; the batch is consumed and the step counter and learning-rate schedule go on. How:

- ``device``: optimizers that take GradScaler's ``found_inf`` (fused Adam, AdamW, SGD: the
  default on CUDA and CPU) get the verdict as that tensor and skip inside their kernel;
  nothing is read back to the host.
- ``scaler``: under float16's GradScaler, an optimizer that unscales in its own step (fused) gets
  non-finite gradients, so the scaler skips the step as it skips any overflow (and lowers its
  scale, as it does then).
- ``host``: any other optimizer (Muon, Adafactor, foreach AdamW): the verdict is read on the host,
  one sync per optimizer step, and a bad step's gradients are dropped (``grad = None``), which
  torch optimizers step over untouched.
"""

from __future__ import annotations

import torch

# The running mean and variance of the norm: exponential, ~50 steps, after plain averages over the
# first WARMUP good steps, before which no step is judged a spike (only non-finite ones are bad).
EMA = 0.02
WARMUP = 20
# The standard deviation a spike is measured in is at least this share of the mean: after a quiet
# stretch the variance is near zero, and a norm 10% above its mean would otherwise count as a spike
# (and, the weights then held still, so would every step after it).
STD_FLOOR = 0.1


def skip_route(optimizer: torch.optim.Optimizer, precision_plugin) -> str:
    """How ``optimizer``'s steps are skipped: ``device``, ``scaler`` or ``host`` (module docstring)."""
    if getattr(precision_plugin, "scaler", None) is not None:
        # An optimizer that unscales in its own step (fused) is unscaled after this check, by the
        # scaler's step: its gradients can still be made non-finite. Any other was unscaled (and
        # checked for overflow) before it, so its gradients are dropped instead.
        return "scaler" if getattr(optimizer, "_step_supports_amp_scaling", False) else "host"
    inner = getattr(optimizer, "optimizers", [optimizer])  # wgpt.optim.CombinedOptimizer's
    # Adam and AdamW only: fused SGD with momentum fills its buffers with empty_like on its first
    # step even when found_inf skips it, so a skipped first step would leave garbage there.
    takes_found_inf = all(
        isinstance(o, (torch.optim.Adam, torch.optim.AdamW)) and all(g.get("fused") for g in o.param_groups)
        for o in inner
    )
    return "device" if takes_found_inf else "host"


class StepGuard:
    """The verdict on each optimizer step (``check``) and the running statistics it is judged by.

    ``z``: a step whose norm is more than ``z`` running standard deviations above the running mean
    is a spike (None: only non-finite norms are bad), once ``warmup`` good steps are counted.
    ``forced``: steps skipped whatever their
    norm (a bad stretch passed over on resuming). ``state_dict``/``load_state_dict``: the
    statistics, for checkpoints (a resumed run judges as the uninterrupted one would)."""

    def __init__(self, z: float | None = None, forced: frozenset[int] = frozenset(), warmup: int = WARMUP):
        self.z, self.forced, self.warmup = z, forced, warmup
        self._stats: torch.Tensor | None = None  # (mean, variance, good steps counted) on the device
        self._loaded: list[float] | None = None
        self._routes: dict[int, str] = {}  # id(optimizer) -> its skip route
        # The steps judged and not yet read: (step, bad, norm), the latter two on the device.
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def check(self, norm: torch.Tensor, optimizer, precision_plugin, step: int) -> torch.Tensor:
        """Whether step ``step`` (1-based) with gradient norm ``norm`` is bad, as a device bool
        tensor, with the skip already arranged (module docstring). No host sync on the device
        and scaler routes."""
        norm = norm.detach()
        # Inline, not a function: this runs every optimizer step (tests/e2e/test_step_syncs.py counts calls).
        route = self._routes.get(id(optimizer))
        if route is None:
            route = self._routes[id(optimizer)] = skip_route(optimizer, precision_plugin)
        nonfinite = ~torch.isfinite(norm)
        # Under float16's GradScaler an overflow is routine (the scale is calibrating) and the scaler
        # skips that step itself: left to it, not counted as the guard's skip.
        bad = torch.zeros_like(nonfinite) if getattr(precision_plugin, "scaler", None) is not None else nonfinite
        if step in self.forced:
            bad = torch.ones_like(bad)
        elif self.z is not None:  # the statistics only where spikes are judged: a few kernels fewer a step
            bad = bad | self._spiking(norm, nonfinite)
        self.pending.append((step, bad, norm))
        if route == "device":
            for inner in getattr(optimizer, "optimizers", [optimizer]):
                inner.found_inf = bad.float()  # read by the fused kernel: no update, step count restored
            return bad
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if route == "scaler" and params:
            # inf on a bad step, 1 otherwise: the scaler's unscale finds the inf and skips the step.
            factor = torch.where(bad, torch.inf, 1.0)
            torch._foreach_mul_([p.grad for p in params], factor)
        elif bad.item():  # the host route's one read per step
            for p in params:
                p.grad = None
        return bad

    def _spiking(self, norm: torch.Tensor, nonfinite: torch.Tensor) -> torch.Tensor:
        """Whether ``norm`` is a spike, judged against the statistics of the good steps before,
        which this step then joins if it is neither a spike nor non-finite (Welford's update,
        exponential once warmed up)."""
        norm = norm.float()
        if self._stats is None:
            self._stats = torch.tensor(self._loaded or [0.0, 0.0, 0.0], device=norm.device)
        mean, var, count = self._stats.unbind()
        std = torch.maximum(var.clamp_min(0).sqrt(), STD_FLOOR * mean)
        spike = (count >= self.warmup) & (norm > mean + self.z * std)
        left_out = spike | nonfinite
        good = (~left_out).float()
        rate = good * torch.clamp_min(1.0 / (count + 1.0), EMA)
        delta = torch.where(left_out, 0.0, norm - mean)
        self._stats = torch.stack([mean + rate * delta, (1 - rate) * (var + rate * delta * delta), count + good])
        return spike

    def take_pending(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """The pending verdicts, handed over and forgotten."""
        pending, self.pending = self.pending, []
        return pending

    def state_dict(self) -> dict[str, float]:
        mean, var, count = self._stats.tolist() if self._stats is not None else (self._loaded or [0.0, 0.0, 0.0])
        return {"mean": mean, "var": var, "count": count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._loaded = [state["mean"], state["var"], state["count"]]
        self._stats = None
