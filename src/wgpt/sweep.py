"""What a run ended with (``summary.json`` in its dir), the table of a whole ``-m`` sweep, every
job of a sweep checked before the first one starts, and a stopped sweep resumed in its own dir."""

from __future__ import annotations

import atexit
import copy
import csv
import io
import json
import math
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException, InstantiationException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from wgpt.errors import _BORROWED, FULL_ERROR, WgptError, describe_config_error, user_error
from wgpt.launch import in_sweep, rank_tag

SUMMARY = "summary.json"
# How a run ended when it trained its whole budget: a resumed sweep keeps such a job as it is.
FINISHED = ("completed", "diverged")
# Overrides that say how a sweep was started or where its files are, not what its jobs train: a
# resumed sweep adds resume=auto, and may find its data elsewhere.
NOISE = ("resume", "start_datetime", "paths")
MULTIRUN_FLAGS = ("-m", "--multirun")


def write_run_summary(run_dir: str | Path, **fields: Any) -> None:
    """Write (temp + rename) the run's ``summary.json``: status, losses, steps."""
    path = Path(run_dir) / SUMMARY
    tmp = path.with_name(f".{SUMMARY}.tmp")
    tmp.write_text(json.dumps(fields, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)


def read_run_summary(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def overrides_of(node) -> list[str]:
    """A list of overrides from a config (``hydra.overrides.task``, ``overrides.yaml``) as typed:
    unresolved, for an override may hold an interpolation (``+x=${hydra:job.num}``)."""
    return [str(o) for o in OmegaConf.to_container(node, resolve=False)]


def job_identity(overrides: Sequence[str]) -> dict[str, str]:
    """What a job trains, from its overrides: key -> value, without those that only say how the
    sweep was started (a resumed sweep adds ``resume=auto``)."""
    return {key: value for key, value in map(_split, overrides) if key.split(".")[0] not in NOISE}


def _same(a: str | None, b: str | None) -> bool:
    """Two override values alike, as Hydra would read them: a job of ``optim.lr=1e-3,2e-3`` has
    ``optim.lr=0.001``, and ``false`` is written back ``False``."""
    def canonical(value):
        try:
            return float(value)
        except (TypeError, ValueError):
            return value.lower() if isinstance(value, str) and value.lower() in ("true", "false", "null", "none") else value

    return canonical(a) == canonical(b)


def job_difference(there: Sequence[str], here: Sequence[str]) -> tuple[str, str] | None:
    """The first thing two jobs' overrides differ in, as it is in each (``optim.lr=1e-3``, ``no
    optim.lr``); None: the same job. An interpolated value (``+x=${hydra:job.num}``) is passed over:
    a job's own DDP launch gets it resolved."""
    a, b = job_identity(there), job_identity(here)
    for key in dict.fromkeys([*a, *b]):
        if not _same(a.get(key), b.get(key)) and not _interpolated(a.get(key, "") + b.get(key, "")):
            return _shown(key, a), _shown(key, b)
    return None


def _interpolated(value: str) -> bool:
    return "${" in value or "$\\{" in value  # as typed, or as Hydra escapes it in a sweep job's overrides


def _shown(key: str, values: dict[str, str]) -> str:
    return f"{key}={values[key]}" if key in values else f"no {key}"


def job_dirs(sweep_dir: str | Path) -> list[tuple[int, Path, list[str]]]:
    """(job number, job dir, its overrides) of every job dir Hydra made in a sweep dir, by number."""
    jobs = []
    for hydra_dir in Path(sweep_dir).glob("*/.hydra"):
        try:
            num = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.job.num
            overrides = overrides_of(OmegaConf.load(hydra_dir / "overrides.yaml"))
        except (OSError, OmegaConfBaseException):  # a job killed while Hydra wrote them: no job yet
            continue
        jobs.append((num, hydra_dir.parent, overrides))
    return sorted(jobs, key=lambda job: job[0])


def sweep_rows(sweep_dir: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(the overrides that differ between jobs, one row per job dir) of a sweep dir."""
    jobs = job_dirs(sweep_dir)
    values = [job_identity(overrides) for _, _, overrides in jobs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    varying = [k for k in keys if len({v.get(k) for v in values}) > 1]
    rows = []
    for (num, job_dir, overrides), job_values in zip(jobs, values):
        summary = read_run_summary(job_dir) or {"status": "failed", "error": "ended without a summary (killed?)"}
        rows.append(
            {
                "job": num,
                **{k: job_values.get(k, "") for k in varying},
                "status": summary.get("status", "unknown"),
                "final_val_loss": summary.get("final_val_loss"),
                "best_val_loss": summary.get("best_val_loss"),
                "final_val_bpb": summary.get("final_val_bpb"),
                "best_val_bpb": summary.get("best_val_bpb"),
                "best_step": summary.get("best_step"),
                "steps": summary.get("global_step"),
                "error": summary.get("error", ""),
                "overrides": " ".join(overrides),
                "dir": job_dir.name,
            }
        )
    return varying, rows


def best_row(rows: Sequence[dict[str, Any]], column: str = "best_val_loss") -> dict[str, Any] | None:
    """The job with the lowest finite ``column`` (a diverged or failed job has none), or None."""
    def value(row):
        try:
            return float(row.get(column))
        except (TypeError, ValueError):
            return math.nan

    scored = [(value(row), i) for i, row in enumerate(rows) if math.isfinite(value(row))]
    return rows[min(scored)[1]] if scored else None


def objective(best_val_loss: Any) -> float:
    """A job's return value for sweepers: its best validation loss, inf where it has none. Never
    NaN: Optuna's sweeper would stop the whole study on one."""
    try:
        value = float(best_val_loss)
    except (TypeError, ValueError):
        return math.inf
    return math.inf if math.isnan(value) else value


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)  # a job without val_bpb (made before it existed): blank


def format_table(varying: list[str], rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the sweep: job, the swept values, status, losses, bits per byte (compare
    these across tokenizers), and why a job failed."""
    metrics = ["final_val_loss", "best_val_loss", "final_val_bpb", "best_val_bpb"]
    columns = ["job", *varying, "status", *metrics, "steps", "error"]
    cells = [columns] + [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def write_sweep_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)


class SweepSummary(Callback):
    """Hydra callback: records failed jobs, and ends a ``-m`` sweep with its table (printed, and
    saved as ``summary.csv`` in the sweep dir) and its best job, even when a job failed. It reads
    the job dirs, so it works for jobs run in this process, in their own DDP launch, or on a cluster."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or rank_tag():  # rank 0 speaks for the job
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        summary = read_run_summary(run_dir) or {}
        if not _of_this_job(summary, overrides_of(config.hydra.overrides.task)):  # a resumed sweep refused to mix runs: keep theirs
            return
        if summary.get("status") != "failed":  # train() records its own failures with more detail
            error = str(job_return._return_value).strip().splitlines() or ["unknown error"]  # no public accessor
            write_run_summary(run_dir, **{**summary, "status": "failed", "error": error[-1]})

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # At exit rather than on_multirun_end: Hydra skips that when a job failed.
        if not rank_tag():  # one table, from rank 0, when torchrun or srun runs the sweep in every rank
            searched = not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper")
            atexit.register(report_sweep, Path(config.hydra.sweep.dir), "trial" if searched else "job")


def _of_this_job(summary: dict[str, Any], overrides: Sequence[str]) -> bool:
    recorded = summary.get("overrides")
    return recorded is None or job_difference(recorded, overrides) is None


def report_sweep(sweep_dir: Path, kind: str = "job") -> None:
    """Save the sweep's ``summary.csv``, print its table and name its best job (``kind``: trial,
    for a search)."""
    varying, rows = sweep_rows(sweep_dir)
    if not rows:
        return
    write_sweep_csv(sweep_dir / "summary.csv", rows)
    lines = [f"\nSweep summary ({sweep_dir / 'summary.csv'}):", format_table(varying, rows)]
    best = best_row(rows)
    if best is not None:
        shown = " ".join(f"{k}={best[k]}" for k in varying)
        lines.append(
            f"best {kind}: job {best['job']}{f' ({shown})' if shown else ''}: best_val_loss {_cell(best['best_val_loss'])} "
            f"at step {best['best_step']}, in {sweep_dir / best['dir']}"
        )
    print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------- every job checked first


class SweepError(WgptError):
    """Bad input in one of a sweep's jobs (or a resumed sweep that is not its dir's), found before
    any job ran: the sweep ends with this one line, and nothing is written."""


class SweepCheck(Callback):
    """Hydra callback: before the first job of a ``-m`` sweep starts (and before Hydra makes the
    sweep dir), compose every job's config as the sweeper will and run the checks a run makes
    before training on each, so that a mistake in the last job's values stops the sweep at once,
    in one line naming that job, instead of after the other jobs trained.

    The basic sweeper's jobs are known in advance: each is checked. A search (Optuna) picks its
    jobs as it goes: what can be checked is its space, each choice and each bound of every
    parameter. A resumed sweep (``resume=auto`` into an existing sweep dir) is also checked to be
    the sweep its job dirs ran.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep(config)
        except SweepError as e:
            # Hydra turns a callback's exceptions into warnings and goes on: only an exit stops it.
            if os.environ.get(FULL_ERROR) == "1" and _BORROWED not in os.environ:  # the user asked for tracebacks
                traceback.print_exc()
            print(str(e), file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        if not rank_tag():
            record_sweep(config)


def record_sweep(config: DictConfig) -> None:
    """The sweep's config, overrides included, as ``<sweep dir>/multirun.yaml``: what
    ``resume=<sweep dir>`` repeats. The basic sweeper writes the same file itself (again, right
    after); Optuna's does not."""
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = sweep_dir / ".multirun.yaml.tmp"
    OmegaConf.save(config, tmp)
    os.replace(tmp, sweep_dir / "multirun.yaml")


def check_sweep(config: DictConfig) -> None:
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    jobs, enumerated = planned_jobs(config, loader)
    here = _runs_here(config)
    checkpoints: set[str] = set()
    composed = []
    # Two passes: the checks that need no torch first (a mistyped value is reported at once), then
    # the rest, which import torch and Lightning (seconds).
    for check in ("values", "all"):
        for num, (label, overrides) in enumerate(jobs):
            try:
                if check == "values":
                    composed.append(loader.load_sweep_config(config, list(overrides)))
                with _as_job(composed[num], num if enumerated else 0) as job:
                    check_job(job, here, checkpoints, values_only=check == "values")
            except (HydraException, OmegaConfBaseException, WgptError) as e:
                bad = user_error(e) if isinstance(e, (WgptError, OmegaConfBaseException, InstantiationException)) else e
                if bad is None:
                    raise  # a bug, not a bad value: Hydra warns with it, and the jobs check themselves
                message = str(bad) if isinstance(bad, WgptError) else describe_config_error(bad, _conf_dir(config))
                raise SweepError(f"Error: {message.removeprefix('Error: ')} ({label}; no job has run)") from None
    if config.get("resume") == "auto":
        check_resume(config, [overrides for _, overrides in jobs] if enumerated else None)


def planned_jobs(config: DictConfig, loader) -> tuple[list[tuple[str, list[str]]], bool]:
    """([(label, overrides)] to check, whether they are the sweep's very jobs).

    The basic sweeper's jobs, expanded by its own code (``hydra.sweeper.params`` first, then the
    command line's overrides, the later of two for one key winning). For any other sweeper, the
    corners of its search space: every choice and both ends of every range or interval of each
    parameter, the others at their first value.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += overrides_of(config.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    if str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
        return [
            (f"sweep job {num} of {len(jobs)}: " + (" ".join(o for o in job if o.partition("=")[0] in swept) or "its overrides"), job)
            for num, job in enumerate(jobs)
        ], True  # fmt: skip
    space: dict[str, list[str]] = {}  # key -> the values to check; one value: fixed
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            values = [override.get_value_element_as_str()]
        elif override.is_discrete_sweep():  # choice, range, glob
            values = list(override.sweep_string_iterator())
            values = values if override.is_choice_sweep() else values[:1] + values[-1:]
        elif override.is_interval_sweep():
            interval = override.value()
            values = [str(interval.start), str(interval.end)]
        else:
            values = [override.get_value_element_as_str()]
        space.pop(key, None)
        space[key] = list(dict.fromkeys(values))  # a fixed value replaces a searched one (as Optuna's sweeper does)
    first = {key: f"{key}={values[0]}" for key, values in space.items()}
    corners = [("the search space's first values", list(first.values()))]
    for key, values in space.items():
        for value in values[1:]:
            corners.append((f"the search space's {key}={value}", list({**first, key: f"{key}={value}"}.values())))
    return corners, False


@contextmanager
def _as_job(job: DictConfig, num: int):
    """The job's config as its task function gets it (without ``hydra``), with Hydra's view of the
    running job (``${hydra:...}``, the job's dir) set as the launcher would set it for job ``num``;
    the sweep's own view afterwards."""
    from hydra.core.hydra_config import HydraConfig

    with read_write(job.hydra), open_dict(job.hydra):
        job.hydra.job.num = num
        job.hydra.job.id = f"check_{num}"
        job.hydra.runtime.output_dir = str(Path(job.hydra.sweep.dir, str(job.hydra.sweep.subdir)).absolute())
    instance = HydraConfig.instance()
    sweep = instance.cfg
    instance.set_config(job)
    task = copy.deepcopy(job)
    with read_write(task), open_dict(task):
        del task["hydra"]
    try:
        yield task
    finally:
        instance.cfg = sweep


def check_job(cfg: DictConfig, here: bool, checkpoints: set[str], values_only: bool = False) -> None:
    """The checks train.py and wgpt.train make before training, on one job's config (``here``:
    whether the job runs on this machine, whose devices can then be checked; ``values_only``:
    only those that need no torch, wgpt.validate.check_values)."""
    from wgpt.validate import check_values

    if values_only:
        check_values(cfg)
        return
    from wgpt.checkpoint import load_checkpoint
    from wgpt.loggers import check_logger_packages
    from wgpt.validate import check_config

    if not here:  # jobs run on other machines (SLURM): their devices are theirs to check
        with open_dict(cfg):
            cfg.trainer.accelerator = "auto"
            cfg.trainer.devices = "auto"
    check_config(cfg)
    check_logger_packages(cfg.get("logger"))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and str(ckpt_path) not in checkpoints:  # each file once: a sweep may share one
        load_checkpoint(ckpt_path, mmap=True)  # there, whole and safe to load; reads no tensor data
        checkpoints.add(str(ckpt_path))


def _runs_here(config: DictConfig) -> bool:
    launcher = str(config.hydra.launcher.get("_target_", ""))
    return launcher.endswith((".BasicLauncher", ".LocalLauncher", ".JoblibLauncher"))


def _conf_dir(config: DictConfig) -> Path | None:
    for source in config.hydra.runtime.get("config_sources") or []:
        if source.get("provider") == "main" and source.get("schema") == "file":
            return Path(source.path)
    return None


# --------------------------------------------------------------------------- resuming a sweep


def check_resume(config: DictConfig, jobs: list[list[str]] | None) -> None:
    """Before a resumed sweep starts: its job dirs must hold the jobs it is about to run (the
    same overrides, job for job; ``jobs`` None: a search, whose trials come as it goes), else
    a job would be skipped or continued for the results of another config. Then says what will
    happen to each job."""
    sweep_dir = Path(config.hydra.sweep.dir)
    ran = job_dirs(sweep_dir)
    again = f"resume a sweep with the overrides it ran with (python train.py resume={sweep_dir} repeats them)"
    for num, job_dir, overrides in ran if jobs is not None else []:
        if num >= len(jobs):
            raise SweepError(f"Error: resume: {job_dir} is job {num}, but this sweep has {len(jobs)} job{'s' if len(jobs) > 1 else ''}: {again}")
        differ = job_difference(overrides, jobs[num])
        if differ is not None:
            raise SweepError(f"Error: resume: job {num} ({job_dir}) ran with {differ[0]}, this sweep's job {num} has {differ[1]}: {again}")
    if rank_tag():
        return
    states: dict[str, list[str]] = {"kept (completed)": [], "continued from recent.ckpt": [], "started again": []}
    for num, job_dir, _ in ran:
        summary = read_run_summary(job_dir) or {}
        state = (
            "kept (completed)" if summary.get("status") in FINISHED
            else "continued from recent.ckpt" if (job_dir / "checkpoints" / "recent.ckpt").is_file()
            else "started again"
        )  # fmt: skip
        states[state].append(str(num))
    started = len(jobs) - len(ran) if jobs is not None else None
    told = [f"job{'s' if len(nums) > 1 else ''} {', '.join(nums)} {state}" for state, nums in states.items() if nums]
    if started:
        told.append(f"{started} new")
    print(f"Resuming the sweep in {sweep_dir}: {'; '.join(told) or 'no job has run yet'}", flush=True)


def finished_job(cfg: DictConfig) -> float | None:
    """In a ``-m`` sweep with ``resume=auto``: the best validation loss of this job when its dir
    holds its finished run (which then stays as it is), else None (the job trains)."""
    if cfg.get("resume") != "auto" or not in_sweep():
        return None
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(cfg.paths.output_dir)
    summary = read_run_summary(run_dir) or {}
    if summary.get("status") not in FINISHED:
        return None
    hydra = HydraConfig.get()
    overrides = overrides_of(hydra.overrides.task)
    differ = job_difference(summary.get("overrides") or overrides, overrides)
    if differ is not None:
        raise WgptError(
            f"resume: {run_dir} holds a finished run of {differ[0]}, but this job has {differ[1]}: "
            "resume a sweep with the settings it ran with (same overrides; for a search, the same seed and space)"
        )
    # Printed, not logged: the job's train.log is its finished run's, and stays so.
    print(
        f"Job {hydra.job.num} finished in an earlier run ({summary['status']}, best_val_loss "
        f"{_cell(summary.get('best_val_loss'))}): kept as it is in {run_dir}",
        flush=True,
    )
    return objective(summary.get("best_val_loss"))


def resume_arguments(argv: Sequence[str]) -> list[str]:
    """train.py's command line with ``resume=<sweep dir>`` spelled out for Hydra: ``-m resume=auto
    hydra.sweep.dir=<sweep dir>``, plus the sweep's own overrides (from its ``multirun.yaml``)
    where none are given (its launcher and sweeper settings where not given either). Any other
    command line comes back as it is."""
    args = list(argv[1:])
    given = [a for a in args if a.startswith("resume=")]
    value = given[-1].partition("=")[2] if given else "auto"
    if value in ("auto", "null", "~", ""):
        return list(argv)
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    sweep_dir = Path(value).expanduser().resolve()
    if not (sweep_dir / "multirun.yaml").is_file():
        recent = sweep_dir / "checkpoints" / "recent.ckpt"
        if (sweep_dir.parent / "multirun.yaml").is_file():
            hint = f"{sweep_dir} is one of its jobs: resume={sweep_dir.parent}"
        elif recent.is_file():
            hint = f"it is a run: continue it with ckpt_path={recent}"
        elif multirun:
            hint = "give the dir of a -m sweep, e.g. resume=outputs/multirun/<time>, or resume=auto"
        else:
            return list(argv)  # wgpt.validate says what resume takes
        raise WgptError(f"resume={value} is not a sweep dir (it has no multirun.yaml): {hint}")
    if any(a.startswith("hydra.sweep.dir=") for a in args):
        raise WgptError(f"resume={value} names the sweep dir already: leave out hydra.sweep.dir=...")
    recorded = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides
    overrides = [a for a in args if _is_override(a) and not a.startswith("resume=")]
    added = []
    if all(_is_hydra(a) for a in overrides):  # no task overrides given: the sweep's own
        added += [o for o in overrides_of(recorded.task) if _split(o)[0] != "resume"]
    yours = {_split(a)[0] for a in overrides if _is_hydra(a)}
    added += [o for o in overrides_of(recorded.hydra) if _split(o)[0] not in ("hydra.mode", "hydra.sweep.dir", *yours)]
    args = ["resume=auto" if a.startswith("resume=") else a for a in args]
    return [argv[0], *([] if multirun else ["-m"]), *args, *added, f'hydra.sweep.dir="{sweep_dir}"']


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def _is_hydra(override: str) -> bool:
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))
