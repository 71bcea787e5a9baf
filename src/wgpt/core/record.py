"""``record.json`` (and ``git.diff``): what a run ran, beside what ``.hydra/`` keeps of its config:
the command, the code (git commit, and the diff of a dirty tree), the versions, the machine, the
numeric settings and environment, and at the end its wall time and FLOPs. Written by rank 0."""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import wgpt
from wgpt.core.devices import cpu_model, gpu_names_and_driver
from wgpt.core.launch import RECORDED_ENV
from wgpt.util.files import atomic_write_text

log = logging.getLogger("wgpt")

RECORD = "record.json"
DIFF = "git.diff"
DIFF_LIMIT = 1 << 20  # bytes of git.diff kept; the rest is cut with a line saying so
# Code whose uncommitted changes and new files the diff holds.
CODE_DIRS = ("src", "conf")
ENVIRONMENT = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")  # besides every WGPT_*


def git_state(root: Path, run_dir: Path, diff_name: str = DIFF) -> dict[str, Any]:
    """The checkout at ``root``: its commit, whether anything in it differs from the commit (new
    files included, ignored ones not), and, if so, ``diff_name`` in ``run_dir``: the changes to
    src/ and conf/ against the commit, and their new files whole, cut at DIFF_LIMIT bytes."""

    def git(*args: str, ok=(0,)) -> str | None:
        try:  # bytes, decoded leniently: a file in another encoding must not stop the run
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.decode(errors="replace") if done.returncode in ok else None

    top = git("rev-parse", "--show-toplevel")
    commit = git("rev-parse", "HEAD")
    if top is None or commit is None or Path(top.strip()).resolve() != root.resolve():
        return {"commit": None, "note": "not a git checkout (or git is not installed)"}
    status = git("status", "--porcelain")
    state: dict[str, Any] = {"commit": commit.strip(), "dirty": None if status is None else bool(status), "diff": None}
    if not status:
        return state
    plain = ("--no-color", "--no-ext-diff")  # whatever the user's git config says
    parts = [git("diff", *plain, "HEAD", "--", *CODE_DIRS) or ""]
    listed = git("ls-files", "-z", "--others", "--exclude-standard", "--", *CODE_DIRS) or ""
    new_files = [name for name in listed.split("\0") if name]
    for name in new_files:  # exit code 1: the files differ, as a new file always does
        if sum(len(p) for p in parts) > DIFF_LIMIT:
            break
        parts.append(git("diff", *plain, "--no-index", "--", os.devnull, name, ok=(0, 1)) or "")
    diff = "".join(parts)
    if diff:
        if len(diff.encode()) > DIFF_LIMIT:
            kept = diff.encode()[:DIFF_LIMIT].decode(errors="ignore")
            diff = f"{kept}\n[{diff_name} cut at {DIFF_LIMIT:,} bytes of {len(diff.encode()):,}]\n"
            state["diff_cut"] = True
        atomic_write_text(run_dir / diff_name, diff)
        state["diff"] = diff_name
    state["new_files"] = new_files
    return state


def versions(driver: str | None) -> dict[str, str | None]:
    import hydra
    import lightning
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "hydra": hydra.__version__,
        "cuda": torch.version.cuda,
        "driver": driver,
    }


def machine(gpus: list[str]) -> dict[str, Any]:
    import torch

    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "gpu_count": len(gpus),
    }


def numerics(precision: Any) -> dict[str, Any]:
    import torch

    return {
        "precision": str(precision),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def code_root() -> Path:
    """The checkout whose code runs: the one holding the imported wgpt package (src/wgpt)."""
    return Path(wgpt.__file__).resolve().parents[2]


def write_run_record(run_dir: str | Path, precision: Any) -> None:
    """Write ``record.json`` as the run starts (a run continued in its dir keeps its earlier
    parts' records in ``earlier_parts``). Never fails the run: a problem is logged and noted."""
    try:
        _write_run_record(Path(run_dir), precision)
    except Exception as e:  # noqa: BLE001 (a record is worth less than the run)
        log.warning("Could not write %s: %s", Path(run_dir) / RECORD, e)


def _write_run_record(run_dir: Path, precision: Any) -> None:
    path = run_dir / RECORD
    earlier = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            earlier = [*previous.pop("earlier_parts", []), previous]
        except json.JSONDecodeError:  # a damaged earlier record: this part's alone is kept
            earlier = []
    gpus, driver = gpu_names_and_driver()
    record = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "cwd": os.getcwd(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # A continued run's later parts keep the earlier parts' diffs: git.part2.diff, ...
        "git": git_state(code_root(), run_dir, DIFF if not earlier else f"git.part{len(earlier) + 1}.diff"),
        "versions": versions(driver),
        "machine": machine(gpus),
        "numerics": numerics(precision),
        "environment": {
            k: v
            for k, v in sorted(os.environ.items())
            if (k.startswith("WGPT_") or k in ENVIRONMENT) and k != RECORDED_ENV
        },
        "started_unix": time.time(),
    }
    if earlier:
        record["earlier_parts"] = earlier
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def finish_run_record(run_dir: str | Path, **totals: Any) -> None:
    """Add the run's end to its ``record.json``: ``wall_seconds`` since it started, and ``totals``
    (steps, training FLOPs). Nothing if there is no record (a run started outside train.py)."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    record["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["wall_seconds"] = round(time.time() - record.get("started_unix", time.time()), 3)
    record.update(totals)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
