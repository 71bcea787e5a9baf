"""The seed's ``Tokenizer``: GPT-2's r50k_base merges with Llama-3-style special tokens.

Every tokenizer has the seed's API (``encode``/``decode``/``len``, ``eos_token_id``, ...) plus what
wgpt's machinery reads (see base.py): ``name`` (which folder its bins live in), ``fingerprint``
(the identity recorded in every bin and checkpoint), ``token_bytes()`` (for bits per byte) and
``record()`` (what a checkpoint keeps to rebuild it). The ``tokenizer`` config group's specs, which
know a vocabulary size from the config alone, live in ``wgpt.data.tokenizer``.

The r50k merge ranks ship inside the package (``assets/r50k_base.tiktoken``) and are checked
against their sha256, so nothing is downloaded: this works on offline cluster nodes and CI.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib import resources

import numpy as np
import tiktoken

from wgpt.tokenizers.base import PAT_STR, SPECIAL_TOKENS, TokenizerBase

RANKS_FILE = "r50k_base.tiktoken"
# The hash tiktoken itself expects for its r50k_base download (see shared/assets/README.md).
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
R50K = "r50k"  # the default tokenizer's name; its bins live in tokenized/, as the seed has them


@lru_cache(maxsize=1)
def load_ranks() -> dict[bytes, int]:
    data = resources.files("wgpt.tokenizers").joinpath("assets", RANKS_FILE).read_bytes()
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


class Tokenizer(TokenizerBase):
    """r50k_base BPE with ``<|end_of_text|>``, ``<|begin_of_text|>`` and ``<|pad|>`` appended.

    ``encode`` treats text that happens to spell a special token as ordinary text, so a
    corpus can never inject control tokens; specials enter only through ``eos``/``bos``.
    """

    name = R50K

    def __init__(self):
        ranks = load_ranks()
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


@lru_cache(maxsize=1)
def r50k_tokenizer() -> Tokenizer:
    return Tokenizer()
