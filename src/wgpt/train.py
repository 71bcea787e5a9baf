"""One training run from a composed config: build everything from ``_target_`` paths, then fit."""

from __future__ import annotations

import logging
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from wgpt.callbacks import RunSummary, SafeCheckpointIO, build_callbacks
from wgpt.checkpoint import check_fits, load_checkpoint, model_state, newest_recent
from wgpt.console import parameter_counts, print_config_tree
from wgpt.data.tokenizer import R50K, TokenizerBase, tokenizer_config
from wgpt.devices import enable_tf32, resolve_hardware, reuse_freed_host_memory
from wgpt.errors import WgptError, discarded_on_bad_input
from wgpt.launch import START_DATETIME_ENV, in_sweep, launch_job_alone, rank_tag, spawns_ranks
from wgpt.loggers import build_loggers, check_logger_packages, log_config
from wgpt.models import padded_vocab_size
from wgpt.module import ModelLightningWrapper
from wgpt.optim import optimizer_factory, optimizer_layout
from wgpt.sweep import read_run_summary
from wgpt.validate import check_config, tokenizer_spec

log = logging.getLogger("wgpt")

RESUME_FROM_ENV = "WGPT_RESUME_FROM"  # rank 0's checkpoint choice, for the ranks it starts


def trainer_arguments(trainer_cfg: DictConfig, model) -> dict:
    """``lightning.Trainer`` keyword arguments from the trainer group, wgpt's own keys translated."""
    args = OmegaConf.to_container(trainer_cfg)
    # Validation is scheduled in optimizer steps, like checkpoints; Lightning counts batches.
    args["val_check_interval"] = args.pop("val_every_n_steps") * args.get("accumulate_grad_batches", 1)
    return resolve_hardware(args, model)


def train(cfg: DictConfig, script: str | None = None) -> float:
    """Train ``cfg.model`` on ``cfg.data``; returns the best validation loss (for sweepers).

    ``script`` is the entry point (train.py) that a sweep job re-runs when it needs its own DDP launch.
    """
    run_dir = Path(cfg.paths.output_dir)
    with discarded_on_bad_input(run_dir):
        shapes = check_config(cfg)  # first: before anything is resolved, built, read or started
        check_logger_packages(cfg.get("logger"))
        OmegaConf.resolve(cfg)  # freeze interpolations (e.g. the start time) for the whole run
        spec = tokenizer_spec(cfg)
        optimizer = optimizer_factory(cfg.optim)
        # Built once on the meta-device model: a rule no parameter fits fails here, and a checkpoint
        # of another optimizer is told apart by its state's layout.
        layout = optimizer_layout(optimizer(shapes).state_dict())
        ckpt_path, ckpt_tokenizer = checkpoint_to_resume(cfg, shapes, spec.name, layout)
        datamodule = instantiate(cfg.data, tokenizer=spec)
        datamodule.check_ready()  # trains a BPE tokenizer here if it is not trained yet
        tokenizer = datamodule.tokenizer
        check_same_tokenizer(ckpt_path, ckpt_tokenizer, tokenizer)
        schedule = instantiate(cfg.optim.scheduler)
        schedule(0, 1)  # its options' checks, now rather than at the first step
    reuse_freed_host_memory()
    L.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model, vocab_size=padded_vocab_size(len(tokenizer)))
    if enable_tf32(cfg.tf32):
        log.info("TF32 matmuls on (tf32=false turns them off)")
    trainer_args = trainer_arguments(cfg.trainer, model)
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
    )
    trainer = L.Trainer(
        **trainer_args,
        callbacks=build_callbacks(cfg.callbacks, enable_progress_bar=cfg.trainer.get("enable_progress_bar", True)),
        logger=build_loggers(cfg.get("logger")),  # csv, and any of tensorboard, wandb
        plugins=[SafeCheckpointIO()],
    )
    trainer.callbacks.append(RunSummary(cfg.paths.output_dir, resumed_from=ckpt_path))  # not optional: sweeps read it
    if in_sweep() and spawns_ranks(trainer):
        return _run_sweep_job_alone(cfg, run_dir, script or sys.argv[0])

    if trainer.is_global_zero:  # once per run: other ranks print nothing, each sweep job its own
        print_config_tree(cfg, run_dir)
        total, non_embedding = parameter_counts(model)
        log.info(
            "Model %s: %.2fM parameters (%.2fM besides the embeddings), tokenizer %s (%d tokens); run directory %s",
            cfg.model.name, total / 1e6, non_embedding / 1e6, tokenizer.name, len(tokenizer), run_dir,
        )  # fmt: skip
        log_config(trainer.loggers, cfg)
    if rank_tag():
        # Ctrl-C is rank 0's to handle: it saves `recent`, then stops the other ranks. A rank
        # that quit first would make Lightning kill rank 0 in the middle of that save.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The ranks Lightning starts compose their config again: give them this run's start time
    # and rank 0's choice of checkpoint (resume=auto could find a newer one by then).
    with environment(**{START_DATETIME_ENV: cfg.start_datetime, RESUME_FROM_ENV: ckpt_path or ""}):
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:  # Lightning's SystemExit() would exit 0, as if training had finished
            raise SystemExit(128 + signal.SIGTERM) from None
    return module.best["val_loss"]


