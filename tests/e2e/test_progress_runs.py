"""What a run shows on its terminal: the bar's counts inside Lightning fits too long for the unit tests
(several epochs, resumed runs), and the start-up print of conftest's real train.py run. The short
fits: tests/unit/test_progress.py."""

import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from wgpt.core.console import parameter_counts
from wgpt.core.progress import ProgressBar

from conftest import GPT2_TINY_RUN, ROOT
from helpers_progress import fit, string_terminal


@pytest.fixture
def terminal():
    """helpers_progress's string terminal, rich's global console reset afterwards."""
    with string_terminal() as kwargs:
        yield kwargs


@pytest.mark.parametrize(
    "batches, accumulate, max_steps, max_epochs, expected",
    [
        # max_steps ends training long before the epoch ends: the bar counts 6 batches, not 16.
        (16, 1, 6, 10, [(6, "Epoch 0/0 | step 6/6")]),
        # 8 steps in a 15-batch epoch (the last one of a single batch), then the 2 steps left: 4 batches.
        (15, 2, 10, 10, [(15, "Epoch 0/1 | step 8/10"), (4, "Epoch 1/1 | step 10/10")]),
        # epochs alone: whole epochs.
        (15, 3, -1, 2, [(15, "Epoch 0/1 | step 5/10"), (15, "Epoch 1/1 | step 10/10")]),
        (16, 4, 3, 10, [(12, "Epoch 0/0 | step 3/3")]),
    ],
)
def test_the_bar_counts_the_batches_that_will_run(terminal, batches, accumulate, max_steps, max_epochs, expected):
    bar = ProgressBar(console_kwargs=terminal)
    _, ends, _ = fit(bar, batches, max_steps=max_steps, max_epochs=max_epochs, accumulate_grad_batches=accumulate)
    # At each epoch's end the bar is full: its total was the batches that actually ran.
    assert [(total, description) for total, _, description in ends.seen] == expected
    assert all(completed == total for total, completed, _ in ends.seen)


@pytest.mark.parametrize("saved", ["during training", "after fit"])
def test_a_run_resumed_mid_epoch_counts_from_where_it_stands(terminal, tmp_path, saved):
    # recent.ckpt is written both ways: every N steps, and when training ends (RecentCheckpoint).
    if saved == "during training":
        every_5 = ModelCheckpoint(dirpath=tmp_path, filename="mid", every_n_train_steps=5, save_top_k=-1)
        fit(ProgressBar(console_kwargs=terminal), 16, callbacks=[every_5], max_steps=8, max_epochs=10)
    else:
        first, _, _ = fit(ProgressBar(console_kwargs=terminal), 16, max_steps=5, max_epochs=10)
        first.save_checkpoint(tmp_path / "mid.ckpt")
    bar = ProgressBar(console_kwargs=terminal)
    _, ends, _ = fit(bar, 16, ckpt_path=tmp_path / "mid.ckpt", max_steps=12, max_epochs=10)
    # Batches 6..12 of the epoch's 16 run, and the bar shows 12 of 12.
    assert [(total, completed) for total, completed, _ in ends.seen] == [(12, 12)]
    assert ends.seen[0][2].endswith("| step 12/12")


def test_start_up_prints_the_config_tree_the_parameter_counts_and_the_run_dir(gpt2_tiny_run):
    result, run_dir = gpt2_tiny_run  # the bar on (enable_progress_bar's default), in a pipe
    assert "trainer.enable_progress_bar=false" not in GPT2_TINY_RUN

    tree = (run_dir / "config_tree.txt").read_text()
    for group in ("paths", "trainer", "optim", "data", "callbacks", "logger", "model"):
        assert re.search(rf"^[├└]── {group}$", tree, re.M), group
        assert re.search(rf"[├└]── {group}\n", result.stdout), group
    assert "d_embed: 32" in tree and "seed: 1337" in tree
    assert "├── ckpt_path: null" in tree and tree in result.stdout  # the file holds what was printed

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=GPT2_TINY_RUN)
    total, non_embedding = parameter_counts(instantiate(cfg.model, vocab_size=50304))
    assert non_embedding < total
    expected = (
        f"Model gpt2-tiny: {total / 1e6:.2f}M parameters ({non_embedding / 1e6:.2f}M besides the embeddings), "
        f"tokenizer r50k (50259 tokens); run directory {run_dir}"
    )
    assert expected in result.stdout and expected in (run_dir / "train.log").read_text()
    # In a pipe the bar is off, saying so once, and draws nothing.
    assert result.stdout.count("Progress bar off") == 1 and "step 8/8" not in result.stdout
