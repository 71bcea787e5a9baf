"""The Evaluator: loss, perplexity, bits per byte and top-k accuracy, token-weighted, and the refusal of
a model smaller than its tokenizer. eval.py on a real checkpoint: tests/e2e/test_eval_cli.py."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from wgpt.models import GPT
from wgpt.tokenizers.r50k import Tokenizer
from wgpt.tools.evaluate import Evaluator, evaluate_checkpoint, format_results
from wgpt.util.errors import WgptError

from conftest import ROOT


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


def test_a_model_smaller_than_its_tokenizer_is_refused_before_scoring(tmp_path):
    # A checkpoint of a 64-token model without a tokenizer record (r50k, as older checkpoints).
    model = GPT(vocab_size=64, d_embed=8, n_layers=1, n_heads=1, max_seq_len=16)
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "model_class": "wgpt.models.gpt.GPT",
        "model_config": model.config,
    }
    torch.save(checkpoint, tmp_path / "small.ckpt")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        # No data there: the refusal must come before any data is read.
        cfg = compose("eval", overrides=[f"ckpt_path={tmp_path / 'small.ckpt'}", f"paths.data_dir={tmp_path / 'none'}"])
    with pytest.raises(WgptError) as error:
        evaluate_checkpoint(cfg)
    (line,) = str(error.value).splitlines()
    assert "vocab_size=64 is smaller than its tokenizer r50k (50259 tokens)" in line
    assert not (tmp_path / "none").exists()
