"""The logger group through the real train.py: csv always on, tensorboard and wandb (offline) beside it,
and a logger whose package is missing. The composed choices: tests/unit/test_loggers.py."""

from pathlib import Path

import pytest

from conftest import FAST, LOGGERS, paths, read_metrics, run_cli


def tensorboard_scalars(log_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def test_csv_tensorboard_and_offline_wandb_in_each_job_of_a_sweep(sweep):
    # conftest's SWEEP: logger=[csv,tensorboard,wandb] (W&B offline, its files under the sweep's
    # temporary dir), jobs 0-gpt2-tiny and 1-llama3-tiny.
    if LOGGERS != ["csv", "tensorboard", "wandb"]:
        pytest.skip("needs the tensorboard and wandb packages (pip install -e '.[loggers]')")
    result, sweep_dir = sweep
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [job.name for job in jobs] == ["0-gpt2-tiny", "1-llama3-tiny"]
    for job, other in zip(jobs, reversed(jobs)):
        # metrics.csv as always, and TensorBoard holding the same train losses at the same steps.
        from_csv = {int(r["step"]): float(r["train_loss"]) for r in read_metrics(job) if r["train_loss"]}
        (events,) = (job / "tensorboard").glob("events.out.tfevents.*")
        from_tensorboard = tensorboard_scalars(events.parent, "train_loss")
        assert len(from_csv) == 4 and from_tensorboard.keys() == from_csv.keys()
        assert all(from_tensorboard[step] == pytest.approx(loss, rel=1e-6) for step, loss in from_csv.items())
        assert len(tensorboard_scalars(events.parent, "val_loss")) == 2  # validations at steps 4 and 8
        # The layer diagnostics of step 8 (4 x log_every_n_steps) beside them, at train_loss's step
        # number; in diagnostics.csv, never in metrics.csv.
        assert tensorboard_scalars(events.parent, "diagnostics/update_ratio/block0.attn").keys() == {7}
        assert not any(k.startswith("diagnostics") or "update_ratio" in k for k in read_metrics(job)[0])

        # A W&B run of its own in the job's dir (the next job in this process must not reuse it),
        # named after the job's dir, grouped by the sweep's, its metrics and config in its log.
        (wandb_run,) = (job / "wandb").glob("offline-run-*")
        (record,) = wandb_run.glob("run-*.wandb")
        data = record.read_bytes()
        assert b"train_loss" in data and b"val_loss" in data and b"d_embed" in data
        assert b"diagnostics/grad_norm/block0.mlp" in data
        name, group = f"multirun/{sweep_dir.name}/{job.name}".encode(), f"multirun/{sweep_dir.name}".encode()
        assert name in data and group in data.replace(name, b"")  # the group apart from the name, which starts with it
        assert f"multirun/{sweep_dir.name}/{other.name}".encode() not in data  # not the other job's run
    assert (sweep_dir.parents[2] / "wrote-home.json").read_text() == "false"  # nothing written to ~/.config/wandb
    # Each job prints its own start-up report and saves its own config tree.
    assert result.stdout.count("Model gpt2-tiny:") == result.stdout.count("Model llama3-tiny:") == 1
    assert all((job / "config_tree.txt").is_file() for job in jobs)


# train.py as a user without the wandb package runs it: the import system finds no wandb.
WITHOUT_WANDB = (
    "import runpy, sys; sys.modules['wandb'] = None; sys.argv[0] = 'train.py'; "
    "runpy.run_path('train.py', run_name='__main__')"
)


def test_a_logger_whose_package_is_missing_is_one_line(tmp_path, data_dir):
    result = run_cli("-c", WITHOUT_WANDB, "logger=wandb", *FAST, *paths(tmp_path, data_dir))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: logger=wandb needs the wandb package: pip install wandb (or pip install -e '.[loggers]')"
    )
    assert "Traceback" not in result.stderr
