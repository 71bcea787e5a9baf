"""Which dir a launch trains in: resume=auto's choice of the run it continues (wgpt.core.launch),
and the lock that keeps two processes out of one run dir. Real kills and restarts:
tests/e2e/test_crash_safety.py."""

import json
import os
import time

import pytest
from omegaconf import OmegaConf

from wgpt.core.launch import RUN_LOCK, START_DATETIME_ENV, claim_run_dir, run_dir, unfinished_run
from wgpt.util.errors import WgptError
from wgpt.util.files import release_lock

OVERRIDES = ["model=gpt2-tiny", "optim.lr=1e-3"]


def fake_run(runs, name, overrides=OVERRIDES, status=None, recent=True, age=0.0):
    """A run dir as train.py leaves it: .hydra/overrides.yaml, maybe recent.ckpt and summary.json."""
    run = runs / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), run / ".hydra" / "overrides.yaml")
    (run / ".hydra" / "config.yaml").write_text("{}\n")
    markers = [run / ".hydra" / "config.yaml"]
    if recent:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "recent.ckpt").write_bytes(b"")
        markers.append(run / "checkpoints" / "recent.ckpt")
    if status is not None:
        (run / "summary.json").write_text(json.dumps({"status": status}))
    stamp = time.time() - 1000 + age
    for marker in markers:
        os.utime(marker, (stamp, stamp))
    return run


def test_resume_auto_continues_the_newest_unfinished_run_of_the_same_overrides(tmp_path):
    older = fake_run(tmp_path, "2026-01-01_00-00-00", status="interrupted", age=1)
    newest = fake_run(tmp_path, "2026-01-02_00-00-00", recent=False, age=2)  # died before its first save
    assert unfinished_run(tmp_path, ["resume=auto", *OVERRIDES]) == (newest, "")
    assert run_dir(str(tmp_path), "now", "auto", ["resume=auto", *OVERRIDES]) == str(newest)
    assert run_dir(str(tmp_path), "now", None, OVERRIDES) == f"{tmp_path}/now"  # no resume: a new dir
    found, why = unfinished_run(tmp_path, OVERRIDES, exclude=newest)
    assert found == older and why == ""


@pytest.mark.parametrize(
    "status, overrides, reason",
    [
        ("completed", OVERRIDES, "finished (completed); to train it further, give ckpt_path="),
        ("diverged", OVERRIDES, "finished (diverged)"),
        ("failed", ["model=gpt2-tiny", "optim.lr=3e-3"], "ran with optim.lr=1e-3, this launch has optim.lr=3e-3"),
        (None, ["model=gpt2-tiny"], "ran with optim.lr=1e-3, this launch has no optim.lr"),
    ],
)
def test_resume_auto_starts_a_new_dir_beside_a_finished_run_or_another_jobs(tmp_path, status, overrides, reason):
    fake_run(tmp_path, "2026-01-01_00-00-00", status=status)
    found, why = unfinished_run(tmp_path, overrides)
    assert found is None and reason in why
    assert run_dir(str(tmp_path), "now", "auto", overrides) == f"{tmp_path}/now"


def test_the_ranks_a_launch_starts_take_its_dir_without_looking(tmp_path, monkeypatch):
    fake_run(tmp_path, "2026-01-01_00-00-00")
    monkeypatch.setenv(START_DATETIME_ENV, "2026-01-01_00-00-00")
    assert run_dir(str(tmp_path), "2026-01-01_00-00-00", "auto", OVERRIDES) == f"{tmp_path}/2026-01-01_00-00-00"
    monkeypatch.setenv(START_DATETIME_ENV, "2026-02-02_00-00-00")  # a new run's ranks: its new dir
    assert run_dir(str(tmp_path), "2026-02-02_00-00-00", "auto", OVERRIDES) == f"{tmp_path}/2026-02-02_00-00-00"


def test_a_run_dir_is_held_by_one_process_and_free_once_it_lets_go(tmp_path, monkeypatch):
    monkeypatch.delenv("WGPT_RUN_RECORDED", raising=False)
    fd = claim_run_dir(tmp_path)
    assert fd is not None and (tmp_path / RUN_LOCK).is_file()
    pid = os.fork()
    if pid == 0:  # another process: refused in one line naming the dir and the way to branch from it
        try:
            claim_run_dir(tmp_path)
            os._exit(1)
        except WgptError as e:
            os._exit(0 if f"{tmp_path} is in use" in str(e) and "ckpt_path=" in str(e) else 2)
    assert os.waitpid(pid, 0)[1] == 0
    release_lock(fd)
    again = claim_run_dir(tmp_path)
    assert again is not None
    release_lock(again)
