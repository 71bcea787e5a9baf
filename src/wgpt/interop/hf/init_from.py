"""``init_from=<Hugging Face dir>``: a new run starting from a model's weights (step 0, a fresh
optimizer), its directory, implied model config and tokenizer checked before heavy work."""

from __future__ import annotations

import logging

import torch.nn as nn

from wgpt.interop.hf.config import ARCHITECTURES, HFDir
from wgpt.interop.hf.implied import check_fits_config
from wgpt.interop.hf.reading import load_hf_weights, read_hf_dir
from wgpt.interop.hf.tokenizer import check_hf_tokenizer, check_hf_vocab
from wgpt.models import padded_vocab_size
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")


# train.py init_from=<dir>.


def check_init_from(cfg, model: nn.Module, ckpt_path: str | None) -> HFDir | None:
    """``init_from`` checked before any heavy work (the directory, and its model against ``model``,
    the meta-device one of the run's config): the directory to start from, or None when none is
    given or when ``resume=auto`` found a checkpoint to continue instead (that run began from it)."""
    path = cfg.get("init_from")
    if path is None:
        return None
    if cfg.get("ckpt_path") is not None:
        raise WgptError(
            f"init_from={path} and ckpt_path={cfg.ckpt_path}: init_from starts a new run from a model's weights "
            "(step 0, a fresh optimizer), ckpt_path continues a run: give one of them"
        )
    if ckpt_path is not None:
        log.info("init_from=%s is not used: resume=auto continues %s", path, ckpt_path)
        return None
    d = read_hf_dir(path, "init_from")
    check_fits_config(d, model.config)
    return d


def check_init_tokenizer(d: HFDir, tokenizer) -> None:
    """The run's tokenizer (known once the data is ready) against the directory's."""

    check_hf_vocab(d, padded_vocab_size(len(tokenizer)), tokenizer)
    check_hf_tokenizer(d, tokenizer)


def start_from(model: nn.Module, d: HFDir) -> None:
    """train.py init_from: ``model`` takes the directory's weights; the run itself starts afresh."""
    load_hf_weights(model, d.path, key=d.key)
    step = (d.wgpt or {}).get("global_step")
    made_at = f", step {step} of the run that made it" if step is not None else ""
    log.info(
        "init_from: the weights of %s (%s%s); this run starts at step 0 with a fresh optimizer",
        d.path,
        ARCHITECTURES[d.family],
        made_at,
    )
