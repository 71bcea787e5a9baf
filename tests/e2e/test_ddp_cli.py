"""Real 2-process DDP runs (CPU, gloo) through train.py: a mixture, a -m sweep, torchrun."""

import csv
import json
import random
import re
import socket
import time
from collections import defaultdict
from pathlib import Path

from conftest import ROOT, run_cli

# A model that takes seconds, two ranks on CPU, ranks recording what they train on.
TINY = [
    "model.d_embed=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.max_steps=4",
    "trainer.val_every_n_steps=2",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "+callbacks.record._target_=record_batches.RecordBatches",
]


RECORD_ENV = {"PYTHONPATH": str(ROOT / "tests")}


def seen(path: Path) -> dict[int, list[dict]]:
    """What each rank recorded: rank -> one record per batch."""
    return {int(p.stem[4:]): [json.loads(line) for line in p.open()] for p in sorted(path.glob("rank*.jsonl"))}


def one_log_and_config(run_dir: Path) -> str:
    """The run dir holds one log file and one .hydra/: returns the log."""
    assert [p.name for p in run_dir.glob("*.log")] == ["train.log"]
    assert [p.name for p in run_dir.rglob(".hydra")] == [".hydra"]
    return (run_dir / "train.log").read_text()


def corpus(path, word, n=6):
    """Text in which every 8 tokens are unique (random numbers) and every window holds `word`."""
    rng = random.Random(word)
    path.mkdir()
    for i in range(n):
        (path / f"{i}.txt").write_text(" ".join(f"{word} {rng.randrange(10**6)}" for _ in range(150)))


