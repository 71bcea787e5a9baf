"""The ``tokenizer`` config group: a tokenizer for a data config, loaded or trained on it.

``tokenizer=r50k`` (``R50k``) is GPT-2's, nothing to train; ``tokenizer=bpe`` (``ByteLevelBPE``)
trains a byte-level BPE once on a dataset's train split and stores it beside that dataset's
bins. ``Tokenizer`` (the seed's r50k tokenizer) is importable from here.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

from omegaconf import DictConfig

from wgpt.data.diskdataset import default_data_dir, text_batches
from wgpt.data.sources import describe, process_command
from wgpt.tokenizers.base import SPECIAL_TOKENS
from wgpt.tokenizers.bpe import MAX_VOCAB, MIN_VOCAB, BPETokenizer, content_hash, train_bpe
from wgpt.tokenizers.r50k import R50K, Tokenizer, r50k_tokenizer
from wgpt.util.errors import WgptError
from wgpt.util.files import atomic_write_text, exclusive


def tokenizer_spec(cfg: DictConfig):
    """The ``tokenizer`` group instantiated (``R50k``, ``ByteLevelBPE``, ...): cheap, nothing trained
    or loaded. r50k where a config has no tokenizer group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if cfg.get("tokenizer") is None:
        return R50k()
    try:
        return instantiate(cfg.tokenizer)
    except InstantiationException as e:
        if isinstance(e.__cause__, WgptError):
            raise e.__cause__ from None
        raise WgptError(f"tokenizer: {e.__cause__ or e}: fix the tokenizer.* values (see conf/tokenizer/)") from None


def end_of_text_id(spec) -> int | None:
    """A tokenizer spec's end-of-text id (document masking's border), None where it does not say."""
    return getattr(spec, "eos_token_id", None)


class R50k:
    """``tokenizer=r50k`` (the default): the seed's tokenizer, nothing to train."""

    name = R50K
    vocab_size = 50259
    eos_token_id = 50256  # <|end_of_text|>, after r50k_base's 50,256 ranks

    def load(
        self,
        datasets: Mapping[str, Callable | None] | None = None,
        data_dir: str | Path | None = None,
        train: bool = False,
        force: bool = False,
    ) -> Tokenizer:
        return r50k_tokenizer()


log = logging.getLogger("wgpt")

# What this module held before the tokenizers moved to wgpt.tokenizers: still importable from here.
EARLIER_NAMES = {
    "TokenizerBase": "wgpt.tokenizers.base",
    "PAT_STR": "wgpt.tokenizers.base",
    "SPECIAL_TOKENS": "wgpt.tokenizers.base",
    "tokenizer_from_record": "wgpt.tokenizers",
    "tokenizer_config": "wgpt.tokenizers",
    "tokenizer_fingerprint": "wgpt.tokenizers.r50k",
    "RANKS_FILE": "wgpt.tokenizers.r50k",
    "RANKS_SHA256": "wgpt.tokenizers.r50k",
}


