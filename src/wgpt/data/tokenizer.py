"""Tokenizers: the seed's ``Tokenizer`` (GPT-2's r50k_base merges with Llama-3-style special
tokens) and the specs the ``tokenizer`` config group instantiates.

Every tokenizer has the seed's API (``encode``/``decode``/``len``, ``eos_token_id``, ...) plus what
wgpt's machinery reads: ``name`` (which folder its bins live in), ``fingerprint`` (the identity
recorded in every bin and checkpoint), ``token_bytes()`` (for bits per byte) and ``record()`` (what a
checkpoint keeps to rebuild it). A spec (``R50k`` here, ``ByteLevelBPE`` in bpe.py) knows its
vocabulary size from the config alone, so the model is checked before any tokenizer is trained,
and ``load`` gives the tokenizer itself.

The r50k merge ranks ship inside the package (``assets/r50k_base.tiktoken``) and are checked
against their sha256, so nothing is downloaded: this works on offline cluster nodes and CI.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tiktoken

from wgpt.errors import WgptError

RANKS_FILE = "r50k_base.tiktoken"
# The hash tiktoken itself expects for its r50k_base download (see shared/assets/README.md).
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|end_of_text|>", "<|begin_of_text|>", "<|pad|>")
R50K = "r50k"  # the default tokenizer's name; its bins live in tokenized/, as the seed has them


@lru_cache(maxsize=1)
def _load_ranks() -> dict[bytes, int]:
    data = resources.files("wgpt.data").joinpath("assets", RANKS_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise RuntimeError(
            f"{RANKS_FILE} has sha256 {digest}, expected {RANKS_SHA256}: the packaged merge "
            "ranks are corrupt; reinstall wgpt (pip install -e .)"
        )
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}


def tokenizer_fingerprint() -> str:
    """Identity of the r50k token mapping (merges, split pattern, specials), recorded next to every bin."""
    spec = "\n".join([RANKS_SHA256, PAT_STR, *SPECIAL_TOKENS])
    return "r50k_base+wgpt-" + hashlib.sha256(spec.encode()).hexdigest()[:16]


class TokenizerBase:
    """What every wgpt tokenizer shares; a subclass sets the ids and implements ``_encode_one``,
    ``_encode_many``, ``_decode_one`` and ``token_bytes``."""

    name: str
    fingerprint: str
    eos_token_id: int
    bos_token_id: int
    pad_token_id: int

    def __len__(self) -> int:
        raise NotImplementedError

    def encode(self, text: str | Sequence[str], eos: bool = False, bos: bool = False, num_threads: int = 8):
        """Token ids of a string, or a list of token-id lists for a list of strings."""
        if isinstance(text, str):
            return self._wrap(self._encode_one(text), eos, bos)
        return [self._wrap(ids, eos, bos) for ids in self._encode_many(list(text), num_threads)]

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Each text's ids followed by ``<|end_of_text|>``, concatenated, as one array (for bins)."""
        eos = np.array([self.eos_token_id], dtype=np.uint32)
        return np.concatenate([part for text in texts for part in (self.encode_to_numpy(text), eos)] or [eos[:0]])

    def encode_to_numpy(self, text: str) -> np.ndarray:
        return np.asarray(self._encode_one(text), dtype=np.uint32)

    def _wrap(self, ids: list[int], eos: bool, bos: bool) -> list[int]:
        if bos:
            ids.insert(0, self.bos_token_id)
        if eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, sequence):
        """Text of a token-id list; a list of texts for a list of lists or a 2-D tensor."""
        if hasattr(sequence, "tolist"):  # torch.Tensor or numpy array
            sequence = sequence.tolist()
        if isinstance(sequence, int):
            sequence = [sequence]
        if sequence and isinstance(sequence[0], (list, tuple)):
            return [self._decode_one(list(ids)) for ids in sequence]
        return self._decode_one(list(sequence))

    def token_bytes(self) -> np.ndarray:
        """(len(self),) int64: the UTF-8 bytes each id stands for (0 for special tokens). Bits per
        byte divide a loss by these, so runs with different tokenizers compare."""
        raise NotImplementedError

    def id_to_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a special token: its name), also when they are part
        of a character, which decoding the id alone would turn into U+FFFD."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """Plain values a checkpoint keeps to rebuild this tokenizer (``tokenizer_from_record``)."""
        return {"name": self.name, "fingerprint": self.fingerprint, "vocab_size": len(self)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {len(self)} tokens, {self.fingerprint})"


class Tokenizer(TokenizerBase):
    """r50k_base BPE with ``<|end_of_text|>``, ``<|begin_of_text|>`` and ``<|pad|>`` appended.

    ``encode`` treats text that happens to spell a special token as ordinary text, so a
    corpus can never inject control tokens; specials enter only through ``eos``/``bos``.
    """

    name = R50K

    def __init__(self):
        ranks = _load_ranks()
        specials = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
        self.model = tiktoken.Encoding(
            name="wgpt_r50k_base", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=specials
        )
        self.eos_token_id = specials["<|end_of_text|>"]
        self.bos_token_id = specials["<|begin_of_text|>"]
        self.pad_token_id = specials["<|pad|>"]
        self.fingerprint = tokenizer_fingerprint()
        self.eos = np.array([self.eos_token_id], dtype=np.uint32)

    def __len__(self) -> int:
        """Vocabulary size, special tokens included."""
        return self.model.n_vocab

    def _encode_one(self, text: str) -> list[int]:
        return self.model.encode_ordinary(text)

    def _encode_many(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return self.model.encode_ordinary_batch(texts, num_threads=num_threads)

    def encode_to_numpy(self, text: str) -> np.ndarray:
        """``encode(text)`` as a uint32 array, made without a Python int per token (for bulk work)."""
        return self.model.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def _decode_one(self, ids: list[int]) -> str:
        return self.model.decode(ids)

    def id_to_bytes(self, token_id: int) -> bytes:
        return self.model.decode_single_token_bytes(token_id)

    def token_bytes(self) -> np.ndarray:
        # Merge ranks first, specials after them (0 bytes: they stand for no text).
        lengths = [len(self.model.decode_single_token_bytes(i)) for i in range(self.eos_token_id)]
        return np.array(lengths + [0] * len(SPECIAL_TOKENS), dtype=np.int64)


class R50k:
    """``tokenizer=r50k`` (the default): the seed's tokenizer, nothing to train."""

    name = R50K
    vocab_size = 50259

    def load(self, datasets: Mapping[str, Callable | None] | None = None, data_dir: str | Path | None = None,
             train: bool = False, force: bool = False) -> Tokenizer:  # fmt: skip
        return _r50k()