def test_ddp_ranks_see_disjoint_windows_and_the_same_steps(tmp_path):
    corpus(tmp_path / "alpha", "alpha")
    corpus(tmp_path / "beta", "beta", n=10)
    source = "{_target_:wgpt.data.sources.local,_partial_:true,path:%s,carve:{validation:1,test:1}}"
    result = run_cli(
        "train.py",
        "data=local",
        f"data.path={tmp_path / 'alpha'}",
        "~data.datasets.local",
        f"+data.datasets.alpha={source % (tmp_path / 'alpha')}",
        f"+data.datasets.beta={source % (tmp_path / 'beta')}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_epochs=2",
        "trainer.max_steps=-1",
        "trainer.val_every_n_steps=50",
        "trainer.enable_progress_bar=false",
        "model.d_embed=32",
        "model.n_layers=1",
        "model.n_heads=2",
        "model.max_seq_len=32",
        "data.batch_size=4",
        "data.num_workers=0",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_root={tmp_path / 'out'}",
        "+callbacks.record._target_=record_batches.RecordBatches",
        f"+callbacks.record.path={tmp_path / 'seen'}",
        env={"PYTHONPATH": str(ROOT / "tests"), "HF_DATASETS_CACHE": str(tmp_path / "hf")},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = {r: [json.loads(line) for line in open(tmp_path / "seen" / f"rank{r}.jsonl")] for r in (0, 1)}
    assert [b["step"] for b in seen[0]] == [b["step"] for b in seen[1]]  # same number of steps, in step
    for epoch in (0, 1):
        windows = [tuple(w) for r in (0, 1) for b in seen[r] if b["epoch"] == epoch for w in b["windows"]]
        assert windows and len(windows) == len(set(windows)), f"a window was seen twice in epoch {epoch}"
    sources = defaultdict(set)
    for r in (0, 1):
        for b in seen[r]:
            sources[b["step"]].add(frozenset("alpha" if ALPHA & set(w) else "beta" for w in b["windows"]))
    assert all(len(s) == 1 and len(next(iter(s))) == 1 for s in sources.values()), "each step: one dataset, all ranks"

    (run_dir,) = (tmp_path / "out" / "gpt2-tiny").iterdir()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["gpt2-tiny"]
    log = one_log_and_config(run_dir)
    assert "][rank 1][" in log and "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log
    # The start-up print (config tree, parameter count) comes from rank 0 alone.
    assert len(re.findall(r"^config$", result.stdout, re.M)) == 1 and result.stdout.count("Model gpt2-tiny:") == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "recent.ckpt"
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    assert rows and all(r["val_loss/alpha"] and r["val_loss/beta"] for r in rows)


ALPHA: set[int] = set()


def setup_module():
    from wgpt.tokenizers.r50k import Tokenizer

    ALPHA.update(Tokenizer().encode("alpha alpha"))  # the word with and without a leading space


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_jobs_are_ddp_launches_of_their_own(tmp_path, data_dir):
    """-m over 2 learning rates, each job 2 ranks: job 1's rank 1 crashes, the sweep still ends with its table."""
    started = time.monotonic()
    result = run_cli(
        "train.py",
        "-m",
        "optim.lr=0.01,0.03",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        *TINY,
        "+callbacks.record.path=${paths.output_dir}/seen",
        "+callbacks.record.fail_on_rank_1_at_lr=0.03",
        f"paths.data_dir={data_dir}",
        f"paths.output_root={tmp_path / 'out'}",
        env=RECORD_ENV,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]  # Hydra ends a sweep with a failed job in failure
    assert time.monotonic() - started < 300, "a failed job must not hang the sweep"
    assert "Error: this job's DDP launch failed (" in result.stderr  # one line, no traceback

    (sweep_dir,) = (tmp_path / "out" / "multirun").iterdir()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["multirun"]  # no run dirs outside the sweep
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0-gpt2-tiny", "1-gpt2-tiny", "multirun.yaml", "summary.csv"]
    for job, lr in [(0, 0.01)]:
        job_dir = sweep_dir / f"{job}-gpt2-tiny"
        log = one_log_and_config(job_dir)
        assert "][rank 1][" in log
        ranks = seen(job_dir / "seen")
        assert sorted(ranks) == [0, 1]
        assert all(
            r["lr"] == lr and r["world_size"] == 2 and r["seed"] == "1337" for rank in ranks.values() for r in rank
        )
        assert f"optim.lr={lr}" in (job_dir / ".hydra" / "overrides.yaml").read_text()
        assert {p.name for p in (job_dir / "checkpoints").iterdir()} == {
            "recent.ckpt",
            f"best-{sweep_dir.name}.ckpt",
            f"best-{sweep_dir.name}.safetensors",
        }

    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [
        ("0", "0.01", "completed"),
        ("1", "0.03", "failed"),
    ]
    assert all(float(r["best_val_loss"]) <= float(r["final_val_loss"]) < 11 for r in rows[:1])
    assert "rank 1 fails on purpose" in (sweep_dir / "1-gpt2-tiny" / "train.log").read_text()
    assert "Sweep summary" in result.stdout and "failed" in result.stdout


def test_torchrun_gives_one_run_dir(tmp_path, data_dir):
    result = run_cli(
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "train.py",
        *TINY,
        f"+callbacks.record.path={tmp_path / 'seen'}",
        f"paths.data_dir={data_dir}",
        f"paths.output_root={tmp_path / 'out'}",
        env=RECORD_ENV,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "gpt2-tiny").iterdir()
    log = one_log_and_config(run_dir)
    assert "2 processes per node on 1 nodes, as the launcher started them" in log and "][rank 1][" in log
    ranks = seen(tmp_path / "seen")
    assert sorted(ranks) == [0, 1] and all(r["world_size"] == 2 for rank in ranks.values() for r in rank)
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 4


def test_a_sweep_through_submitit_runs_its_jobs_in_submitits_processes(tmp_path, data_dir):
    """hydra/launcher=submitit_local: the code path of conf/hydra/launcher/slurm.yaml (jobs
    unpickled in fresh processes), on this machine."""
    result = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=submitit_local",
        "optim.lr=0.01",
        *TINY,
        "~callbacks.record",
        f"paths.data_dir={data_dir}",
        f"paths.output_root={tmp_path / 'out'}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "out" / "multirun").iterdir()
    assert (sweep_dir / ".submitit").is_dir() and (sweep_dir / "0-gpt2-tiny" / "checkpoints" / "recent.ckpt").exists()
    with open(sweep_dir / "summary.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["status"] == "completed" and row["steps"] == "4"
