"""The Evaluator and eval.py: loss, perplexity and top-k accuracy of a checkpoint."""

import csv
import json
import math
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from conftest import ROOT, run_cli
from test_crash_safety import Payload
from wgpt.tokenizers.r50k import Tokenizer
from wgpt.util.errors import WgptError
from wgpt.tools.evaluate import Evaluator, evaluate_checkpoint, format_results
from wgpt.models import GPT


# The run validated on the CPU: eval.py there too (on a GPU it would score in bf16, a little apart).
CPU = ["device=cpu"]


class NextToken(nn.Module):
    """Predicts token + 1 with certainty, except after token 0, where it guesses 0, 1, 2 evenly."""

    def forward(self, input):  # (B, T) -> (B, T, 8)
        logits = F.one_hot((input + 1) % 8, 8).float() * 20
        logits[input == 0] = torch.tensor([5.0, 5.0, 5.0, 0, 0, 0, 0, 0])
        return logits


def test_loss_perplexity_and_top_k_are_token_weighted():
    inputs = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0]])
    targets = torch.tensor([[2, 2, 3, 4], [5, 6, 7, 5]])  # after 0: 2 (in the top 3), then 5 (not)
    dataset = list(zip(inputs, targets))
    tokenizer = Tokenizer()
    metrics = Evaluator(NextToken(), top_k=[1, 3], tokenizer=tokenizer).evaluate(dataset, batch_size=1)
    logits = NextToken()(inputs).flatten(0, 1)
    expected = F.cross_entropy(logits, targets.flatten()).item()
    assert metrics["loss"] == pytest.approx(expected) and metrics["ppl"] == pytest.approx(math.exp(expected))
    assert metrics["tokens"] == 8
    # r50k's ids 0-7 are the one-byte tokens '!' to "(": 8 bytes for the 8 targets.
    assert len(tokenizer.decode(targets.flatten()).encode()) == 8
    assert metrics["bpb"] == pytest.approx(expected * 8 / math.log(2) / 8)
    assert metrics["top1_acc"] == pytest.approx(6 / 8)  # ties at token 0 go to index 0: both rows miss
    assert metrics["top3_acc"] == pytest.approx(7 / 8)
    assert Evaluator(NextToken(), top_k=[1]).evaluate(dataset, batch_size=1, max_batches=1)["tokens"] == 4
    table = format_results({"toy": {"validation": metrics}}, [1, 3]).splitlines()
    assert table[0].split() == ["dataset", "split", "loss", "ppl", "bpb", "top1_acc", "top3_acc", "tokens"]
    assert table[1].split()[4] == f"{metrics['bpb']:.4f}"
    assert table[1].split()[:2] == ["toy", "validation"] and table[1].split()[-1] == "8"


@pytest.fixture
def trained(gpt2_tiny_run, tmp_path):
    """The recent.ckpt of a copy of conftest's gpt2-tiny run dir: eval.py writes its results beside it."""
    _, run_dir = gpt2_tiny_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    return copy / "checkpoints" / "recent.ckpt"


def test_eval_py_scores_the_runs_own_data_and_saves_json(trained, data_dir):
    # The run validated on its first 4 batches of 4 windows: so does this, and the losses agree.
    result = run_cli(
        "eval.py", f"ckpt_path={trained}", "batch_size=4", "max_batches=4", f"paths.data_dir={data_dir}", *CPU
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((trained.parents[1] / "eval-recent.json").read_text())
    checkpoint = torch.load(trained, weights_only=True)
    best = checkpoint["best_metrics"]
    validation = saved["results"]["shakespeare"]["validation"]
    assert validation["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    # Bits per byte too: as the run logged them (metrics.csv, the checkpoint, summary.json), with
    # the tokenizer the checkpoint records.
    assert checkpoint["tokenizer"]["name"] == saved["tokenizer"]["name"] == "r50k"
    with open(trained.parents[1] / "metrics.csv") as f:
        logged = [float(row["val_bpb"]) for row in csv.DictReader(f) if row.get("val_bpb")]
    summary = json.loads((trained.parents[1] / "summary.json").read_text())
    assert validation["bpb"] == pytest.approx(best["val_bpb"], rel=1e-4) and best["step"] == 8
    assert validation["bpb"] == pytest.approx(logged[-1], rel=1e-4)
    assert summary["best_val_bpb"] == summary["final_val_bpb"] == best["val_bpb"]
    # Not a per-token loss in other units: r50k spells ~4 bytes of Shakespeare per token.
    assert 2.5 < validation["loss"] / math.log(2) / validation["bpb"] < 6
    assert validation["tokens"] == 4 * 4 * 128 and 0 < validation["top1_acc"] <= validation["top5_acc"] < 1
    assert set(saved["results"]["shakespeare"]) == {"validation", "test"} and saved["global_step"] == 8
    assert "shakespeare  validation" in result.stdout and "eval-recent.json" in result.stdout
    assert f"{validation['bpb']:.4f}" in result.stdout.split("shakespeare  validation")[1].splitlines()[0]


def test_a_model_smaller_than_its_tokenizer_is_refused_before_scoring(tmp_path):
    # A checkpoint of a 64-token model without a tokenizer record (r50k, as older checkpoints).
    model = GPT(vocab_size=64, d_embed=8, n_layers=1, n_heads=1, max_seq_len=16)
    checkpoint = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                  "model_class": "wgpt.models.gpt.GPT", "model_config": model.config}  # fmt: skip
    torch.save(checkpoint, tmp_path / "small.ckpt")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        # No data there: the refusal must come before any data is read.
        cfg = compose("eval", overrides=[f"ckpt_path={tmp_path / 'small.ckpt'}", f"paths.data_dir={tmp_path / 'none'}"])
    with pytest.raises(WgptError) as error:
        evaluate_checkpoint(cfg)
    (line,) = str(error.value).splitlines()
    assert "vocab_size=64 is smaller than its tokenizer r50k (50259 tokens)" in line
    assert not (tmp_path / "none").exists()


def test_eval_py_takes_other_data_and_refuses_bad_input(trained, data_dir, tmp_path):
    result = run_cli(
        "eval.py", f"ckpt_path={trained}", "data=shakespeare", "splits=[test]", "max_batches=1",
        f"paths.data_dir={data_dir}", *CPU,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(json.loads((trained.parents[1] / "eval-recent.json").read_text())["results"]["shakespeare"]) == {"test"}

    bad = run_cli("eval.py", f"ckpt_path={trained}", "splits=[valid]")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
        "Error: splits=['valid'] names 'valid': use validation, test or train"
    )
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["model_config"] = Payload(tmp_path / "ran")
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    evil = run_cli("eval.py", f"ckpt_path={tmp_path / 'evil.ckpt'}")
    assert evil.returncode == 1 and "holds more than tensors and plain containers" in evil.stderr
    assert not (tmp_path / "ran").exists()
