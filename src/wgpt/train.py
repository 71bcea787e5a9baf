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
from wgpt.hf import check_init_from, check_init_tokenizer, start_from
from wgpt.launch import RESUME_FROM_ENV, START_DATETIME_ENV, in_sweep, launch_job_alone, rank_tag, spawns_ranks
from wgpt.loggers import build_loggers, check_logger_packages, keep_metrics_before, log_config
from wgpt.models import padded_vocab_size
from wgpt.module import ModelLightningWrapper
from wgpt.optim import optimizer_factory, optimizer_layout
from wgpt.sharding import is_sharded
from wgpt.sweep import FINISHED, job_difference, objective, overrides_of, read_run_summary
from wgpt.validate import build_model, check_config, tokenizer_spec

log = logging.getLogger("wgpt")


def trainer_arguments(trainer_cfg: DictConfig, model) -> dict:
    """``lightning.Trainer`` keyword arguments from the trainer group, wgpt's own keys translated."""
    args = OmegaConf.to_container(trainer_cfg)
    args.pop("activation_checkpointing", None)  # the module's (ModelLightningWrapper), not the Trainer's
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
        own, continued_at = own_checkpoint(cfg), None  # a checkpoint in this run's dir: the run goes on in place
        if own is not None:  # the names in its dir (best-<start time>.ckpt) go on from its first part
            cfg.start_datetime = own.get("start_datetime", cfg.start_datetime)
            continued_at = own["global_step"]
        OmegaConf.resolve(cfg)  # freeze interpolations (e.g. the start time) for the whole run
        spec = tokenizer_spec(cfg)
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
        schedule(0, 1)  # its options' checks, now rather than at the first step
    reuse_freed_host_memory()
    L.seed_everything(cfg.seed, workers=True)
    model = build_model(cfg.model, vocab_size=padded_vocab_size(len(tokenizer)))
    if init_from is not None:
        with discarded_on_bad_input(run_dir):  # weights that do not match their own config.json
            start_from(model, init_from)
    if enable_tf32(cfg.tf32):
        log.info("TF32 matmuls on (tf32=false turns them off)")
    with discarded_on_bad_input(run_dir):  # devices, precision and strategy settings that do not fit this machine
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
        activation_checkpointing=cfg.trainer.get("activation_checkpointing", False),
    )
    trainer = L.Trainer(
        **trainer_args,
        callbacks=build_callbacks(cfg.callbacks, enable_progress_bar=cfg.trainer.get("enable_progress_bar", True)),
        logger=build_loggers(cfg.get("logger")),  # csv, and any of tensorboard, wandb
        plugins=[SafeCheckpointIO()],
    )
    overrides = overrides_of(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    trainer.callbacks.append(RunSummary(cfg.paths.output_dir, resumed_from=ckpt_path, overrides=overrides))  # not optional: sweeps read it
    if in_sweep() and spawns_ranks(trainer):
        return _run_sweep_job_alone(cfg, run_dir, script or sys.argv[0], ckpt_path)

    if trainer.is_global_zero:  # once per run: other ranks print nothing, each sweep job its own
        print_config_tree(cfg, run_dir)
        total, non_embedding = parameter_counts(model)
        log.info(
            "Model %s: %.2fM parameters (%.2fM besides the embeddings), tokenizer %s (%d tokens); run directory %s",
            cfg.model.name, total / 1e6, non_embedding / 1e6, tokenizer.name, len(tokenizer), run_dir,
        )  # fmt: skip
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
        what = "each block compiles" if is_sharded(trainer_args.get("strategy")) else "model and loss compile"
        log.info("torch.compile on (%s): %s during the first steps, a minute or more", why, what)
    elif setting == "auto":
        log.info("torch.compile off (%s); compile=true turns it on", why)
    return compile


def checkpoint_to_resume(
    cfg: DictConfig, model, tokenizer_name: str, optimizer: tuple | None = None
) -> tuple[str | None, dict | None]:
    """The checkpoint this run continues from (``chosen_checkpoint``), and the record of the
    tokenizer it was trained with; checked (safe to load, same tokenizer, fits the model, and an
    optimizer state of ``optimizer``'s layout) before any heavy work."""
    if RESUME_FROM_ENV in os.environ:  # started by the process that chose (and checked) it
        return os.environ[RESUME_FROM_ENV] or None, None
    path = chosen_checkpoint(cfg)
    if path is None:
        if cfg.get("resume") == "auto" and cfg.get("ckpt_path") is None:
            where = f"recent checkpoint in {cfg.paths.output_dir}" if in_sweep() else f"run of {cfg.model.name} with a recent checkpoint in {Path(cfg.paths.output_root) / cfg.model.name}"
            log.info("resume=auto: no %s, starting afresh", where)
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
    made_by = checkpoint.get("overrides")
    if made_by is not None and in_sweep() and cfg.get("resume") == "auto" and _in_run_dir(path, cfg):
        differ = job_difference(made_by, overrides_of(HydraConfig.get().overrides.task))
        if differ is not None:  # a sweep resumed with other settings than its job dirs ran with
            raise WgptError(
                f"resume: {path} was made by a run of {differ[0]}, this one has {differ[1]}: "
                "resume a sweep with the settings it ran with (same overrides; for a search, the same seed and space)"
            )
    log.info("Resuming from %s (step %d)", path, checkpoint.get("global_step", 0))
    return str(path), record


def chosen_checkpoint(cfg: DictConfig) -> str | None:
    """Where this run continues from: a sweep job with ``resume=auto``, from ``recent.ckpt`` in its
    own dir when it has one (in that dir); else ``ckpt_path``; else, with ``resume=auto``, the
    newest ``recent`` of this model's runs (into a new run dir)."""
    if RESUME_FROM_ENV in os.environ:
        return os.environ[RESUME_FROM_ENV] or None
    auto = cfg.get("resume") == "auto"
    if auto and in_sweep():
        own = Path(cfg.paths.output_dir) / "checkpoints" / "recent.ckpt"
        if own.is_file():
            return str(own)
    path = cfg.get("ckpt_path")
    if path is None and auto and not in_sweep():
        path = newest_recent(Path(cfg.paths.output_root) / cfg.model.name, exclude=cfg.paths.output_dir)
    return None if path is None else str(path)


def own_checkpoint(cfg: DictConfig) -> dict | None:
    """The checkpoint this run continues from when it lies in this run's own dir (a resumed sweep
    job, or ``hydra.run.dir=<run> ckpt_path=<run>/checkpoints/...``): the run goes on in place."""
    path = chosen_checkpoint(cfg)
    return load_checkpoint(path, mmap=True) if path is not None and _in_run_dir(path, cfg) else None


def _in_run_dir(path: str | Path, cfg: DictConfig) -> bool:
    return Path(cfg.paths.output_dir).resolve() in Path(path).resolve().parents


def check_same_tokenizer(ckpt_path: str | None, record: dict | None, tokenizer: TokenizerBase) -> None:
    """A checkpoint continues only with the very tokenizer it was trained with (same name is not
    enough: a BPE trained on other data maps ids to other text)."""
    if ckpt_path is not None and record is not None and record.get("fingerprint", tokenizer.fingerprint) != tokenizer.fingerprint:
        raise WgptError(
            f"ckpt_path={ckpt_path} was trained with tokenizer {record['fingerprint']}, but this run's {tokenizer.name} is "
            f"{tokenizer.fingerprint} (trained on other data): use the data and tokenizer.* settings of that run"
        )


def _run_sweep_job_alone(cfg: DictConfig, run_dir: Path, script: str, ckpt_path: str | None) -> float:
    code = launch_job_alone(cfg, script, resume_from=ckpt_path)
    summary = read_run_summary(run_dir) or {}
    if code != 0 or summary.get("status") not in FINISHED:
        reason = summary.get("error") or f"exit code {code}"
        raise WgptError(f"this job's DDP launch failed ({reason}): see {run_dir / 'train.log'}")
    return objective(summary["best_val_loss"])


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