def compile_choice(setting: bool | str, trainer_args: dict) -> bool:
    """Whether to compile model and loss: ``compile: auto`` does on CUDA GPUs, where it pays
    (fused kernels, no float32 logits), not on CPUs (0.90x the eager speed there). Logged once."""
    accelerator = str(trainer_args.get("accelerator", "auto"))
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    compile = on_cuda if setting == "auto" else bool(setting)
    why = f"compile={setting}" + (f" on {'a CUDA GPU' if on_cuda else 'a CPU'}" if setting == "auto" else "")
    if compile:
        log.info("torch.compile on (%s): model and loss compile during the first steps, a minute or more", why)
    elif setting == "auto":
        log.info("torch.compile off (%s); compile=true turns it on", why)
    return compile


def checkpoint_to_resume(
    cfg: DictConfig, model, tokenizer_name: str, optimizer: tuple | None = None
) -> tuple[str | None, dict | None]:
    """``ckpt_path``, or with ``resume=auto`` the newest ``recent`` of this model's runs, and the
    record of the tokenizer it was trained with; checked (safe to load, same tokenizer, fits the
    model, and an optimizer state of ``optimizer``'s layout) before any heavy work. A resumed run
    gets a new run dir."""
    if RESUME_FROM_ENV in os.environ:  # a rank that rank 0 started: rank 0 has chosen (and checked)
        return os.environ[RESUME_FROM_ENV] or None, None
    path = cfg.get("ckpt_path")
    if path is None and cfg.get("resume") == "auto":
        runs_dir = Path(cfg.paths.output_root) / cfg.model.name
        path = newest_recent(runs_dir, exclude=cfg.paths.output_dir)
        if path is None:
            log.info("resume=auto: no run of %s with a recent checkpoint in %s, starting afresh", cfg.model.name, runs_dir)
            return None, None
    if path is None:
        return None, None
    checkpoint = load_checkpoint(path, mmap=True)  # refuses pickled code, reads no tensor data yet
    record = checkpoint.get("tokenizer") or {"name": R50K}  # made before checkpoints recorded it: r50k
    if record.get("name") != tokenizer_name:
        raise WgptError(
            f"ckpt_path={path} was trained with tokenizer {record.get('name')}, this run uses {tokenizer_name}: "
            f"continue it with {tokenizer_config(record.get('name'))}, as its run had"
        )
    check_fits(model, model_state(checkpoint), f"ckpt_path={path}")
    states = checkpoint.get("optimizer_states") or []
    if optimizer is not None and states and optimizer_layout(states[0]) != optimizer:
        raise WgptError(
            f"ckpt_path={path} holds the state of another optimizer or other parameter groups than this run's "
            f"(optim={HydraConfig.get().runtime.choices.get('optim') if HydraConfig.initialized() else '?'}): "
            "continue it with the optim settings of its run"
        )
    log.info("Resuming from %s (step %d)", path, checkpoint.get("global_step", 0))
    return str(path), record


def check_same_tokenizer(ckpt_path: str | None, record: dict | None, tokenizer: TokenizerBase) -> None:
    """A checkpoint continues only with the very tokenizer it was trained with (same name is not
    enough: a BPE trained on other data maps ids to other text)."""
    if ckpt_path is not None and record is not None and record.get("fingerprint", tokenizer.fingerprint) != tokenizer.fingerprint:
        raise WgptError(
            f"ckpt_path={ckpt_path} was trained with tokenizer {record['fingerprint']}, but this run's {tokenizer.name} is "
            f"{tokenizer.fingerprint} (trained on other data): use the data and tokenizer.* settings of that run"
        )


def _run_sweep_job_alone(cfg: DictConfig, run_dir: Path, script: str) -> float:
    code = launch_job_alone(cfg, script)
    summary = read_run_summary(run_dir) or {}
    if code != 0 or summary.get("status") != "completed":
        reason = summary.get("error") or f"exit code {code}"
        raise WgptError(f"this job's DDP launch failed ({reason}): see {run_dir / 'train.log'}")
    return summary["best_val_loss"]


@contextmanager
def environment(**variables: str):
    """Set environment variables for the duration of the block, then restore them."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