def __getattr__(name: str):
    if name in EARLIER_NAMES:
        return getattr(importlib.import_module(EARLIER_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ByteLevelBPE:
    """``tokenizer=bpe``: a byte-level BPE of ``vocab_size`` tokens (the 3 specials included),
    trained once on the train split of ``train_on`` (null: the data config's first dataset),
    from at most ``max_train_chars`` characters of it."""

    eos_token_id = 0  # training puts the specials first, <|end_of_text|> at 0 (tokenizers/bpe.py)

    def __init__(self, vocab_size: int = 4096, train_on: str | None = None, max_train_chars: int = 200_000_000):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
            raise WgptError(
                f"tokenizer.vocab_size={vocab_size} is out of range: give a whole number from {MIN_VOCAB} "
                f"(256 bytes + {len(SPECIAL_TOKENS)} specials) to {MAX_VOCAB}, e.g. 4096"
            )
        if isinstance(max_train_chars, bool) or not isinstance(max_train_chars, int) or max_train_chars < 1:
            raise WgptError(
                f"tokenizer.max_train_chars={max_train_chars} is out of range: "
                "give a number of characters, e.g. 200000000"
            )
        self.vocab_size, self.train_on, self.max_train_chars = vocab_size, train_on, max_train_chars
        self.name = f"bpe{vocab_size}"

    def dataset(self, datasets: Mapping[str, Callable | None]) -> str:
        """The dataset whose train split trains this tokenizer."""
        if self.train_on is None:
            return next(iter(datasets))
        if self.train_on not in datasets:
            raise WgptError(
                f"tokenizer.train_on={self.train_on} is not a dataset of this data config: "
                f"pick one of {sorted(datasets)}"
            )
        return self.train_on

    def path(self, datasets: Mapping[str, Callable | None], data_dir: str | Path | None = None) -> Path:

        return Path(data_dir or default_data_dir()) / self.dataset(datasets) / "tokenizers" / f"{self.name}.json"

    def load(
        self,
        datasets: Mapping[str, Callable | None],
        data_dir: str | Path | None = None,
        train: bool = False,
        force: bool = False,
    ) -> BPETokenizer:
        """The trained tokenizer; trained first (``train``) when missing, stale or ``force``d.

        A lock file makes concurrent callers (the ranks of a launch, nodes on a shared file
        system) take turns: whoever comes second finds it trained."""

        name = self.dataset(datasets)
        load, path = datasets[name], self.path(datasets, data_dir)
        recipe = {"vocab_size": self.vocab_size, "max_train_chars": self.max_train_chars}
        if load is not None:
            recipe["source"] = describe(load)
        reason = "force=true" if force else _stale_reason(path, recipe)
        if reason is not None and (not train or load is None):
            how = f"`{process_command()}`" if load is not None else f"a data config that names the source of '{name}'"
            raise WgptError(f"tokenizer {self.name} is not trained on '{name}' ({reason}): train it with {how}")
        if reason is None:
            return BPETokenizer.from_file(path)
        new_dirs: list[Path] = []
        try:
            with exclusive(path.parent / f".{self.name}.lock", new_dirs):
                if not force and _stale_reason(path, recipe) is None:  # trained meanwhile by another process
                    return BPETokenizer.from_file(path)
                return self._train(name, load, path, recipe)
        except BaseException:  # no text, no hub...: leave no dirs this call made (the lock is gone already)
            for directory in new_dirs:
                try:
                    directory.rmdir()
                except OSError:  # not empty: something else lives there
                    break
            raise

    def _train(self, name: str, load: Callable, path: Path, recipe: dict) -> BPETokenizer:

        log.info(
            "Training tokenizer %s on the train split of '%s' (at most %d characters)",
            self.name,
            name,
            self.max_train_chars,
        )
        start, seen = time.perf_counter(), [0, 0]  # characters, documents
        json_text = train_bpe(_limited_texts(load()["train"], self.max_train_chars, seen), self.vocab_size)
        tokenizer = BPETokenizer(json_text, self.name)
        if seen[0] == 0:
            raise WgptError(
                f"the train split of '{name}' holds no text to train tokenizer {self.name} on: check the data"
            )
        atomic_write_text(path, json_text)
        meta = {
            **recipe,
            "sha256": content_hash(json_text),
            "fingerprint": tokenizer.fingerprint,
            "trained_on_chars": seen[0],
            "trained_on_documents": seen[1],
            "tokens": len(tokenizer),
        }
        atomic_write_text(_meta_path(path), json.dumps(meta, indent=2) + "\n")
        log.info(
            "  %s: %d tokens from %d documents (%d characters) in %.1f s, %s",
            self.name,
            len(tokenizer),
            seen[1],
            seen[0],
            time.perf_counter() - start,
            path,
        )
        if len(tokenizer) < self.vocab_size:
            log.warning(
                "  %s has only %d tokens: the train split supports no more merges (the model's vocabulary follows)",
                self.name,
                len(tokenizer),
            )
        return tokenizer


def _meta_path(path: Path) -> Path:
    return path.with_name(path.stem + ".meta.json")


def _stale_reason(path: Path, recipe: dict) -> str | None:
    """Why the tokenizer at ``path`` cannot be used for ``recipe`` (None when it can)."""
    meta_path = _meta_path(path)
    if not (path.exists() and meta_path.exists()):
        return f"no finished tokenizer at {path}"
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise WgptError(f"{meta_path} is damaged ({e}): delete {path} and {meta_path.name} and train again") from None
    if content_hash(path.read_text(encoding="utf-8")) != meta.get("sha256"):
        raise WgptError(
            f"{path} does not match the sha256 in {meta_path.name} (changed on disk?): delete both and train again"
        )
    for key, wanted in recipe.items():
        if meta.get(key) != wanted:
            return f"{path} was trained with {key}={meta.get(key)!r}, not {wanted!r}"
    return None


def _limited_texts(data, max_chars: int, seen: list[int]) -> Iterator[str]:
    """The texts of a split, stopping once ``max_chars`` characters were given (counted in ``seen``)."""

    for texts in text_batches(data, 512):
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                continue
            yield text
            seen[0] += len(text)
            seen[1] += 1
            if seen[0] >= max_chars:
                return
