"""A stopped sweep resumed in its own dir (``python train.py resume=<sweep dir>``): its command
line rebuilt from what it recorded, its job dirs checked against the jobs it is about to run,
and the jobs that finished before kept as they are."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from wgpt.core.launch import in_sweep, rank_tag
from wgpt.core.overrides import job_difference, overrides_of, split_override
from wgpt.core.summary import FINISHED, read_run_summary
from wgpt.core.sweep import MULTIRUN_FLAGS, SweepError, format_cell, job_dirs, objective
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")


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
            raise SweepError(
                f"Error: resume: {job_dir} is job {num}, "
                f"but this sweep has {len(jobs)} job{'s' if len(jobs) > 1 else ''}: {again}"
            )
        differ = job_difference(overrides, jobs[num])
        if differ is not None:
            raise SweepError(
                f"Error: resume: job {num} ({job_dir}) ran with {differ[0]}, "
                f"this sweep's job {num} has {differ[1]}: {again}"
            )
    if rank_tag():
        return
    states: dict[str, list[str]] = {"kept (completed)": [], "continued from recent.ckpt": [], "started again": []}
    for num, job_dir, _ in ran:
        summary = read_run_summary(job_dir) or {}
        state = (
            "kept (completed)"
            if summary.get("status") in FINISHED
            else "continued from recent.ckpt"
            if (job_dir / "checkpoints" / "recent.ckpt").is_file()
            else "started again"
        )
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
        f"{format_cell(summary.get('best_val_loss'))}): kept as it is in {run_dir}",
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
            return list(argv)  # wgpt.core.validate says what resume takes
        raise WgptError(f"resume={value} is not a sweep dir (it has no multirun.yaml): {hint}")
    if any(a.startswith("hydra.sweep.dir=") for a in args):
        raise WgptError(f"resume={value} names the sweep dir already: leave out hydra.sweep.dir=...")
    recorded = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides
    overrides = [a for a in args if _is_override(a) and not a.startswith("resume=")]
    added = []
    if all(_is_hydra(a) for a in overrides):  # no task overrides given: the sweep's own
        added += [o for o in overrides_of(recorded.task) if split_override(o)[0] != "resume"]
    yours = {split_override(a)[0] for a in overrides if _is_hydra(a)}
    added += [
        o for o in overrides_of(recorded.hydra) if split_override(o)[0] not in ("hydra.mode", "hydra.sweep.dir", *yours)
    ]
    args = ["resume=auto" if a.startswith("resume=") else a for a in args]
    return [argv[0], *([] if multirun else ["-m"]), *args, *added, f'hydra.sweep.dir="{sweep_dir}"']


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def _is_hydra(override: str) -> bool:
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))
