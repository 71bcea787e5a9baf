"""What a run ended with (``summary.json`` in its dir), and the table of a whole ``-m`` sweep."""

from __future__ import annotations

import atexit
import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from wgpt.launch import rank_tag

SUMMARY = "summary.json"


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


def sweep_rows(sweep_dir: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(the overrides that differ between jobs, one row per job dir) of a sweep dir."""
    jobs = []
    for hydra_dir in Path(sweep_dir).glob("*/.hydra"):
        job_dir = hydra_dir.parent
        num = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.job.num
        overrides = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
        jobs.append((num, job_dir, overrides))
    jobs.sort(key=lambda job: job[0])
    values = [dict(_split(o) for o in overrides) for _, _, overrides in jobs]
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
    saved as ``summary.csv`` in the sweep dir), even when a job failed. It reads the job dirs, so
    it works for jobs run in this process, in their own DDP launch, or on a cluster."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or rank_tag():  # rank 0 speaks for the job
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        summary = read_run_summary(run_dir) or {}
        if summary.get("status") != "failed":  # train() records its own failures with more detail
            error = str(job_return._return_value).strip().splitlines() or ["unknown error"]  # no public accessor
            write_run_summary(run_dir, **{**summary, "status": "failed", "error": error[-1]})

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # At exit rather than on_multirun_end: Hydra skips that when a job failed.
        if not rank_tag():  # one table, from rank 0, when torchrun or srun runs the sweep in every rank
            atexit.register(report_sweep, Path(config.hydra.sweep.dir))


def report_sweep(sweep_dir: Path) -> None:
    """Save the sweep's ``summary.csv`` and print its table."""
    varying, rows = sweep_rows(sweep_dir)
    if rows:
        write_sweep_csv(sweep_dir / "summary.csv", rows)
        print(f"\nSweep summary ({sweep_dir / 'summary.csv'}):\n{format_table(varying, rows)}", flush=True)
