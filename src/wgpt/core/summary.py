"""``summary.json``: how a run ended (status, steps, final and best validation), written by every
run and read by sweeps, their resume and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wgpt.util.files import atomic_write_text

SUMMARY = "summary.json"
# How a run ended when it trained its whole budget: a resumed sweep keeps such a job as it is.
FINISHED = ("completed", "diverged")


def write_run_summary(run_dir: str | Path, **fields: Any) -> None:
    """Write (temp + rename) the run's ``summary.json``: status, losses, steps."""
    atomic_write_text(Path(run_dir) / SUMMARY, json.dumps(fields, indent=2, allow_nan=True) + "\n")


def read_run_summary(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
