"""Tokenizers: r50k (GPT-2's merges, shipped in ``assets/``) and byte-level BPEs, as text <-> ids.
Nothing here reads a dataset: ``wgpt.data.tokenizer`` trains a BPE on one (the tokenizer group).

``tokenizer_from_record`` rebuilds the tokenizer a checkpoint records.
"""

from __future__ import annotations

from typing import Any, Mapping

from wgpt.tokenizers.base import TokenizerBase
from wgpt.tokenizers.bpe import BPETokenizer
from wgpt.tokenizers.r50k import R50K, r50k_tokenizer
from wgpt.util.errors import WgptError


def tokenizer_config(name: str | None) -> str:
    """The command-line choice that selects the tokenizer named ``name`` (for error messages)."""
    if name and name.startswith("bpe") and name[3:].isdigit():
        return f"tokenizer=bpe tokenizer.vocab_size={name[3:]}"
    return f"tokenizer={name}" if name else "tokenizer=r50k"


def tokenizer_from_record(record: Mapping[str, Any] | None, source: str = "the checkpoint") -> TokenizerBase:
    """The tokenizer a checkpoint was trained with (its ``record()``); r50k for checkpoints without one."""
    if record is None or record.get("name") == R50K:
        tokenizer = r50k_tokenizer()
    elif "json" in record:
        tokenizer = BPETokenizer(record["json"], record["name"])
    else:
        raise WgptError(
            f"{source} names tokenizer {record.get('name')!r} but does not hold it: it was not made by wgpt"
        )
    if record is not None and record.get("fingerprint") != tokenizer.fingerprint:
        raise WgptError(
            f"{source} records tokenizer {record.get('fingerprint')}, but rebuilding it gives {tokenizer.fingerprint}: "
            "the checkpoint is damaged or from another wgpt version"
        )
    return tokenizer
