"""A SLURM job that outlives its time limit or a preemption: on the warning signal SLURM sends
before it (``#SBATCH --signal=USR1@120``), the run saves ``recent`` at the next step boundary
and requeues its job; the requeued job's ``resume=auto`` goes on in the same run dir.

Lightning's own auto-requeue saves an ``hpc_ckpt_<n>.ckpt`` from inside the signal handler, in
the middle of a step, which ``resume=auto`` does not read; wgpt switches it off (``slurm_plugins``)
and stops as SIGTERM stops a run (``wgpt.core.callbacks``: exact, every rank after the same step).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("wgpt")


def slurm_plugins() -> list:
    """Lightning's SLURM environment without its auto-requeue, when SLURM started this process
    (not torchrun inside a SLURM job: Lightning's torchrun environment stands then)."""
    under_slurm = SLURMEnvironment.detect() and not TorchElasticEnvironment.detect()
    return [SLURMEnvironment(auto_requeue=False)] if under_slurm else []


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: an array task's ``<array job>_<task>``, else the job's."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue() -> None:
    """``scontrol requeue`` this job; a failure is logged (resubmitting the job does the same)."""
    command = ["scontrol", "requeue", slurm_job_id()]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("Could not requeue the job (%s): %s; resubmit it with resume=auto", " ".join(command), e)
        return
    if result.returncode == 0:
        log.info("Requeued SLURM job %s: its resume=auto goes on in this run dir", command[-1])
    else:
        output = (result.stderr or result.stdout).strip()
        log.warning(
            "%s failed (exit %d): %s; resubmit the job with resume=auto", " ".join(command), result.returncode, output
        )


class SlurmRequeue(Callback):
    """On ``signum`` (SIGUSR1, as ``--signal=USR1@<seconds>`` sends it): stop at the next step
    boundary with ``recent`` saved (the SIGTERM path), then, on rank 0, ``scontrol requeue`` the job."""

    def __init__(self, signum: int = signal.SIGUSR1):
        self.signum = signum
        self.requested = False
        self.training = False
        # From now, not from training's start: the signal's default action would kill the job unrequeued.
        self._previous = (
            signal.signal(signum, self._request) if threading.current_thread() is threading.main_thread() else None
        )

    def on_train_start(self, trainer, pl_module) -> None:
        self.training = True
        if self.requested:  # came while the run was starting: nothing trained yet to save
            if trainer.is_global_zero:
                requeue()
            raise SystemExit(128 + signal.SIGTERM)

    def _request(self, signum, frame) -> None:
        if not self.requested:
            log.info(
                "SLURM's %s: saving recent.ckpt at the next step, then requeueing job %s",
                signal.Signals(signum).name,
                slurm_job_id(),
            )
        self.requested = True
        if self.training:
            os.kill(os.getpid(), signal.SIGTERM)  # the stop every rank agrees on (Lightning's, or ShardedStop's)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # After the checkpoint callbacks' on_exception (this one is added last): recent is saved.
        if self.requested and isinstance(exception, SIGTERMException) and trainer.is_global_zero:
            requeue()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