@lru_cache(maxsize=1)
def _r50k() -> Tokenizer:
    return Tokenizer()


def tokenizer_config(name: str | None) -> str:
    """The command-line choice that selects the tokenizer named ``name`` (for error messages)."""
    if name and name.startswith("bpe") and name[3:].isdigit():
        return f"tokenizer=bpe tokenizer.vocab_size={name[3:]}"
    return f"tokenizer={name}" if name else "tokenizer=r50k"


def tokenizer_from_record(record: Mapping[str, Any] | None, source: str = "the checkpoint") -> TokenizerBase:
    """The tokenizer a checkpoint was trained with (its ``record()``); r50k for checkpoints without one."""
    if record is None or record.get("name") == R50K:
        tokenizer = _r50k()
    elif "json" in record:
        from wgpt.data.bpe import BPETokenizer

        tokenizer = BPETokenizer(record["json"], record["name"])
    else:
        raise WgptError(f"{source} names tokenizer {record.get('name')!r} but does not hold it: it was not made by wgpt")
    if record is not None and record.get("fingerprint") != tokenizer.fingerprint:
        raise WgptError(
            f"{source} records tokenizer {record.get('fingerprint')}, but rebuilding it gives {tokenizer.fingerprint}: "
            "the checkpoint is damaged or from another wgpt version"
        )
    return tokenizer
