"""Runs and sweeps read back from their dirs for plotting and comparing: metrics.csv curves,
overrides, tokens per step, the labels that tell runs of a sweep apart, and finished runs as
jobs of a comparison (``python -m wgpt.compare``)."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from wgpt.core.overrides import LAUNCH_OVERRIDES, split_override
from wgpt.core.summary import read_run_summary
from wgpt.util.errors import WgptError

# Overrides that say where or how a run was launched, not what was trained: never in a label.
# A sweep's own list (what does not tell its jobs apart), and what only changes how a run shows.
NOISE = (*LAUNCH_OVERRIDES, "hydra", "logger", "trainer.enable_progress_bar", "data.num_workers")
SWEEP_DIR = "outputs/multirun/<time>"


@dataclass
class Run:
    dir: Path
    name: str  # unique among the plotted runs: the dir name, with its parent's where names repeat
    overrides: list[str]  # as typed after train.py, noise dropped
    # column -> [(optimizer steps done, value)], every numeric metrics.csv column but epoch and step
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tokens_per_step: int | None = None  # None: not derivable (no config.yaml)


# --------------------------------------------------------------------------- reading runs


def find_runs(path: Path) -> tuple[list[Path], list[Path]]:
    """(run dirs, sweep ``summary.csv`` files) that ``path`` stands for: a run dir is itself; any
    other dir (a sweep, ``outputs/<model>/``, ``outputs/``) stands for every run below it."""
    if not path.exists():
        raise WgptError(f"{path} does not exist: pass a run dir (outputs/<model>/<time>) or a sweep dir ({SWEEP_DIR})")
    if not path.is_dir():
        raise WgptError(f"{path} is not a directory: pass a run dir (holding metrics.csv) or a sweep dir")
    if (path / "metrics.csv").is_file():
        return [path], []
    runs = sorted((p.parent for p in path.rglob("metrics.csv")), key=lambda p: _natural(p.relative_to(path)))
    if not runs:
        raise WgptError(
            f"no metrics.csv under {path}: pass a run dir (outputs/<model>/<time>) or a sweep dir ({SWEEP_DIR}) "
            "of runs that logged with logger=csv"
        )
    return runs, sorted(path.rglob("summary.csv"), key=lambda p: _natural(p.relative_to(path)))


def _natural(path: Path) -> list:
    """Sort key: job 10 after job 9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def read_overrides(run_dir: Path) -> list[str]:
    """The run's command-line overrides (``.hydra/overrides.yaml``) without the noise; [] if none."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    return [o for o in map(str, OmegaConf.load(path)) if not is_noise(o)]


def is_noise(override: str) -> bool:
    key = override.partition("=")[0].lstrip("+~")
    return any(key == n or key.startswith((f"{n}.", f"{n}/")) for n in NOISE)


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` (Lightning's CSVLogger) as column -> [(optimizer steps done, value)].

    Lightning's ``step`` column counts from 0 (the step being taken), so a row at step s is
    drawn at s + 1 steps done, as train.log counts them: the validation after 100 steps is
    logged at step 99, and the train loss of the 100th batch too.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            try:
                steps = int(float(row["step"])) + 1
            except (KeyError, TypeError, ValueError):
                continue  # a row torn by a run still writing
            for column, cell in row.items():
                if column in ("epoch", "step") or not cell:
                    continue
                try:
                    value = float(cell)
                except (TypeError, ValueError):
                    continue
                series.setdefault(column, []).append((steps, value))
    return series


def tokens_per_step(run_dir: Path) -> int | None:
    """Tokens one optimizer step trains on: batch size x window length x accumulated batches x
    processes. From the run's saved config, and its ``train.log`` for the number of processes."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        batch, seq_len = OmegaConf.select(cfg, "data.batch_size"), OmegaConf.select(cfg, "data.seq_len")
        accumulate = OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1)
        devices = OmegaConf.select(cfg, "trainer.devices", default="auto")
        nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1)
    except (OSError, ValueError, OmegaConfBaseException):  # missing, unreadable, or an unresolvable interpolation
        return None
    if not all(isinstance(v, int) and v > 0 for v in (batch, seq_len, accumulate)):
        return None
    log = run_dir / "train.log"
    if log.is_file():
        # Every DDP rank logs Lightning's "Initializing distributed: ... MEMBER: k/N" into the run's
        # log; a run without the line ran as one process (whatever devices=auto picked).
        sizes = re.findall(r"MEMBER: \d+/(\d+)", log.read_text(errors="replace"))
        processes = max(map(int, sizes), default=1)
    elif isinstance(devices, int) and devices > 0 and isinstance(nodes, int):
        processes = devices * nodes
    elif OmegaConf.is_list(devices) and isinstance(nodes, int):
        processes = len(devices) * nodes
    else:
        return None
    return batch * seq_len * accumulate * processes


def load_runs(paths: Sequence[Path]) -> tuple[list[Run], list[Path]]:
    """The runs the given dirs stand for (each once, in the order given), and their sweeps' summaries."""
    dirs: dict[Path, None] = {}
    summaries: dict[Path, None] = {}
    for path in paths:
        found, found_summaries = find_runs(Path(path))
        dirs.update(dict.fromkeys(p.resolve() for p in found))
        summaries.update(dict.fromkeys(p.resolve() for p in found_summaries))
    repeated = Counter(d.name for d in dirs)
    runs = [
        Run(
            dir=d,
            name=f"{d.parent.name}/{d.name}" if repeated[d.name] > 1 else d.name,
            overrides=read_overrides(d),
            metrics=read_metrics(d),
            tokens_per_step=tokens_per_step(d),
        )
        for d in dirs
    ]
    return runs, list(summaries)


