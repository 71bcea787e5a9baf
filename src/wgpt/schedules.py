"""Learning-rate schedules as factors of the peak learning rate, for ``LambdaLR``."""

from __future__ import annotations

import math


def one_cycle(
    step: int,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
) -> float:
    """OneCycleLR (Smith, 2018) without momentum cycling: from ``1/div_factor`` up to 1 over the
    first ``pct_start`` of the steps, then down to ``1/(div_factor*final_div_factor)``."""
    start, end = 1 / div_factor, 1 / (div_factor * final_div_factor)
    warmup = pct_start * total_steps
    if step < warmup:
        return _anneal(start, 1.0, step / warmup, anneal_strategy)
    return _anneal(1.0, end, min(1.0, (step - warmup) / max(total_steps - warmup, 1)), anneal_strategy)


def _anneal(start: float, end: float, progress: float, strategy: str) -> float:
    if strategy == "cos":
        return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2
    if strategy == "linear":
        return start + (end - start) * progress
    raise ValueError(f"anneal_strategy={strategy!r}: use cos or linear")
