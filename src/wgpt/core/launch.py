"""How the processes of one run find each other's output dir, and how sweep jobs launch DDP.

Every launcher wgpt supports runs Hydra in each process it starts: Lightning's DDP launcher
re-runs ``train.py`` for ranks 1..N-1, and torchrun and srun start every rank themselves. So
every process must compose the same run dir, and the processes of one ``-m`` sweep job must
run that job only. The resolvers here are registered before Hydra composes anything.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wgpt.core.overrides import job_difference
from wgpt.core.summary import FINISHED, read_run_summary
from wgpt.util.errors import WgptError
from wgpt.util.files import try_lock

log = logging.getLogger("wgpt")

DATETIME_FORMAT = "%Y-%m-%d_%H-%M-%S"  # run dir names sort by start time
START_DATETIME_ENV = "WGPT_START_DATETIME"  # set it to name a launch yourself (multi-node torchrun without a store)
# The checkpoint a run continues from ("": none), as the process that chose and checked it passes
# it on to the processes it starts: Lightning's ranks, a sweep job's own DDP launch.
RESUME_FROM_ENV = "WGPT_RESUME_FROM"
RECORDED_ENV = "WGPT_RUN_RECORDED"  # set for the processes a run starts itself: no record, no lock of their own
RUN_LOCK = ".train.lock"  # in a run dir: held while a process trains there (claim_run_dir)


# Lightning is imported where it is needed, not here: train.py imports this module before Hydra
# composes, and a mistyped override should be reported at once, not after seconds of imports.


def _torchelastic() -> bool:
    """Whether torchrun started this process (Lightning decides, where torchrun's RANK is set)."""
    if "RANK" not in os.environ:
        return False
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    return TorchElasticEnvironment.detect()


def _slurm_tasks() -> int:
    """srun's task count: each task is one rank that srun started (1 outside srun)."""
    if "SLURM_NTASKS" not in os.environ:
        return 1
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return int(os.environ["SLURM_NTASKS"]) if SLURMEnvironment.detect() else 1


def external_launch() -> tuple[int, int] | None:
    """(processes per node, nodes) when torchrun or srun started every rank, else None."""
    if _torchelastic():
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return per_node, int(os.environ["WORLD_SIZE"]) // per_node
    if _slurm_tasks() > 1:
        nodes = int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", 1)))
        return _slurm_tasks() // nodes, nodes
    return None


def start_datetime() -> str:
    """The launch's start time, the same in every process of one launch: it names the run dir.

    In order: ``$WGPT_START_DATETIME`` (set by a parent process for the ranks Lightning starts);
    under torchrun, the first rank's clock, shared through the agent's key-value store; under
    srun, the Slurm job's start time (plus the step, for a job's later sruns); else now.
    """
    if START_DATETIME_ENV in os.environ:
        return os.environ[START_DATETIME_ENV]
    now = datetime.now().strftime(DATETIME_FORMAT)
    if _torchelastic() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        from torch.distributed import TCPStore

        store = TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=5)
        )
        key = f"wgpt/start_datetime/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
        return store.compare_set(key, "", now).decode()  # the first rank to ask sets it
    if _slurm_tasks() > 1:
        started = os.environ.get("SLURM_JOB_START_TIME")  # Slurm >= 23.02
        name = (
            datetime.fromtimestamp(int(started), tz=timezone.utc).astimezone().strftime(DATETIME_FORMAT)
            if started
            else f"slurm-{os.environ['SLURM_JOB_ID']}"
        )
        step = os.environ.get("SLURM_STEP_ID", "0")
        return name if step == "0" else f"{name}-step{step}"
    return now