# --------------------------------------------------------------------------- labels


def run_labels(overrides: Sequence[Sequence[str]], names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(a legend label per run, the overrides every run shares, for the title).

    A run is labelled by the overrides that set it apart (``optim.lr=3e-3``); one with none of
    its own (a lone run, or runs that differ in nothing typed) by its dir name. Runs whose
    labels would still coincide get their dir names added.
    """
    shared = [o for o in overrides[0] if all(o in other for other in overrides[1:])] if overrides else []
    labels = [", ".join(o for o in own if o not in shared) or name for own, name in zip(overrides, names)]
    repeated = Counter(labels)
    labels = [f"{lbl} ({name})" if repeated[lbl] > 1 and lbl != name else lbl for lbl, name in zip(labels, names)]
    return labels, shared


# --------------------------------------------------------------------------- jobs of a comparison


@dataclass
class Job:
    """One finished run: its settings and its validation curve of the compared metric."""

    dir: Path
    overrides: list[str]  # as typed, noise dropped (wgpt.tools.runs)
    seed: str
    steps: list[int]  # optimizer steps done at each validation
    values: list[float]  # the metric at each validation
    seconds: list[float]  # training seconds at each validation (NaN where the run did not log them)
    tokens_per_step: float  # NaN: unknown
    flops_per_step: float  # NaN: unknown
    tokens_per_sec: float

    @property
    def final(self) -> float:
        return self.values[-1]

    def best(self, mode: str) -> float:
        return float(np.nanmin(self.values) if mode == "min" else np.nanmax(self.values))

    def setting(self, key: str) -> str | None:
        """The job's value of a config key: as overridden, else from its saved config (a config
        group, e.g. ``model``, by the option it chose); None: no such key."""
        for override in reversed(self.overrides):
            k, value = split_override(override)
            if k == key:
                return value
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            choices = OmegaConf.load(self.dir / ".hydra" / "hydra.yaml").hydra.runtime.choices
            if key in choices:
                return str(choices[key])
        except (OSError, OmegaConfBaseException):
            pass  # a run dir without Hydra's record: its config alone
        try:
            config = OmegaConf.load(self.dir / ".hydra" / "config.yaml")
            value = OmegaConf.select(config, key, default=_MISSING, throw_on_resolution_failure=False)
        except (OSError, OmegaConfBaseException):
            return None
        if value is _MISSING or OmegaConf.is_config(value):
            return None  # absent, or a whole section (a group the run's record does not name)
        return str(value)


_MISSING = object()


def load_jobs(paths: Sequence[Path], metric: str) -> tuple[list[Job], list[str]]:
    """The finished jobs (status completed) under ``paths``, each once, with ``metric``'s curve; and
    notes on the runs left out. One-line errors: nothing finished, or a metric no job logged."""
    dirs: dict[Path, None] = {}
    for path in paths:
        dirs.update(dict.fromkeys(p.resolve() for p in find_runs(Path(path))[0]))
    jobs, notes, statuses = [], [], {}
    for run_dir in dirs:
        status = (read_run_summary(run_dir) or {}).get("status", "unfinished")
        if status != "completed":
            statuses[status] = statuses.get(status, 0) + 1
            notes.append(f"{run_dir} left out: {status}")
            continue
        metrics = read_metrics(run_dir)
        if not metrics.get(metric):
            logged = ", ".join(sorted(c for c in metrics if c.startswith("val_"))) or "none"
            raise WgptError(f"--metric {metric}: {run_dir} has no such validation column; it logged: {logged}")
        jobs.append(_job(run_dir, metrics, metric))
    if not jobs:
        found = ", ".join(f"{n} {s}" for s, n in statuses.items())
        where = " ".join(map(str, paths))
        raise WgptError(f"no finished job under {where} ({found}): compare runs that completed")
    return jobs, notes


def _job(run_dir: Path, metrics: dict[str, list[tuple[int, float]]], metric: str) -> Job:
    points = sorted(dict(metrics[metric]).items())  # one value per step: a row rewritten on resume counts once
    seconds = dict(metrics.get("train_seconds", []))
    overrides = read_overrides(run_dir)
    seed = next((v for k, v in map(split_override, overrides) if k == "seed"), None)
    steps = [s for s, _ in points]
    tokens = tokens_per_step(run_dir)
    flops = math.nan  # unknown without record.json's totals (finish_run_record): a run from before it
    try:
        record = json.loads((run_dir / "record.json").read_text())
    except (OSError, ValueError):
        record = {}
    if isinstance(record, dict) and record.get("train_flops") and record.get("global_step"):
        flops = record["train_flops"] / record["global_step"]  # every step counted full (wgpt.core.speed)
    timed = [s for s in steps if s in seconds and seconds[s] > 0]
    speeds = [v for _, v in metrics.get("tokens_per_sec", [])]
    if timed and tokens:
        tokens_per_sec = timed[-1] * tokens / seconds[timed[-1]]
    else:
        tokens_per_sec = float(np.mean(speeds)) if speeds else math.nan
    job = Job(
        dir=run_dir,
        overrides=overrides,
        seed="",
        steps=steps,
        values=[v for _, v in points],
        seconds=[seconds.get(s, math.nan) for s in steps],
        tokens_per_step=float(tokens) if tokens else math.nan,
        flops_per_step=flops,
        tokens_per_sec=tokens_per_sec,
    )
    job.seed = seed if seed is not None else (job.setting("seed") or "?")
    return job
