"""The statistics behind ``python -m wgpt.compare``: finished jobs read from their dirs, grouped
by their settings, each group summarized over its seeds and compared with a baseline group."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from wgpt.core.overrides import split_override
from wgpt.tools.runs import Job, run_labels
from wgpt.util.errors import WgptError
from wgpt.util.stats import CONFIDENCE, Difference, Interval, crossing, holm, mean_interval, reaches, welch
from wgpt.util.stats import paired as paired_difference

AXES = ("steps", "tokens", "train_seconds", "flops")  # what a time to the target is measured in


@dataclass
class Group:
    label: str
    jobs: list[Job]
    final: Interval
    best: Interval
    tokens_per_sec: float
    curve: dict[str, list[float]]  # steps, mean, low, high, tokens, train_seconds, flops
    reached: int  # seeds whose own curve reaches the target
    target: dict[str, float] | None = None  # axis -> amount at the target, on the mean curve
    target_at_first: bool = False  # reached by the first validation: the amounts are upper bounds
    ratios: dict[str, float] = field(default_factory=dict)  # axis -> this group's amount / the baseline's
    welch: Difference | None = None
    p_adjusted: float = math.nan
    paired: Difference | None = None

    @property
    def n(self) -> int:
        return len(self.jobs)


@dataclass
class Comparison:
    metric: str
    mode: str
    groups: list[Group]
    baseline: Group
    target: float
    target_source: str
    target_source_short: str
    shared: list[str]
    holm: bool
    paired: bool
    notes: list[str]

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = []
        for g in self.groups:
            row = {"group": g.label, "n": g.n, "baseline": g is self.baseline}
            for name, interval in (("final", g.final), ("best", g.best)):
                row.update({f"{name}_mean": interval.mean, f"{name}_low": interval.low, f"{name}_high": interval.high})
                row[f"{name}_sd"] = interval.sd
            row["tokens_per_sec"] = g.tokens_per_sec
            for name, d in (("welch", g.welch), ("paired", g.paired)):
                for part in ("diff", "low", "high", "p"):
                    row[f"{name}_{part}"] = getattr(d, part) if d is not None else math.nan
            row["p_holm"] = g.p_adjusted
            row["target"] = self.target
            row["reached_seeds"] = g.reached
            row["target_at_first_validation"] = g.target_at_first
            for axis in AXES:
                row[f"target_{axis}"] = g.target[axis] if g.target else math.nan
                row[f"{axis}_ratio"] = g.ratios.get(axis, math.nan)
            row["runs"] = " ".join(str(j.dir) for j in g.jobs)
            rows.append(row)
        return rows

    def as_json(self) -> dict[str, Any]:
        def interval(i: Interval) -> dict[str, float]:
            return {"mean": i.mean, "low": i.low, "high": i.high, "sd": i.sd, "n": i.n}

        def difference(d: Difference | None) -> dict[str, float] | None:
            return None if d is None else {"diff": d.diff, "low": d.low, "high": d.high, "p": d.p, "df": d.df, "n": d.n}

        groups = []
        for g in self.groups:
            groups.append(
                {
                    "label": g.label,
                    "baseline": g is self.baseline,
                    "n": g.n,
                    "final": interval(g.final),
                    "best": interval(g.best),
                    "tokens_per_sec": g.tokens_per_sec,
                    "welch": difference(g.welch),
                    "p_holm": g.p_adjusted,
                    "paired": difference(g.paired),
                    "target": {
                        "reached_seeds": g.reached,
                        "at": g.target,
                        "at_first_validation": g.target_at_first,
                        "ratio_to_baseline": g.ratios,
                    },
                    "curve": g.curve,
                    "runs": [
                        {"dir": str(j.dir), "seed": j.seed, "final": j.final, "best": j.best(self.mode)} for j in g.jobs
                    ],
                }
            )
        return {
            "metric": self.metric,
            "mode": self.mode,
            "confidence": CONFIDENCE,
            "target": {"value": self.target, "source": self.target_source},
            "baseline": self.baseline.label,
            "shared": self.shared,
            "groups": groups,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- grouping


def _canonical(value: str | None) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value.lower() if isinstance(value, str) and value.lower() in ("true", "false", "null", "none") else value


def group_jobs(jobs: Sequence[Job], by: Sequence[str] | None) -> tuple[list[list[Job]], list[str], list[str]]:
    """(groups in order of first appearance, a label per group, the overrides all groups share).
    Default: jobs with the same overrides but seed form a group; ``by``: the same values of those keys."""
    keys = []  # per job: ((key, value), ...)
    for job in jobs:
        if by:
            values = []
            for key in by:
                value = job.setting(key)
                if value is None:
                    raise WgptError(
                        f"--by {key}: no such key in the config of {job.dir}: pass a config key, e.g. optim.lr"
                    )
                values.append((key, value))
            keys.append(tuple(values))
        else:
            own = {k: v for k, v in map(split_override, job.overrides) if k != "seed"}
            keys.append(tuple(sorted(own.items())))
    order: dict[tuple, list[Job]] = {}
    firsts: list[tuple] = []
    for key, job in zip(keys, jobs):
        canonical = tuple((k, _canonical(v)) for k, v in key)  # optim.lr=1e-3 and optim.lr=0.001 alike
        if canonical not in order:
            firsts.append(key)
        order.setdefault(canonical, []).append(job)
    shown = [[f"{k}={v}" for k, v in key] for key in firsts]
    labels, shared = run_labels(shown, [f"group {i + 1}" for i in range(len(order))])
    return list(order.values()), labels, shared


def find_baseline(groups: list[list[Job]], labels: list[str], baseline: Sequence[str] | None) -> int:
    if not baseline:
        return 0
    matching = list(range(len(groups)))
    for item in baseline:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WgptError(f"--baseline {item!r}: write KEY=VALUE, e.g. --baseline model.norm=layernorm")
        seen = {str(groups[i][0].setting(key)) for i in matching}
        matching = [i for i in matching if _canonical(groups[i][0].setting(key)) == _canonical(value)]
        if not matching:
            raise WgptError(f"--baseline {item}: no group has it; {key} is one of: {', '.join(sorted(seen))}")
    if len(matching) > 1:
        shown = "; ".join(labels[i] for i in matching)
        raise WgptError(
            f"--baseline {' '.join(baseline)} matches {len(matching)} groups ({shown}): add another KEY=VALUE"
        )
    return matching[0]


# --------------------------------------------------------------------------- statistics


def mean_curve(jobs: Sequence[Job]) -> dict[str, list[float]]:
    """The group's curve at the validations every seed has: mean, interval, and the x axes."""
    steps = sorted(set.intersection(*(set(j.steps) for j in jobs)))
    rows = [[j.values[j.steps.index(s)] for j in jobs] for s in steps]
    intervals = [mean_interval(r) for r in rows]
    seconds = [float(np.mean([j.seconds[j.steps.index(s)] for j in jobs])) for s in steps]
    tokens, flops = (float(np.mean([getattr(j, a) for j in jobs])) for a in ("tokens_per_step", "flops_per_step"))
    return {
        "steps": [float(s) for s in steps],
        "mean": [i.mean for i in intervals],
        "low": [i.low for i in intervals],
        "high": [i.high for i in intervals],
        "tokens": [s * tokens for s in steps],
        "train_seconds": seconds,
        "flops": [s * flops for s in steps],
    }


