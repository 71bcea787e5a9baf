"""What tests/unit/test_progress.py and tests/e2e/test_progress_runs.py share: real Lightning fits of a
tiny model on random tokens, with the progress bar on a terminal that is a string."""

from contextlib import contextmanager
from io import StringIO

import lightning as L
import rich
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from wgpt.core.progress import ProgressBar
from wgpt.lightning.module import ModelLightningWrapper
from wgpt.models import GPT

SEQ_LEN = 16


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


@contextmanager
def string_terminal():
    """A 160-column terminal that is a string: the bar's rich console writes here; rich's global
    console (which Lightning's bar reconfigures) is reset afterwards."""
    out = StringIO()
    yield {"file": out, "force_terminal": True, "width": 160, "color_system": None}
    rich.reconfigure()


def fit(bar: ProgressBar, batches: int, ckpt_path=None, callbacks=(), **trainer_args):
    """A real fit of the tiny model over ``batches`` batches an epoch: (trainer, EpochEnds, module)."""
    ends, module = EpochEnds(), tiny_module()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_model_summary=False,
        callbacks=[bar, ends, *callbacks],
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        **trainer_args,
    )
    trainer.fit(module, train_dataloaders=loader(batches), ckpt_path=ckpt_path)
    return trainer, ends, module
