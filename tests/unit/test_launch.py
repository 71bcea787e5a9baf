"""The processes of one launch agree on its run dir and tag their log lines; sweep tables."""

import csv
import math
from datetime import datetime

import pytest
from torch.distributed import TCPStore

from wgpt.core.launch import DATETIME_FORMAT, on_rank_zero, rank_tag, start_datetime
from wgpt.core.summary import write_run_summary
from wgpt.core.sweep import format_table, sweep_rows, write_sweep_csv

LAUNCH_VARS = [
    "WGPT_START_DATETIME",
    "TORCHELASTIC_RUN_ID",
    "RANK",
    "GROUP_RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "WORLD_SIZE",
    "NODE_RANK",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_JOB_START_TIME",
    "SLURM_STEP_ID",
]


@pytest.fixture(autouse=True)
def lone_process(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


def torchrun_rank(monkeypatch, rank: int, port: int):
    env = {
        "TORCHELASTIC_RUN_ID": "r",
        "RANK": str(rank),
        "GROUP_RANK": "0",
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": "2",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_a_lone_process_starts_now():
    assert abs((datetime.strptime(start_datetime(), DATETIME_FORMAT) - datetime.now()).total_seconds()) < 5
    assert rank_tag() == "" and on_rank_zero(".hydra") == ".hydra"


def test_the_parents_start_time_is_inherited(monkeypatch):
    monkeypatch.setenv("WGPT_START_DATETIME", "2020-01-02_03-04-05")
    assert start_datetime() == "2020-01-02_03-04-05"


def test_torchrun_ranks_share_the_first_ranks_time_through_the_agent_store(monkeypatch):
    agent = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # what torchrun's agent hosts
    agent.set("wgpt/start_datetime/0", "2020-01-02_03-04-05")  # rank 0 asked first, in 2020
    torchrun_rank(monkeypatch, 1, agent.port)
    assert start_datetime() == "2020-01-02_03-04-05"
    assert rank_tag() == "[rank 1]" and on_rank_zero(".hydra") is None
    torchrun_rank(monkeypatch, 0, agent.port)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # a restarted group is a new launch
    first = start_datetime()
    assert first != "2020-01-02_03-04-05" and agent.get("wgpt/start_datetime/1").decode() == first
    assert rank_tag() == ""


def test_srun_tasks_share_the_jobs_start_time(monkeypatch):
    for name, value in {
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "2",
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NAME": "train",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_JOB_START_TIME", "1700000000")
    expected = datetime.fromtimestamp(1700000000).strftime(DATETIME_FORMAT)
    assert start_datetime() == expected and rank_tag() == "[rank 2]"
    monkeypatch.setenv("SLURM_STEP_ID", "3")  # a job's later srun: a run of its own
    assert start_datetime() == f"{expected}-step3"
    monkeypatch.delenv("SLURM_JOB_START_TIME")
    monkeypatch.delenv("SLURM_STEP_ID")
    assert start_datetime() == "slurm-77"


def test_lightning_started_ranks_tag_their_lines(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_tag() == "[rank 1]"
    monkeypatch.setenv("NODE_RANK", "2")
    assert rank_tag() == "[rank 2.1]"


def test_sweep_table_shows_what_varies_and_how_each_job_ended(tmp_path):
    for num, lr, status in [(0, "0.01", "completed"), (1, "0.02", "failed"), (2, "0.03", None)]:
        job = tmp_path / f"{num}-gpt2-tiny"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        (job / ".hydra" / "overrides.yaml").write_text(f"- optim.lr={lr}\n- trainer.max_steps=8\n")
        if status == "completed":
            write_run_summary(
                job,
                status=status,
                final_val_loss=5.5,
                best_val_loss=5.25,
                final_val_bpb=2.5,
                best_val_bpb=2.375,
                best_step=8,
                global_step=8,
            )
        elif status == "failed":
            write_run_summary(job, status=status, error="Error: boom", global_step=3, final_val_loss=math.nan)
    varying, rows = sweep_rows(tmp_path)
    assert varying == ["optim.lr"]
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [
        (0, "0.01", "completed"),
        (1, "0.02", "failed"),
        (2, "0.03", "failed"),
    ]
    assert rows[2]["error"] == "ended without a summary (killed?)"
    table = format_table(varying, rows).splitlines()
    assert table[0].split() == [
        "job",
        "optim.lr",
        "status",
        "final_val_loss",
        "best_val_loss",
        "final_val_bpb",
        "best_val_bpb",
        "steps",
        "error",
    ]
    assert table[2].split() == ["0", "0.01", "completed", "5.5000", "5.2500", "2.5000", "2.3750", "8"]
    assert table[3].split() == ["1", "0.02", "failed", "nan", "3", "Error:", "boom"]
    write_sweep_csv(tmp_path / "summary.csv", rows)
    with open(tmp_path / "summary.csv") as f:
        saved = list(csv.DictReader(f))
    assert [r["status"] for r in saved] == ["completed", "failed", "failed"] and saved[0]["best_val_loss"] == "5.25"
    assert saved[0]["best_val_bpb"] == "2.375" and saved[1]["best_val_bpb"] == ""  # a job that never validated
    assert saved[1]["error"] == "Error: boom" and saved[0]["overrides"] == "optim.lr=0.01 trainer.max_steps=8"
