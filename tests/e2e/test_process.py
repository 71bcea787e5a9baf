"""process.py and train.py on the user's own files, through the real command line."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from wgpt.data.diskdataset import BinInfo, bin_path
from wgpt.tokenizers.r50k import Tokenizer

from conftest import ROOT, run_cli

FAST = [
    "model.d_embed=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=4",
    "trainer.val_every_n_steps=2",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


def txt_corpus(path, n=12):
    path.mkdir()
    texts = [f"Chapter {i}.\n" + "It was the best of times, it was the worst of times. " * (20 + i) for i in range(n)]
    for i, text in enumerate(texts):
        (path / f"{i:02d}.txt").write_text(text)
    return texts


def test_process_then_train_on_a_directory_of_text_files(tmp_path):
    texts = txt_corpus(tmp_path / "corpus")
    env = {"WGPT_DATA_DIR": str(tmp_path / "data"), "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    common = [f"data.path={tmp_path / 'corpus'}", f"paths.output_root={tmp_path / 'out'}"]
    result = run_cli("process.py", "data=local", *common, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    tokens = np.fromfile(bin_path("local", "train", tmp_path / "data"), dtype=np.uint16)
    tok = Tokenizer()
    np.testing.assert_array_equal(tokens, np.concatenate([tok.encode(t, eos=True) for t in texts[2:]]))

    result = run_cli("train.py", "data=local", *common, *FAST, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "gpt2-tiny").iterdir()
    log = (run_dir / "train.log").read_text()
    assert "Preparing dataset" not in log  # process.py's bins were used as they were
    assert "step 4 | val_loss" in log and (run_dir / "checkpoints" / "recent.ckpt").exists()


def test_training_on_unprepared_data_names_the_command(tmp_path):
    result = run_cli(
        "train.py",
        "data=tinystories",
        f"data.datasets.tinystories.path={tmp_path / 'stories'}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_root={tmp_path / 'out'}",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: dataset 'tinystories' is not ready "
        f"(no finished bin at {tmp_path}/data/tinystories/tokenized/train.bin): "
        f"prepare it with `python process.py data=tinystories data.datasets.tinystories.path={tmp_path / 'stories'} "
        f"paths.data_dir={tmp_path / 'data'} paths.output_root={tmp_path / 'out'}`"
    )


def test_truncated_bin_stops_training_with_one_line(tmp_path):
    txt_corpus(tmp_path / "corpus")
    env = {"WGPT_DATA_DIR": str(tmp_path / "data"), "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    args = ["data=local", f"data.path={tmp_path / 'corpus'}", f"paths.output_root={tmp_path / 'out'}"]
    assert run_cli("process.py", *args, env=env).returncode == 0
    path = bin_path("local", "train", tmp_path / "data")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 2)
    result = run_cli("train.py", *args, "data.auto_prepare=false", *FAST, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: dataset 'local' is not ready (") and "truncated or overwritten" in last
    assert "prepare it with `python process.py data=local" in last


def test_killed_processing_never_leaves_a_bin_that_looks_finished(tmp_path):
    rng = random.Random(0)
    words = "the of and to a in that is was he for it with as his on be at by I".split()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with open(corpus / "big.jsonl", "w") as f:  # ~40 MB: seconds of tokenizing
        for _ in range(20_000):
            f.write(json.dumps({"text": " ".join(rng.choices(words, k=400))}) + "\n")
    env = {**os.environ, "WGPT_DATA_DIR": str(tmp_path / "data"), "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    cmd = [
        sys.executable,
        str(ROOT / "process.py"),
        "data=local",
        f"data.path={corpus}",
        f"paths.output_root={tmp_path / 'out'}",
    ]
    train_bin = bin_path("local", "train", tmp_path / "data")
    partial = train_bin.with_name("train.bin.tmp")

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (partial.exists() and partial.stat().st_size > 1_000_000) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.exists(), "the kill was meant to land while train.bin was being written"
    assert not train_bin.exists() and BinInfo.read(train_bin) is None  # nothing looks finished

    result = run_cli(*cmd[1:], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    info = BinInfo.read(train_bin)
    assert info.num_documents == 20_000 - 2 and train_bin.stat().st_size == 2 * info.num_tokens
    assert not partial.exists()


def test_process_trains_a_bpe_on_streamed_jsonl_and_its_bins_decode_back(tmp_path):
    """tokenizer=bpe on a streamed local source (the path hub datasets take too): the tokenizer
    learns from the train split only, and the bins hold each document followed by end-of-text."""
    from wgpt.tokenizers.bpe import BPETokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [f"Doc {i}: " + "the quick brown fox jumps over the lazy dog. " * (5 + i) for i in range(12)]
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    env = {"HF_DATASETS_CACHE": str(tmp_path / "hf")}
    result = run_cli(
        "process.py",
        "data=local",
        f"data.path={corpus}",
        "tokenizer=bpe",
        "tokenizer.vocab_size=300",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_root={tmp_path / 'out'}",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tok = BPETokenizer.from_file(tmp_path / "data" / "local" / "tokenizers" / "bpe300.json")
    meta = json.loads((tmp_path / "data" / "local" / "tokenizers" / "bpe300.meta.json").read_text())
    assert meta["trained_on_documents"] == len(texts) - 2  # validation and test are carved off first
    train = np.fromfile(bin_path("local", "train", tmp_path / "data", "bpe300"), dtype=np.uint16)
    assert BinInfo.read(bin_path("local", "train", tmp_path / "data", "bpe300")).tokenizer == tok.fingerprint
    assert tok.decode(train.tolist()) == "".join(t + "<|end_of_text|>" for t in texts[2:])
