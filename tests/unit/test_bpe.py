"""tokenizer=bpe: a byte-level BPE trained on a dataset's train split, its storage and its bins."""

import functools
import json
import pickle
import socket

import numpy as np
import pytest

from wgpt.data.diskdataset import BinInfo, DiskDataset, bin_path
from wgpt.data.prepare import ensure_prepared, unprepared_reason
from wgpt.data.tokenizer import ByteLevelBPE
from wgpt.tokenizers import tokenizer_from_record
from wgpt.tokenizers.base import SPECIAL_TOKENS
from wgpt.tokenizers.bpe import BPETokenizer
from wgpt.tokenizers.r50k import Tokenizer
from wgpt.util.errors import WgptError

TEXTS = [
    "Hello, world!",
    "Fair is foul, and foul is fair:\nHover through the fog and filthy air.",
    "unicode: naïve café — 日本語のテキスト 🤖👍🏽 Ωμέγα",
    "whitespace:  two  spaces\tand\ttabs\n\n\nnewlines\r\n and trailing   ",
    "   leading spaces",
    "",
    "numbers 1234567 and code: def f(x): return x**2  # comment",
    "specials spelled out: <|end_of_text|> <|begin_of_text|><|pad|>",
]

VERSE = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate. "


def toy_splits(repeat: int = 30):
    """A small corpus: train is plain English verse, held-out splits a line each."""
    train = [{"text": f"{i}: " + VERSE * (1 + i % 3)} for i in range(repeat)]
    return {"train": train, "validation": [{"text": VERSE}] * 3, "test": [{"text": VERSE}] * 3}


TOY = {"toy": functools.partial(toy_splits, repeat=30)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("bpe")
    return ByteLevelBPE(vocab_size=320).load(TOY, data_dir, train=True), data_dir


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(trained, text):
    tok, _ = trained
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not set(ids) & {tok.eos_token_id, tok.bos_token_id, tok.pad_token_id}  # spelled specials stay text
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))  # what bits per byte divide by
    assert b"".join(tok.id_to_bytes(i) for i in ids) == text.encode("utf-8")  # also through split characters


def test_specials_the_seeds_api_and_merges(trained):
    tok, _ = trained
    assert len(tok) == 320 and tok.name == "bpe320" and tok.fingerprint.startswith("bpe320-")
    ids = tok.encode("To be", eos=True, bos=True)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "<|begin_of_text|>To be<|end_of_text|>"
    assert [tok.decode([i]) for i in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id)] == list(SPECIAL_TOKENS)
    assert tok.decode(tok.encode(["a b", "c"])) == ["a b", "c"]
    assert tok.token_bytes()[[tok.eos_token_id, tok.bos_token_id, tok.pad_token_id]].tolist() == [0, 0, 0]
    # It learned the corpus: the verse takes far fewer tokens than bytes.
    assert len(tok.encode(VERSE)) < len(VERSE.encode()) / 2.5


def test_r50k_token_bytes_match_the_text():
    tok = Tokenizer()
    for text in TEXTS:
        assert int(tok.token_bytes()[tok.encode(text)].sum()) == len(text.encode("utf-8"))
        assert b"".join(tok.id_to_bytes(i) for i in tok.encode(text)) == text.encode("utf-8")
    assert tok.token_bytes()[tok.eos_token_id] == 0 and len(tok.token_bytes()) == len(tok)


