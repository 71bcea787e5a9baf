"""Learning-rate schedules: ``f(step, total_steps)`` -> factor of the peak learning rate, for ``LambdaLR``.

The config picks one (``optim/scheduler=one_cycle`` or ``warmup_cosine``) as a partial function
of its options; the module supplies the run's length.
"""

from __future__ import annotations

import math
from typing import Literal


def one_cycle(
    step: int,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: Literal["cos", "linear"] = "cos",
) -> float:
    """OneCycleLR (Smith, 2018) without momentum cycling: from ``1/div_factor`` up to 1 over the
    first ``pct_start`` of the steps, then down to ``1/(div_factor*final_div_factor)``."""
    start, end = 1 / div_factor, 1 / (div_factor * final_div_factor)
    warmup = pct_start * total_steps
    if step < warmup:
        return _anneal(start, 1.0, step / warmup, anneal_strategy)
    return _anneal(1.0, end, min(1.0, (step - warmup) / max(total_steps - warmup, 1)), anneal_strategy)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 100, min_lr_ratio: float = 0.1) -> float:
    """GPT-3's schedule: linear warmup over ``warmup_steps`` (from lr/warmup_steps), then a cosine
    decay to ``min_lr_ratio`` x lr at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
    return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2


def _anneal(start: float, end: float, progress: float, strategy: str) -> float:
    if strategy == "cos":
        return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2
    if strategy == "linear":
        return start + (end - start) * progress
    raise ValueError(f"anneal_strategy={strategy!r}: use cos or linear")
