"""TODO docstring: from wgpt.core.sweep, wgpt.core.train."""

from __future__ import annotations


import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from wgpt.util.errors import WgptError
from wgpt.core.launch import in_sweep, rank_tag


from hydra.core.hydra_config import HydraConfig

from wgpt.interop.checkpoint import check_fits, load_checkpoint, model_state, newest_recent
from wgpt.tokenizers.r50k import R50K
from wgpt.tokenizers.base import TokenizerBase
from wgpt.tokenizers import tokenizer_config
from wgpt.core.launch import RESUME_FROM_ENV
from wgpt.optim import optimizer_layout
from wgpt.core.summary import FINISHED, read_run_summary
from wgpt.core.sweep import job_difference, objective, overrides_of
from wgpt.core.sweep import MULTIRUN_FLAGS
from wgpt.core.sweep import SweepError
from wgpt.core.sweep import format_cell
from wgpt.core.sweep import job_dirs
import logging
from wgpt.core.sweep import split_override

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
    added += [o for o in overrides_of(recorded.hydra) if split_override(o)[0] not in ("hydra.mode", "hydra.sweep.dir", *yours)]
    args = ["resume=auto" if a.startswith("resume=") else a for a in args]
    return [argv[0], *([] if multirun else ["-m"]), *args, *added, f'hydra.sweep.dir="{sweep_dir}"']


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def _is_hydra(override: str) -> bool:
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def checkpoint_to_resume(
    cfg: DictConfig, model, tokenizer_name: str, optimizer: tuple | None = None
) -> tuple[str | None, dict | None]:
    """The checkpoint this run continues from (``chosen_checkpoint``), and the record of the
    tokenizer it was trained with; checked (safe to load, same tokenizer, fits the model, and an
    optimizer state of ``optimizer``'s layout) before any heavy work."""
    if RESUME_FROM_ENV in os.environ:  # started by the process that chose (and checked) it
        return os.environ[RESUME_FROM_ENV] or None, None
    path = chosen_checkpoint(cfg)
    if path is None:
        if cfg.get("resume") == "auto" and cfg.get("ckpt_path") is None:
            where = f"recent checkpoint in {cfg.paths.output_dir}" if in_sweep() else f"run of {cfg.model.name} with a recent checkpoint in {Path(cfg.paths.output_root) / cfg.model.name}"
            log.info("resume=auto: no %s, starting afresh", where)
        return None, None
    checkpoint = load_checkpoint(path, mmap=True)  # refuses pickled code, reads no tensor data yet
    record = checkpoint.get("tokenizer") or {"name": R50K}  # made before checkpoints recorded it: r50k
    if record.get("name") != tokenizer_name:
        raise WgptError(
            f"ckpt_path={path} was trained with tokenizer {record.get('name')}, this run uses {tokenizer_name}: "
            f"continue it with {tokenizer_config(record.get('name'))}, as its run had"
        )
    check_fits(model, model_state(checkpoint), f"ckpt_path={path}")
    states = checkpoint.get("optimizer_states") or []
    if optimizer is not None and states and optimizer_layout(states[0]) != optimizer:
        raise WgptError(
            f"ckpt_path={path} holds the state of another optimizer or other parameter groups than this run's "
            f"(optim={HydraConfig.get().runtime.choices.get('optim') if HydraConfig.initialized() else '?'}): "
            "continue it with the optim settings of its run"
        )
    made_by = checkpoint.get("overrides")
    if made_by is not None and in_sweep() and cfg.get("resume") == "auto" and _in_run_dir(path, cfg):
        differ = job_difference(made_by, overrides_of(HydraConfig.get().overrides.task))
        if differ is not None:  # a sweep resumed with other settings than its job dirs ran with
            raise WgptError(
                f"resume: {path} was made by a run of {differ[0]}, this one has {differ[1]}: "
                "resume a sweep with the settings it ran with (same overrides; for a search, the same seed and space)"
            )
    log.info("Resuming from %s (step %d)", path, checkpoint.get("global_step", 0))
    return str(path), record


def chosen_checkpoint(cfg: DictConfig) -> str | None:
    """Where this run continues from: a sweep job with ``resume=auto``, from ``recent.ckpt`` in its
    own dir when it has one (in that dir); else ``ckpt_path``; else, with ``resume=auto``, the
    newest ``recent`` of this model's runs (into a new run dir)."""
    if RESUME_FROM_ENV in os.environ:
        return os.environ[RESUME_FROM_ENV] or None
    auto = cfg.get("resume") == "auto"
    if auto and in_sweep():
        own = Path(cfg.paths.output_dir) / "checkpoints" / "recent.ckpt"
        if own.is_file():
            return str(own)
    path = cfg.get("ckpt_path")
    if path is None and auto and not in_sweep():
        path = newest_recent(Path(cfg.paths.output_root) / cfg.model.name, exclude=cfg.paths.output_dir)
    return None if path is None else str(path)


def own_checkpoint(cfg: DictConfig) -> dict | None:
    """The checkpoint this run continues from when it lies in this run's own dir (a resumed sweep
    job, or ``hydra.run.dir=<run> ckpt_path=<run>/checkpoints/...``): the run goes on in place."""
    path = chosen_checkpoint(cfg)
    return load_checkpoint(path, mmap=True) if path is not None and _in_run_dir(path, cfg) else None


def _in_run_dir(path: str | Path, cfg: DictConfig) -> bool:
    return Path(cfg.paths.output_dir).resolve() in Path(path).resolve().parents


def check_same_tokenizer(ckpt_path: str | None, record: dict | None, tokenizer: TokenizerBase) -> None:
    """A checkpoint continues only with the very tokenizer it was trained with (same name is not
    enough: a BPE trained on other data maps ids to other text)."""
    if ckpt_path is not None and record is not None and record.get("fingerprint", tokenizer.fingerprint) != tokenizer.fingerprint:
        raise WgptError(
            f"ckpt_path={ckpt_path} was trained with tokenizer {record['fingerprint']}, but this run's {tokenizer.name} is "
            f"{tokenizer.fingerprint} (trained on other data): use the data and tokenizer.* settings of that run"
        )
