"""What a run shows on its terminal: the progress bar inside short Lightning fits (tiny model, CPU,
in this process) and the parameter counts. The longer fits and the start-up print of a real train.py
run: tests/e2e/test_progress_runs.py."""

import re
from io import StringIO

import lightning as L
import pytest
import rich
from hydra import compose, initialize_config_dir

from wgpt.core.callbacks import SpeedMonitor, build_callbacks
from wgpt.core.console import parameter_counts
from wgpt.core.progress import ProgressBar
from wgpt.models import GPT

from conftest import ROOT
from helpers_progress import SEQ_LEN, fit, loader, string_terminal, tiny_module


@pytest.fixture
def terminal():
    """helpers_progress's string terminal, rich's global console reset afterwards."""
    with string_terminal() as kwargs:
        yield kwargs


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_the_bar_shows_epoch_step_loss_and_tokens_per_second(terminal):
    bar = ProgressBar(console_kwargs=terminal)
    trainer, _, module = fit(bar, 8, callbacks=[SpeedMonitor()], max_steps=8, max_epochs=1, log_every_n_steps=2)
    metrics = bar.get_metrics(trainer, module)
    assert re.fullmatch(r"\d+\.\d{4}", metrics["loss"]) and re.fullmatch(r"[\d,]+", metrics["tokens/s"])
    assert re.fullmatch(r"\d+\.\d%", metrics["MFU"]) and "samples_per_sec" not in metrics
    # The last frame the terminal got: description, batches done of the total, the metrics.
    frames = [line for line in ANSI.sub("", terminal["file"].getvalue()).splitlines() if "Epoch" in line]
    assert re.search(r"Epoch 0/0 \| step 8/8 .* 8/8 .*loss: \d+\.\d{4} \| tokens/s: [\d,]+ \| MFU: [\d.]+%", frames[-1])


def test_the_bar_shows_the_latest_validation(terminal):
    bar, module = ProgressBar(console_kwargs=terminal), tiny_module()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[bar],
        max_steps=4,
        val_check_interval=2,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader(4), val_dataloaders=loader(2))
    metrics = bar.get_metrics(trainer, module)
    assert metrics["val_loss"] == f"{module.last_val_loss:.4f}" and metrics["val_bpb"] == f"{module.last_val_bpb:.4f}"
    frames = [line for line in ANSI.sub("", terminal["file"].getvalue()).splitlines() if "Epoch" in line]
    assert re.search(r"\| val_loss: \d+\.\d{4} \| val_bpb: \d+\.\d{4}", frames[-1])


def test_no_terminal_no_bar():
    out = StringIO()  # not a terminal: a pipe, a CI log
    bar = ProgressBar(console_kwargs={"file": out})
    try:
        fit(bar, 4, max_steps=4, max_epochs=1)
    finally:
        rich.reconfigure()
    assert bar.is_disabled and out.getvalue() == ""


@pytest.mark.parametrize("enabled", [True, False])
def test_enable_progress_bar_false_leaves_the_bar_out(enabled, tmp_path):
    overrides = [f"trainer.enable_progress_bar={str(enabled).lower()}", f"paths.output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    callbacks = build_callbacks(cfg.callbacks, enable_progress_bar=cfg.trainer.enable_progress_bar)
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=callbacks, enable_progress_bar=enabled)
    assert isinstance(trainer.progress_bar_callback, ProgressBar) if enabled else trainer.progress_bar_callback is None


def test_parameter_counts_leave_out_the_embedding_tables():
    model = GPT(vocab_size=50304, d_embed=16, n_layers=1, n_heads=2, max_seq_len=SEQ_LEN)
    total, non_embedding = parameter_counts(model)
    assert total == sum(p.numel() for p in model.parameters())  # the tied output layer once
    assert total - non_embedding == 50304 * 16 + SEQ_LEN * 16  # token and position tables
