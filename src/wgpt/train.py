"""One training run from a composed config: build everything from ``_target_`` paths, then fit."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from wgpt.callbacks import AtomicCheckpointIO
from wgpt.data.tokenizer import Tokenizer
from wgpt.devices import resolve_hardware, reuse_freed_host_memory
from wgpt.errors import WgptError
from wgpt.module import ModelLightningWrapper

log = logging.getLogger("wgpt")


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """Round the embedding table up to a multiple of 64: matmuls on such shapes run faster."""
    return multiple * math.ceil(vocab_size / multiple)


def trainer_arguments(trainer_cfg: DictConfig, model) -> dict:
    """``lightning.Trainer`` keyword arguments from the trainer group, wgpt's own keys translated."""
    args = OmegaConf.to_container(trainer_cfg)
    # Validation is scheduled in optimizer steps, like checkpoints; Lightning counts batches.
    args["val_check_interval"] = args.pop("val_every_n_steps") * args.get("accumulate_grad_batches", 1)
    return resolve_hardware(args, model)


def train(cfg: DictConfig) -> float:
    """Train ``cfg.model`` on ``cfg.data``; returns the best validation loss (for sweepers)."""
    OmegaConf.resolve(cfg)  # freeze interpolations (e.g. the start time) for the whole run
    reuse_freed_host_memory()
    L.seed_everything(cfg.seed, workers=True)

    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise WgptError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}: "
            "lower data.seq_len or raise model.max_seq_len"
        )
    model = instantiate(cfg.model, vocab_size=padded_vocab_size(len(Tokenizer())))
    datamodule = instantiate(cfg.data)
    module = ModelLightningWrapper(
        model,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        fused=cfg.optim.fused,
        scheduler=OmegaConf.to_container(cfg.optim.scheduler),
        dataset_names=list(cfg.data.datasets),
        start_datetime=cfg.start_datetime,
    )
    trainer = L.Trainer(
        **trainer_arguments(cfg.trainer, model),
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
        logger=[instantiate(lg) for lg in cfg.logger.values()],
        plugins=[AtomicCheckpointIO()],
    )
    n_params = sum(p.numel() for p in model.parameters())
    log.info("Model %s: %.2fM parameters; run directory %s", cfg.model.name, n_params / 1e6, Path(cfg.paths.output_dir))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return module.best["val_loss"]
