"""tokenizer=bpe through the real command line: process.py trains it and writes its bins, train.py
trains a model with its vocabulary, eval.py and generate.py follow the checkpoint's tokenizer, and a
checkpoint is refused, in one line, by a run with another tokenizer."""

import json
import math

import pytest
import torch

from wgpt.interop.checkpoint import load_checkpoint, model_from_checkpoint
from wgpt.tokenizers import tokenizer_from_record
from wgpt.tokenizers.bpe import BPETokenizer
from wgpt.tools.generate import generate

from conftest import FAST, paths, read_metrics, run_cli

BPE = ["tokenizer=bpe", "tokenizer.vocab_size=512"]


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """(data dir, run dir) of process.py then train.py with a 512-token BPE."""
    root = tmp_path_factory.mktemp("bpe-run")
    data_dir = root / "data"
    result = run_cli("process.py", *BPE, f"paths.data_dir={data_dir}", f"paths.output_root={root / 'outputs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("train.py", *BPE, *FAST, *paths(root, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (root / "outputs" / "gpt2-tiny").iterdir()
    return data_dir, run_dir


def test_process_trains_the_tokenizer_and_train_uses_it(bpe_run):
    data_dir, run_dir = bpe_run
    assert (data_dir / "shakespeare" / "tokenizers" / "bpe512.json").is_file()
    sidecar = json.loads((data_dir / "shakespeare" / "tokenized-bpe512" / "train.json").read_text())
    assert sidecar["dtype"] == "uint16" and sidecar["vocab_size"] == 512
    log = (run_dir / "train.log").read_text()
    assert "Training tokenizer" not in log and "Preparing dataset" not in log  # process.py's were used
    assert "tokenizer bpe512 (512 tokens)" in log
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "recent.ckpt")
    assert checkpoint["tokenizer"]["fingerprint"] == sidecar["tokenizer"]
    assert (
        checkpoint["model_config"]["vocab_size"] == 512 and checkpoint["state_dict"]["model.wte.weight"].shape[0] == 512
    )
    validated = [row for row in read_metrics(run_dir) if row.get("val_bpb")]
    assert validated and all(0 < float(row["val_bpb"]) < 16 for row in validated)


def test_eval_scores_with_the_checkpoints_tokenizer(bpe_run):
    data_dir, run_dir = bpe_run
    ckpt = run_dir / "checkpoints" / "recent.ckpt"
    result = run_cli(
        "eval.py", f"ckpt_path={ckpt}", "batch_size=4", "max_batches=4", f"paths.data_dir={data_dir}", "device=cpu"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    validation = json.loads((run_dir / "eval-recent.json").read_text())["results"]["shakespeare"]["validation"]
    best = torch.load(ckpt, weights_only=True)["best_metrics"]
    assert validation["loss"] == pytest.approx(best["val_loss"], rel=1e-4)  # the same windows as the run's validation
    assert validation["bpb"] == pytest.approx(best["val_bpb"], rel=1e-4) and math.isfinite(validation["bpb"])
    assert "bpb" in result.stdout.splitlines()[1]


def test_generate_decodes_with_the_checkpoints_tokenizer(bpe_run):
    _, run_dir = bpe_run
    ckpt = run_dir / "checkpoints" / "recent.ckpt"
    result = run_cli(
        "generate.py", f"ckpt_path={ckpt}", "prompt=To be", "max_new_tokens=12", "temperature=0", "device=cpu"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(ckpt)
    tokenizer = tokenizer_from_record(checkpoint["tokenizer"])
    assert isinstance(tokenizer, BPETokenizer)
    model = model_from_checkpoint(checkpoint)
    (new,) = generate(
        model,
        [tokenizer.encode("To be")],
        max_new_tokens=12,
        temperature=0.0,
        eos_token_id=tokenizer.eos_token_id,
        vocab_size=len(tokenizer),
    )
    assert result.stdout.rstrip("\n") == "To be" + tokenizer.decode(new)


def test_a_checkpoint_is_refused_by_a_run_with_another_tokenizer(bpe_run, gpt2_tiny_run, tmp_path):
    data_dir, run_dir = bpe_run
    bpe_ckpt = run_dir / "checkpoints" / "recent.ckpt"
    _, r50k_run = gpt2_tiny_run
    r50k_ckpt = r50k_run / "checkpoints" / "recent.ckpt"
    for args, says in [
        (
            [f"ckpt_path={bpe_ckpt}"],
            f"Error: ckpt_path={bpe_ckpt} was trained with tokenizer bpe512, this run uses r50k: "
            "continue it with tokenizer=bpe tokenizer.vocab_size=512, as its run had",
        ),
        (
            [*BPE, f"ckpt_path={r50k_ckpt}"],
            f"Error: ckpt_path={r50k_ckpt} was trained with tokenizer r50k, this run uses "
            "bpe512: continue it with tokenizer=r50k, as its run had",
        ),
    ]:
        result = run_cli("train.py", *args, *FAST, *paths(tmp_path, data_dir))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == says
    assert not (tmp_path / "outputs" / "gpt2-tiny").exists() or not any((tmp_path / "outputs" / "gpt2-tiny").iterdir())
