"""Tokenizers across the Hugging Face boundary: tokenizer.json written for r50k and wgpt's BPEs,
and a directory's tokenizer read back and checked against the one a run uses."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any, Mapping

from wgpt.data.tokenizer import R50k
from wgpt.interop.hf.config import HFDir
from wgpt.tokenizers import tokenizer_config, tokenizer_from_record
from wgpt.tokenizers.base import PAT_STR, SPECIAL_TOKENS
from wgpt.tokenizers.bpe import BPETokenizer, byte_alphabet
from wgpt.tokenizers.r50k import R50K, load_ranks
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")


def tokenizer_files(tokenizer, max_seq_len: int) -> dict[str, str]:
    """tokenizer.json (what ``tokenizers`` and transformers load; it encodes text to the same ids
    as ``tokenizer``), tokenizer_config.json and special_tokens_map.json."""

    end, _, pad = SPECIAL_TOKENS
    specials = {"bos_token": end, "eos_token": end, "pad_token": pad}  # end-of-text begins text too (see hf_config)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": max_seq_len,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    return {
        "tokenizer.json": tokenizer_json(tokenizer),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(specials, indent=2) + "\n",
    }


def tokenizer_json(tokenizer) -> str:
    """A ``tokenizers`` JSON that encodes text as ``tokenizer`` does: a wgpt BPE is one already;
    r50k is rebuilt from its tiktoken ranks (``_r50k_json``)."""

    if getattr(tokenizer, "json_text", None) is not None:
        return tokenizer.json_text
    if tokenizer.name == R50K:
        return _r50k_json()
    raise WgptError(f"tokenizer {tokenizer.name} cannot be written as a Hugging Face tokenizer.json")


@lru_cache(maxsize=1)
def _r50k_json() -> str:
    """r50k as a ``tokenizers`` byte-level BPE: the tiktoken ranks as its vocabulary, each rank's
    merge recovered by running BPE on the token with only lower ranks allowed (as tiktoken's own
    conversion to transformers does), wgpt's split pattern, the 3 specials after the 50,256 ranks.
    ``ignore_merges`` looks a whole piece up first, as tiktoken does. Encodes every text to the
    ids tiktoken gives, except text that spells a special token: Hugging Face tokenizers read
    that as the special token, wgpt as plain text."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    ranks = load_ranks()
    vocab = {_spell(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            first, second = _last_merge(token, rank, ranks)
            merges.append((_spell(first), _spell(second)))
    tokenizer = HFTokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tokenizer.token_to_id(SPECIAL_TOKENS[0]) == len(ranks)  # the ids wgpt gives them
    return tokenizer.to_str()


def _spell(token: bytes) -> str:
    """A token's bytes in the byte-level alphabet (GPT-2's printable stand-ins)."""
    return "".join(_byte_chars()[b] for b in token)


@lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:

    return {b: c for c, b in byte_alphabet().items()}


def _last_merge(token: bytes, rank: int, ranks: Mapping[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts BPE joins last to make ``token``: its bytes merged by lowest rank, below ``rank``."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = min(
            ((r, i) for i in range(len(parts) - 1) if (r := ranks.get(parts[i] + parts[i + 1], rank)) < rank),
            default=None,
        )
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise RuntimeError(f"r50k token {token!r} is not one merge of two lower-ranked tokens")
    return parts[0], parts[1]


def check_hf_vocab(d: HFDir, vocab_size: int, tokenizer) -> None:
    """The directory's vocabulary rows fit ``vocab_size`` (the run's tokenizer, padded): fewer are
    padded on loading; more only if the extra rows are beyond every id of ``tokenizer``."""
    rows = d.config.get("vocab_size")
    if isinstance(rows, int) and rows > vocab_size:
        name = f"tokenizer {tokenizer.name} ({len(tokenizer)} tokens)" if tokenizer is not None else "this model"
        raise WgptError(
            f"{d.source} has {rows} vocabulary rows, more than the {vocab_size} of {name}, padded: "
            "its tokenizer is not this run's: use the tokenizer it was trained with"
        )


def check_hf_tokenizer(d: HFDir, tokenizer) -> None:
    """A one-line WgptError unless the directory's tokenizer gives its ids the meaning
    ``tokenizer`` gives them (a wgpt export: the same tokenizer; another directory: the same
    vocabulary, e.g. HF GPT-2's for r50k). Without tokenizer files, says so in the log."""

    record = (d.wgpt or {}).get("tokenizer")
    if record is not None:
        if record.get("fingerprint") != tokenizer.fingerprint:
            raise WgptError(
                f"{d.source} was trained with tokenizer {record.get('name')} ({record.get('fingerprint')}), "
                f"this run uses {tokenizer.name} ({tokenizer.fingerprint}): "
                f"train with {tokenizer_config(record.get('name'))} on the data it was trained on"
            )
        return
    theirs = _dir_vocab(d)
    if theirs is None:
        log.warning(
            "%s has no tokenizer files: its ids are taken to mean what they mean to tokenizer %s",
            d.source,
            tokenizer.name,
        )
        return
    ours = ordinary_vocab(tokenizer)
    if theirs != ours:
        wrong = next((t for t, i in theirs.items() if ours.get(t) != i), None)
        raise WgptError(
            f"{d.source} has a tokenizer whose ids are not those of this run's {tokenizer.name} "
            f"({len(theirs)} tokens there, {len(ours)} here; "
            f"e.g. {wrong!r} is {theirs.get(wrong)} there, {ours.get(wrong)} here): "
            "start from a model of the same tokenizer (r50k is GPT-2's)"
        )


def ordinary_vocab(tokenizer) -> dict[str, int]:
    """{byte-level token: id} of a wgpt tokenizer's ordinary (non-special) tokens."""

    if getattr(tokenizer, "json_text", None) is not None:
        return _json_vocab(json.loads(tokenizer.json_text))
    if tokenizer.name == R50K:
        return {_spell(token): rank for token, rank in load_ranks().items()}
    raise WgptError(f"tokenizer {tokenizer.name} has no byte-level vocabulary to compare")


def _json_vocab(data: Mapping[str, Any]) -> dict[str, int] | None:
    vocab = (data.get("model") or {}).get("vocab")
    if not isinstance(vocab, dict):
        return None
    specials = {t.get("content") for t in data.get("added_tokens") or []}
    return {t: i for t, i in vocab.items() if t not in specials}


def _dir_tokenizer(d: HFDir) -> dict[str, Any] | None:
    """The directory's tokenizer.json, parsed (GPT-2's vocab.json made into its shape), or None."""
    if (d.path / "tokenizer.json").is_file():
        try:
            return json.loads((d.path / "tokenizer.json").read_text(encoding="utf-8"))
        except ValueError as e:
            raise WgptError(f"{d.source}: tokenizer.json is not JSON ({e}): the directory is damaged") from None
    if (d.path / "vocab.json").is_file():
        vocab = json.loads((d.path / "vocab.json").read_text(encoding="utf-8"))
        return {"model": {"vocab": vocab}, "added_tokens": [{"content": "<|endoftext|>"}]}  # GPT-2's special token
    return None


def _dir_vocab(d: HFDir) -> dict[str, int] | None:
    """The directory's tokenizer's ordinary tokens, or None when it has no tokenizer files."""
    data = _dir_tokenizer(d)
    return None if data is None else _json_vocab(data) or {}


def tokenizer_from_hf_dir(d: HFDir):
    """The wgpt tokenizer of a directory: a wgpt export's own; r50k for a directory whose
    vocabulary is GPT-2's; a wgpt BPE's tokenizer.json (one with wgpt's special tokens)."""

    record = (d.wgpt or {}).get("tokenizer")
    if record is not None:
        return tokenizer_from_record(record, source=d.source)
    data = _dir_tokenizer(d)
    if data is None:
        raise WgptError(f"{d.source} has no tokenizer (tokenizer.json): wgpt cannot tell what its ids mean")
    r50k = R50k().load()
    if _json_vocab(data) == ordinary_vocab(r50k):
        return r50k
    specials = {t.get("content") for t in data.get("added_tokens") or []}
    if (d.path / "tokenizer.json").is_file() and set(SPECIAL_TOKENS) <= specials:
        text = (d.path / "tokenizer.json").read_text(encoding="utf-8")
        return BPETokenizer(text, f"bpe{len(_json_vocab(data) or {}) + len(SPECIAL_TOKENS)}")
    raise WgptError(
        f"{d.source} has a tokenizer that is neither r50k (GPT-2's) nor a wgpt BPE: "
        "wgpt can only run models of its own tokenizers"
    )
