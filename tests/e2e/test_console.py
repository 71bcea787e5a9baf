"""What a run prints, through real `python train.py` runs: each of Lightning's messages once on the
console in wgpt's log format (single run, -m sweep, 2-process DDP), no tips or advertisements,
warnings in the same format, and train.log holding the same lines."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, paths, run_cli

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
]
# Epochs of 2 batches, shorter than the logging interval: Lightning warns about it (a useful warning, kept).
WARNS = ["+trainer.limit_train_batches=2", "trainer.log_every_n_steps=50"]
LOG_LINE = re.compile(r"^\[[\d\- :,]+\](\[rank \d+\])?\[(?P<name>[\w.]+)\]\[(?P<level>[A-Z]+)\] - (?P<message>.*)$")
STARTUP = ["GPU available: ", "TPU available: "]  # Lightning's, in every run


def lightning_lines(log: str) -> list[str]:
    """train.log's lines from Lightning's loggers (and Python warnings, Lightning's among them)."""
    return [
        line
        for line in log.splitlines()
        if (m := LOG_LINE.match(line)) and m["name"].startswith(("lightning", "py.warnings"))
    ]


def console(result) -> list[str]:
    return (result.stdout + result.stderr).splitlines()


def assert_each_once_in_our_format(lines: list[str], printed: list[str]) -> None:
    for line in lines:
        assert printed.count(line) == 1, f"{line!r} printed {printed.count(line)} times:\n" + "\n".join(printed)
    for words in STARTUP:
        assert sum(words in line for line in lines) >= 1, f"no {words!r} line in train.log"
    # Lightning's own console handler wrote "INFO: ..." lines; nothing may print outside the format but tables.
    assert not [p for p in printed if re.match(r"(INFO|WARNING): ", p)], "\n".join(printed)


def assert_no_tips(*texts: str) -> None:
    for text in texts:
        assert "Tip:" not in text and "litlogger" not in text and "litmodels" not in text, text


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("console")
    result = run_cli("train.py", *TINY, *WARNS, *paths(tmp, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp / "outputs" / "gpt2-tiny").iterdir()
    return result, run_dir


def test_lightning_messages_print_once_in_the_log_format_and_stay_in_train_log(single_run):
    result, run_dir = single_run
    log = (run_dir / "train.log").read_text()
    lines = lightning_lines(log)
    assert_each_once_in_our_format(lines, console(result))
    assert_no_tips(result.stdout, result.stderr, log)
    # Lightning's parameter table (off: wgpt logs the counts in its own line) and its bf16 warning.
    assert "Trainable params" not in result.stdout and "model summary" not in log
    assert "Model gpt2-tiny: " in log and " parameters (" in log
    tree = ("config", "├", "│", "└", " ")  # the config tree, the only lines outside the log format
    assert not [p for p in console(result) if p and not LOG_LINE.match(p) and not p.startswith(tree)], "\n".join(
        console(result)
    )
    assert result.stderr.strip() == "", result.stderr  # everything went through logging, to stdout


def test_warnings_go_through_the_log_format_into_train_log(single_run):
    result, run_dir = single_run
    (warning,) = [line for line in lightning_lines((run_dir / "train.log").read_text()) if "logging interval" in line]
    assert "][py.warnings][WARNING] - " in warning and "Set a lower value for log_every_n_steps" in warning
    assert console(result).count(warning) == 1
    assert (
        "LeafSpec" not in result.stdout + result.stderr
    )  # Lightning's use of a deprecated torch API: not the user's to fix


def test_no_warning_that_the_run_dir_is_not_empty(single_run):
    result, run_dir = single_run
    text = result.stdout + result.stderr + (run_dir / "train.log").read_text()
    assert "exists and is not empty" not in text
    assert (run_dir / "metrics.csv").is_file()  # still in the run dir itself


def test_each_sweep_job_prints_lightning_messages_once(tmp_path, data_dir):
    result = run_cli("train.py", "-m", "optim.lr=1e-3,2e-3", *TINY, "trainer.max_steps=2", *paths(tmp_path, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in next((tmp_path / "outputs" / "multirun").iterdir()).iterdir() if p.is_dir())
    assert len(jobs) == 2
    printed = console(result)
    for job in jobs:
        assert_each_once_in_our_format(lightning_lines((job / "train.log").read_text()), printed)
    assert sum("GPU available: " in line for line in printed) == 2
    assert_no_tips(result.stdout, result.stderr)


def test_ddp_ranks_print_lightning_messages_once_tagged_by_rank(tmp_path, data_dir):
    result = run_cli(
        "train.py",
        *TINY,
        "trainer.max_steps=2",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        *paths(tmp_path, data_dir),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "gpt2-tiny").iterdir()
    lines = lightning_lines((run_dir / "train.log").read_text())
    assert_each_once_in_our_format(lines, console(result))
    assert_no_tips(result.stdout, result.stderr)
    for rank in (0, 1):
        (line,) = [line for line in lines if f"Initializing distributed: GLOBAL_RANK: {rank}," in line]
        assert ("][rank 1][" in line) == (rank == 1)
    # The rank tag is the format's; Lightning's own "[rank: 1]" prefix is dropped.
    assert not [line for line in lines if "[rank: " in line]


def test_hydra_verbose_still_prints_lightning_messages_once(tmp_path, data_dir):
    result = run_cli("train.py", *TINY, "trainer.max_steps=2", "hydra.verbose=true", *paths(tmp_path, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "gpt2-tiny").iterdir()
    log = (run_dir / "train.log").read_text()
    assert "][DEBUG] - " in log  # verbose: debug lines too
    assert_each_once_in_our_format(lightning_lines(log), console(result))


@pytest.mark.parametrize("option", ["disabled", "none", "stdout"])
def test_other_job_logging_options_compose_and_train(option, tmp_path, data_dir):
    """hydra/job_logging options other than the default replace what conf/train.yaml extends."""
    result = run_cli(
        "train.py", *TINY, "trainer.max_steps=2", f"hydra/job_logging={option}", *paths(tmp_path, data_dir)
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "gpt2-tiny").iterdir()
    assert '"status": "completed"' in (run_dir / "summary.json").read_text()
    printed = console(result)
    assert_no_tips(result.stdout, result.stderr)
    startup = [line for line in printed if "GPU available: " in line]
    if option == "disabled":  # Lightning's INFO lines are silenced like wgpt's, not printed by Lightning itself
        assert startup == [] and not [line for line in printed if "Model gpt2-tiny:" in line]
    else:
        assert len(startup) == 1, "\n".join(printed)


def test_outside_a_hydra_job_logging_is_left_alone():
    """wgpt.core.console does nothing to logging outside a Hydra job (a library use, a notebook)."""
    result = run_cli(
        "-c",
        "import logging, lightning, wgpt.core.console; h = logging.getLogger('lightning').handlers; "
        "print(len(h), logging.getLogger('py.warnings').filters)",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "1" and "[]" in result.stdout
