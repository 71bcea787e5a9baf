"""Callbacks for tests of sweeps: a sweep killed during one of its jobs, a trial that fails."""

import os
import signal

import lightning as L

KILL_JOB_ENV = "WGPT_TEST_KILL_JOB"  # the sweep job (number) to kill; unset: none


class KillSweepAt(L.Callback):
    """SIGKILLs the whole process group (the sweep and every process it started) once the job
    numbered ``$WGPT_TEST_KILL_JOB`` reaches ``step``: a crash of the machine, not of one job.
    Through the environment, so that the sweep resumed without it has the very same overrides."""

    def __init__(self, job: int, step: int):
        self.job, self.step = int(job), step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if os.environ.get(KILL_JOB_ENV) == str(self.job) and trainer.global_step >= self.step:
            os.killpg(os.getpgrp(), signal.SIGKILL)


class FailJob(L.Callback):
    """Raises when training starts in job ``fail`` (``job``: this one's number)."""

    def __init__(self, job: int, fail: int):
        self.job, self.fail = int(job), int(fail)

    def on_train_start(self, trainer, pl_module):
        if self.job == self.fail:
            raise RuntimeError(f"job {self.job} fails on purpose")