def run_dir(runs_dir: str, start: str, resume: str | None, overrides) -> str:
    """A single run's dir: ``<runs_dir>/<start>``, or with ``resume=auto`` the run it continues
    (``unfinished_run``): a run killed or preempted goes on in its own dir, from its
    ``recent.ckpt`` (else from where it started), so one metrics.csv, train.log and summary.json
    hold it whole. ``overrides``: this launch's (``hydra.overrides.task``). The ranks a launch
    starts get its dir by its start time (``$WGPT_START_DATETIME``), without looking."""
    if resume != "auto" or START_DATETIME_ENV in os.environ:
        return f"{runs_dir}/{start}"
    found, _ = unfinished_run(Path(runs_dir), [str(o) for o in overrides or []])
    return str(found) if found is not None else f"{runs_dir}/{start}"


def unfinished_run(runs_dir: Path, overrides: list[str], exclude: Path | None = None) -> tuple[Path | None, str]:
    """(The run ``resume=auto`` continues, or None; why none.) The newest run in ``runs_dir``
    (``newest_run``), if it did not finish (no summary.json, or one saying interrupted or failed)
    and ran with this launch's overrides (``resume``, ``start_datetime`` and ``paths`` aside): a
    finished run is continued by ``ckpt_path=`` only, and another job's run is not this one's. If a
    process still trains in it, ``claim_run_dir`` refuses in one line."""
    newest = newest_run(runs_dir, exclude)
    if newest is None:
        return None, f"no other run in {runs_dir}" if exclude is not None else f"no run in {runs_dir}"
    status = (read_run_summary(newest) or {}).get("status")
    if status in FINISHED:
        recent = newest / "checkpoints" / "recent.ckpt"
        return None, f"the newest run, {newest}, finished ({status}); to train it further, give ckpt_path={recent}"
    try:
        theirs = [str(o) for o in OmegaConf.to_container(OmegaConf.load(newest / ".hydra" / "overrides.yaml"))]
    except (OSError, ValueError):
        theirs = []  # its record is gone: its checkpoint's checks still apply
    differ = job_difference(theirs, overrides)
    if differ is not None:
        return None, (
            f"the newest run, {newest}, did not finish but ran with {differ[0]}, this launch has {differ[1]}: "
            "launch it with its own settings to continue it"
        )
    return newest, ""


def newest_run(runs_dir: Path, exclude: Path | None = None) -> Path | None:
    """The run dir in ``runs_dir`` launched or saved last (``exclude`` aside): by the newest of its
    ``.hydra/config.yaml`` (written at each launch) and ``checkpoints/recent.ckpt``."""
    found: dict[Path, float] = {}
    for marker in (".hydra/config.yaml", "checkpoints/recent.ckpt"):
        for path in runs_dir.glob(f"*/{marker}"):
            if exclude is None or path.parents[1].resolve() != exclude.resolve():
                found[path.parents[1]] = max(found.get(path.parents[1], 0.0), path.stat().st_mtime)
    return max(found, key=found.__getitem__, default=None)


def claim_run_dir(run_dir: Path) -> int | None:
    """Hold ``run_dir``'s lock while this process trains in it (the returned descriptor, for
    ``release_lock``): two launches never train in one dir, ``resume=auto``'s included. Taken by
    the process a launch starts with, not by the ranks or the job launch it starts (they see
    ``RECORDED_ENV``), whose parent holds it for them."""
    if rank_tag() or RECORDED_ENV in os.environ:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = try_lock(run_dir / RUN_LOCK)
    except OSError as e:  # a filesystem without flock (Lustre without -o flock, some FUSE mounts)
        log.warning("No lock on %s (%s): nothing stops a second launch from training in this dir", run_dir, e)
        return None
    if fd is None:
        raise WgptError(
            f"{run_dir} is in use: another training process holds its {RUN_LOCK}; wait for it to end, "
            f"or continue from its checkpoint in a new dir with ckpt_path={run_dir / 'checkpoints' / 'recent.ckpt'}"
        )
    return fd


