"""Preparing datasets: token bins for every split, made once, by process.py or on first use."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

from hydra.utils import instantiate
from omegaconf import DictConfig

from wgpt.data.diskdataset import BinInfo, bin_path, check_bin, generate_bin
from wgpt.data.sources import HubUnreachable, describe, process_command
from wgpt.data.splits import SPLITS
from wgpt.data.tokenizer import R50k
from wgpt.tokenizers.base import TokenizerBase
from wgpt.util.errors import WgptError
from wgpt.util.files import exclusive

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
    bins_dir = bin_path(name, "train", data_dir, tokenizer.name).parent
    log.info("Preparing dataset '%s' under %s", name, bins_dir)
    try:
        splits, infos = load(), {}
    except HubUnreachable as e:
        raise WgptError(
            f"the Hugging Face hub ({e.endpoint}) cannot be reached for dataset '{name}' ({e.path}: {e.reason}): "
            f"prepare it where there is network (`{process_command()}`) "
            f"and copy its bins ({bins_dir}/) to this machine, "
            f"or train on a local copy of its files with data=local data.path=<dir>"
        ) from e
    for split in SPLITS:
        infos[split] = info = generate_bin(
            name,
            split,
            splits[split],
            tokenizer,
            data_dir,
            source=describe(load),
            max_docs=max_docs,
            max_tokens=max_tokens,
        )
        log.info(
            "  %s/%s: %d documents, %d tokens (%d records skipped)",
            name,
            split,
            info.num_documents,
            info.num_tokens,
            info.skipped_documents,
        )
        if info.num_tokens == 0:
            path = bin_path(name, split, data_dir, tokenizer.name)
            BinInfo.sidecar(path).unlink()  # an empty split is not a prepared one
            path.unlink()
            raise WgptError(
                f"the {split} split of '{name}' holds no text ({info.skipped_documents} records were empty or not "
                f"text, from {describe(load)}): {_fix_for_empty(load, split)}"
            )
    return infos


def _fix_for_empty(load: Callable, split: str) -> str:
    """What to do about an empty split: a source that carves validation and test from the start of
    its documents and has none left for ``split`` needs more documents."""
    carve = load.keywords.get("carve") if isinstance(load, functools.partial) else None
    if carve and split not in carve and split == load.keywords.get("carve_from", "train"):
        counts = {k: int(v) for k, v in dict(carve).items()}
        shown = ", ".join(f"{k} {v}" for k, v in counts.items())
        return (
            f"the carve takes the first {sum(counts.values())} documents ({shown}), "
            f"so the data needs at least {sum(counts.values()) + 1} documents with text (files of .txt/.md, records "
            "of .jsonl/.json/.parquet): add documents or lower the carve"
        )
    return "check the data path and text field"


def ensure_prepared(
    name: str,
    load: Callable,
    data_dir: str | Path | None = None,
    max_docs: int | None = None,
    max_tokens: int | None = None,
    force: bool = False,
    tokenizer: TokenizerBase | None = None,
    made: list[Path] | None = None,
) -> bool:
    """Prepare ``name`` unless finished bins from this source, with these limits and this
    tokenizer (None: r50k), exist.

    A lock file makes concurrent preparers (e.g. one per node on a shared file system) take
    turns; whoever comes second finds the work done. Returns whether it prepared anything.

    A preparation that fails leaves nothing it made: no new bins, unfinished files, lock file or
    dirs (the bins it replaced are gone, as a preparation would have replaced them). ``made``, when
    given, receives what a finished one made, for a caller that may still refuse it (``discard``).
    """
    tokenizer = tokenizer or R50k().load()
    train_bin = bin_path(name, "train", data_dir, tokenizer.name)
    split_files = [
        f
        for split in SPLITS
        for b in [bin_path(name, split, data_dir, tokenizer.name)]
        for f in (b, BinInfo.sidecar(b))
    ]
    new: list[Path] = []  # files, then dirs deepest first
    try:
        with exclusive(train_bin.parent / ".prepare.lock", new):
            info = BinInfo.read(train_bin)
            same_limits = info is not None and (info.max_docs, info.max_tokens) == (max_docs, max_tokens)
            if not force and same_limits and unprepared_reason(name, load, data_dir, tokenizer) is None:
                return False
            existing = {f for f in split_files if f.exists()}
            try:
                prepare_dataset(name, load, data_dir, max_docs, max_tokens, tokenizer)
            finally:
                new[:0] = [f for f in split_files if f.exists() and f not in existing]
                for f in split_files:  # unfinished, where a split stopped midway
                    f.with_name(f.name + ".tmp").unlink(missing_ok=True)
    except BaseException:
        discard(new)
        raise
    if made is not None:
        made.extend(new)
    return True


def discard(made: list[Path]) -> None:
    """Remove what ``ensure_prepared`` made: files, then dirs (deepest first) left empty."""
    for path in made:
        if path.is_dir():
            try:
                path.rmdir()
            except OSError:  # something else lives there
                pass
        else:
            path.unlink(missing_ok=True)


def process(cfg: DictConfig) -> None:
    """process.py: train the tokenizer if it needs it, then prepare every dataset of ``cfg.data``
    that is not prepared yet (all, and the tokenizer, with ``force``)."""
    datasets = instantiate(cfg.data.datasets, _convert_="partial")
    tokenizer = instantiate(cfg.tokenizer).load(datasets, cfg.paths.data_dir, train=True, force=cfg.force)
    for name, load in datasets.items():
        if not ensure_prepared(name, load, cfg.paths.data_dir, cfg.max_docs, cfg.max_tokens, cfg.force, tokenizer):
            log.info(
                "Dataset '%s' is already prepared under %s (force=true prepares it again)",
                name,
                bin_path(name, "train", cfg.paths.data_dir, tokenizer.name).parent,
            )
