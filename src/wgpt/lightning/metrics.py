"""Metrics of a loss: perplexity, and bits per byte (comparable across tokenizers), with the table
of each token's byte length it needs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from wgpt.tokenizers.base import TokenizerBase


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf  # a diverged run must not crash the logging


def bits_per_byte(loss_sum: float, num_bytes: float) -> float:
    """Bits per UTF-8 byte of text: a summed loss in nats over the bytes its target tokens spell.
    Unlike the loss per token it does not depend on the tokenizer, so runs with different ones compare."""
    return loss_sum / math.log(2) / num_bytes if num_bytes > 0 else math.nan


def token_bytes_table(tokenizer: TokenizerBase, vocab_size: int = 0) -> torch.Tensor:
    """(max(len(tokenizer), vocab_size),) int64: the UTF-8 bytes each id spells, 0 for the special
    tokens and for the padding rows of a model's vocabulary beyond the tokenizer's."""
    table = torch.from_numpy(tokenizer.token_bytes()).long()
    return F.pad(table, (0, max(0, vocab_size - table.numel())))
