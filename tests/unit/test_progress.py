"""What a run shows on its terminal: the progress bar inside real Lightning fits (tiny model, CPU),
and the start-up print of a real train.py run."""

import re
from io import StringIO

import lightning as L
import pytest
import rich
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from conftest import GPT2_TINY_RUN, ROOT
from wgpt.core.callbacks import SpeedMonitor, build_callbacks
from wgpt.core.progress import ProgressBar
from wgpt.core.console import parameter_counts
from wgpt.models import GPT
from wgpt.lightning.module import ModelLightningWrapper

SEQ_LEN = 16
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def loader(batches: int, batch_size: int = 2) -> DataLoader:
    """Random token windows, exactly ``batches`` batches of them."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50304, (batches * batch_size, SEQ_LEN + 1), generator=generator)
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=batch_size)


def tiny_module() -> ModelLightningWrapper:
    torch.manual_seed(0)
    model = GPT(vocab_size=50304, d_embed=16, n_layers=1, n_heads=2, max_seq_len=SEQ_LEN)
    return ModelLightningWrapper(model, learning_rate=1e-2)


class EpochEnds(L.Callback):
    """The train bar's (total, completed, description) at the end of every epoch."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        bar = trainer.progress_bar_callback
        if bar.is_disabled:
            return
        task = bar.train_progress_bar
        self.seen.append((task.total, task.completed, bar._get_train_description(trainer.current_epoch)))


@pytest.fixture
def terminal():
    """A 160-column terminal that is a string: the bar's rich console writes here; rich's global
    console (which Lightning's bar reconfigures) is reset afterwards."""
    out = StringIO()
    yield {"file": out, "force_terminal": True, "width": 160, "color_system": None}
    rich.reconfigure()


def fit(bar: ProgressBar, batches: int, ckpt_path=None, callbacks=(), **trainer_args):
    """A real fit of the tiny model over ``batches`` batches an epoch: (trainer, EpochEnds, module)."""
    ends, module = EpochEnds(), tiny_module()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_model_summary=False, callbacks=[bar, ends, *callbacks],
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), **trainer_args,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader(batches), ckpt_path=ckpt_path)
    return trainer, ends, module


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
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[bar], max_steps=4, val_check_interval=2, num_sanity_val_steps=0)  # fmt: skip
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


def test_parameter_counts_leave_out_the_embedding_tables():
    model = GPT(vocab_size=50304, d_embed=16, n_layers=1, n_heads=2, max_seq_len=SEQ_LEN)
    total, non_embedding = parameter_counts(model)
    assert total == sum(p.numel() for p in model.parameters())  # the tied output layer once
    assert total - non_embedding == 50304 * 16 + SEQ_LEN * 16  # token and position tables
