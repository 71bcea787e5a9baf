"""Check a composed training config before any heavy work: no weights allocated, no data read,
no process started. Each mistake is one WgptError naming the key, its bad value and the fix.

The types come from the code, not from a second schema: every ``_target_`` node is checked
against its class's signature (unknown keys, and values against the type hints, Literal
choices included), and the model is built once on the meta device so that its constructor's own
checks (heads dividing the width, ...) run for free. A new model file gets all of this with no
edit here. The keys that no signature types (optim, the trainer's numbers) are in NUMBERS.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from wgpt.util.checks import (
    at_least_one,
    check_creatable,
    check_number,
    check_readable,
    check_targets,
    is_kind,
    missing_keys,
    non_negative,
    positive,
    steps_or_unlimited,
)
from wgpt.util.errors import WgptError

# Switches that must be true or false (null where noted in their configs): a truthy string
# such as "flase" would otherwise quietly turn them on.
BOOLEANS = ("tf32", "optim.fused", "trainer.activation_checkpointing", "callbacks.target.stop")

# key: (type, test, what to give instead). Keys absent from the config are skipped.
NUMBERS: dict[str, tuple[type, Callable[[Any], bool], str]] = {
    "optim.lr": (float, positive, "a learning rate above 0, e.g. optim.lr=3e-4"),
    "optim.weight_decay": (float, non_negative, "0 or more, e.g. 0.1"),
    "optim.eps": (float, positive, "a small number above 0, e.g. 1e-8"),
    "model.max_seq_len": (int, at_least_one, "a whole number of tokens, at least 1"),
    "data.batch_size": (int, at_least_one, "a whole number of sequences per device, at least 1"),
    "data.seq_len": (int, at_least_one, "a whole number of tokens, at least 1 and at most model.max_seq_len"),
    "data.stride_ratio": (
        float,
        lambda v: 0 < v <= 1,
        "a ratio in (0, 1]: 1 for disjoint windows, 0.5 for half-overlapping",
    ),
    "data.num_workers": (int, non_negative, "0 (load in the main process) or more worker processes"),
    "trainer.max_steps": (int, steps_or_unlimited, "-1 (no limit) or a number of optimizer steps, at least 1"),
    "trainer.max_epochs": (int, steps_or_unlimited, "-1 (no limit) or a number of epochs, at least 1"),
    "trainer.val_every_n_steps": (int, at_least_one, "a number of optimizer steps, at least 1"),
    "trainer.log_every_n_steps": (int, non_negative, "a number of optimizer steps (0: no step logging)"),
    "trainer.accumulate_grad_batches": (int, at_least_one, "a number of batches per optimizer step, at least 1"),
    "trainer.max_devices": (int, at_least_one, "the most devices `devices: auto` may take, at least 1"),
    "trainer.num_nodes": (int, at_least_one, "a number of machines, at least 1"),
    "callbacks.recent.every_n_train_steps": (int, at_least_one, "a number of optimizer steps, at least 1"),
    "seed": (int, lambda v: True, "a whole number"),
    "tokenizer.vocab_size": (
        int,
        lambda v: 259 <= v <= 2**20,
        "a number of tokens from 259 (256 bytes + 3 specials) up, e.g. 4096",
    ),
}


def check_config(cfg: DictConfig) -> None:
    """Raise a WgptError for the first mistake in a composed training config (unresolved or not).
    The model is built on the meta device (shapes, no memory) so that its own checks run too."""
    # Lazy: torch, Lightning, numpy and tiktoken load here (seconds), not when train.py imports
    # check_values, which reports a mistyped value before any of them.
    from wgpt.core.trainer import check_trainer  # lazy: Lightning
    from wgpt.data.tokenizer import end_of_text_id, tokenizer_spec  # lazy: torch, numpy, tiktoken
    from wgpt.models import padded_vocab_size  # lazy: torch
    from wgpt.models.build import build_on_meta  # lazy: torch
    from wgpt.optim import OPTIM_KEYS, check_optim  # lazy: torch
    from wgpt.parallel.sharding import FSDP, model_blocks  # lazy: torch

    check_values(cfg)
    check_targets(cfg, "", own_keys={"optim": OPTIM_KEYS})
    check_optim(cfg.optim)
    check_trainer(cfg.trainer)
    spec = tokenizer_spec(cfg)
    model = build_on_meta(cfg.model, padded_vocab_size(spec.vocab_size), end_of_text_id(spec))
    if cfg.trainer.get("activation_checkpointing"):
        model_blocks(model, "trainer.activation_checkpointing=true recomputes the model's blocks")
    if cfg.trainer.get("strategy") == FSDP:
        model_blocks(model, "trainer.strategy=fsdp shards the model block by block")
        rules = cfg.optim.get("param_groups") or {}
        targets = [cfg.optim.get("_target_", "")] + [
            (r.get("optimizer") or {}).get("_target_", "") for r in rules.values() if r
        ]
        muon = next((t for t in targets if "muon" in str(t).lower()), None)
        if muon:
            raise WgptError(
                f"{muon} orthogonalizes whole weight matrices, which trainer.strategy=fsdp splits across ranks: "
                "use optim=adamw (or another elementwise optimizer) with FSDP, or Muon with DDP"
            )


def check_values(cfg: DictConfig) -> None:
    """The checks that need no torch or Lightning (train.py runs them before importing either,
    so that a mistyped value is reported at once): unset values, numbers, paths."""
    missing = sorted(missing_keys(cfg, ""))
    if missing:
        raise WgptError(f"{missing[0]} is not set (??? in its config): give it, e.g. {missing[0]}=<value>")
    for key, (kind, test, give) in NUMBERS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not (value is None and key.startswith("trainer.max_")):
            check_number(key, value, kind, test, give)
    betas = cfg.optim.get("betas")
    if betas is not None and not (
        isinstance(betas, ListConfig) and len(betas) == 2 and all(is_kind(float, b) and 0 <= b < 1 for b in betas)
    ):
        raise WgptError(f"optim.betas={betas} must be two numbers in [0, 1): e.g. optim.betas=[0.9,0.95]")
    for key in BOOLEANS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool):
            raise WgptError(f"{key}={value} is not true or false: give {key}=true or {key}=false")
    if cfg.get("compile", False) not in (True, False, "auto"):
        raise WgptError(f"compile={cfg.compile} is not one of auto, true, false: auto compiles on CUDA GPUs only")
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None:
        check_number(
            "trainer.gradient_clip_val", clip, float, non_negative, "0 or null (no clipping) or a norm above 0"
        )
    target = OmegaConf.select(cfg, "callbacks.target", default=None)
    if target is not None:
        check_target(target, list(cfg.data.get("datasets") or []), cfg.trainer)
    if cfg.get("resume") not in (None, "auto"):
        raise WgptError(f"resume={cfg.resume} is not an option: use resume=auto, or ckpt_path=<file>")
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise WgptError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}: "
            "lower data.seq_len or raise model.max_seq_len"
        )
    path = cfg.data.get("path")
    if path is not None:
        check_readable("data.path", Path(str(path)).expanduser(), "point it at a file or directory of your corpus")
    data_dir = OmegaConf.select(cfg, "paths.data_dir", default=None)
    if data_dir is not None:
        check_creatable(
            "paths.data_dir", Path(str(data_dir)), "give a directory you can write (paths.data_dir, or WGPT_DATA_DIR)"
        )


_ABSENT = object()


def check_target(target: DictConfig, datasets: list[str], trainer: DictConfig) -> None:
    """``callbacks.target`` (wgpt.core.target.TargetReached): a metric this run validates, a number,
    min or max; ``stop`` not held back by a minimum length of training."""
    if target.get("value") is not None:
        check_number("callbacks.target.value", target.value, float, math.isfinite, "a finite number, e.g. 1.6")
    metrics = ["val_loss", "val_bpb", "val_ppl"]
    if len(datasets) > 1:
        metrics += [f"{m}/{name}" for name in datasets for m in ("val_loss", "val_bpb")]
    if target.get("metric") not in metrics:
        raise WgptError(
            f"callbacks.target.metric={target.get('metric')} is not a validation metric: "
            f"use one of {', '.join(metrics)}"
        )
    held = [k for k in ("min_steps", "min_epochs") if trainer.get(k)]
    if target.get("stop") is True and target.get("value") is not None and held:
        raise WgptError(
            f"callbacks.target.stop=true cannot stop before trainer.{held[0]}={trainer[held[0]]} is done "
            f"(Lightning trains at least that long): remove trainer.{held[0]}, or callbacks.target.stop"
        )
    if target.get("mode") not in ("min", "max"):
        raise WgptError(
            f"callbacks.target.mode={target.get('mode')} is not min or max: "
            "min for losses, bits per byte and perplexity"
        )
