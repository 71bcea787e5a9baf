"""Shared by the speed benchmarks: run train.py as a user would and read its metrics back.

Speed is read from the run's own SpeedMonitor: with ``trainer.log_every_n_steps=W`` and
``trainer.max_steps=2W``, the last logged row is the rate from step W to step 2W (the first W
warm up: thread pools, allocator, loader workers, compilation).
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WGPT_ROOT", str(ROOT))  # conf/paths' root_dir, as train.py sets it

# Training only: no validation, sanity check or checkpoint inside the measured steps.
TRAIN_ONLY = [
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "callbacks.recent.every_n_train_steps=1000000",
    "trainer.enable_progress_bar=false",
]


def window_overrides(window: int) -> list[str]:
    return [f"trainer.max_steps={2 * window}", f"trainer.log_every_n_steps={window}"]


def train_py(*overrides: str) -> list[dict]:
    """Run ``python train.py <overrides>`` in a throwaway run dir; return its metrics rows."""
    with tempfile.TemporaryDirectory(prefix="wgpt-bench-") as tmp:
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "train.py"),
                *overrides,
                f"hydra.run.dir={tmp}/run",
                f"paths.output_root={tmp}/outputs",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if result.returncode != 0:
            raise SystemExit(f"train.py {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
        with open(Path(tmp) / "run" / "metrics.csv") as f:
            return list(csv.DictReader(f))


def last(rows: list[dict], key: str) -> float:
    """The last logged value of ``key``."""
    values = [float(r[key]) for r in rows if r.get(key)]
    if not values:
        raise SystemExit(f"no {key} in the run's metrics")
    return values[-1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt(values: list[float], digits: int = 0) -> str:
    """'median (a, b, c)'."""
    return f"{median(values):,.{digits}f} ({', '.join(f'{v:,.{digits}f}' for v in values)})"
