"""Byte-level BPE tokenizers trained on a dataset's train split (``tokenizer=bpe``).

A 1M-parameter model with r50k's 50k-token output layer is mostly that layer; a BPE of a few
thousand tokens trained on the corpus itself gives it the capacity back (templateGPT's small
tokenizers). Training uses Hugging Face ``tokenizers`` (Rust, seconds for Shakespeare) with the
r50k split pattern, the 256 byte symbols as the alphabet (any text round-trips) and the seed's 3
special tokens (ids 0-2), which text never produces: a corpus that spells one gets plain tokens.

A trained tokenizer is stored beside the bins of the dataset it learned from,
``<data_dir>/<dataset>/tokenizers/bpe<V>.json``, with ``bpe<V>.meta.json`` (its sha256, the
source and limits it was trained from). Its fingerprint ``bpe<V>-<sha256 prefix>`` is recorded in
every bin and checkpoint made with it; its bins go to ``<data_dir>/<name>/tokenized-bpe<V>/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from wgpt.data.tokenizer import PAT_STR, SPECIAL_TOKENS, TokenizerBase
from wgpt.errors import WgptError

log = logging.getLogger("wgpt")

MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte, plus the specials
MAX_VOCAB = 2**20


class BPETokenizer(TokenizerBase):
    """A trained byte-level BPE (a ``tokenizers`` JSON) with the seed's Tokenizer API."""

    def __init__(self, json_text: str, name: str):
        from tokenizers import Tokenizer as HFTokenizer

        self.json_text, self.name = json_text, name
        self.model = HFTokenizer.from_str(json_text)
        self.model.encode_special_tokens = True  # text spelling "<|pad|>" is text, not the control token
        ids = [self.model.token_to_id(token) for token in SPECIAL_TOKENS]
        if None in ids:
            raise WgptError(f"tokenizer {name} lacks the special tokens {list(SPECIAL_TOKENS)}: train it again")
        self.eos_token_id, self.bos_token_id, self.pad_token_id = ids
        self.fingerprint = f"{name}-{content_hash(json_text)[:16]}"

    def __getstate__(self) -> dict:
        return {"json_text": self.json_text, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        # Rebuilt, not unpickled: a pickled ``tokenizers`` object forgets encode_special_tokens.
        self.__init__(state["json_text"], state["name"])

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> "BPETokenizer":
        path = Path(path)
        return cls(path.read_text(encoding="utf-8"), name or path.stem)

    def __len__(self) -> int:
        return self.model.get_vocab_size()

    def _encode_one(self, text: str) -> list[int]:
        return self.model.encode(text, add_special_tokens=False).ids

    def _encode_many(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return [e.ids for e in self.model.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        eos = np.array([self.eos_token_id], dtype=np.uint32)
        encodings = self.model.encode_batch_fast(list(texts), add_special_tokens=False)
        return np.concatenate([part for e in encodings for part in (np.array(e.ids, dtype=np.uint32), eos)] or [eos[:0]])

    def _decode_one(self, ids: list[int]) -> str:
        return self.model.decode(ids, skip_special_tokens=False)

    def id_to_bytes(self, token_id: int) -> bytes:
        if token_id in (self.eos_token_id, self.bos_token_id, self.pad_token_id):
            return self.model.id_to_token(token_id).encode("utf-8")
        alphabet = _byte_alphabet()
        return bytes(alphabet[c] for c in self.model.id_to_token(token_id))

    def token_bytes(self) -> np.ndarray:
        # Byte-level tokens spell each byte as one character of a printable alphabet.
        specials = {self.eos_token_id, self.bos_token_id, self.pad_token_id}
        return np.array(
            [0 if i in specials else len(self.model.id_to_token(i)) for i in range(len(self))], dtype=np.int64
        )

    def record(self) -> dict:
        return {**super().record(), "json": self.json_text}


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted (character -> byte): the printable bytes stand for
    themselves, the other 68 for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def train_bpe(texts: Iterable[str], vocab_size: int) -> str:
    """A byte-level BPE with ``vocab_size`` tokens (specials included) learned from ``texts``,
    as ``tokenizers`` JSON. The same texts in the same order give the same JSON."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),  # r50k's word split: no merges across words
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer.to_str()


class ByteLevelBPE:
    """``tokenizer=bpe``: a byte-level BPE of ``vocab_size`` tokens (the 3 specials included),
    trained once on the train split of ``train_on`` (null: the data config's first dataset),
    from at most ``max_train_chars`` characters of it."""

    def __init__(self, vocab_size: int = 4096, train_on: str | None = None, max_train_chars: int = 200_000_000):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
            raise WgptError(
                f"tokenizer.vocab_size={vocab_size} is out of range: give a whole number from {MIN_VOCAB} "
                f"(256 bytes + {len(SPECIAL_TOKENS)} specials) to {MAX_VOCAB}, e.g. 4096"
            )
        if isinstance(max_train_chars, bool) or not isinstance(max_train_chars, int) or max_train_chars < 1:
            raise WgptError(f"tokenizer.max_train_chars={max_train_chars} is out of range: give a number of characters, e.g. 200000000")
        self.vocab_size, self.train_on, self.max_train_chars = vocab_size, train_on, max_train_chars
        self.name = f"bpe{vocab_size}"

    def dataset(self, datasets: Mapping[str, Callable | None]) -> str:
        """The dataset whose train split trains this tokenizer."""
        if self.train_on is None:
            return next(iter(datasets))
        if self.train_on not in datasets:
            raise WgptError(f"tokenizer.train_on={self.train_on} is not a dataset of this data config: pick one of {sorted(datasets)}")
        return self.train_on

    def path(self, datasets: Mapping[str, Callable | None], data_dir: str | Path | None = None) -> Path:
        from wgpt.data.diskdataset import default_data_dir

        return Path(data_dir or default_data_dir()) / self.dataset(datasets) / "tokenizers" / f"{self.name}.json"

    def load(
        self, datasets: Mapping[str, Callable | None], data_dir: str | Path | None = None,
        train: bool = False, force: bool = False,
    ) -> BPETokenizer:  # fmt: skip
        """The trained tokenizer; trained first (``train``) when missing, stale or ``force``d.

        A lock file makes concurrent callers (the ranks of a launch, nodes on a shared file
        system) take turns: whoever comes second finds it trained."""
        from wgpt.data.prepare import _exclusive, describe, process_command

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
            with _exclusive(path.parent / f".{self.name}.lock", new_dirs):
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
        from wgpt.data.diskdataset import _atomic_write_text

        log.info("Training tokenizer %s on the train split of '%s' (at most %d characters)", self.name, name, self.max_train_chars)
        start, seen = time.perf_counter(), [0, 0]  # characters, documents
        json_text = train_bpe(_limited_texts(load()["train"], self.max_train_chars, seen), self.vocab_size)
        tokenizer = BPETokenizer(json_text, self.name)
        if seen[0] == 0:
            raise WgptError(f"the train split of '{name}' holds no text to train tokenizer {self.name} on: check the data")
        _atomic_write_text(path, json_text)
        meta = {**recipe, "sha256": content_hash(json_text), "fingerprint": tokenizer.fingerprint,
                "trained_on_chars": seen[0], "trained_on_documents": seen[1], "tokens": len(tokenizer)}  # fmt: skip
        _atomic_write_text(_meta_path(path), json.dumps(meta, indent=2) + "\n")
        log.info("  %s: %d tokens from %d documents (%d characters) in %.1f s, %s",
                 self.name, len(tokenizer), seen[1], seen[0], time.perf_counter() - start, path)  # fmt: skip
        if len(tokenizer) < self.vocab_size:
            log.warning("  %s has only %d tokens: the train split supports no more merges (the model's vocabulary follows)",
                        self.name, len(tokenizer))  # fmt: skip
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
        raise WgptError(f"{path} does not match the sha256 in {meta_path.name} (changed on disk?): delete both and train again")
    for key, wanted in recipe.items():
        if meta.get(key) != wanted:
            return f"{path} was trained with {key}={meta.get(key)!r}, not {wanted!r}"
    return None


def _limited_texts(data, max_chars: int, seen: list[int]) -> Iterator[str]:
    """The texts of a split, stopping once ``max_chars`` characters were given (counted in ``seen``)."""
    from wgpt.data.diskdataset import _text_batches

    for texts in _text_batches(data, 512):
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                continue
            yield text
            seen[0] += len(text)
            seen[1] += 1
            if seen[0] >= max_chars:
                return