def test_training_twice_gives_the_same_file_offline(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training a tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    spec = ByteLevelBPE(vocab_size=300)
    first = spec.load(TOY, tmp_path / "a", train=True)
    second = spec.load(TOY, tmp_path / "b", train=True)
    a, b = spec.path(TOY, tmp_path / "a"), spec.path(TOY, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes() and first.fingerprint == second.fingerprint
    assert a == tmp_path / "a" / "toy" / "tokenizers" / "bpe300.json"
    meta = json.loads(a.with_name("bpe300.meta.json").read_text())
    assert meta["fingerprint"] == first.fingerprint and meta["trained_on_documents"] == 30
    # Found, not trained again: the file is untouched.
    mtime = a.stat().st_mtime_ns
    assert spec.load(TOY, tmp_path / "a").fingerprint == first.fingerprint and a.stat().st_mtime_ns == mtime


def test_checkpoint_record_rebuilds_the_same_tokenizer(trained):
    tok, _ = trained
    copied = pickle.loads(pickle.dumps(tok))  # as ddp_spawn sends the module to its processes
    assert copied.encode(TEXTS[-1]) == tok.encode(TEXTS[-1]) and copied.fingerprint == tok.fingerprint
    rebuilt = tokenizer_from_record(tok.record())
    assert isinstance(rebuilt, BPETokenizer) and rebuilt.fingerprint == tok.fingerprint
    assert rebuilt.encode(TEXTS[2]) == tok.encode(TEXTS[2])
    assert tokenizer_from_record(None).fingerprint == Tokenizer().fingerprint  # checkpoints from before
    with pytest.raises(WgptError, match="records tokenizer"):
        tokenizer_from_record({**tok.record(), "fingerprint": "bpe320-0000"})


def test_untrained_or_changed_tokenizer_says_how_to_train_it(tmp_path):
    spec = ByteLevelBPE(vocab_size=300)
    with pytest.raises(
        WgptError, match=r"tokenizer bpe300 is not trained on 'toy' \(no finished tokenizer .*python process.py"
    ):
        spec.load(TOY, tmp_path)
    assert not (tmp_path / "toy").exists()  # refusing writes nothing
    spec.load(TOY, tmp_path, train=True)
    with pytest.raises(WgptError, match="was trained with max_train_chars=200000000, not 1000"):
        ByteLevelBPE(vocab_size=300, max_train_chars=1000).load(TOY, tmp_path)
    path = spec.path(TOY, tmp_path)
    path.write_text(path.read_text().replace('"<|pad|>"', '"<|PAD|>"'))
    with pytest.raises(WgptError, match="does not match the sha256"):
        spec.load(TOY, tmp_path)


def test_bad_settings_are_one_line_errors():
    for bad in (100, 2**21, 4096.5, True):
        with pytest.raises(WgptError, match=f"tokenizer.vocab_size={bad} is out of range"):
            ByteLevelBPE(vocab_size=bad)
    with pytest.raises(
        WgptError, match=r"tokenizer.train_on=nope is not a dataset of this data config: pick one of \['toy'\]"
    ):
        ByteLevelBPE(train_on="nope").load(TOY)


def test_bins_of_each_tokenizer_live_apart(trained):
    """BPE bins go to tokenized-bpe<V>/ in uint16, recording the tokenizer; r50k's are untouched."""
    tok, data_dir = trained
    assert ensure_prepared("toy", TOY["toy"], data_dir)  # r50k
    r50k_bin = bin_path("toy", "train", data_dir)
    before = r50k_bin.stat().st_mtime_ns
    assert unprepared_reason("toy", TOY["toy"], data_dir, tok) is not None
    assert ensure_prepared("toy", TOY["toy"], data_dir, tokenizer=tok)
    path = bin_path("toy", "train", data_dir, tok.name)
    assert path.parent.name == "tokenized-bpe320" and r50k_bin.stat().st_mtime_ns == before
    info = BinInfo.read(path)
    assert (info.tokenizer, info.vocab_size, info.dtype) == (tok.fingerprint, 320, "uint16")
    expected = np.concatenate([tok.encode(r["text"], eos=True) for r in toy_splits()["train"]])
    np.testing.assert_array_equal(np.fromfile(path, dtype=np.uint16), expected)
    assert len(DiskDataset("toy", "train", 16, data_dir=data_dir, tokenizer=tok)) > 0
    with pytest.raises(WgptError, match="no finished bin"):  # nothing of another BPE is read as this one's
        DiskDataset(
            "toy",
            "train",
            16,
            data_dir=data_dir,
            tokenizer=ByteLevelBPE(vocab_size=300).load(TOY, data_dir, train=True),
        )


def test_a_failed_training_leaves_no_lock_or_dirs_and_a_finished_one_no_lock(tmp_path):
    empty = {"toy": lambda: {"train": [{"text": "  "}], "validation": [], "test": []}}
    with pytest.raises(WgptError, match="holds no text to train tokenizer bpe300 on"):
        ByteLevelBPE(vocab_size=300).load(empty, tmp_path / "data", train=True)
    assert not (tmp_path / "data").exists()
    (tmp_path / "data" / "toy").mkdir(parents=True)  # a dataset dir made by someone else stays
    with pytest.raises(WgptError):
        ByteLevelBPE(vocab_size=300).load(empty, tmp_path / "data", train=True)
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == ["toy"]
    ByteLevelBPE(vocab_size=300).load(TOY, tmp_path / "data", train=True)
    assert sorted(p.name for p in (tmp_path / "data" / "toy" / "tokenizers").iterdir()) == [
        "bpe300.json",
        "bpe300.meta.json",
    ]
