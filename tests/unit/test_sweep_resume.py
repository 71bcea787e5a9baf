"""Resuming a sweep, in this process: the arguments spelled out for Hydra, and the metrics kept when a
run goes on in its dir. Real sweeps killed and resumed: tests/e2e/test_sweep_resume_cli.py."""

import csv
import re

import pytest
from lightning.pytorch.loggers import CSVLogger

from wgpt.core.logger import keep_metrics_before
from wgpt.core.sweep_resume import resume_arguments
from wgpt.util.errors import WgptError

from helpers_sweep_resume import fake_sweep


def test_resume_spells_out_the_sweep_for_hydra(tmp_path):
    sweep_dir = tmp_path / "multirun" / "t"
    fake_sweep(sweep_dir, [], ["optim.lr=1e-3,2e-3", "model=llama3-tiny", "resume=auto"])
    yaml = (sweep_dir / "multirun.yaml").read_text()
    (sweep_dir / "multirun.yaml").write_text(
        yaml.replace(
            "- hydra.mode=MULTIRUN\n", "- hydra.mode=MULTIRUN\n    - hydra/launcher=slurm\n    - hydra.sweep.dir=/old\n"
        )
    )
    at = f'hydra.sweep.dir="{sweep_dir}"'
    # Alone: the sweep's own overrides and launcher, as a -m sweep into its dir.
    assert resume_arguments(["train.py", f"resume={sweep_dir}"]) == [
        "train.py",
        "-m",
        "resume=auto",
        "optim.lr=1e-3,2e-3",
        "model=llama3-tiny",
        "hydra/launcher=slurm",
        at,
    ]
    # With overrides: those (checked against the job dirs when the sweep starts); a launcher given wins.
    assert resume_arguments(
        ["train.py", "-m", "optim.lr=5e-4", "hydra/launcher=submitit_local", f"resume={sweep_dir}"]
    ) == ["train.py", "-m", "optim.lr=5e-4", "hydra/launcher=submitit_local", "resume=auto", at]
    for argv in (["train.py", "resume=auto"], ["train.py", "-m", "optim.lr=1e-3"], ["train.py", f"resume={tmp_path}"]):
        assert resume_arguments(argv) == argv  # not a sweep's resume: Hydra and wgpt.core.validate see it as typed
    with pytest.raises(WgptError, match=re.escape(f"resume={tmp_path} is not a sweep dir (it has no multirun.yaml)")):
        resume_arguments(["train.py", "-m", f"resume={tmp_path}"])
    (sweep_dir / "0-gpt2-tiny").mkdir()
    with pytest.raises(WgptError, match=re.escape(f"is one of its jobs: resume={sweep_dir}") + "$"):
        resume_arguments(["train.py", f"resume={sweep_dir / '0-gpt2-tiny'}", "-m"])
    with pytest.raises(WgptError, match="names the sweep dir already"):
        resume_arguments(["train.py", f"resume={sweep_dir}", "hydra.sweep.dir=/x"])


def test_a_run_going_on_in_its_dir_keeps_the_metrics_of_the_steps_its_checkpoint_holds(tmp_path):
    """Lightning's CSV logger deletes metrics.csv when it starts: rows up to the checkpoint stay,
    those logged after it (trained again) go, and the run appends."""
    (tmp_path / "metrics.csv").write_text(
        # torn by the kill
        "epoch,step,train_loss,val_loss\n0,2,10.5,\n0,3,10.25,\n0,3,,10.0\n0,4,9.75,\n0,5,9.5,\n0,6,9."
    )
    logger = CSVLogger(tmp_path, name="", version="")
    keep_metrics_before([logger], 4)
    logger.log_metrics({"train_loss": 9.0}, step=4)
    logger.save()
    with open(tmp_path / "metrics.csv") as f:
        rows = [(r["step"], r["train_loss"], r["val_loss"]) for r in csv.DictReader(f)]
    assert rows == [("2", "10.5", ""), ("3", "10.25", ""), ("3", "", "10.0"), ("4", "9.0", "")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # nothing left beside it
