import socket

import pytest
import torch

from wgpt.tokenizers import r50k as tokenizer_module
from wgpt.tokenizers.base import SPECIAL_TOKENS
from wgpt.tokenizers.r50k import Tokenizer

TEXTS = [
    "Hello, world!",
    "Fair is foul, and foul is fair:\nHover through the fog and filthy air.",
    "unicode: naïve café — 日本語のテキスト 🤖👍🏽 Ωμέγα",
    "whitespace:  two  spaces\tand\ttabs\n\n\nnewlines\r\n and trailing   ",
    "   leading spaces",
    "",
    "numbers 1234567 and code: def f(x): return x**2  # comment",
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def test_vocab_size_counts_special_tokens(tok):
    assert len(tok) == 50256 + len(SPECIAL_TOKENS) == 50259
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (50256, 50257, 50258)
    assert [tok.decode([i]) for i in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id)] == list(SPECIAL_TOKENS)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < 50256 for i in ids)
    assert tok.decode(ids) == text


def test_eos_and_bos_wrap_each_sequence(tok):
    ids = tok.encode("To be", eos=True, bos=True)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "<|begin_of_text|>To be<|end_of_text|>"
    batch = tok.encode(["a b", "c"], eos=True)
    assert [ids[-1] for ids in batch] == [tok.eos_token_id] * 2
    assert batch == [tok.encode("a b") + [tok.eos_token_id], tok.encode("c") + [tok.eos_token_id]]


def test_special_token_text_is_ordinary_text(tok):
    """A corpus that spells a special token cannot inject it; it still round-trips."""
    text = "before <|end_of_text|> after <|pad|>"
    ids = tok.encode(text)
    assert not set(ids) & {tok.eos_token_id, tok.bos_token_id, tok.pad_token_id}
    assert tok.decode(ids) == text


def test_decode_accepts_lists_of_lists_and_tensors(tok):
    batch = tok.encode(TEXTS[:2])
    assert tok.decode(batch) == TEXTS[:2]
    assert tok.decode(torch.tensor(batch[0])) == TEXTS[0]
    same_length = [batch[0][:3], batch[1][:3]]
    assert tok.decode(torch.tensor(same_length)) == tok.decode(same_length)


def test_works_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    tokenizer_module.load_ranks.cache_clear()
    tok = Tokenizer()
    assert tok.decode(tok.encode("offline")) == "offline"


def test_corrupt_ranks_are_refused(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "RANKS_SHA256", "0" * 64)
    tokenizer_module.load_ranks.cache_clear()
    with pytest.raises(RuntimeError, match="sha256"):
        Tokenizer()
    tokenizer_module.load_ranks.cache_clear()
