"""Time to a target (callbacks.target): the first validation past the value records step, tokens,
training seconds and FLOPs in summary.json and train.log; stop=true ends the run there, completed,
so a resumed sweep keeps the job as finished; a target never reached is recorded as such. From
config: tests/unit/test_target.py."""

import json

from conftest import run_cli

# A validation every 2 steps; the loss falls below 10.6 after a few of them, well before step 30.
RUN = [
    "model.d_embed=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_steps=30",
    "trainer.val_every_n_steps=2",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
]


def test_stop_true_ends_the_sweeps_jobs_at_the_target_and_a_resumed_sweep_keeps_them(tmp_path, data_dir):
    out = tmp_path / "out"
    target = ["callbacks.target.value=10.6", "callbacks.target.stop=true"]
    sweep = ["-m", "seed=1,2", *RUN, *target, f"paths.output_root={out}", f"paths.data_dir={data_dir}"]
    ran = run_cli("train.py", *sweep)
    assert ran.returncode == 0, ran.stderr[-3000:]
    (sweep_dir,) = (out / "multirun").iterdir()
    for job in (sweep_dir / "0-gpt2-tiny", sweep_dir / "1-gpt2-tiny"):
        summary = json.loads((job / "summary.json").read_text())
        reached = summary["target"]["reached"]
        assert summary["status"] == "completed" and summary["global_step"] == reached["step"] < 30
        assert summary["target"] | {"reached": None} == {
            "metric": "val_loss",
            "value": 10.6,
            "mode": "min",
            "reached": None,
        }
        assert reached["val_loss"] <= 10.6 and reached["step"] % 2 == 0
        assert reached["tokens"] == reached["step"] * 8 * 128  # batch x gpt2-tiny's 128 tokens
        assert reached["train_seconds"] > 0 and reached["flops"] > 0
        # The validation before it was still above the target.
        lines = [line for line in (job / "train.log").read_text().splitlines() if "| val_loss " in line]
        previous = [float(line.split("| val_loss ")[1].split()[0]) for line in lines[:-1]]
        assert previous and all(v > 10.6 for v in previous)
        assert f"Target val_loss <= 10.6 reached at step {reached['step']}" in (job / "train.log").read_text()
        assert " -m seed=1,2 " in json.loads((job / "record.json").read_text())["command"]  # the sweep's command
    resumed = run_cli("train.py", f"resume={sweep_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "jobs 0, 1 kept (completed)" in resumed.stdout


def test_a_target_never_reached_is_recorded_as_such(tmp_path, data_dir):
    args = [*RUN, "trainer.max_steps=4", "callbacks.target.value=0.5", f"paths.output_root={tmp_path}"]
    ran = run_cli("train.py", *args, f"paths.data_dir={data_dir}", "start_datetime=2020-01-01_00-00-00")
    assert ran.returncode == 0, ran.stderr[-3000:]
    summary = json.loads((tmp_path / "gpt2-tiny" / "2020-01-01_00-00-00" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 4
    assert summary["target"]["reached"] is None
