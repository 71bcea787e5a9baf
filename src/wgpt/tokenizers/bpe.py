"""Byte-level BPE tokenizers (``tokenizer=bpe``), and their training from texts.

A 1M-parameter model with r50k's 50k-token output layer is mostly that layer; a BPE of a few
thousand tokens trained on the corpus itself gives it the capacity back (templateGPT's small
tokenizers). Training uses Hugging Face ``tokenizers`` (Rust, seconds for Shakespeare) with the
r50k split pattern, the 256 byte symbols as the alphabet (any text round-trips) and the seed's 3
special tokens (ids 0-2), which text never produces: a corpus that spells one gets plain tokens.

``wgpt.data.tokenizer.ByteLevelBPE`` trains one on a dataset's train split and stores it beside
the bins of the dataset it learned from,
``<data_dir>/<dataset>/tokenizers/bpe<V>.json``, with ``bpe<V>.meta.json`` (its sha256, the
source and limits it was trained from). Its fingerprint ``bpe<V>-<sha256 prefix>`` is recorded in
every bin and checkpoint made with it; its bins go to ``<data_dir>/<name>/tokenized-bpe<V>/``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from wgpt.tokenizers.base import PAT_STR, SPECIAL_TOKENS, TokenizerBase
from wgpt.util.errors import WgptError

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
        return np.concatenate(
            [part for e in encodings for part in (np.array(e.ids, dtype=np.uint32), eos)] or [eos[:0]]
        )

    def _decode_one(self, ids: list[int]) -> str:
        return self.model.decode(ids, skip_special_tokens=False)

    def id_to_bytes(self, token_id: int) -> bytes:
        if token_id in (self.eos_token_id, self.bos_token_id, self.pad_token_id):
            return self.model.id_to_token(token_id).encode("utf-8")
        alphabet = byte_alphabet()
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
def byte_alphabet() -> dict[str, int]:
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
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),  # r50k's word split: no merges across words
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer.to_str()