def rank_tag() -> str:
    """``[rank N]`` for log lines of a process other than rank 0, else nothing."""
    if _torchelastic():
        rank = os.environ["RANK"]
    elif _slurm_tasks() > 1:
        rank = os.environ["SLURM_PROCID"]
    elif (
        "LOCAL_RANK" in os.environ or os.environ.get("NODE_RANK", "0") != "0"
    ):  # a Lightning-started rank, or another node's
        node, local = os.environ.get("NODE_RANK", "0"), os.environ.get("LOCAL_RANK", "0")
        rank = local if node == "0" else f"{node}.{local}"
    else:
        return ""
    return "" if rank == "0" else f"[rank {rank}]"


def on_rank_zero(value):
    """``value`` in rank 0 (or a lone process), None elsewhere: for what one process should write."""
    return value if rank_tag() == "" else None


def register_resolvers() -> None:
    # Cached: every use within one config (run dir, checkpoint names) gets the same value.
    OmegaConf.register_new_resolver("wgpt.start_datetime", start_datetime, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("wgpt.run_dir", run_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("wgpt.rank_tag", rank_tag, replace=True)
    OmegaConf.register_new_resolver("wgpt.on_rank_zero", on_rank_zero, replace=True)


def in_sweep() -> bool:
    """Whether this process runs a job of a ``-m`` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def spawns_ranks(trainer) -> bool:
    """Whether Lightning will start this run's other ranks by re-running the script.

    The launcher class is private; its replacement would have to re-run the script too.
    """
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not launcher.cluster_environment.creates_processes_externally
    )


# Hydra overrides a relaunched job keeps: how it logs, not how the sweep ran.
_KEPT_HYDRA_OVERRIDES = ("hydra.verbose", "hydra.job_logging", "hydra/job_logging", "hydra.job.env_set")


def job_command(cfg: DictConfig, script: str) -> list[str]:
    """``python <script>`` running this sweep job alone, in the job's dir (whose .hydra/ is written)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    overrides = [o for o in hydra.overrides.task if not o.startswith("start_datetime=")]
    overrides += [o for o in hydra.overrides.hydra if o.startswith(_KEPT_HYDRA_OVERRIDES)]
    return [
        sys.executable,
        os.path.abspath(script),
        *overrides,
        f'hydra.run.dir="{hydra.runtime.output_dir}"',
        "hydra.output_subdir=null",
        f"start_datetime={cfg.start_datetime}",
    ]


def launch_job_alone(cfg: DictConfig, script: str, resume_from: str | None = None) -> int:
    """Run this sweep job as its own launch of ``script`` (train.py); returns its exit code.

    Lightning starts DDP ranks by re-running the script with this process's arguments. In a
    sweep those are the whole sweep's, so every rank would replay every job in a new sweep dir
    (Lightning issue #11300). A fresh process whose arguments are this job's alone fixes that,
    and when it exits its process group and environment go with it, so the next job starts clean.

    ``resume_from``: the checkpoint this process chose for the job (None: it starts afresh). The
    launch is not a sweep job to Hydra, so ``resume=auto`` would mean something else there: it
    gets the choice itself, and the job's overrides stay the job's.
    """
    command = job_command(cfg, script)
    log.info(
        "Starting this job's DDP ranks: %s%s",
        " ".join(command[1:]),
        f" (continuing from {resume_from})" if resume_from else "",
    )
    terminated = []

    def pass_sigterm_on(signum, frame):  # a scheduler stopping the sweep: the job saves and stops first
        terminated.append(signum)
        process.send_signal(signal.SIGTERM)

    with subprocess.Popen(command, env={**os.environ, RESUME_FROM_ENV: resume_from or ""}) as process:
        previous = signal.signal(signal.SIGTERM, pass_sigterm_on)
        try:
            code = process.wait()
        except KeyboardInterrupt:  # pass it on (a terminal's Ctrl-C reached it already), let it save and stop
            process.send_signal(signal.SIGINT)
            process.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    if terminated:
        raise SystemExit(128 + signal.SIGTERM)  # and the sweep stops here
    return code


# On import: a sweep job that submitit unpickles on a cluster node never runs train.py's top level,
# but it imports this module (through wgpt.core.train) before Hydra composes the job's config.
register_resolvers()
