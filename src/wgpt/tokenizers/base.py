"""What every tokenizer shares: the split pattern, the 3 special tokens and ``TokenizerBase``
(encode, decode, token bytes for bits per byte, the record a checkpoint keeps)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|end_of_text|>", "<|begin_of_text|>", "<|pad|>")


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
