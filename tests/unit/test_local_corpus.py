"""A corpus of one file (or too few for the carve) is split inside its text, and a preparation that
fails leaves nothing behind: the real `datasets` loading path and prepare.py's lock, in this process.
train.py and process.py on the command line: tests/e2e/test_local_corpus_cli.py."""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from wgpt.data.diskdataset import BinInfo, bin_path
from wgpt.data.prepare import ensure_prepared
from wgpt.data.sources import local
from wgpt.tokenizers.r50k import Tokenizer
from wgpt.util.errors import WgptError
from wgpt.util.files import exclusive

from helpers_local_corpus import play


def split_texts(name: str, data_dir: Path) -> dict[str, str]:
    """Each split's bin decoded back to text, end-of-text tokens dropped."""
    tok = Tokenizer()
    out = {}
    for split in ("validation", "test", "train"):
        tokens = np.fromfile(bin_path(name, split, data_dir), dtype=np.uint16)
        out[split] = tok.decode([int(t) for t in tokens if t != tok.eos_token_id])
    return out


def test_one_text_file_is_split_inside_at_line_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    text = play()
    (tmp_path / "one.txt").write_text(text)
    load = partial(local, str(tmp_path / "one.txt"), carve={"validation": 1, "test": 1}, split_share=0.05)
    assert ensure_prepared("one", load, tmp_path / "data")
    parts = split_texts("one", tmp_path / "data")
    assert parts["validation"] + parts["test"] + parts["train"] == text  # every byte, once, in order
    size = len(text.encode())
    for split in ("validation", "test"):
        assert parts[split].endswith("\n") and 0.05 * size <= len(parts[split].encode()) < 0.05 * size + 100
    for split, info in (
        (s, BinInfo.read(bin_path("one", s, tmp_path / "data"))) for s in ("validation", "test", "train")
    ):
        assert info.num_documents == 1, split
    assert not list((tmp_path / "data" / "one" / "tokenized").glob(".*"))  # no lock file, no unfinished file


def test_too_few_files_are_split_inside_across_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    (tmp_path / "two").mkdir()
    texts = [play(30), play(300)]
    for i, text in enumerate(texts):
        (tmp_path / "two" / f"{i}.txt").write_text(text)
    splits = local(str(tmp_path / "two"), split_share=0.1)  # 2 files, the carve takes 2: train would have none
    docs = {split: [row["text"] for row in data] for split, data in splits.items()}
    assert "".join(docs["validation"] + docs["test"] + docs["train"]) == "".join(texts)
    # The first file is shorter than a share: validation runs into the second, a document per file.
    assert len(docs["validation"]) == 2 and docs["validation"][0] == texts[0]
    assert len(docs["test"]) == 1 and len(docs["train"]) == 1


def test_a_text_without_newlines_is_cut_between_characters(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    text = "ü€" * 3000  # one line, 2- and 3-byte characters
    (tmp_path / "line.txt").write_text(text)
    splits = local(str(tmp_path / "line.txt"))
    docs = {split: "".join(row["text"] for row in data) for split, data in splits.items()}
    assert docs["validation"] + docs["test"] + docs["train"] == text
    assert all(docs[s] for s in ("validation", "test", "train"))


def test_a_split_share_out_of_range_is_refused(tmp_path):
    (tmp_path / "one.txt").write_text(play(50))
    with pytest.raises(WgptError, match=r"split_share=0.5 is out of range.*below 0.33"):
        local(str(tmp_path / "one.txt"), split_share=0.5)


def test_a_failed_preparation_leaves_no_dir_lock_or_bin(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')  # the carve takes both
    with pytest.raises(WgptError, match="at least 3 documents"):
        ensure_prepared(
            "few",
            partial(local, path=str(tmp_path / "a.jsonl"), carve={"validation": 1, "test": 1}),
            tmp_path / "data" / "deep",
        )
    assert not (tmp_path / "data").exists()  # the dirs it made, the lock file, the validation bin: all gone


def test_the_lock_is_held_by_one_preparer_at_a_time_though_each_removes_it(tmp_path):
    lock, inside, most = tmp_path / "d" / ".prepare.lock", [0], [0]
    guard = threading.Lock()

    def prepare():
        with exclusive(lock, []):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.01)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=prepare) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and not lock.exists()