def compare_jobs(
    jobs: Sequence[Job],
    metric: str,
    by: Sequence[str] | None = None,
    baseline: Sequence[str] | None = None,
    mode: str = "min",
    target: float | None = None,
    paired: bool = False,
    notes: Sequence[str] = (),
) -> Comparison:
    """Group ``jobs`` (each with ``metric``'s curve), summarize every group over its seeds and
    compare it with the baseline group (``baseline``: KEY=VALUE items; default the first group)."""
    grouped, labels, shared = group_jobs(jobs, by)
    base_index = find_baseline(grouped, labels, baseline)
    groups = []
    for label, members in zip(labels, grouped):
        finals = [j.final for j in members]
        bests = [j.best(mode) for j in members]
        speeds = [j.tokens_per_sec for j in members if not math.isnan(j.tokens_per_sec)]
        groups.append(
            Group(
                label=label,
                jobs=list(members),
                final=mean_interval(finals),
                best=mean_interval(bests),
                tokens_per_sec=float(np.mean(speeds)) if speeds else math.nan,
                curve=mean_curve(members),
                reached=0,
            )
        )
    base = groups[base_index]
    if target is None:
        target = base.final.mean
        source, short = f"the baseline's mean final value, {base.label}", f"the baseline's final {metric}"
    else:
        source, short = "--target", f"{metric} {target:g}"
    others = [g for g in groups if g is not base]
    for g in others:
        g.welch = welch([j.final for j in g.jobs], [j.final for j in base.jobs])
        if paired:
            mine = {j.seed: j.final for j in g.jobs}
            theirs = {j.seed: j.final for j in base.jobs}
            seeds = [s for s in mine if s in theirs]
            g.paired = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
    for g, p in zip(others, holm([g.welch.p for g in others])):
        g.p_adjusted = p
    notes = list(notes)
    for g in groups:
        g.reached = sum(any(reaches(v, target, mode) for v in j.values) for j in g.jobs)
        g.target = crossing(g.curve["mean"], {a: g.curve[a] for a in AXES}, target, mode)
        # Reached at the first validation: the amounts are upper bounds (it may have come sooner).
        g.target_at_first = bool(g.target) and g.target["steps"] == g.curve["steps"][0]
        longest = max(len(j.steps) for j in g.jobs)
        if len(g.curve["steps"]) < longest:
            notes.append(
                f"{g.label}: its seeds validated at different steps; its mean curve has the "
                f"{len(g.curve['steps'])} of {longest} validations every seed has"
            )
        seeds = [j.seed for j in g.jobs]
        if paired and len(set(seeds)) < len(seeds):
            notes.append(f"{g.label}: a seed ran more than once; the paired test takes one run of each")
    if base.target is None:
        notes.append(f"the baseline's mean curve never reaches {target:.4f}: no ratios to it")
    if base.target:
        for g in others:
            if g.target:
                g.ratios = {
                    a: g.target[a] / base.target[a]
                    for a in AXES
                    if base.target[a] and not math.isnan(g.target[a] / base.target[a])
                }
        base.ratios = {a: 1.0 for a in AXES if base.target[a] and not math.isnan(base.target[a])}
    if paired and any(g.paired is not None and g.paired.n < 2 for g in others):
        notes.append("the paired test needs at least 2 seeds run in both groups")
    return Comparison(
        metric=metric,
        mode=mode,
        groups=groups,
        baseline=base,
        target=target,
        target_source=source,
        target_source_short=short,
        shared=shared,
        holm=len(others) > 1,
        paired=paired,
        notes=notes,
    )
