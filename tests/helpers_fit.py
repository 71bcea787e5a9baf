"""What the in-process Lightning fits of a tiny GPT on toy bins share: tests/unit/test_module.py,
tests/e2e/test_module_fits.py, tests/e2e/test_resume.py and tests/e2e/test_step_syncs.py."""

from pathlib import Path

import lightning as L
import torch

from wgpt.data.datamodule import DatasetLightningWrapper
from wgpt.data.diskdataset import generate_bin
from wgpt.lightning.module import ModelLightningWrapper
from wgpt.models import GPT
from wgpt.tokenizers.r50k import Tokenizer

SEQ_LEN = 16


DOCS = [{"text": f"Line {i}: now is the winter of our discontent, made glorious summer. " * 3} for i in range(40)]


def toy_bins(path: Path) -> Path:
    """A data dir holding dataset 'toy' (r50k bins of DOCS: all of them to train, 7 to each held-out split)."""
    tok = Tokenizer()
    for split in ("train", "validation", "test"):
        generate_bin("toy", split, DOCS[: 40 if split == "train" else 7], tok, data_dir=path)
    return path


def tiny_module(vocab_size=50304, **kwargs):
    torch.manual_seed(0)
    model = GPT(vocab_size=vocab_size, d_embed=16, n_layers=1, n_heads=2, max_seq_len=SEQ_LEN)
    return ModelLightningWrapper(model, learning_rate=1e-2, **kwargs)


def datamodule(data_dir, batch_size=4, micro_batches=1):
    return DatasetLightningWrapper(
        {"toy": None},
        seq_len=SEQ_LEN,
        batch_size=batch_size,
        num_workers=0,
        data_dir=data_dir,
        micro_batches=micro_batches,
    )


def trainer(**kwargs):
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        enable_checkpointing=False,
    )
    return L.Trainer(**{**defaults, **kwargs})
