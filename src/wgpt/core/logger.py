"""The run's metric loggers, from the ``logger`` config group: csv (always), tensorboard, wandb.

Pick several at once with ``logger=[csv,tensorboard,wandb]``. Every option other than csv
lists csv in its own defaults, so ``logger=wandb`` alone still writes ``metrics.csv`` (which
``python -m wgpt.tools.plot`` reads), and the composed config shows every logger the run writes.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from hydra.utils import instantiate
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch import loggers
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from wgpt.util.errors import WgptError
from wgpt.util.files import atomic_write_text, written_atomically

# Packages a logger needs beyond wgpt's own dependencies (any one of them; pyproject's `loggers` extra).
NEEDED_PACKAGES = {"TensorBoardLogger": ("tensorboard", "tensorboardX"), "WandbLogger": ("wandb",)}


def check_logger_packages(logger_cfg: DictConfig | None) -> None:
    """Refuse in one line a chosen logger whose package is not installed."""
    for option, cfg in (logger_cfg or {}).items():
        packages = NEEDED_PACKAGES.get(cfg._target_.rsplit(".", 1)[-1], ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise WgptError(
                f"logger={option} needs the {packages[0]} package: "
                f"pip install {packages[0]} (or pip install -e '.[loggers]')"
            )


def build_loggers(logger_cfg: DictConfig | None) -> list[loggers.Logger]:
    """Every logger of the group, instantiated (their files appear once training logs)."""
    check_logger_packages(logger_cfg)
    return [instantiate(cfg) for cfg in (logger_cfg or {}).values()]


def log_config(run_loggers: list[loggers.Logger], cfg: DictConfig) -> None:
    """Give the composed config to the loggers that keep hyperparameters (TensorBoard's hparams,
    W&B's run config), where runs can be compared and filtered by it. metrics.csv's run has its
    config in ``.hydra/config.yaml`` already."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in run_loggers:
        if not isinstance(logger, loggers.CSVLogger):
            logger.log_hyperparams(config)


def keep_metrics_before(run_loggers: list[loggers.Logger], step: int) -> None:
    """A run going on in its own dir from a checkpoint of ``step`` optimizer steps (a resumed sweep
    job): keep the rows of ``metrics.csv`` that those steps logged, drop any logged after them
    (those steps are trained again), and let the run append to it. Lightning's CSV logger would
    delete the file on start. Rank 0's call, before training.

    The kept rows wait in ``.metrics.csv.kept`` until they are in the new file, so that a crash in
    between loses none: the next continuation finds them there.
    """
    for logger in run_loggers:
        if not isinstance(logger, loggers.CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        kept = path.with_name(f".{path.name}.kept")
        if not kept.is_file():
            if not path.is_file():
                continue
            atomic_write_text(kept, path.read_text())
        with open(kept, newline="") as f:
            # Lightning's step column counts from 0: a row of step s belongs to the (s+1)-th step,
            # and the validation after step n is logged at n - 1.
            rows = [row for row in csv.DictReader(f) if _step(row) is not None and _step(row) < step]
        writer = logger.experiment  # made now: it deletes metrics.csv
        for row in rows:
            writer.log_metrics({k: v for k, v in row.items() if k != "step" and v not in ("", None)}, _step(row))
        writer.save()
        kept.unlink()


def _step(row: dict) -> int | None:
    try:
        return int(float(row["step"]))
    except (KeyError, TypeError, ValueError):
        return None  # a row torn by a kill while it was written


class _RunDirWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # The run dir holds .hydra/ and train.log before anything is logged, so Lightning's check
        # (any file there) would warn in every run. An earlier metrics.csv (a continued sweep job,
        # whose rows keep_metrics_before puts back) is started afresh, as Lightning would.
        if self._fs.isfile(self.metrics_file_path):
            self._fs.rm_file(self.metrics_file_path)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # A new column (the first validation's) rewrites the file: temp + rename, so a kill
        # midway leaves the rows written so far, never a truncated file.
        path = Path(self.metrics_file_path)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        with written_atomically(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


class CSVLogger(loggers.CSVLogger):
    """Lightning's CSVLogger, writing ``metrics.csv`` straight into the run dir beside Hydra's files,
    and each logged step as it is logged (Lightning's default waits for 100 steps): a run killed
    and continued in its dir keeps every row its checkpoint covers. An append per logged step."""

    def __init__(self, *args, flush_logs_every_n_steps: int = 1, **kwargs):
        super().__init__(*args, flush_logs_every_n_steps=flush_logs_every_n_steps, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RunDirWriter(log_dir=self.log_dir)
        return self._experiment


class WandbLogger(loggers.WandbLogger):
    """Lightning's W&B logger, named after the run it logs: ``name`` defaults to the run dir under
    ``output_root`` (``gpt2-tiny/2026-11-23_22-29-32``) and, in a ``-m`` sweep, ``group`` to the
    sweep dir (``multirun/2026-11-23_22-29-32``), so that a sweep's jobs sit together in W&B.

    Any other keyword goes to Lightning's ``WandbLogger`` (and on to ``wandb.init``).
    """

    def __init__(self, save_dir: str, output_root: str, name: str | None = None, group: str | None = None, **kwargs):
        run_dir = Path(save_dir)
        # Hydra writes multirun.yaml in the sweep dir before any job starts; a sweep job that
        # relaunched itself for DDP (wgpt.core.launch) no longer knows it is one, but its dir does.
        sweep_dir = run_dir.parent if (run_dir.parent / "multirun.yaml").is_file() else None
        super().__init__(
            save_dir=str(run_dir),
            name=name or _below(run_dir, output_root),
            group=group or (sweep_dir and _below(sweep_dir, output_root)),
            **kwargs,
        )
        self._finished = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)  # uploads the checkpoints on success, with log_model=true
        # End the W&B run with the fit: the next job of a -m sweep runs in this same process, and
        # Lightning's WandbLogger would log it into any run still in progress.
        if self._experiment is not None and not self._finished:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._finished = True


def _below(path: Path, root: str) -> str:
    """``path`` relative to ``root`` where it lies below it, else its last part."""
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return path.name
