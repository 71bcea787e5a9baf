"""python -m wgpt.tools.tokens: a text split into tokens by the tokenizer of a config (r50k, a BPE
trained on first use) or of a checkpoint, shown piece by piece with the ids and a summary line.
In-process checks: tests/unit/test_tokens.py."""

import re
import subprocess

import pytest
import torch

from wgpt.tokenizers.bpe import BPETokenizer, train_bpe
from wgpt.tokenizers.r50k import Tokenizer
from wgpt.util.errors import WgptError

from conftest import run_cli

# Split characters (日本 and 🦜 are byte pieces in r50k), whitespace of every kind, an override-looking word.
TEXT = "To be, or not\tto be:\n  that is 日本 🦜"


PLAIN = {"NO_COLOR": "", "FORCE_COLOR": "", "TTY_COMPATIBLE": ""}  # rich decides by the pipe alone: no colour


SUMMARY = re.compile(
    r"^(\d+) tokens?, (\d+) characters?, (\d+) bytes?, [\d.]+ bytes/token; tokenizer (\S+) \((\d+) tokens, (\S+)\)"
)


RAW = re.compile(r"<0x([0-9A-F]{2})>")


UNSEEN = {"·": " ", "→": "\t", "↵\n": "\n"}


def tokens(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("-m", "wgpt.tools.tokens", *args, input=stdin, env={**PLAIN, **(env or {})}, timeout=120)


def parse(stdout: str) -> tuple[list[bytes], list[int], re.Match]:
    """(each token's bytes, the ids, the summary) of the plain output."""
    view, _, rest = stdout.rpartition("\nids: ")
    ids_line, summary_line = rest.rstrip("\n").split("\n")
    summary = SUMMARY.match(summary_line)
    assert summary, summary_line
    return [unshow(piece) for piece in view.split("│")], eval(ids_line), summary


def unshow(piece: str) -> bytes:
    """A piece as shown back to its bytes: visible whitespace to whitespace, <0xNN> to the byte."""
    for shown, text in UNSEEN.items():
        piece = piece.replace(shown, text)
    parts = RAW.split(piece)  # text, byte, text, byte, ..., text
    return b"".join(bytes([int(p, 16)]) if i % 2 else p.encode() for i, p in enumerate(parts))


def test_r50k_pieces_concatenate_to_the_text_and_ids_are_its_encoding(tmp_path):
    words = TEXT.split(" ")
    result = tokens(*words[:3], f"paths.data_dir={tmp_path}", *words[3:])  # overrides may stand anywhere
    assert result.returncode == 0, result.stderr
    pieces, ids, summary = parse(result.stdout)
    tokenizer = Tokenizer()
    assert ids == tokenizer.encode(TEXT)
    assert b"".join(pieces) == TEXT.encode() and len(pieces) == len(ids)
    assert pieces == [tokenizer.model.decode_single_token_bytes(i) for i in ids]
    assert "│·<0xF0><0x9F>│" in result.stdout and "│→│to│·be│:│↵\n│·│·that│" in result.stdout
    counts = (str(len(ids)), str(len(TEXT)), str(len(TEXT.encode())))
    assert summary.groups() == (*counts, "r50k", "50259", tokenizer.fingerprint)
    assert "hold part of a character, shown as <0xNN> bytes" in result.stdout
    assert not any(tmp_path.iterdir())  # r50k ships with wgpt: nothing is written


def test_text_from_stdin(tmp_path):
    text = "line one\n\ttwo\n"
    result = tokens(f"paths.data_dir={tmp_path}", stdin=text)
    assert result.returncode == 0, result.stderr
    pieces, ids, _ = parse(result.stdout)
    assert ids == Tokenizer().encode(text) and b"".join(pieces) == text.encode()


def test_a_bpe_is_trained_on_first_use_and_shown(tmp_path):
    result = tokens(
        "tokenizer=bpe",
        "tokenizer.vocab_size=300",
        "tokenizer.max_train_chars=50000",
        "data=shakespeare",
        f"paths.data_dir={tmp_path}",
        TEXT,
    )
    assert result.returncode == 0, result.stderr
    assert "Training tokenizer bpe300 on the train split of 'shakespeare'" in result.stderr
    tokenizer = BPETokenizer.from_file(tmp_path / "shakespeare" / "tokenizers" / "bpe300.json")
    pieces, ids, summary = parse(result.stdout)
    assert ids == tokenizer.encode(TEXT)
    assert b"".join(pieces) == TEXT.encode() and len(pieces) == len(ids)  # the byte alphabet read back right
    assert summary.group(4, 5, 6) == ("bpe300", "300", tokenizer.fingerprint)


def test_the_tokenizer_of_a_checkpoint(tmp_path):
    tokenizer = BPETokenizer(train_bpe(["the cat sat on the mat", "a tokenizer of its own"] * 50, 280), "bpe280")
    ckpt = tmp_path / "made.ckpt"
    torch.save({"state_dict": {}, "tokenizer": tokenizer.record()}, ckpt)
    result = tokens(f"ckpt_path={ckpt}", "the cat sat")
    assert result.returncode == 0, result.stderr
    pieces, ids, summary = parse(result.stdout)
    assert ids == tokenizer.encode("the cat sat") and b"".join(pieces) == b"the cat sat"
    assert summary.group(4, 6) == ("bpe280", tokenizer.fingerprint)


def test_the_tokenizer_of_a_run_dir_a_weights_file_or_a_hugging_face_export(tmp_path):
    """Every model source eval.py and generate.py read: a Hugging Face directory through the
    command, the others through the function it calls (each command costs seconds of imports)."""
    from wgpt.interop.checkpoint import write_weights_beside
    from wgpt.interop.export import export
    from wgpt.interop.sources import source_tokenizer
    from wgpt.models import GPT

    tokenizer = BPETokenizer(train_bpe(["the cat sat on the mat", "a tokenizer of its own"] * 50, 280), "bpe280")
    model = GPT(vocab_size=320, d_embed=16, n_layers=1, n_heads=2, max_seq_len=16)
    ckpt = tmp_path / "run" / "checkpoints" / "best-x.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "model_class": "wgpt.models.gpt.GPT",
            "model_config": model.config,
            "tokenizer": tokenizer.record(),
            "global_step": 1,
        },
        ckpt,
    )
    weights = write_weights_beside(ckpt)
    hf_dir = export(ckpt, tmp_path / "hf")
    for source in (tmp_path / "run", weights):
        assert source_tokenizer(source).fingerprint == tokenizer.fingerprint, source
    result = tokens(f"ckpt_path={hf_dir}", "the cat sat")
    assert result.returncode == 0, result.stderr
    pieces, ids, summary = parse(result.stdout)
    assert ids == tokenizer.encode("the cat sat") and summary.group(4) == "bpe280"
    notes = tmp_path / "notes"
    notes.mkdir()
    with pytest.raises(WgptError, match="neither a run dir"):
        source_tokenizer(notes)


def test_bad_input_is_one_line_and_exit_status_1(tmp_path):
    cases = {
        f"ckpt_path={tmp_path / 'missing.ckpt'}": "does not exist",
        "tokenizr=bpe": "tokenizr is not a config key",
        "tokenizer=nope": "tokenizer=nope is not an option",
        "tokenizer.vocab_size=7": "tokenizer.vocab_size is not a config key",  # r50k has no size to set
        # Not trained, and data=tinystories may not download: the command that trains it, as train.py names it.
        "tokenizer=bpe data=tinystories": (
            "train it with `python process.py data=tinystories tokenizer=bpe paths.data_dir="
        ),
    }
    for overrides, message in cases.items():
        result = tokens(*overrides.split(), f"paths.data_dir={tmp_path}", "some text")
        assert result.returncode == 1 and result.stdout == "", (overrides, result.stdout)
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr, result.stderr
