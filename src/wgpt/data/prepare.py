"""Preparing datasets: token bins for every split, made once, by process.py or on first use."""

from __future__ import annotations

import fcntl
import functools
import logging
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from wgpt.data.diskdataset import BinInfo, bin_path, check_bin, generate_bin
from wgpt.data.splits import SPLITS
from wgpt.data.tokenizer import R50k, TokenizerBase
from wgpt.errors import WgptError

log = logging.getLogger("wgpt")


def unprepared_reason(
    name: str, load: Callable | None, data_dir: str | Path | None = None, tokenizer: TokenizerBase | None = None
) -> str | None:
    """Why ``name``'s bins cannot be used as they are (None when every split is finished, intact,
    made by ``tokenizer`` (None: r50k) and, when ``load`` is given, from that same source)."""
    tokenizer = tokenizer or R50k().load()
    for split in SPLITS:
        path = bin_path(name, split, data_dir, tokenizer.name)
        if BinInfo.read(path) is None:
            return f"no finished bin at {path}"
        try:
            info = check_bin(path, tokenizer.fingerprint)
        except WgptError as e:
            return str(e)
        if load is not None and info.source != describe(load):
            return f"{path} was made from {info.source}, not from {describe(load)}"
    return None


def prepare_dataset(
    name: str,
    load: Callable[[], dict],
    data_dir: str | Path | None = None,
    max_docs: int | None = None,
    max_tokens: int | None = None,
    tokenizer: TokenizerBase | None = None,
) -> dict[str, BinInfo]:
    """Tokenize every split that ``load()`` returns into ``<data_dir>/<name>/tokenized[-<tokenizer>]/``."""
    tokenizer = tokenizer or R50k().load()
    log.info("Preparing dataset '%s' under %s", name, bin_path(name, "train", data_dir, tokenizer.name).parent)
    splits, infos = load(), {}
    for split in SPLITS:
        infos[split] = info = generate_bin(
            name, split, splits[split], tokenizer, data_dir, source=describe(load), max_docs=max_docs, max_tokens=max_tokens
        )
        log.info("  %s/%s: %d documents, %d tokens (%d records skipped)",
                 name, split, info.num_documents, info.num_tokens, info.skipped_documents)  # fmt: skip
        if info.num_tokens == 0:
            path = bin_path(name, split, data_dir, tokenizer.name)
            BinInfo.sidecar(path).unlink()  # an empty split is not a prepared one
            path.unlink()
            raise WgptError(
                f"the {split} split of '{name}' holds no text ({info.skipped_documents} records were empty or not "
                f"text, from {describe(load)}): check the data path and text field"
            )
    return infos


def process_command() -> str:
    """The command that prepares this run's data: process.py with its data and tokenizer choices and
    their overrides."""
    if not HydraConfig.initialized():
        return "python process.py data=<your data config>"
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if o.lstrip("+~").startswith(("data.", "paths.", "tokenizer."))]
    choices = hydra_cfg.runtime.choices
    tokenizer = [f"tokenizer={choices['tokenizer']}"] if choices.get("tokenizer") not in (None, "r50k") else []
    return " ".join(["python process.py", f"data={choices.get('data')}", *tokenizer, *overrides])


def describe(load: Callable) -> str:
    """A readable record of where a split came from, kept in each bin's sidecar."""
    if isinstance(load, functools.partial):
        plain = lambda v: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v  # noqa: E731
        args = ", ".join(f"{k}={plain(v)!r}" for k, v in load.keywords.items())
        return f"{load.func.__module__}.{load.func.__qualname__}({args})"
    return f"{getattr(load, '__module__', '')}.{getattr(load, '__qualname__', repr(load))}"


def ensure_prepared(
    name: str, load: Callable, data_dir: str | Path | None = None, max_docs: int | None = None,
    max_tokens: int | None = None, force: bool = False, tokenizer: TokenizerBase | None = None,
) -> bool:
    """Prepare ``name`` unless finished bins from this source, with these limits and this
    tokenizer (None: r50k), exist.

    A lock file makes concurrent preparers (e.g. one per node on a shared file system) take
    turns; whoever comes second finds the work done. Returns whether it prepared anything.
    """
    tokenizer = tokenizer or R50k().load()
    train_bin = bin_path(name, "train", data_dir, tokenizer.name)
    lock_path = train_bin.parent / ".prepare.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = BinInfo.read(train_bin)
        same_limits = info is not None and (info.max_docs, info.max_tokens) == (max_docs, max_tokens)
        if not force and same_limits and unprepared_reason(name, load, data_dir, tokenizer) is None:
            return False
        prepare_dataset(name, load, data_dir, max_docs, max_tokens, tokenizer)
        return True


def process(cfg: DictConfig) -> None:
    """process.py: train the tokenizer if it needs it, then prepare every dataset of ``cfg.data``
    that is not prepared yet (all, and the tokenizer, with ``force``)."""
    datasets = instantiate(cfg.data.datasets, _convert_="partial")
    tokenizer = instantiate(cfg.tokenizer).load(datasets, cfg.paths.data_dir, train=True, force=cfg.force)
    for name, load in datasets.items():
        if not ensure_prepared(name, load, cfg.paths.data_dir, cfg.max_docs, cfg.max_tokens, cfg.force, tokenizer):
            log.info("Dataset '%s' is already prepared under %s (force=true prepares it again)",
                     name, bin_path(name, "train", cfg.paths.data_dir, tokenizer.name).parent)  # fmt: skip
