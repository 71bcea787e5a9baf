"""The wgpt tokenizer: GPT-2's r50k_base byte-pair merges with Llama-3-style special tokens.

The merge ranks ship inside the package (``assets/r50k_base.tiktoken``) and are checked
against their sha256, so nothing is downloaded: this works on offline cluster nodes and CI.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib import resources
from typing import Sequence

import numpy as np
import tiktoken

RANKS_FILE = "r50k_base.tiktoken"
# The hash tiktoken itself expects for its r50k_base download (see shared/assets/README.md).
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|end_of_text|>", "<|begin_of_text|>", "<|pad|>")


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
    """Identity of the token mapping (merges, split pattern, specials), recorded next to every bin."""
    spec = "\n".join([RANKS_SHA256, PAT_STR, *SPECIAL_TOKENS])
    return "r50k_base+wgpt-" + hashlib.sha256(spec.encode()).hexdigest()[:16]


class Tokenizer:
    """r50k_base BPE with ``<|end_of_text|>``, ``<|begin_of_text|>`` and ``<|pad|>`` appended.

    ``encode`` treats text that happens to spell a special token as ordinary text, so a
    corpus can never inject control tokens; specials enter only through ``eos``/``bos``.
    """

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

    def encode(self, text: str | Sequence[str], eos: bool = False, bos: bool = False, num_threads: int = 8):
        """Token ids of a string, or a list of token-id lists for a list of strings."""
        if isinstance(text, str):
            return self._wrap(self.model.encode_ordinary(text), eos, bos)
        batch = self.model.encode_ordinary_batch(list(text), num_threads=num_threads)
        return [self._wrap(ids, eos, bos) for ids in batch]

    def encode_to_numpy(self, text: str) -> np.ndarray:
        """``encode(text)`` as a uint32 array, made without a Python int per token (for bulk work)."""
        return self.model.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

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
            return [self.model.decode(list(ids)) for ids in sequence]
        return self.model.decode(list(sequence))
