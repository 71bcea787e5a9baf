"""One training run from a composed config: build everything from ``_target_`` paths, then fit."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from wgpt.core.callbacks import RunSummary, build_callbacks
from wgpt.core.console import lightning_through_job_logging, parameter_counts, print_config_tree
from wgpt.core.devices import enable_tf32, reuse_freed_host_memory
from wgpt.core.launch import (
    RECORDED_ENV,
    RESUME_FROM_ENV,
    START_DATETIME_ENV,
    claim_run_dir,
    in_sweep,
    launch_job_alone,
    rank_tag,
    spawns_ranks,
)
from wgpt.core.logger import build_loggers, check_logger_packages, keep_metrics_before, log_config
from wgpt.core.overrides import overrides_of
from wgpt.core.record import RECORD, write_run_record
from wgpt.core.report import discarded_on_bad_input
from wgpt.core.requeue import SlurmRequeue, slurm_plugins
from wgpt.core.resume import check_same_tokenizer, checkpoint_to_resume, own_checkpoint, recorded_start
from wgpt.core.strategy import runs_step_batches
from wgpt.core.summary import FINISHED, read_run_summary
from wgpt.core.sweep import objective
from wgpt.core.trainer import trainer_arguments, with_step_batches
from wgpt.core.validate import check_config
from wgpt.data.tokenizer import end_of_text_id, tokenizer_spec
from wgpt.interop.checkpoint import SafeCheckpointIO
from wgpt.interop.hf.init_from import check_init_from, check_init_tokenizer, start_from
from wgpt.lightning.module import ModelLightningWrapper
from wgpt.models import padded_vocab_size
from wgpt.models.build import build_model, build_on_meta
from wgpt.optim import optimizer_factory, optimizer_layout
from wgpt.parallel.sharding import is_sharded
from wgpt.util.environment import environment
from wgpt.util.errors import WgptError
from wgpt.util.files import release_lock

log = logging.getLogger("wgpt")


def train(cfg: DictConfig, script: str | None = None) -> float:
    """Train ``cfg.model`` on ``cfg.data``; returns the best validation loss (for sweepers).

    ``script`` is the entry point (train.py) that a sweep job re-runs when it needs its own DDP launch.
    """
    lightning_through_job_logging()  # before anything logs: Lightning's lines once, in the job's format
    run_dir = Path(cfg.paths.output_dir)
    with discarded_on_bad_input(run_dir):
        lock = claim_run_dir(run_dir)  # no other process trains in this dir meanwhile
    try:
        return train_in(run_dir, cfg, script)
    finally:
        if lock is not None:
            release_lock(lock)


def train_in(run_dir: Path, cfg: DictConfig, script: str | None) -> float:
    """``train``'s work, in ``run_dir`` (claimed)."""
    with discarded_on_bad_input(run_dir):
        check_config(cfg)  # first: before anything is resolved, built, read or started
        check_logger_packages(cfg.get("logger"))
        own, continued_at = own_checkpoint(cfg), None  # a checkpoint in this run's dir: the run goes on in place
        if own is not None:  # the names in its dir (best-<start time>.ckpt) go on from its first part
            cfg.start_datetime = own.get("start_datetime", cfg.start_datetime)
            continued_at = own["global_step"]
        elif cfg.get("resume") == "auto" and (run_dir / RECORD).is_file():  # a part that died before saving recent
            cfg.start_datetime = recorded_start(run_dir) or cfg.start_datetime
        OmegaConf.resolve(cfg)  # freeze interpolations (e.g. the start time) for the whole run
        spec = tokenizer_spec(cfg)
        shapes = build_on_meta(
            cfg.model, padded_vocab_size(spec.vocab_size), end_of_text_id(spec)
        )  # no memory behind them
        optimizer = optimizer_factory(cfg.optim)
        # Built once on the meta-device model: a rule no parameter fits fails here, and a checkpoint
        # of another optimizer is told apart by its state's layout.
        layout = optimizer_layout(optimizer(shapes).state_dict())
        ckpt_path, ckpt_tokenizer = checkpoint_to_resume(cfg, shapes, spec.name, layout)
        init_from = check_init_from(cfg, shapes, ckpt_path)  # a Hugging Face directory to start from
        datamodule = instantiate(cfg.data, tokenizer=spec)
        datamodule.check_ready()  # trains a BPE tokenizer here if it is not trained yet
        tokenizer = datamodule.tokenizer
        check_same_tokenizer(ckpt_path, ckpt_tokenizer, tokenizer)
        if init_from is not None:
            check_init_tokenizer(init_from, tokenizer)
        schedule = instantiate(cfg.optim.scheduler)
    reuse_freed_host_memory()
    L.seed_everything(cfg.seed, workers=True)
    model = build_model(cfg.model, padded_vocab_size(len(tokenizer)), tokenizer.eos_token_id)
    if init_from is not None:
        with discarded_on_bad_input(run_dir):  # weights that do not match their own config.json
            start_from(model, init_from)
    if enable_tf32(cfg.tf32):
        log.info("TF32 matmuls on (tf32=false turns them off)")
    with discarded_on_bad_input(run_dir):  # devices, precision and strategy settings that do not fit this machine
        trainer_args = trainer_arguments(cfg.trainer, model)
    # An optimizer step's micro-batches as one batch where the datamodule (wgpt's) and the strategy
    # can: Lightning's loop then runs once per step, where its own accumulation runs it per micro-batch.
    if hasattr(datamodule, "micro_batches") and runs_step_batches(trainer_args.get("strategy", "auto")):
        trainer_args, datamodule.micro_batches = with_step_batches(trainer_args)
    compile = compile_choice(cfg.compile, trainer_args)
    module = ModelLightningWrapper(
        model,
        optimizer=optimizer,
        fused=cfg.optim.get("fused"),
        scheduler=schedule,
        dataset_names=list(cfg.data.datasets),
        start_datetime=cfg.start_datetime,
        compile=compile,
        tokenizer=tokenizer,
        activation_checkpointing=cfg.trainer.get("activation_checkpointing", False),
    )
    trainer = L.Trainer(
        **trainer_args,
        callbacks=build_callbacks(
            cfg.callbacks,
            enable_progress_bar=cfg.trainer.get("enable_progress_bar", True),
            sharded=is_sharded(trainer_args.get("strategy")),
        ),
        logger=build_loggers(cfg.get("logger")),  # csv, and any of tensorboard, wandb
        plugins=[SafeCheckpointIO(), *slurm_plugins()],
    )
    overrides = overrides_of(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    trainer.callbacks.append(
        RunSummary(cfg.paths.output_dir, resumed_from=ckpt_path, overrides=overrides)
    )  # not optional: sweeps read it
    if slurm_plugins():  # after the checkpoint callbacks: on a requeue signal, recent is saved first
        trainer.callbacks.append(SlurmRequeue())
    # By the process the user started only: not by the ranks Lightning starts, nor by a sweep job's
    # own DDP launch (both see RECORDED_ENV), whose command lines are not the user's.
    if trainer.is_global_zero and not rank_tag() and RECORDED_ENV not in os.environ:
        write_run_record(run_dir, trainer_args.get("precision"))
    if in_sweep() and spawns_ranks(trainer):
        with environment(**{RECORDED_ENV: "1"}):
            return _run_sweep_job_alone(cfg, run_dir, script or sys.argv[0], ckpt_path)

    if trainer.is_global_zero:  # once per run: other ranks print nothing, each sweep job its own
        print_config_tree(cfg, run_dir)
        total, non_embedding = parameter_counts(model)
        log.info(
            "Model %s: %.2fM parameters (%.2fM besides the embeddings), tokenizer %s (%d tokens); run directory %s",
            cfg.model.name,
            total / 1e6,
            non_embedding / 1e6,
            tokenizer.name,
            len(tokenizer),
            run_dir,
        )
        log_config(trainer.loggers, cfg)
        if continued_at is not None:
            # Lightning's CSV logger would start metrics.csv afresh: keep the rows of the steps the
            # checkpoint holds (those logged after it are trained again).
            keep_metrics_before(trainer.loggers, continued_at)
    if rank_tag():
        # Ctrl-C is rank 0's to handle: it saves `recent`, then stops the other ranks. A rank
        # that quit first would make Lightning kill rank 0 in the middle of that save.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The ranks Lightning starts compose their config again: give them this run's start time
    # and rank 0's choice of checkpoint (resume=auto could find a newer one by then).
    with environment(**{START_DATETIME_ENV: cfg.start_datetime, RESUME_FROM_ENV: ckpt_path or "", RECORDED_ENV: "1"}):
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:  # Lightning's SystemExit() would exit 0, as if training had finished
            raise SystemExit(128 + signal.SIGTERM) from None
    return module.best["val_loss"]


def compile_choice(setting: bool | str, trainer_args: dict) -> bool:
    """Whether to compile model and loss: ``compile: auto`` does on CUDA GPUs, where it pays
    (fused kernels, no float32 logits), not on CPUs (compilation rarely pays back in a short CPU
    run: docs/performance.md). Logged once."""
    accelerator = str(trainer_args.get("accelerator", "auto"))
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    compile = on_cuda if setting == "auto" else bool(setting)
    why = f"compile={setting}" + (f" on {'a CUDA GPU' if on_cuda else 'a CPU'}" if setting == "auto" else "")
    if compile:
        what = "each block compiles" if is_sharded(trainer_args.get("strategy")) else "model and loss compile"
        log.info("torch.compile on (%s): %s during the first steps", why, what)
    elif setting == "auto":
        log.info("torch.compile off (%s); compile=true turns it on", why)
    return compile


def _run_sweep_job_alone(cfg: DictConfig, run_dir: Path, script: str, ckpt_path: str | None) -> float:
    code = launch_job_alone(cfg, script, resume_from=ckpt_path)
    summary = read_run_summary(run_dir) or {}
    if code != 0 or summary.get("status") not in FINISHED:
        reason = summary.get("error") or f"exit code {code}"
        raise WgptError(f"this job's DDP launch failed ({reason}): see {run_dir / 'train.log'}")
    return objective(summary["best_val_loss"])
