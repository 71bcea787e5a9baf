"""Nothing lost: a killed run resumes exactly, Ctrl-C saves, checkpoint writes are atomic, and a
checkpoint can never run code or silently load into the wrong model."""

import csv
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, killed_at, run_cli, train_killable

TINY = [
    "model.d_embed=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.dropout=0.1",
    "data.batch_size=4",
    "data.num_workers=2",
    "trainer.max_steps=12",
    "trainer.val_every_n_steps=4",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "callbacks.recent.every_n_train_steps=4",
    "trainer.accelerator=cpu",
]


def paths(out: Path, data_dir: Path) -> list[str]:
    return [f"paths.output_root={out}", f"paths.data_dir={data_dir}"]


def losses_by_step(run_dir: Path) -> list[tuple]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(row["step"], row.get("train_loss"), row.get("val_loss")) for row in csv.DictReader(f)]


def recent(out: Path) -> Path:
    (path,) = out.glob("gpt2-tiny/*/checkpoints/recent.ckpt")
    return path


def test_a_guarded_ddp_run_killed_after_a_spike_resumes_to_the_same_weights(tmp_path, data_dir, monkeypatch):
    """2-rank DDP, dropout on, 2 loader workers, Muon (the guard's host route), a gradient spike
    injected at step 5 with callbacks.guard.z on: skipped on both ranks. SIGKILL at step 6 (recent
    saved at 4, before the spike), resume=auto to step 12: the spike is met and skipped again, the
    guard's statistics go through the checkpoint, and both of Muon's optimizers' states: the
    weights equal the uninterrupted guarded run's. (AdamW: the six kills below.) Layer diagnostics
    every 2 steps: their extra forward (eval mode, dropout off, the RNG put back) leaves training
    exact, and the resumed run's diagnostics.csv is the uninterrupted one's."""
    guard = ["callbacks.guard.z=4", "callbacks.guard.warmup=2"]
    diagnosed = ["callbacks.diagnostics.every_n_steps=2"]
    TINY = [*globals()["TINY"], "optim=muon", "trainer.devices=2", "trainer.strategy=ddp", *guard, *diagnosed]
    monkeypatch.setenv("WGPT_TEST_GUARD", "5:1e3")  # every launch, every rank: the same bad batch
    full = run_cli("train.py", *TINY, *paths(tmp_path / "full", data_dir))
    assert full.returncode == 0, full.stderr[-3000:]
    # Both ranks skip it (a rank that stepped alone would leave the replicas apart: DDP checks nothing).
    skips = [line for line in (full.stdout + full.stderr).splitlines() if "skipped (grad_norm" in line]
    assert len(skips) == 2 and all("step 5 skipped" in line for line in skips), skips
    assert sorted("[rank 1]" in line for line in skips) == [False, True], skips

    out = tmp_path / "crash"
    killed = killed_at(6, *TINY, *paths(out, data_dir), "start_datetime=2020-01-01_00-00-00")
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    first = out / "gpt2-tiny" / "2020-01-01_00-00-00"
    assert torch.load(first / "checkpoints" / "recent.ckpt", weights_only=True)["global_step"] == 4

    resumed = train_killable(*TINY, *paths(out, data_dir), "resume=auto")  # the same overrides, as a restart has
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The unfinished run goes on in its own dir: one train.log, metrics.csv and summary.json.
    assert [d.name for d in (out / "gpt2-tiny").iterdir()] == [first.name]
    summary = json.loads((first / "summary.json").read_text())
    assert summary["resumed_from"] == str(first / "checkpoints" / "recent.ckpt") and summary["status"] == "completed"
    log = (first / "train.log").read_text()
    assert f"Resuming from {first / 'checkpoints' / 'recent.ckpt'} (step 4), going on in its own run dir" in log
    assert log.count("Model gpt2-tiny:") == 2  # the first part's lines are kept, the second's follow
    # Every logged step once, with the losses of the uninterrupted run.
    assert losses_by_step(first) == losses_by_step(recent(tmp_path / "full").parents[1])
    diagnostics = (recent(tmp_path / "full").parents[1] / "diagnostics.csv").read_text()
    assert (first / "diagnostics.csv").read_text() == diagnostics and diagnostics.count("\n2,") > 0

    a = torch.load(recent(tmp_path / "full"), weights_only=True)
    b = torch.load(first / "checkpoints" / "recent.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["best_metrics"] == b["best_metrics"]
    states = b["optimizer_states"][0]["optimizers"]  # Muon on the hidden matrices, AdamW on the rest: both saved
    assert len(states) == 2 and "exp_avg" in states[0]["state"][0] and "momentum_buffer" in states[1]["state"][0]


def test_six_kills_and_resume_auto_leave_one_run_dir_equal_to_an_uninterrupted_run(tmp_path, data_dir):
    """A preemptible cluster's life: SIGKILLed six times at random moments (before the first
    checkpoint, before a step, inside a validation, while a checkpoint is being made), restarted
    with resume=auto each time. One run dir, each logged step once in metrics.csv with the
    uninterrupted run's losses, the same final weights."""
    args = [*TINY, "trainer.max_steps=16", "trainer.log_every_n_steps=2"]
    full = run_cli("train.py", *args, *paths(tmp_path / "full", data_dir))
    assert full.returncode == 0, full.stderr[-3000:]
    out = tmp_path / "preempted"
    rng = random.Random(30)
    kills = [(1, "step")] + sorted((rng.randrange(2, 16), rng.choice(["step", "validation", "save"])) for _ in range(5))
    for step, moment in kills:
        killed = train_killable(*args, *paths(out, data_dir), "resume=auto", kill=(step, moment), new_session=True)
        assert killed.returncode == -signal.SIGKILL, (step, moment, (killed.stdout + killed.stderr)[-3000:])
    last = train_killable(*args, *paths(out, data_dir), "resume=auto")
    assert last.returncode == 0, last.stderr[-3000:]

    (run,) = (out / "gpt2-tiny").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert (run / "train.log").read_text().count("Model gpt2-tiny:") == len(kills) + 1
    uninterrupted = recent(tmp_path / "full").parents[1]
    assert losses_by_step(run) == losses_by_step(uninterrupted)
    a = torch.load(recent(tmp_path / "full"), weights_only=True)
    b = torch.load(run / "checkpoints" / "recent.ckpt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["best_metrics"] == b["best_metrics"]  # every validation made once, the best among them


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_recent_before_exiting(tmp_path, data_dir, stop):
    args = [a for a in TINY if not a.startswith(("trainer.max_steps", "callbacks.recent"))]
    process = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            *args,
            "trainer.max_steps=100000",
            "trainer.log_every_n_steps=1",
            "callbacks.recent.every_n_train_steps=100000",
            *paths(tmp_path, data_dir),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: a shell's background job (`pytest &`) would start it with Ctrl-C ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        for line in process.stdout:
            if "step 3 | epoch" in line or time.monotonic() > deadline:
                break
        process.send_signal(stop)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()  # never leave a training process behind, whatever failed
    assert process.returncode == (1 if stop == signal.SIGINT else 128 + signal.SIGTERM)
    checkpoint = torch.load(recent(tmp_path), weights_only=True)
    assert 3 <= checkpoint["global_step"] < 100000
    assert f"Interrupted at step {checkpoint['global_step']}: saved" in output
    summary = json.loads((recent(tmp_path).parents[1] / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["global_step"] == checkpoint["global_step"]


SLURM_JOB = {
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NNODES": "1",
    "SLURM_JOB_NUM_NODES": "1",
}


def test_slurms_warning_signal_saves_recent_requeues_and_the_requeued_job_goes_on_in_place(tmp_path, data_dir):
    """As a SLURM job (the job's environment; a scontrol that records its arguments): SIGUSR1, as
    `#SBATCH --signal=USR1@120` sends it, saves recent at a step boundary and requeues the job; the
    requeued job's resume=auto finishes the run in the same dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, **SLURM_JOB, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    # The job's command, the same at every requeue: a budget it will not reach before the signal.
    out = tmp_path / "out"
    args = [
        *(a for a in TINY if not a.startswith(("trainer.max_steps", "callbacks.recent"))),
        "trainer.max_steps=30",
        "trainer.log_every_n_steps=1",
        "callbacks.recent.every_n_train_steps=100000",
        *paths(out, data_dir),
        "resume=auto",
    ]
    process = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        for line in process.stdout:
            if "step 3 | epoch" in line or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGUSR1)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    step = torch.load(recent(out), weights_only=True)["global_step"]
    assert 3 <= step < 30 and f"Interrupted at step {step}: saved" in output
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n" and "Requeued SLURM job 4242" in output
    run = recent(out).parents[1]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"

    requeued = run_cli("train.py", *args, env={**SLURM_JOB, "PATH": env["PATH"]})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert [d.name for d in (out / "gpt2-tiny").iterdir()] == [run.name]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 30
    assert (
        f"Resuming from {recent(out)} (step {step}), going on in its own run dir" in requeued.stdout + requeued.stderr
    )


WRITER = """
import sys, torch
from wgpt.callbacks import SafeCheckpointIO
io = SafeCheckpointIO()
io.save_checkpoint({"state_dict": {"w": torch.full((4,), 1.0)}, "global_step": 1}, sys.argv[1])
print("first saved", flush=True)
big = {"state_dict": {"w": torch.full((4,), 2.0), "big": torch.zeros(256, 2**20)}, "global_step": 2}  # 1 GiB
while True:
    io.save_checkpoint(big, sys.argv[1])
"""


def test_a_kill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_one_readable(tmp_path):
    path = tmp_path / "recent.ckpt"
    tmp = tmp_path / ".recent.ckpt.tmp"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "first saved"
    deadline = time.monotonic() + 60
    while not (tmp.exists() and tmp.stat().st_size > 2**20) and time.monotonic() < deadline:
        time.sleep(0.001)  # the 1 GiB save is under way
    process.kill()
    process.wait()
    assert tmp.exists()  # killed mid-save: the new checkpoint never replaced the old one
    checkpoint = torch.load(path, weights_only=True)  # which is whole
    assert checkpoint["global_step"] == 1 and torch.equal(checkpoint["state_dict"]["w"], torch.full((4,), 1.0))


class Payload:
    """Pickles into a call of os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_with_pickled_code_is_refused_and_never_runs(tmp_path, data_dir, gpt2_tiny_run):
    marker = tmp_path / "payload_ran"
    _, run_dir = gpt2_tiny_run  # a good checkpoint (d_embed=32, as TINY's)
    checkpoint = torch.load(run_dir / "checkpoints" / "recent.ckpt", weights_only=True)
    checkpoint["best_metrics"] = Payload(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    assert b"system" in evil.read_bytes()  # the payload is really there: an unsafe load would run it

    result = run_cli("train.py", *TINY, f"ckpt_path={evil}", *paths(tmp_path / "out2", data_dir))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith(f"Error: ckpt_path={evil} holds more than tensors and plain containers") and "refused" in last
    )
    assert not marker.exists()
    assert not list((tmp_path / "out2").glob("*/*/checkpoints"))  # stopped before any training

    pickle.loads(pickle.dumps(Payload(marker)))  # the control: unpickling it does run the payload
    assert marker.exists()


def test_resuming_into_a_model_of_another_shape_is_one_line(tmp_path, data_dir, gpt2_tiny_run):
    _, run_dir = gpt2_tiny_run  # a good checkpoint of d_embed=32
    ckpt = run_dir / "checkpoints" / "recent.ckpt"
    result = run_cli("train.py", *TINY, "model.d_embed=64", f"ckpt_path={ckpt}", *paths(tmp_path, data_dir))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: ckpt_path={ckpt} does not fit this model: wte.weight is [50304, 32] there and [50304, 64] here; "
        "use the model config it was trained with"
    )


def test_nan_steps_in_a_row_stop_the_run_in_one_line_whose_command_continues_it(tmp_path, data_dir, monkeypatch):
    """callbacks.guard: NaN gradients at steps 5-7 (max_skips=3) are skipped, each named with its
    batch; the third stops the run with one line (status failed, recent.ckpt and
    recent-previous.ckpt finite) whose command goes on past them in the same run dir to the end."""
    args = [*TINY, "data.num_workers=0", "trainer.log_every_n_steps=2", "callbacks.guard.max_skips=3"]
    monkeypatch.setenv("WGPT_TEST_GUARD", "5:nan,6:nan,7:nan")  # every launch: the data is bad there
    stopped = run_cli("train.py", *args, *paths(tmp_path, data_dir))
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    (line,) = stopped.stderr.strip().splitlines()
    assert line.startswith("Error: steps 5-7: 3 steps in a row skipped for a non-finite or spiking gradient norm")
    (run,) = (tmp_path / "gpt2-tiny").iterdir()
    log = (run / "train.log").read_text()
    for step in (5, 6, 7):
        assert re.search(rf"step {step} skipped \(grad_norm nan\) \| batch \(epoch 0\) shakespeare windows \[\d+", log)
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    for name in ("recent.ckpt", "recent-previous.ckpt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), name

    command = line.split("continue past them with the same command and ")[1].split(" (from")[0].split()
    assert command == ["resume=auto", "callbacks.guard.skip_steps=[5-7]"]
    resumed = run_cli("train.py", *args, *paths(tmp_path, data_dir), *command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [d.name for d in (tmp_path / "gpt2-tiny").iterdir()] == [run.name]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    rows = [row for row in csv.DictReader(open(run / "metrics.csv")) if row["train_loss"]]
    assert [int(r["step"]) + 1 for r in rows] == [2, 4, 6, 8, 10, 12]  # each logged step once
    assert float(rows[-1]["skipped_steps"]) == 3
