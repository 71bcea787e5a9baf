"""A stopped -m sweep resumed in its own dir: finished jobs kept, the interrupted one continued from
its own recent.ckpt to the weights of an uninterrupted run, the rest run, one table over all.
In-process checks: tests/unit/test_sweep_resume.py."""

import csv
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli
from helpers_sweep_resume import fake_sweep

# Seconds a job: recent.ckpt every 4 steps, validation every 4, dropout on (the resumed job must
# restore the random stream too).
TINY = [
    "model.d_embed=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.dropout=0.1",
    "data.seq_len=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=8",
    "trainer.val_every_n_steps=4",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.recent.every_n_train_steps=4",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


# In every run of the sweep, so that the resumed one has the very same overrides: it kills only
# while $WGPT_TEST_KILL_JOB names a job (tests/sweep_helpers.py).
KILL = ["+callbacks.kill._target_=sweep_helpers.KillSweepAt", "+callbacks.kill.step=6"]


HELPERS = {"PYTHONPATH": str(ROOT / "tests")}


def paths(out: Path, data_dir: Path) -> list[str]:
    return [f"paths.output_root={out}", f"paths.data_dir={data_dir}"]


def killed_sweep(args: list[str], job: int) -> subprocess.CompletedProcess:
    """The sweep run until job ``job`` reaches step 6, then SIGKILLed with every process it started
    (its own process group: a crash of the machine, not of the test)."""
    return run_cli("train.py", *args, env={**HELPERS, "WGPT_TEST_KILL_JOB": str(job)}, new_session=True)


def mtimes(*paths: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*")))}


def weights(ckpt: Path) -> dict:
    return torch.load(ckpt, weights_only=True)


def test_a_sweep_killed_in_job_2_resumes_job_2_and_runs_job_3_only(tmp_path, data_dir):
    out = tmp_path / "out"
    sweep = [
        "-m",
        "optim.lr=1e-2,2e-2,3e-2,4e-2",
        *TINY,
        *KILL,
        "+callbacks.kill.job=${hydra:job.num}",
        *paths(out, data_dir),
    ]
    killed = killed_sweep(sweep, job=2)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    (sweep_dir,) = (out / "multirun").iterdir()
    jobs = [sweep_dir / f"{n}-gpt2-tiny" for n in range(4)]
    assert [j.is_dir() for j in jobs] == [True, True, True, False]
    assert (
        weights(jobs[2] / "checkpoints" / "recent.ckpt")["global_step"] == 4 and not (jobs[2] / "summary.json").exists()
    )
    finished = mtimes(
        jobs[0] / "checkpoints", jobs[0] / "summary.json", jobs[1] / "checkpoints", jobs[1] / "summary.json"
    )

    # The short form: the sweep dir alone, its overrides read from its multirun.yaml.
    resumed = run_cli("train.py", f"resume={sweep_dir}", env=HELPERS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"Resuming the sweep in {sweep_dir}: jobs 0, 1 kept (completed); job 2 continued from recent.ckpt; 1 new"
        in resumed.stdout
    )
    assert mtimes(*finished) == finished  # jobs 0 and 1: not trained, not rewritten
    for n in (0, 1):
        assert f"Job {n} finished in an earlier run (completed" in resumed.stdout

    # Job 2 went on in its own dir from its step-4 checkpoint, to the weights of an uninterrupted run.
    summary = json.loads((jobs[2] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 8
    assert summary["resumed_from"] == str(jobs[2] / "checkpoints" / "recent.ckpt")
    assert "optim.lr=0.03" in summary["overrides"]
    full = run_cli("train.py", "optim.lr=0.03", *TINY, *paths(tmp_path / "full", data_dir))
    assert full.returncode == 0, full.stderr[-3000:]
    (reference,) = (tmp_path / "full").glob("gpt2-tiny/*/checkpoints/recent.ckpt")
    a, b = weights(reference), weights(jobs[2] / "checkpoints" / "recent.ckpt")
    assert a["global_step"] == b["global_step"] == 8 and a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["best_metrics"] == b["best_metrics"]
    # Its dir tells one story: one best checkpoint (named after the sweep's start), each step's
    # metrics once, the earlier part's rows kept.
    assert sorted(p.name for p in (jobs[2] / "checkpoints").iterdir()) == [
        f"best-{sweep_dir.name}.ckpt",
        f"best-{sweep_dir.name}.safetensors",
        "recent-previous.ckpt",  # the first part's step-4 save, kept when step 8's replaced it
        "recent.ckpt",
    ]
    with open(jobs[2] / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["train_loss"]] == list(range(8))
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [3, 7]

    with open(sweep_dir / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["job"], r["optim.lr"], r["status"], r["steps"]) for r in table] == [
        (str(n), lr, "completed", "8") for n, lr in enumerate(["0.01", "0.02", "0.03", "0.04"])
    ]
    assert "resume" not in table[0]  # how the sweep was started is no column
    assert "best job: job " in resumed.stdout


def test_a_ddp_sweep_job_goes_on_in_its_own_dir(tmp_path, data_dir):
    """A job that is its own DDP launch (wgpt.core.launch.launch_job_alone): its relaunch continues from
    the checkpoint the sweep chose, into the job's dir, with the job's own overrides."""
    out = tmp_path / "out"
    sweep = ["-m", "optim.lr=1e-2", *TINY, "trainer.devices=2", "trainer.strategy=ddp", *KILL, "+callbacks.kill.job=0"]
    killed = killed_sweep([*sweep, *paths(out, data_dir)], job=0)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    (sweep_dir,) = (out / "multirun").iterdir()
    job = sweep_dir / "0-gpt2-tiny"
    assert weights(job / "checkpoints" / "recent.ckpt")["global_step"] == 4

    # The long form: the same overrides, resume=auto, the sweep dir.
    resumed = run_cli(
        "train.py", *sweep, *paths(out, data_dir), "resume=auto", f"hydra.sweep.dir={sweep_dir}", env=HELPERS
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 8
    assert summary["resumed_from"] == str(job / "checkpoints" / "recent.ckpt")
    assert not any(o.startswith("ckpt_path=") for o in summary["overrides"])
    log = (job / "train.log").read_text()
    assert f"(continuing from {job / 'checkpoints' / 'recent.ckpt'})" in log and "MEMBER: 2/2" in log
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == [
        f"best-{sweep_dir.name}.ckpt",
        f"best-{sweep_dir.name}.safetensors",
        "recent-previous.ckpt",  # the first part's step-4 save, kept when step 8's replaced it
        "recent.ckpt",
    ]
    with open(job / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["train_loss"]] == list(range(8))
    assert [p.name for p in sweep_dir.iterdir() if p.is_dir()] == ["0-gpt2-tiny"]  # no other run dir


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["optim.lr=3e-4,2e-4"],
            "resume: job 0 ({job0}) ran with optim.lr=0.001, this sweep's job 0 has optim.lr=0.0003",
        ),
        (["optim.lr=1e-3"], "resume: {sweep}/1-gpt2-tiny is job 1, but this sweep has 1 job:"),
    ],
    ids=["other values", "fewer jobs"],
)
def test_resuming_with_other_overrides_than_the_sweep_ran_is_one_line_and_changes_nothing(
    tmp_path, data_dir, args, says
):
    sweep_dir = tmp_path / "multirun" / "2026-01-01_00-00-00"
    fake_sweep(sweep_dir, [["optim.lr=0.001"], ["optim.lr=0.002"]], ["optim.lr=1e-3,2e-3"])
    before = tree(tmp_path)
    result = run_cli("train.py", "-m", *args, f"resume={sweep_dir}", *paths(tmp_path / "out", data_dir))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: " + says.format(job0=sweep_dir / "0-gpt2-tiny", sweep=sweep_dir)), line
    assert tree(tmp_path) == before
