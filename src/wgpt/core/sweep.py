"""What a run ended with (``summary.json`` in its dir), the table of a whole ``-m`` sweep, every
job of a sweep checked before the first one starts, and a stopped sweep resumed in its own dir."""

from __future__ import annotations

import atexit
import math
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wgpt.core.launch import rank_tag
from wgpt.core.overrides import job_difference, job_identity, overrides_of
from wgpt.core.summary import read_run_summary, write_run_summary
from wgpt.util.errors import WgptError
from wgpt.util.files import atomic_write_text
from wgpt.util.tables import csv_text, text_table

MULTIRUN_FLAGS = ("-m", "--multirun")


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


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)  # a job without val_bpb (made before it existed): blank


def format_table(varying: list[str], rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the sweep: job, the swept values, status, losses, bits per byte (compare
    these across tokenizers), and why a job failed."""
    metrics = ["final_val_loss", "best_val_loss", "final_val_bpb", "best_val_bpb"]
    columns = ["job", *varying, "status", *metrics, "steps", "error"]
    return text_table([columns] + [[format_cell(row[c]) for c in columns] for row in rows])


def write_sweep_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, csv_text(rows))


class SweepSummary(Callback):
    """Hydra callback: records failed jobs, and ends a ``-m`` sweep with its table (printed, and
    saved as ``summary.csv`` in the sweep dir) and its best job, even when a job failed. It reads
    the job dirs, so it works for jobs run in this process, in their own DDP launch, or on a cluster."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or rank_tag():  # rank 0 speaks for the job
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        summary = read_run_summary(run_dir) or {}
        if not _of_this_job(
            summary, overrides_of(config.hydra.overrides.task)
        ):  # a resumed sweep refused to mix runs: keep theirs
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
        settings = f" ({shown})" if shown else ""
        lines.append(
            f"best {kind}: job {best['job']}{settings}: best_val_loss {format_cell(best['best_val_loss'])} "
            f"at step {best['best_step']}, in {sweep_dir / best['dir']}"
        )
    print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------- every job checked first


class SweepError(WgptError):
    """Bad input in one of a sweep's jobs (or a resumed sweep that is not its dir's), found before
    any job ran: the sweep ends with this one line, and nothing is written."""
