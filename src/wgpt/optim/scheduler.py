"""Learning-rate schedules: ``f(step, total_steps)`` -> factor of the peak learning rate, for ``LambdaLR``.

The config picks one (``optim/scheduler=one_cycle``, ``warmup_cosine`` or ``wsd``) as a partial
function of its options; the module supplies the run's length.
``wsd``'s plateau does not depend on the run's length: a run can be continued and cooled later.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from wgpt.util.checks import Range

# The options' bounds, checked with the whole config before a run starts (wgpt.util.checks).
Steps = Annotated[int, Range(0)]
Fraction = Annotated[float, Range(0, 1)]
Factor = Annotated[float, Range(0, open_low=True)]


def one_cycle(
    step: int,
    total_steps: int,
    pct_start: Annotated[float, Range(0, 1, open_low=True)] = 0.3,
    div_factor: Factor = 25.0,
    final_div_factor: Factor = 1e4,
    anneal_strategy: Literal["cos", "linear"] = "cos",
) -> float:
    """OneCycleLR (Smith, 2018) without momentum cycling: from ``1/div_factor`` up to 1 over the
    first ``pct_start`` of the steps, then down to ``1/(div_factor*final_div_factor)``."""
    start, end = 1 / div_factor, 1 / (div_factor * final_div_factor)
    warmup = pct_start * total_steps
    if step < warmup:
        return _anneal(start, 1.0, step / warmup, anneal_strategy)
    return _anneal(1.0, end, min(1.0, (step - warmup) / max(total_steps - warmup, 1)), anneal_strategy)


def warmup_cosine(step: int, total_steps: int, warmup_steps: Steps = 100, min_lr_ratio: Fraction = 0.1) -> float:
    """GPT-3's schedule: linear warmup over ``warmup_steps`` (from lr/warmup_steps), then a cosine
    decay to ``min_lr_ratio`` x lr at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
    return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2


def wsd(
    step: int,
    total_steps: int,
    warmup_steps: Steps = 100,
    decay_fraction: Fraction = 0.2,
    min_lr_ratio: Fraction = 0.0,
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear",
) -> float:
    """Warmup-stable-decay (MiniCPM, Hu et al. 2024; Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations"): linear warmup over ``warmup_steps``
    (from lr/warmup_steps, as ``warmup_cosine``), then 1.0, then a decay over the last
    ``decay_fraction`` of the steps to ``min_lr_ratio`` x lr at the last step (``total_steps``, as
    ``warmup_cosine``; later steps keep that value). ``decay_shape``: ``linear``, ``cosine``, or
    ``sqrt`` (1 - sqrt(progress), Hägele et al.'s best).

    The point: a run can be continued and cooled later. Up to the decay, the factor does not depend
    on ``total_steps``, so a checkpoint from the stable phase resumed with a larger
    ``trainer.max_steps`` carries on at the peak lr and decays at the end of the longer run.
    ``decay_fraction=0`` never decays (a run meant only to be continued).

    The decay is ``round(decay_fraction * total_steps)`` steps, at least 1 where ``decay_fraction > 0``.
    Where a run is too short for its warmup and decay, the lower of the two ramps applies: the lr
    rises, then falls to ``min_lr_ratio`` at the end without reaching the peak.
    """
    factor = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    decay_steps = max(1, round(decay_fraction * total_steps)) if decay_fraction > 0 else 0
    decay_start = total_steps - decay_steps
    if decay_steps and step >= decay_start:
        progress = min(1.0, (step - decay_start) / decay_steps)
        if decay_shape == "linear":
            left = 1 - progress
        elif decay_shape == "cosine":
            left = (1 + math.cos(math.pi * progress)) / 2
        elif decay_shape == "sqrt":
            left = 1 - math.sqrt(progress)
        else:  # the config checks refuse it first (its Literal); called directly, say so too
            raise ValueError(f"decay_shape={decay_shape!r}: use linear, cosine or sqrt")
        factor = min(factor, min_lr_ratio + (1 - min_lr_ratio) * left)
    return factor


def _anneal(start: float, end: float, progress: float, strategy: str) -> float:
    if strategy == "cos":
        return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2
    if strategy == "linear":
        return start + (end - start) * progress
    raise ValueError(f"anneal_strategy={strategy!r}: use cos or linear")
