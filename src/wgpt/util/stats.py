"""Statistics for comparing groups of seeds (``python -m wgpt.compare``): Student-t intervals,
Welch's and the paired t-test, Holm's adjustment, and where a curve first reaches a value.

Intervals and p-values come from scipy; a group of one seed has no interval (NaN), which callers
show as "no interval (n=1)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided Student-t interval; ``low``/``high`` NaN where n < 2."""

    mean: float
    low: float
    high: float
    sd: float  # the seeds' standard deviation (n - 1 in the denominator); NaN where n < 2
    n: int


@dataclass(frozen=True)
class Difference:
    """A - B: the difference of means, its interval, the test's p-value and degrees of freedom."""

    diff: float
    low: float
    high: float
    p: float
    df: float
    n: int  # pairs for a paired test; the smaller group's size for Welch's


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values`` with its Student-t interval (``confidence``, two-sided)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, n)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """mean(a) - mean(b) with Welch's interval (unequal variances, Welch-Satterthwaite degrees of
    freedom) and the two-sided Welch t-test's p-value. NaN interval and p where either group has
    fewer than 2 values; p is 1 (and the interval a point) where both groups are constant and equal,
    0 where constant and different."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    n = min(len(x), len(y))
    if n < 2:
        return Difference(diff, math.nan, math.nan, math.nan, math.nan, n)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return Difference(diff, diff, diff, 1.0 if diff == 0 else 0.0, math.inf, n)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    return Difference(diff, diff - half, diff + half, p, float(df), n)


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """Mean of the differences a[i] - b[i] (pairs: same seed, same data order), its Student-t
    interval, and the paired t-test's two-sided p-value. NaN where there are fewer than 2 pairs."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    interval = mean_interval(d, confidence)
    if len(d) < 2:
        return Difference(interval.mean, math.nan, math.nan, math.nan, math.nan, len(d))
    if interval.sd == 0:
        return Difference(
            interval.mean, interval.mean, interval.mean, 1.0 if interval.mean == 0 else 0.0, len(d) - 1, len(d)
        )
    p = float(stats.ttest_rel(a, b).pvalue)
    return Difference(interval.mean, interval.low, interval.high, p, len(d) - 1, len(d))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the given order. NaN p-values (tests that could not
    run) stay NaN and do not count among the tests."""
    valid = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(valid)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (m - rank) * p))  # monotone: never below an earlier one
        adjusted[i] = running
    return adjusted


def reaches(value: float, target: float, mode: str = "min") -> bool:
    return value <= target if mode == "min" else value >= target


def crossing(
    values: Sequence[float], axes: Mapping[str, Sequence[float]], target: float, mode: str = "min"
) -> dict[str, float] | None:
    """Where a curve first reaches ``target`` (at or below it; ``mode`` max: at or above), on each
    of ``axes`` (name -> the x values of every point, e.g. steps, tokens, seconds), by linear
    interpolation between the last point short of it and the first point reaching it. A first
    point that already reaches it gives that point. None: the curve never reaches it."""
    for i, y in enumerate(values):
        if math.isnan(y) or not reaches(y, target, mode):
            continue
        if i == 0 or math.isnan(values[i - 1]):
            return {name: float(x[i]) for name, x in axes.items()}
        y0 = values[i - 1]
        fraction = (target - y0) / (y - y0)  # y0 is short of the target, so y != y0
        return {name: float(x[i - 1] + fraction * (x[i] - x[i - 1])) for name, x in axes.items()}
    return None
