"""Every job of a ``-m`` sweep checked before the first one starts (a Hydra callback): a bad
value in any job stops the sweep with that job's line, and nothing is written."""

from __future__ import annotations

import copy
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.errors import HydraException, InstantiationException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from wgpt.core.launch import rank_tag
from wgpt.core.overrides import overrides_of
from wgpt.core.report import BORROWED_ENV, FULL_ERROR, describe_config_error, user_error
from wgpt.core.sweep import SweepError
from wgpt.core.sweep_resume import check_resume
from wgpt.core.validate import check_config, check_values
from wgpt.util.errors import WgptError
from wgpt.util.files import written_atomically


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
            if os.environ.get(FULL_ERROR) == "1" and BORROWED_ENV not in os.environ:  # the user asked for tracebacks
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
    with written_atomically(sweep_dir / "multirun.yaml") as tmp:
        OmegaConf.save(config, tmp)


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
            (
                f"sweep job {num} of {len(jobs)}: "
                + (" ".join(o for o in job if o.partition("=")[0] in swept) or "its overrides"),
                job,
            )
            for num, job in enumerate(jobs)
        ], True
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
    """The checks train.py and wgpt.core.train make before training, on one job's config (``here``:
    whether the job runs on this machine, whose devices can then be checked; ``values_only``:
    only those that need no torch, wgpt.core.validate.check_values)."""

    if values_only:
        check_values(cfg)
        return
    from wgpt.core.logger import check_logger_packages  # lazy: Lightning's loggers, only to check their packages
    from wgpt.interop.checkpoint import load_checkpoint  # lazy: torch, only when a sweep resumes

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
