"""Hyperparameter search through Optuna (hparams_search=lr_batch), sweeps that name their best job,
and every job of a sweep checked before the first one runs."""

import csv
import math

import pytest
from omegaconf import OmegaConf

from wgpt.tools.plot import plot_summary, read_summary

from conftest import ROOT, run_cli

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml") if not p.stem.startswith("_test_"))
TINY = [
    "model.d_embed=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "data.seq_len=32",
    "data.num_workers=0",
    "trainer.max_steps=4",
    "trainer.val_every_n_steps=2",
    "trainer.limit_val_batches=2",
    "callbacks.recent.every_n_train_steps=2",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]
HELPERS = {"PYTHONPATH": str(ROOT / "tests")}


def read_table(sweep_dir) -> list[dict]:
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_an_optuna_search_goes_on_past_a_failed_trial_and_names_the_best(tmp_path, data_dir):
    """4 trials of conf/hparams_search/lr_batch.yaml, the batch sizes narrowed on the command
    line; trial 1 raises: it is reported, and the search goes on."""
    result = run_cli(
        "train.py",
        "hparams_search=lr_batch",
        "hydra.sweeper.n_trials=4",
        "data.batch_size=choice(2,4)",
        *TINY,
        "+callbacks.fail._target_=sweep_helpers.FailJob",
        "+callbacks.fail.job=${hydra:job.num}",
        "+callbacks.fail.fail=1",
        f"paths.output_root={tmp_path}",
        f"paths.data_dir={data_dir}",
        env=HELPERS,
    )
    assert result.returncode == 0, result.stderr[-3000:]  # the search ran its trials, a failed one included
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    rows = read_table(sweep_dir)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]  # trials in order
    assert [r["status"] for r in rows] == ["completed", "failed", "completed", "completed"]
    assert "job 1 fails on purpose" in rows[1]["error"] and "Failed experiment: " in result.stdout + result.stderr
    assert {r["data.batch_size"] for r in rows} <= {"2", "4"}
    assert all(1e-4 <= float(r["optim.lr"]) <= 1e-2 for r in rows)  # the space of lr_batch.yaml

    # The best trial: the same in the table's line, Optuna's own result and the plot.
    done = [r for r in rows if r["status"] == "completed"]
    best = min(done, key=lambda r: float(r["best_val_loss"]))
    line = next(line for line in result.stdout.splitlines() if line.startswith("best trial: "))
    assert line.startswith(
        f"best trial: job {best['job']} (optim.lr={best['optim.lr']} data.batch_size={best['data.batch_size']}): "
    )
    assert f"best_val_loss {float(best['best_val_loss']):.4f}" in line
    optuna = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert math.isclose(optuna.best_value, float(best["best_val_loss"]), rel_tol=1e-9)
    assert math.isclose(optuna.best_params["optim.lr"], float(best["optim.lr"]))
    summary = read_summary(sweep_dir / "summary.csv")
    labels = [f"job {r['job']}" for r in summary]
    fig = plot_summary(summary, labels, ["C0"] * 4, "search")
    assert fig.get_suptitle().endswith(f"best: job {best['job']} ({float(best['best_val_loss']):.4f})")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == labels

    # Resumed with more trials: the seeded search replays its first four (the finished ones kept
    # as they are, the failed one run again), then goes on.
    kept = {n: (sweep_dir / f"{n}-gpt2-tiny" / "summary.json").stat().st_mtime_ns for n in (0, 2, 3)}
    more = run_cli("train.py", f"resume={sweep_dir}", "hydra.sweeper.n_trials=5", env=HELPERS)
    assert more.returncode == 0, more.stderr[-3000:]
    again = read_table(sweep_dir)
    assert [(r["job"], r["optim.lr"], r["status"]) for r in again[:4]] == [
        (r["job"], r["optim.lr"], r["status"]) for r in rows
    ]
    assert again[4]["job"] == "4" and again[4]["status"] == "completed"
    assert {n: (sweep_dir / f"{n}-gpt2-tiny" / "summary.json").stat().st_mtime_ns for n in kept} == kept
    assert all(f"Job {n} finished in an earlier run" in more.stdout for n in kept)


def test_a_diverged_job_is_told_apart_and_never_the_best(tmp_path, data_dir):
    result = run_cli(
        "train.py",
        "-m",
        "optim.lr=1e-2,1e6",
        "trainer.gradient_clip_val=null",
        "data.batch_size=2",
        *TINY,
        f"paths.output_root={tmp_path}",
        f"paths.data_dir={data_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    rows = read_table(sweep_dir)
    assert [r["status"] for r in rows] == ["completed", "diverged"]
    assert rows[1]["final_val_loss"] == "nan" and rows[1]["error"].startswith(
        "diverged: the last validation loss is nan"
    )
    assert f"best job: job 0 (optim.lr=0.01): best_val_loss {float(rows[0]['best_val_loss']):.4f}" in result.stdout


@pytest.mark.parametrize(
    "how, swept, says",
    [
        ("-m", "model.d_embed=32,33", "model gpt2-tiny: d_embed=33 is not divisible by n_heads=2"),
        # found in the command line itself, before any job is composed: no job to name
        ("-m", "model=gpt2-tiny,gpt3", "model=gpt3 is not an option: choose one of "),
        ("-m", "data.seq_len=32,64,256", "data.seq_len=256 exceeds model.max_seq_len=128"),
        ("hparams_search=lr_batch", "data.batch_size=choice(4,0)", "data.batch_size=0 is out of range"),
        ("hparams_search=lr_batch", "optim.lr=interval(0.0, 1e-2)", "optim.lr=0.0 is out of range"),
    ],
    ids=["shape in the last job", "option", "value pair", "search choice", "search bound"],
)
def test_every_job_is_checked_before_the_first_one_runs(tmp_path, data_dir, how, swept, says):
    search = how != "-m"
    fixed = [*TINY, *([] if search else ["data.batch_size=2"])]  # before the swept value: the later override wins
    result = run_cli(
        "train.py", how, *fixed, swept, f"paths.output_root={tmp_path / 'out'}", f"paths.data_dir={data_dir}"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {says}"), line
    assert not (tmp_path / "out").exists()  # nothing written
    if "is not an option" in says:  # the presets, among any model a concurrent test added to conf/model
        options = line.removeprefix(f"Error: {says}").removesuffix(" (or add conf/model/gpt3.yaml)").split(", ")
        assert [o for o in options if not o.startswith("_test_")] == PRESETS, line
        return
    assert line.endswith("; no job has run)"), line
    last = len(swept.split(",")) - 1
    assert ("(the search space's " if search else f"(sweep job {last} of {last + 1}: ") in line, line
    assert not (tmp_path / "out").exists()  # no sweep dir: nothing ran, nothing was written
