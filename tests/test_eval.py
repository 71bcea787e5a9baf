"""The Evaluator and eval.py: loss, perplexity and top-k accuracy of a checkpoint."""

import json
import math
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import run_cli
from test_crash_safety import Payload
from wgpt.evaluate import Evaluator, format_results


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
    metrics = Evaluator(NextToken(), top_k=[1, 3]).evaluate(dataset, batch_size=1)
    logits = NextToken()(inputs).flatten(0, 1)
    expected = F.cross_entropy(logits, targets.flatten()).item()
    assert metrics["loss"] == pytest.approx(expected) and metrics["ppl"] == pytest.approx(math.exp(expected))
    assert metrics["tokens"] == 8
    assert metrics["top1_acc"] == pytest.approx(6 / 8)  # ties at token 0 go to index 0: both rows miss
    assert metrics["top3_acc"] == pytest.approx(7 / 8)
    assert Evaluator(NextToken(), top_k=[1]).evaluate(dataset, batch_size=1, max_batches=1)["tokens"] == 4
    table = format_results({"toy": {"validation": metrics}}, [1, 3]).splitlines()
    assert table[0].split() == ["dataset", "split", "loss", "ppl", "top1_acc", "top3_acc", "tokens"]
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
    best = torch.load(trained, weights_only=True)["best_metrics"]
    validation = saved["results"]["shakespeare"]["validation"]
    assert validation["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    assert validation["tokens"] == 4 * 4 * 128 and 0 < validation["top1_acc"] <= validation["top5_acc"] < 1
    assert set(saved["results"]["shakespeare"]) == {"validation", "test"} and saved["global_step"] == 8
    assert "shakespeare  validation" in result.stdout and "eval-recent.json" in result.stdout


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
