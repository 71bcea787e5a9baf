"""The checkpoint a run continues from: ``ckpt_path=<file>``, ``resume=auto`` (the ``recent.ckpt``
of the unfinished run it goes on in), or the one a parent process chose and passed on; each
checked against this run's model, optimizer and tokenizer before anything heavy starts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from wgpt.core.launch import RESUME_FROM_ENV, in_sweep, unfinished_run
from wgpt.core.overrides import job_difference, overrides_of
from wgpt.interop.checkpoint import check_fits, load_checkpoint, model_state
from wgpt.optim import optimizer_layout
from wgpt.tokenizers import tokenizer_config
from wgpt.tokenizers.base import TokenizerBase
from wgpt.tokenizers.r50k import R50K
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")


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
            log.info("resume=auto: %s, starting afresh", nothing_to_resume(cfg))
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
    in_place = ", going on in its own run dir" if _in_run_dir(path, cfg) else ""
    log.info("Resuming from %s (step %d)%s", path, checkpoint.get("global_step", 0), in_place)
    return str(path), record


def chosen_checkpoint(cfg: DictConfig) -> str | None:
    """Where this run continues from: with ``resume=auto``, ``recent.ckpt`` in its own dir when it
    has one (a sweep job's, or the unfinished run whose dir ``wgpt.core.launch.run_dir`` chose):
    the run goes on in place; else ``ckpt_path`` (into this new dir); else nowhere."""
    if RESUME_FROM_ENV in os.environ:
        return os.environ[RESUME_FROM_ENV] or None
    if cfg.get("resume") == "auto":
        own = Path(cfg.paths.output_dir) / "checkpoints" / "recent.ckpt"
        if own.is_file():
            return str(own)
    path = cfg.get("ckpt_path")
    return None if path is None else str(path)


def nothing_to_resume(cfg: DictConfig) -> str:
    """Why ``resume=auto`` found nothing to continue."""
    run_dir = Path(cfg.paths.output_dir)
    if in_sweep():
        return f"no recent checkpoint in {run_dir}"
    if (run_dir / "record.json").is_file():  # wgpt.core.record's, by an earlier part that died before saving
        return f"this unfinished run's earlier part saved no checkpoint: it starts again in {run_dir}"
    overrides = overrides_of(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    _, why = unfinished_run(Path(cfg.paths.output_root) / cfg.model.name, overrides, exclude=run_dir)
    return why


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
    if (
        ckpt_path is not None
        and record is not None
        and record.get("fingerprint", tokenizer.fingerprint) != tokenizer.fingerprint
    ):
        raise WgptError(
            f"ckpt_path={ckpt_path} was trained with tokenizer {record['fingerprint']}, "
            f"but this run's {tokenizer.name} is {tokenizer.fingerprint} (trained on other data): "
            "use the data and tokenizer.* settings of that run"
        )


def recorded_start(run_dir: Path) -> str | None:
    """The start time a run names its files by: its ``best-<start>`` checkpoint's name, else the
    one ``recent.ckpt`` records; None when it has neither."""
    checkpoints = run_dir / "checkpoints"
    best = sorted(checkpoints.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1].name.removeprefix("best-").removesuffix(".ckpt")
    recent = checkpoints / "recent.ckpt"
    return load_checkpoint(recent, mmap=True).get("start_datetime") if recent.is_file() else None
